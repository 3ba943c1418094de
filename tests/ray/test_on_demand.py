"""On-demand features through a store: online and training-set values equal each other and a plain pandas
oracle on randomized data (the function sees the same frame, dtypes included, in both paths); definitions
persist across a stop and reopen, travel to a driver in another process that connects by name, version like
stored features, list with their kind and drop; bad definitions and bad requests are OnDemandErrors naming
the feature and leave nothing registered.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import threading
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray

import rayfs
from rayfs.cli import main
from rayfs.errors import DefinitionError, OnDemandError, SchemaError
from rayfs.testing import assert_features_equal, oracle_online

T0 = 1_704_067_200  # 2024-01-01 UTC, epoch seconds
DAY = 86_400
EV = rayfs.Stream(name="ev", entities=("user", "post"), timestamp="ts")
STORED = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="n_1d", stream="ev", entity="user", agg="count", window="1d"),
    rayfs.Feature(name="mean_x", stream="ev", entity="user", agg="mean", column="x"),
    rayfs.Feature(name="last_post", stream="ev", entity="user", agg="last", column="post"),
    rayfs.Feature(name="post_n", stream="ev", entity="post", agg="count"),
]
USERS = [f"u{i}" for i in range(30)]


def events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": pd.Series([USERS[i] for i in rng.integers(0, len(USERS), n)], dtype=object),
                         "post": pd.Series([f"p{i}" for i in rng.integers(0, 50, n)], dtype=object),
                         "x": rng.normal(size=n).round(3),
                         "ts": T0 + rng.integers(0, 3 * DAY, n)})


# The on-demand functions under test (module level: pickled by value, so another process needs no import).
def ratio(df: pd.DataFrame) -> pd.Series:
    return df.n_1d / df.n.where(df.n > 0)


def score(df: pd.DataFrame) -> np.ndarray:
    return np.where(df.mean_x.isna(), -1.0, df.mean_x * df.amount)


def label(df: pd.DataFrame) -> list:
    return [None if p is None else f"{p}/{c}" for p, c in zip(df.last_post, df.city, strict=True)]


def shape(df: pd.DataFrame) -> str:
    """The frame's columns and dtypes, the same for every row: shows what the function was given."""
    return "|".join(f"{c}:{t}" for c, t in df.dtypes.items()) + f"|{type(df.index).__name__}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    name = "od" + uuid.uuid4().hex[:8]
    path = tmp_path_factory.mktemp("store")
    s = rayfs.FeatureStore.open(path, shards=2, name=name, durability="none")
    s.register_stream("ev", entities=["user", "post"], timestamp="ts")
    for f in STORED:
        s.register_feature(f)
    df = events(0, 3000)
    s.ingest("ev", df)
    s.register_on_demand("ratio", ratio, inputs=["n_1d", "n"], description="share of the last day")
    s.register_on_demand("score", score, inputs=["mean_x"], request=["amount"])
    s.register_on_demand("label", label, inputs=["last_post"], request=["city"])
    s.register_on_demand("shape", shape, inputs=["n", "mean_x", "last_post"], request=["amount", "city"])
    s.register_on_demand(rayfs.OnDemandFeature(name="double", request=["amount"], function=lambda d: d.amount * 2))
    try:
        yield s, df, path
    finally:
        s.stop()


