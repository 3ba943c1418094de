"""The on-demand feature model without a store: serialisation (by value, loaded lazily), fingerprints and
versions, the checks of definitions, results and request fields, the frame a function sees, and the
catalog's rules for on-demand entries (shared names, inputs, drops, persistence).
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayfs import Feature, OnDemandError, OnDemandFeature, Stream, on_demand
from rayfs.errors import DefinitionError, UnknownFeatureError
from rayfs.model.ondemand import input_frame, request_columns
from rayfs.storage.catalog import Catalog


def roundtrip(f: OnDemandFeature) -> OnDemandFeature:
    return OnDemandFeature.from_dict(json.loads(json.dumps(f.to_dict())))


def ratio(df):
    return df.a / df.b


@pytest.fixture
def user_module(tmp_path):
    """A module of the user's own (not installed), imported from a temporary folder, then made unimportable."""
    name = "od_user_mod_" + tmp_path.name.replace("-", "_")

    def load(body: str):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        sys.path.insert(0, str(tmp_path))
        importlib.invalidate_caches()
        return importlib.import_module(name)

    yield load
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def forget(module) -> None:
    sys.modules.pop(module.__name__, None)
    sys.path.remove(str(Path(module.__file__).parent))


# ------------------------------------------------------------------------------------------ serialisation
def test_round_trip_loads_the_function_only_when_applied():
    f = OnDemandFeature(name="r", function=ratio, inputs=["a", "b"], request="x", description="d", tags=["t", "t"])
    assert f.inputs == ("a", "b") and f.request == ("x",) and f.tags == ("t",)
    assert "return df.a / df.b" in f.source
    g = roundtrip(f)
    assert g.function is None and g == f and g.same_definition(f) and g.fingerprint() == f.fingerprint()
    frame = pd.DataFrame({"a": [1.0, 3.0], "b": [2.0, 4.0], "x": [0, 0]})
    assert g.apply(frame).tolist() == [0.5, 0.75]
    assert g.function is not None  # loaded once, kept


def test_functions_of_the_users_own_modules_travel_by_value(user_module):
    mod = user_module("""
        import numpy as np
        OFFSET = 3.0

        def helper(x):
            return np.log1p(x)

        def feature(df):
            return helper(df.a) + OFFSET
    """)
    f = OnDemandFeature(name="h", function=mod.feature, inputs=["a"])
    forget(mod)  # another process: the module cannot be imported there
    g = roundtrip(f)
    assert np.allclose(g.apply(pd.DataFrame({"a": [0.0, 1.0]})), [3.0, np.log(2) + 3.0])


def test_a_function_that_cannot_be_loaded_names_the_feature():
    f = OnDemandFeature(name="r", function=ratio, inputs=["a", "b"])
    d = {**f.to_dict(), "code": "bm90IGEgcGlja2xl"}  # base64 of "not a pickle"
    with pytest.raises(OnDemandError, match="'r'.*cannot be loaded"):
        OnDemandFeature.from_dict(d).apply(pd.DataFrame({"a": [1], "b": [1]}))


def test_unpicklable_or_uncallable_functions_are_refused():
    lock = threading.Lock()
    with pytest.raises(OnDemandError, match="'u'.*cannot be serialised"):
        OnDemandFeature(name="u", function=lambda df: lock.locked(), inputs=["a"])
    with pytest.raises(OnDemandError, match="'u'.*callable"):
        OnDemandFeature(name="u", function=42, inputs=["a"])
    with pytest.raises(OnDemandError, match="'u'.*callable"):
        OnDemandFeature(name="u", inputs=["a"])