def pandas_oracle(stored: pd.DataFrame, request: pd.DataFrame) -> dict[str, list]:
    """The on-demand values computed row by row from the oracle's stored values, independently of rayfs."""
    out: dict[str, list] = {"ratio": [], "score": [], "label": [], "double": []}
    for (_, s), (_, r) in zip(stored.iterrows(), request.iterrows(), strict=True):
        out["ratio"].append(s.n_1d / s.n if s.n > 0 else float("nan"))
        out["score"].append(-1.0 if pd.isna(s.mean_x) else s.mean_x * r.amount)
        out["label"].append(None if s.last_post is None else f"{s.last_post}/{r.city}")
        out["double"].append(r.amount * 2)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_online_training_set_and_pandas_oracle_agree(store, seed):
    s, df, _ = store
    rng = np.random.default_rng(seed)
    keys = [USERS[i] for i in rng.integers(0, len(USERS), 40)] + ["nobody", USERS[0], USERS[0]]
    amount = rng.uniform(0, 100, len(keys)).round(2).tolist()
    city = [["paris", "oslo", "lima"][i] for i in rng.integers(0, 3, len(keys))]
    names = ["n", "ratio", "score", "label", "shape", "double", "mean_x"]

    online = s.get_features("user", keys, names, request={"amount": amount, "city": city})
    now = pd.Timestamp(int(df.ts.max()), unit="s") + pd.Timedelta(1, "us")  # online = point in time just after
    obs = pd.DataFrame({"user": pd.Series(keys, dtype=object), "ts": [now] * len(keys), "amount": amount,
                        "city": city})
    offline = s.training_set(obs, names, timestamp="ts")

    assert list(online.columns) == ["user", *names]
    assert list(offline.columns) == ["user", "ts", "amount", "city", *names]
    for c in names:  # identical online and offline: same values, same dtypes
        assert online[c].dtype == offline[c].dtype, c
        assert_features_equal(online, offline, [c], rtol=0, context=f"seed {seed}, online vs training set")
    # The function saw the same frame in both paths.
    assert online["shape"].nunique() == 1 and online["shape"].tolist() == offline["shape"].tolist()
    assert online["shape"][0].startswith("n:int64|mean_x:float64|last_post:object|amount:float64|city:")

    want = oracle_online({"ev": df}, {"ev": EV}, STORED[:4], "user", keys)
    expected = pd.DataFrame(pandas_oracle(want, obs))
    assert_features_equal(online, expected, ["ratio", "score", "label", "double"], rtol=1e-12,
                          context=f"seed {seed}, against the pandas oracle")

    # One value for every key, or a DataFrame of one row per key, read the same.
    scalar = s.get_features("user", keys, ["score", "label"], request={"amount": 2.5, "city": "oslo"})
    frame = s.get_features("user", keys, ["score", "label"],
                           request=pd.DataFrame({"amount": [2.5] * len(keys), "city": ["oslo"] * len(keys)}))
    assert_features_equal(scalar, frame, ["score", "label"], rtol=0)
    # Inputs not asked for are not returned, and do not replace an observation column of their name.
    obs2 = obs.assign(n="kept")
    got = s.training_set(obs2, ["ratio"], timestamp="ts")
    assert list(got.columns) == [*obs2.columns, "ratio"] and (got["n"] == "kept").all()
    # A requested feature (stored or on-demand) of an observation column's name is refused, not written over it.
    for names in (["ratio"], ["n", "ratio"]):
        with pytest.raises(rayfs.SchemaError, match=f"column '{names[0]}' and feature '{names[0]}' is requested"):
            s.training_set(obs2.assign(ratio=0.5), names, timestamp="ts")


def test_every_feature_default_arrow_output_and_request_only_features(store):
    s, df, _ = store
    got = s.get_features("user", ["u1", "u2"], request={"amount": [1.0, 2.0]})
    # features=None: stored features of the entity, then the on-demand ones whose request fields are given
    assert list(got.columns) == ["user", "n", "n_1d", "mean_x", "last_post", "ratio", "score", "double"]
    assert got["double"].tolist() == [2.0, 4.0]
    # A generator of request values is read once, for every feature that reads the field.
    again = s.get_features("user", ["u1", "u2"], ["score", "double"], request={"amount": (a for a in [1.0, 2.0])})
    pd.testing.assert_frame_equal(again, got[["user", "score", "double"]])
    obs = pd.DataFrame({"post": ["p1", "p2"], "ts": [pd.Timestamp(T0 + DAY, unit="s")] * 2, "amount": [3, 4]})
    ts = s.training_set(obs, timestamp="ts", output="arrow")
    assert ts.column_names == ["post", "ts", "amount", "post_n", "double"]
    with pytest.raises(rayfs.SchemaError, match="column 'double' and features=None"):
        s.training_set(obs.assign(double=0), timestamp="ts")
    assert ts.column("double").to_pylist() == [6, 8]
    # An observation stream's columns are request fields alike.
    stream = "obs" + uuid.uuid4().hex[:6]
    s.append_observation(stream, obs)
    got = s.training_set(stream, ["post_n", "double"], timestamp="ts")
    assert got["double"].tolist() == [6, 8] and got["post_n"].tolist() == ts.column("post_n").to_pylist()


def test_versions_persist_reopen_connect_from_another_process_list_and_drop(tmp_path, capsys):
    name = "od" + uuid.uuid4().hex[:8]
    path = tmp_path / "s"
    s = rayfs.FeatureStore.open(path, shards=2, name=name, durability="none")
    try:
        s.register_stream("ev", entities=["user", "post"], timestamp="ts")
        for f in STORED[:2]:
            s.register_feature(f)
        s.ingest("ev", events(5, 500))
        scale = 10.0

        def scaled(df):  # closes over ``scale``: its value is part of the definition
            return df.n * scale

        f1 = s.register_on_demand("scaled", scaled, inputs=["n"], owner="ann")
        assert (f1.version, f1.key) == (1, "scaled")
        assert s.register_on_demand("scaled", scaled, inputs=["n"], owner="ann").version == 1  # no-op
        assert s.register_on_demand("scaled", scaled, inputs=["n"], owner="bob").version == 1  # metadata
        other = rayfs.connect(name)  # another driver: its catalog is taken now
        n = other.get_features("user", USERS[:5], "n")["n"]
        assert other.get_features("user", USERS[:5], "scaled")["scaled"].tolist() == (n * 10).tolist()
        scale = 100.0
        f2 = s.register_on_demand("scaled", scaled, inputs=["n"], owner="bob")
        assert f2.key == "scaled@2"
        s.register_on_demand("plus", lambda df: df.n_1d + 1, inputs=["n_1d"])
        # The other driver's stale catalog: the shards' answers tell it to refresh, and a name it does not
        # know is looked up again.
        assert other.get_features("user", USERS[:5], "scaled")["scaled"].tolist() == (n * 100).tolist()
        got = other.get_features("user", USERS[:5], ["scaled", "plus"])
        assert got["scaled"].tolist() == (n * 100).tolist() and (got["plus"] >= 1).all()
        other.close()
        s.drop_feature("plus")
        with pytest.raises(DefinitionError, match="'n'.*on-demand feature 'scaled") as info:
            s.drop_feature("n")  # an input of an on-demand feature
        assert type(info.value) is DefinitionError  # the coordinator's refusal, not Ray's error around it
        with pytest.raises(DefinitionError, match="'scaled'.*shared"):
            s.register_feature(rayfs.Feature(name="scaled", stream="ev", entity="user", agg="count"))
        with pytest.raises(DefinitionError, match="'n'.*stored feature"):
            s.register_on_demand("n", scaled, inputs=["n_1d"])

        lf = s.list_features()
        od = lf[lf.kind == "on_demand"]
        assert od["key"].tolist() == ["scaled", "scaled@2"] and od["latest"].tolist() == [False, True]
        assert od["owner"].tolist() == ["bob", "bob"] and od["inputs"].tolist() == [["n"], ["n"]]
        assert set(lf[lf.kind == "stored"]["key"]) == {"n", "n_1d"}
        d = s.describe("scaled@1")
        assert d["kind"] == "on_demand" and "df.n * scale" in d["source"] and len(d["versions"]) == 2
        assert main(["features", "list", "--name", name]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[:4] == ["name", "version", "key", "kind"]
        assert [ln.split()[2:4] for ln in table[1:]] == [["n", "stored"], ["n_1d", "stored"],
                                                         ["scaled", "on_demand"], ["scaled@2", "on_demand"]]
        assert main(["features", "describe", "scaled", "--name", name]) == 0
        assert json.loads(capsys.readouterr().out)["inputs"] == ["n"]

        want = s.get_features("user", USERS[:5], ["n", "scaled", "scaled@1"])
        assert (want["scaled"] == want["n"] * 100).all() and (want["scaled@1"] == want["n"] * 10).all()

        # Another process connects by name and applies both versions without importing this module.
        got = run_driver(tmp_path, name, ["n", "scaled", "scaled@1"])
        pd.testing.assert_frame_equal(got, want)

        # Stopped and reopened from its folder: the definitions are back.
        s.stop()
        s = rayfs.FeatureStore.open(path, name=name, durability="none")
        got = s.get_features("user", USERS[:5], ["n", "scaled", "scaled@1"])
        pd.testing.assert_frame_equal(got, want)
        assert s.drop_feature("scaled").key == "scaled@2"
        assert s.get_features("user", USERS[:5], "scaled")["scaled"].tolist() == want["scaled@1"].tolist()
        assert s.drop_feature("scaled").key == "scaled"
        assert "scaled" not in set(s.list_features()["name"])
        s.drop_feature("n")  # no on-demand feature reads it any more
        assert s.register_on_demand("scaled", scaled, inputs=["n_1d"]).key == "scaled@3"  # numbers not reused
    finally:
        s.stop()


SECOND_DRIVER = textwrap.dedent("""
    import pickle, sys
    import ray
    import rayfs

    gcs, name, out, refs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    ray.init(address=gcs, namespace="rayfs", logging_level="ERROR", log_to_driver=False)
    store = rayfs.connect(name)
    frame = store.get_features("user", [f"u{i}" for i in range(5)], refs)
    store.close()
    with open(out, "wb") as fh:
        pickle.dump(frame, fh)
""")


def run_driver(tmp_path, name: str, refs: list[str]) -> pd.DataFrame:
    script, out = tmp_path / "driver.py", tmp_path / f"out-{uuid.uuid4().hex}.pkl"
    script.write_text(SECOND_DRIVER)
    gcs = ray.get_runtime_context().gcs_address
    # cwd and the environment hold nothing of this test module: the function must travel in the catalog
    proc = subprocess.run([sys.executable, str(script), gcs, name, str(out), ",".join(refs)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return pickle.loads(out.read_bytes())


def test_bad_definitions_and_requests_name_the_feature_and_register_nothing(store):
    s, _, _ = store
    before = s.list_features()

    lock = threading.Lock()
    bad = [
        (dict(name="o1", function=lambda d: d.n, inputs=["nope"]), "'o1'.*unknown input feature 'nope'"),
        (dict(name="o2", function=lambda d: d.n, inputs=["n", "post_n"]), "'o2'.*'post_n' groups by 'post'"),
        (dict(name="o3", function=lambda d: d.n, inputs=["ratio"]), "'o3'.*'ratio' is an on-demand"),
        (dict(name="o4", function=lambda d: lock.locked(), inputs=["n"]), "'o4'.*cannot be serialised"),
        (dict(name="o5", function="not a function", inputs=["n"]), "'o5'.*callable"),
    ]
    for kwargs, match in bad:
        with pytest.raises(OnDemandError, match=match) as info:
            s.register_on_demand(kwargs.pop("name"), kwargs.pop("function"), **kwargs)
        assert type(info.value) is OnDemandError  # the coordinator's refusal, not Ray's error around it
    # Reads return the entity and observation columns beside the features: these names would overwrite them.
    for name in ("user", "post", "ts"):
        with pytest.raises(DefinitionError, match=f"'{name}': the name is .* of stream 'ev'") as info:
            s.register_on_demand(name, lambda d: d.n * 100, inputs=["n"])
        assert type(info.value) is DefinitionError
    pd.testing.assert_frame_equal(s.list_features(), before)

    # A Series sorted by the function lands on its own rows, online and in a training set.
    s.register_on_demand("n_sorted", lambda d: d.n.sort_values() * 10, inputs=["n"])
    got = s.get_features("user", ["u1", "u2", "u3", "nobody"], ["n", "n_sorted"])
    assert got.n_sorted.tolist() == (got.n * 10).tolist()
    got = s.training_set(pd.DataFrame({"user": ["u3", "u1", "nobody", "u2"], "ts": [T0 + DAY] * 4}),
                         ["n", "n_sorted"], timestamp="ts")
    assert got.n_sorted.tolist() == (got.n * 10).tolist()
    s.drop_feature("n_sorted")

    s.register_on_demand("boom", lambda d: 1 / 0, inputs=["n"])
    s.register_on_demand("short", lambda d: d.n.iloc[:1], inputs=["n"])
    try:
        with pytest.raises(OnDemandError, match="'boom'.*raised ZeroDivisionError"):
            s.get_features("user", ["u1", "u2"], ["boom"])
        with pytest.raises(OnDemandError, match=r"'short'.*\(1,\) values for 2 rows"):
            s.get_features("user", ["u1", "u2"], ["short"])
        with pytest.raises(OnDemandError, match=r"'short'.*\(1,\) values for 3 rows"):
            s.training_set(pd.DataFrame({"user": ["u1", "u2", "u3"], "ts": [T0] * 3}), ["short"], timestamp="ts")
        with pytest.raises(OnDemandError, match="'score'.*missing request field 'amount'"):
            s.get_features("user", ["u1"], ["score"])
        with pytest.raises(OnDemandError, match="'score'.*missing request field 'amount'"):
            s.training_set(pd.DataFrame({"user": ["u1"], "ts": [T0]}), ["score"], timestamp="ts")
        for keys in ("u1", b"u1", None, 7):  # a string would be one key per character
            for features in (["n"], ["ratio"]):
                with pytest.raises(SchemaError, match="keys of entity 'user': a sequence of keys"):
                    s.get_features("user", keys, features)
        repeated = pd.DataFrame([["u1", T0, 1.0, 2.0]], columns=["user", "ts", "amount", "amount"])
        with pytest.raises(SchemaError, match=r"more than one column named \['amount'\]"):
            s.training_set(repeated, ["score"], timestamp="ts")
        arrow = pa.Table.from_arrays([pa.array(["u1"]), pa.array([T0]), pa.array([1.0]), pa.array([2.0])],
                                     names=["user", "ts", "amount", "amount"])
        with pytest.raises(SchemaError, match=r"more than one column named \['amount'\]"):
            s.training_set(arrow, ["score"], timestamp="ts")
        with pytest.raises(SchemaError, match=r"more than one column named \['user'\]"):
            s.training_set(repeated.set_axis(["user", "ts", "user", "x"], axis=1), ["n"], timestamp="ts")
        with pytest.raises(OnDemandError, match="'score'.*'amount' has 3 values for 2 rows"):
            s.get_features("user", ["u1", "u2"], ["score"], request={"amount": [1, 2, 3]})
        with pytest.raises(OnDemandError, match="'ratio'.*input 'n_1d' groups by 'user', not 'post'"):
            s.get_features("post", ["p1"], ["ratio"])
    finally:
        s.drop_feature("boom")
        s.drop_feature("short")


def test_a_config_declares_on_demand_features_by_import_path(tmp_path, capsys):
    # ``rayfs apply`` (the CLI) and FeatureStore.apply register [[on_demand]] tables alike; the function is
    # imported where the config is applied and kept by value, so training sets (computed beside the shards)
    # apply the same function.
    path = tmp_path / "s"
    config = tmp_path / "store.toml"
    config.write_text(textwrap.dedent(f"""\
        [store]
        path = "{path}"
        shards = 2

        [[streams]]
        name = "ev"
        entities = ["user", "post"]
        timestamp = "ts"

        [[features]]
        name = "n"
        stream = "ev"
        entity = "user"
        agg = "count"

        [[features]]
        name = "n_1d"
        stream = "ev"
        entity = "user"
        agg = "count"
        window = "1d"

        [[on_demand]]
        name = "ratio"
        function = "{__name__}:ratio"
        inputs = ["n_1d", "n"]
        owner = "ann"
        """))
    assert main(["apply", str(config)]) == 0
    capsys.readouterr()
    ev = events(9, 600)
    with rayfs.FeatureStore.open(path) as s:
        assert s.describe("ratio")["owner"] == "ann"
        s.ingest("ev", ev)
        got = s.get_features("user", USERS, ["n", "n_1d", "ratio"])
        np.testing.assert_allclose(got["ratio"].to_numpy(dtype=float), ratio(got).to_numpy(dtype=float))
        obs = pd.DataFrame({"user": USERS, "ts": T0 + 2 * DAY})
        ts = s.training_set(obs, ["n", "n_1d", "ratio"])
        np.testing.assert_allclose(ts["ratio"].to_numpy(dtype=float), ratio(ts).to_numpy(dtype=float))
        assert s.apply(str(config))["on_demand"][0].version == 1  # applying again changes nothing