# ------------------------------------------------------------------------------------------ fingerprints
def test_fingerprint_follows_code_inputs_and_the_values_used_not_metadata(user_module):
    def make(k):
        def scaled(df):
            return df.a * k
        return scaled

    base = OnDemandFeature(name="s", function=make(2), inputs=["a"])
    assert OnDemandFeature(name="s", function=make(2), inputs=["a"], owner="o", tags="t").same_definition(base)
    assert not OnDemandFeature(name="s", function=make(3), inputs=["a"]).same_definition(base)  # closure
    assert not OnDemandFeature(name="s", function=make(2), inputs=["a@2"]).same_definition(base)
    assert not OnDemandFeature(name="s", function=make(2), inputs=["a"], request=["x"]).same_definition(base)
    # A lambda's source is its whole statement: metadata on the same line does not make a new version.
    a = OnDemandFeature(name="l", function=lambda df: df.a + 1, inputs=["a"], description="one")
    b = OnDemandFeature(name="l", function=lambda df: df.a + 1, inputs=["a"], description="two")
    c = OnDemandFeature(name="l", function=lambda df: df.a + 2, inputs=["a"], description="one")
    assert a.same_definition(b) and not a.same_definition(c)
    # Module globals it reads, helpers included, are part of the definition.
    mod = user_module("""
        K = 1

        def helper(x):
            return x + K

        def f(df):
            return helper(df.a)
    """)
    first = OnDemandFeature(name="g", function=mod.f, inputs=["a"])
    assert OnDemandFeature(name="g", function=mod.f, inputs=["a"]).same_definition(first)
    mod.K = 2
    assert not OnDemandFeature(name="g", function=mod.f, inputs=["a"]).same_definition(first)


def test_fingerprint_is_the_same_in_every_process(tmp_path):
    """Registering the same function from another run is the same version (not boosted@2, @3, ... at every
    deploy), though sets pickle in an order string hashing changes per process and classes of a script
    pickle with an id drawn afresh in each."""
    import os
    import subprocess

    (tmp_path / "od_sets_mod.py").write_text(textwrap.dedent("""
        ALLOWED = {"alpha", "beta", "gamma", "delta", "eps", "zeta"}
        NESTED = {"k": frozenset({"x", "y", "z", "w"}), "t": ("a", {"b", "c", "d"})}
    """))
    (tmp_path / "register.py").write_text(textwrap.dedent("""
        import collections, dataclasses, enum, sys
        import od_sets_mod
        from rayfs.model.ondemand import OnDemandFeature

        class Level(enum.Enum):
            LOW = 1

        @dataclasses.dataclass
        class Config:
            k: int = 2

        class Scaler:
            def __init__(self):
                self.k = int(sys.argv[1])

        CONFIG, SCALER = Config(), Scaler()
        PAIR = collections.namedtuple("Pair", "a b")(1, 2)

        def f(df, extra=frozenset({"p", "q", "r", "s"})):
            hit = df.tag.isin(od_sets_mod.ALLOWED | od_sets_mod.NESTED["k"] | extra)
            return hit * CONFIG.k * SCALER.k * Level.LOW.value * PAIR.a

        print(OnDemandFeature(name="o", inputs=["tag"], function=f).digest)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}

    def digest(seed: int, k: int = 3) -> str:
        return subprocess.run([sys.executable, str(tmp_path / "register.py"), str(k)], check=True, text=True,
                              env={**env, "PYTHONHASHSEED": str(seed)}, capture_output=True).stdout.strip()

    assert len({digest(seed) for seed in range(3)}) == 1
    assert digest(0, k=4) != digest(0)  # an instance's state is part of the definition


def test_functions_without_source_are_fingerprinted_by_bytecode():
    ns: dict = {}
    exec("def f(df):\n    return df.a * 2\ndef g(df):\n    return df.a * 3\n", ns)  # no source file
    f = OnDemandFeature(name="x", function=ns["f"], inputs=["a"])
    assert f.source == "" and f.apply(pd.DataFrame({"a": [1]})).tolist() == [2]
    assert OnDemandFeature(name="x", function=ns["f"], inputs=["a"]).same_definition(f)
    assert not OnDemandFeature(name="x", function=ns["g"], inputs=["a"]).same_definition(f)


# ------------------------------------------------------------------------------------------ checks
@pytest.mark.parametrize("kwargs,match", [
    (dict(name="1x", inputs=["a"]), "name '1x'"),
    (dict(name="x"), "at least one input or request field"),
    (dict(name="x", inputs=["a"], request=["a"]), r"\['a'\] both inputs and request fields"),
    (dict(name="x", inputs=["x"]), "cannot read itself"),
    (dict(name="x", inputs=["a", "a"]), "repeated input"),
    (dict(name="x", inputs=["a@v2"]), "'a@v2' must be 'name' or 'name@version'"),
    (dict(name="x", inputs=["a"], request=["bad field"]), "request field name 'bad field'"),
    (dict(name="x", inputs=["a"], tags=[""]), "tags must be non-empty"),
    (dict(name="x", inputs=None, request=None), "at least one input or request field"),
    (dict(name="x", inputs=[1]), "input 1 must be a feature name"),
    (dict(name="x", inputs=3), "input 3 must be a feature name"),
])
def test_bad_definitions_are_definition_errors(kwargs, match):
    with pytest.raises(DefinitionError, match=match):
        OnDemandFeature(function=ratio, **kwargs)


def test_results_are_checked_and_errors_name_the_feature():
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})

    def f(fn):
        return OnDemandFeature(name="o", function=fn, inputs=["a"])

    with pytest.raises(OnDemandError, match="'o'.*raised KeyError") as info:
        f(lambda df: df["nope"]).apply(frame)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(OnDemandError, match=r"'o'.*returned \(2,\) values for 3 rows"):
        f(lambda df: df.a.iloc[:2]).apply(frame)
    with pytest.raises(OnDemandError, match="'o'.*a DataFrame of 1 column"):
        f(lambda df: df).apply(frame)
    with pytest.raises(OnDemandError, match=r"'o'.*\(3, 2\) values"):
        f(lambda df: np.zeros((3, 2))).apply(frame)
    assert f(lambda df: 7).apply(frame).tolist() == [7, 7, 7]  # one value for every row
    assert f(lambda df: None).apply(frame).tolist() == [None, None, None]
    assert f(lambda df: [[1], [1, 2], []]).apply(frame).tolist() == [[1], [1, 2], []]  # one list per row
    # A Series lands on its own rows, as pandas assigns one to a column: sorting it changes nothing.
    assert f(lambda df: df.a.sort_values(ascending=False)).apply(frame).tolist() == [1.0, 2.0, 3.0]
    assert f(lambda df: df.a.sample(frac=1.0, random_state=0) * 2).apply(frame).tolist() == [2.0, 4.0, 6.0]
    assert f(lambda df: pd.Series([5, 6, 7])).apply(frame).tolist() == [5, 6, 7]
    with pytest.raises(OnDemandError, match="'o'.*index is not the frame's rows"):
        f(lambda df: pd.Series([5, 6, 7], index=["x", "y", "z"])).apply(frame)
    with pytest.raises(OnDemandError, match="'o'.*index is not the frame's rows"):
        f(lambda df: pd.Series([5, 6, 7], index=[0, 0, 1])).apply(frame)
    # A generator or map(...) gives its values, one per row.
    assert f(lambda df: (2 * a for a in df.a)).apply(frame).tolist() == [2.0, 4.0, 6.0]
    assert f(lambda df: map(str, df.a)).apply(frame).tolist() == ["1.0", "2.0", "3.0"]
    # Arrays and lists have no labels: by position.
    assert f(lambda df: df.a.sort_values(ascending=False).to_numpy()).apply(frame).tolist() == [3.0, 2.0, 1.0]


def test_decorator_makes_a_feature():
    @on_demand("twice", request=["x"], owner="me")
    def twice(df):
        return df.x * 2

    assert isinstance(twice, OnDemandFeature) and twice.owner == "me" and twice.request == ("x",)


# ------------------------------------------------------------------------------------------ request fields, frames
def test_request_columns_broadcast_scalars_and_check_lengths():
    f = OnDemandFeature(name="d", request=("x", "y", "z"), function=lambda df: df.x)
    got = request_columns(f, {"x": np.float64(1.5), "y": np.array([1, 2]), "z": pd.Series(["a", "b"])}, 2)
    assert got == {"x": [1.5, 1.5], "y": [1, 2], "z": ["a", "b"]}
    assert all(type(v) in (float, int, str) for col in got.values() for v in col)  # Python values
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [3, 4], "z": ["p", "q"]})
    assert request_columns(f, frame, 2) == {"x": [1.0, 2.0], "y": [3, 4], "z": ["p", "q"]}
    with pytest.raises(OnDemandError, match=r"'d'.*missing request field 'z' \(given: \['x', 'y'\]\)"):
        request_columns(f, {"x": 1, "y": 2}, 2)
    with pytest.raises(OnDemandError, match="'d'.*missing request field 'x'"):
        request_columns(f, None, 2)
    with pytest.raises(OnDemandError, match="'d'.*'y' has 3 values for 2 rows"):
        request_columns(f, {"x": 1, "y": [1, 2, 3], "z": "a"}, 2)
    # Two columns of one name, or a column vector: refused, not read as column names or rows.
    twice = pd.DataFrame([[1.0, 3, 5, "p"], [2.0, 4, 6, "q"]], columns=["x", "y", "y", "z"])
    with pytest.raises(OnDemandError, match="'d'.*request field 'y' is a DataFrame"):
        request_columns(f, twice, 2)
    with pytest.raises(OnDemandError, match=r"'d'.*request field 'y' is an array of shape \(2, 1\)"):
        request_columns(f, {"x": 1, "y": np.ones((2, 1)), "z": "a"}, 2)
    assert request_columns(f, {"x": 1, "y": [[1], [2, 3]], "z": "a"}, 2)["y"] == [[1], [2, 3]]  # a list per row


def test_the_frame_is_the_same_from_request_values_and_observation_columns():
    f = OnDemandFeature(name="d", inputs=("n", "last"), request=("amount", "city", "when"),
                        function=lambda df: df.n)
    inputs = {"n": np.array([3, 0]), "last": np.array(["p1", None], dtype=object)}
    online = input_frame(f, inputs, request_columns(
        f, {"amount": [1.5, 2], "city": "oslo", "when": pd.Timestamp("2024-01-01")}, 2), 2)
    obs = pd.DataFrame({"amount": [1.5, 2.0], "city": ["oslo", "oslo"], "when": pd.to_datetime(["2024-01-01"] * 2)})
    offline = input_frame(f, inputs, request_columns(f, {c: obs[c].tolist() for c in f.request}, 2), 2)
    pd.testing.assert_frame_equal(online, offline)
    assert list(online.columns) == ["n", "last", "amount", "city", "when"]
    assert isinstance(online.index, pd.RangeIndex) and online["last"].dtype == object
    assert online["last"].tolist() == ["p1", None]  # None stays None in an object column
    inputs["n"][0] = 99
    assert online["n"][0] == 3  # the frame holds copies: a function may change it freely
    assert len(input_frame(f, {"n": np.array([], dtype=np.int64), "last": np.array([], dtype=object)},
                           request_columns(f, {"amount": [], "city": [], "when": []}, 0), 0)) == 0


# ------------------------------------------------------------------------------------------ the catalog
@pytest.fixture
def catalog(tmp_path):
    cat = Catalog(str(tmp_path), 2)
    cat.streams["ev"] = Stream(name="ev", entities=("user", "post"), timestamp="ts")
    for f in (Feature(name="n", stream="ev", entity="user", agg="count"),
              Feature(name="m", stream="ev", entity="user", agg="count", window="1d"),
              Feature(name="p", stream="ev", entity="post", agg="count")):
        cat.add_feature(f, "t0")
    return cat


def n_over_m(df):
    return df.n / df.m


def od(name="o", fn=n_over_m, inputs=("n", "m"), **kw) -> OnDemandFeature:
    return OnDemandFeature(name=name, function=fn, inputs=inputs, **kw)


def test_catalog_versions_on_demand_features_like_stored_ones(catalog, tmp_path):
    first, change = catalog.add_on_demand(od(), "t1")
    assert (first.key, change, first.created) == ("o", "new", "t1")
    assert catalog.add_on_demand(od(), "t2")[1] == "same"
    meta, change = catalog.add_on_demand(od(owner="ann"), "t2")
    assert (meta.key, change, meta.owner, meta.created) == ("o", "metadata", "ann", "t1")
    second, change = catalog.add_on_demand(od(fn=lambda df: df.n, owner="ann"), "t3")
    assert (second.key, change) == ("o@2", "new")
    assert catalog.on_demand_feature("o") is second and catalog.on_demand_feature("o@1") is meta
    assert catalog.on_demand_entity(second) == "user" and catalog.is_on_demand("o@7")
    with pytest.raises(UnknownFeatureError, match="'o@7'"):
        catalog.on_demand_feature("o@7")
    # Persisted with the catalog; an older catalog without on-demand entries still loads.
    catalog.save()
    back = Catalog.load(str(tmp_path))
    assert back.on_demand == catalog.on_demand and back.next_version["o"] == 3
    assert back.on_demand_feature("o@1").apply(pd.DataFrame({"n": [2.0], "m": [1.0]})).tolist() == [2.0]
    d = catalog.to_dict()
    del d["on_demand"]
    assert Catalog.from_dict(str(tmp_path), d).on_demand == {}
    # Dropped version numbers are not reused.
    assert catalog.drop_on_demand("o").key == "o@2"
    assert catalog.add_on_demand(od(fn=lambda df: df.m), "t4")[0].key == "o@3"


def test_catalog_refuses_bad_inputs_shared_names_and_drops_of_inputs(catalog):
    with pytest.raises(OnDemandError, match="'o'.*unknown input feature 'zz'"):
        catalog.add_on_demand(od(inputs=["n", "zz"]), "t")
    with pytest.raises(OnDemandError, match="'o'.*unknown input feature 'n@4'"):
        catalog.add_on_demand(od(inputs=["n@4"]), "t")
    with pytest.raises(OnDemandError, match="'o'.*input 'p' groups by 'post'"):
        catalog.add_on_demand(od(inputs=["n", "p"]), "t")
    with pytest.raises(DefinitionError, match="'n'.*stored feature has that name"):
        catalog.add_on_demand(od(name="n", inputs=["m"]), "t")
    # Reads put the entity and observation columns beside the features: a feature of their name would
    # overwrite the keys (get_features) or the observations' entity and timestamp (training_set).
    for name, what in (("user", "an entity field"), ("post", "an entity field"), ("ts", "the timestamp column")):
        with pytest.raises(DefinitionError, match=f"'{name}': the name is {what} of stream 'ev'"):
            catalog.add_on_demand(od(name=name, inputs=["m"]), "t")
    assert catalog.on_demand == {} and "o" not in catalog.next_version  # nothing half-registered
    catalog.add_on_demand(od(inputs=["n", "m@1"]), "t")
    with pytest.raises(OnDemandError, match="'o2'.*'o' is an on-demand feature"):
        catalog.add_on_demand(od(name="o2", inputs=["o"]), "t")
    with pytest.raises(DefinitionError, match="'o'.*an on-demand feature has that name"):
        catalog.add_feature(Feature(name="o", stream="ev", entity="user", agg="count"), "t")
    for ref in ("n", "m"):
        with pytest.raises(DefinitionError, match=f"'{ref}' is an input of on-demand feature 'o'"):
            catalog.drop_feature(ref)
    # A bare input follows the latest version: an older one may go, the last one may not.
    catalog.add_feature(Feature(name="n", stream="ev", entity="user", agg="count", window="7d"), "t")
    assert catalog.drop_feature("n").key == "n@2"
    catalog.drop_on_demand("o")
    assert catalog.drop_feature("n").key == "n"
    request_only = od(name="r", fn=lambda df: df.x, inputs=(), request=("x",))
    assert catalog.on_demand_entity(catalog.add_on_demand(request_only, "t")[0]) is None
