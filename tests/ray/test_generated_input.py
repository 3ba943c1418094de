"""Generated input: every batch, observation set or definition is either applied exactly (online values and
training sets equal the brute-force oracle of rayfs.testing) or refused with a RayfsError with nothing
applied (log offsets, online values and observation streams unchanged).

Strategies cover column dtypes (numpy int/uint/float/bool/datetime64, pandas Int64/Float64/string/boolean,
Arrow-backed ``pd.ArrowDtype``, object mixes), values (NaN, +-inf, extremes, lone surrogates, empty
strings, None), timestamps (every accepted form and out-of-range ones) and keys (str, int, uint64, mixed).
Each generator also says whether its column is valid, so a valid batch must be accepted and an invalid one
refused. One store per test function, a fresh stream per example. A rule-based state machine then mixes
ingests, observation appends, feature registrations and drops, and close/reopen, valid and invalid,
checking the whole store against the oracle after every step.
"""

from __future__ import annotations

import datetime as dt
import itertools
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import rayfs
from rayfs.model.definitions import Stream
from rayfs.testing import assert_features_equal, oracle_online, oracle_training_set

BASE_S = 1_700_000_000
NAMES = itertools.count()
SETTINGS = dict(deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate, Phase.shrink),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------- generators
def draw_times(data, n: int) -> tuple[pd.Series, bool, np.ndarray | None]:
    """A timestamp column of ``n`` rows: ``(column, valid, true µs or None)``."""
    us = np.array(data.draw(st.lists(st.integers(0, 2_000), min_size=n, max_size=n)), dtype=np.int64)
    us = (BASE_S + us // 2) * 1_000_000 + (us % 2) * 500_000  # whole and half seconds: exact as floats
    secs = us / 1e6
    whole = bool((us % 1_000_000 == 0).all())
    dt64 = us.astype("datetime64[us]")
    tz = data.draw(st.sampled_from(["UTC", "Asia/Tokyo", "America/New_York"]))
    unit = data.draw(st.sampled_from(["ms", "us", "ns"]))
    forms = {
        "float": lambda: pd.Series(secs),
        "Float64": lambda: pd.Series(secs, dtype="Float64"),
        "object_numbers": lambda: pd.Series(list(secs), dtype=object),
        "datetime64[ns]": lambda: pd.Series(dt64.astype("datetime64[ns]")),
        "datetime64[us]": lambda: pd.Series(dt64),
        "pandas_aware": lambda: pd.Series(dt64).dt.tz_localize("UTC").dt.tz_convert(tz),
        "arrow_aware": lambda: pd.Series(pd.Series(dt64).dt.tz_localize("UTC").dt.tz_convert(tz),
                                         dtype=pd.ArrowDtype(pa.timestamp(unit, tz=tz))),
        "arrow_naive": lambda: pd.Series(dt64, dtype=pd.ArrowDtype(pa.timestamp(unit))),
        "object_datetimes": lambda: pd.Series([pd.Timestamp(v).to_pydatetime() for v in dt64], dtype=object),
        "object_np_datetimes": lambda: pd.Series(list(dt64), dtype=object),
    }
    if whole:
        forms["int"] = lambda: pd.Series((us // 1_000_000).astype(np.int64))
        forms["Int64"] = lambda: pd.Series(us // 1_000_000, dtype="Int64")
        forms["uint64"] = lambda: pd.Series((us // 1_000_000).astype(np.uint64))
        forms["datetime64[s]"] = lambda: pd.Series(dt64.astype("datetime64[s]"))
        forms["arrow_int"] = lambda: pd.Series(us // 1_000_000, dtype=pd.ArrowDtype(pa.int64()))
    bad = {
        "nanosecond_ints": lambda: pd.Series(us * 1000),
        "huge_float": lambda: pd.Series(np.where(np.arange(n) == n - 1, 1e300, secs)),
        "inf": lambda: pd.Series(np.where(np.arange(n) == n - 1, np.inf, secs)),
        "nan": lambda: pd.Series(np.where(np.arange(n) == n - 1, np.nan, secs)),
        "none": lambda: pd.Series([*list(dt64[:-1]), None], dtype=object),
        "bool": lambda: pd.Series([True] * n),
        "bool_objects": lambda: pd.Series([*[pd.Timestamp(v) for v in dt64[:-1]], True], dtype=object),
        "mixed": lambda: pd.Series([*[pd.Timestamp(v) for v in dt64[:-1]], float(secs[-1])], dtype=object),
        "strings": lambda: pd.Series([str(pd.Timestamp(v)) for v in dt64], dtype=object),
        "year_3000": lambda: pd.Series(np.where(np.arange(n) == n - 1, np.datetime64("3000-01-01", "s"),
                                                dt64.astype("datetime64[s]"))),
        "year_1000_objects": lambda: pd.Series([*[pd.Timestamp(v) for v in dt64[:-1]], dt.datetime(1000, 1, 1)],
                                               dtype=object),
        "negative_huge": lambda: pd.Series(np.where(np.arange(n) == n - 1, -(2**62), us // 1_000_000)),
    }
    name = data.draw(st.sampled_from(sorted(forms) + sorted(bad)))
    if name in forms:
        return forms[name](), True, us
    return bad[name](), False, None


def draw_keys(data, n: int) -> tuple[pd.Series, bool, list]:
    """An entity column: ``(column, valid, the keys as Python values with None for null)``."""
    pool = data.draw(st.sampled_from(["str", "int", "uint64", "mixed", "Int64", "float", "arrow_str", "string"]))
    picks = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    nulls = data.draw(st.lists(st.booleans(), min_size=n, max_size=n)) if pool in (
        "str", "mixed", "Int64", "float", "arrow_str", "string") else [False] * n
    ints = [0, -1, 2**63 - 1, -(2**63)]
    strs = ["a", "", "é", "b b"]
    if pool == "str":
        keys = [None if z else strs[p] for p, z in zip(picks, nulls, strict=True)]
        col = pd.Series(keys, dtype=object)
    elif pool in ("arrow_str", "string"):
        keys = [None if z else strs[p] for p, z in zip(picks, nulls, strict=True)]
        col = pd.Series(keys, dtype=pd.ArrowDtype(pa.string()) if pool == "arrow_str" else "string")
    elif pool == "int":
        keys = [ints[p] for p in picks]
        col = pd.Series(np.array(keys, dtype=np.int64))
    elif pool == "uint64":
        keys = [[0, 7, 2**63 - 1, 2**63][p] for p in picks]
        col = pd.Series(np.array(keys, dtype=np.uint64))
        return col, max(keys) < 2**63, keys
    elif pool == "Int64":
        keys = [None if z else ints[p] for p, z in zip(picks, nulls, strict=True)]
        col = pd.Series(keys, dtype="Int64")
    elif pool == "float":
        keys = [None if z else [0, 3, -5, 2**40][p] for p, z in zip(picks, nulls, strict=True)]
        col = pd.Series([np.nan if k is None else float(k) for k in keys])
    else:
        keys = [None if z else ["a", 1, "1", -3][p] for p, z in zip(picks, nulls, strict=True)]
        col = pd.Series(keys, dtype=object)
    bad = data.draw(st.sampled_from([None, None, None, "surrogate", "bool", "fraction", "too_big", "bytes"]))
    if bad is None:
        return col, True, keys
    obj = col.astype(object).where(col.notna(), None).tolist()
    obj[-1] = {"surrogate": "\ud800", "bool": True, "fraction": 1.5, "too_big": 2**64, "bytes": b"k"}[bad]
    return pd.Series(obj, dtype=object), False, keys


def draw_values(data, n: int) -> tuple[pd.Series, bool | None]:
    """A value column: ``(column, valid)``; valid is None where either outcome is acceptable."""
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, np.nan, np.inf, -np.inf]))
    kind = data.draw(st.sampled_from(["float64", "int64", "uint64", "bool", "Int64", "Float64", "boolean",
                                      "string", "object_str", "arrow_float", "arrow_int", "arrow_str",
                                      "object_mixed", "object_num", "none", "surrogate"]))
    if kind in ("float64", "Float64", "arrow_float"):
        vals = data.draw(st.lists(floats, min_size=n, max_size=n))
        dtype = {"float64": np.float64, "Float64": "Float64", "arrow_float": pd.ArrowDtype(pa.float64())}[kind]
        return pd.Series(vals, dtype=dtype), True
    if kind in ("int64", "Int64", "arrow_int"):
        vals = data.draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n))
        dtype = {"int64": np.int64, "Int64": "Int64", "arrow_int": pd.ArrowDtype(pa.int64())}[kind]
        return pd.Series(vals, dtype=dtype), True
    if kind == "uint64":
        vals = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
        return pd.Series(np.array(vals, dtype=np.uint64)), True
    if kind in ("bool", "boolean"):
        vals = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
        return pd.Series(vals, dtype=bool if kind == "bool" else "boolean"), True
    texts = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=4), st.none())
    if kind in ("string", "object_str", "arrow_str"):
        vals = data.draw(st.lists(texts, min_size=n, max_size=n))
        dtype = {"string": "string", "object_str": object, "arrow_str": pd.ArrowDtype(pa.string())}[kind]
        return pd.Series(vals, dtype=dtype), True
    if kind == "object_num":
        vals = data.draw(st.lists(st.one_of(st.integers(-(2**53), 2**53), floats, st.none()), min_size=n,
                                  max_size=n))
        return pd.Series(vals, dtype=object), True
    if kind == "none":
        return pd.Series([None] * n, dtype=object), True
    if kind == "surrogate":
        return pd.Series(["x"] * (n - 1) + ["\udc80"], dtype=object), False
    vals = data.draw(st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=2), st.booleans(), st.none(),
                                        st.just(b"b"), st.just(dt.date(2024, 1, 1))), min_size=n, max_size=n))
    return pd.Series(vals, dtype=object), None


# ------------------------------------------------------------------------------------------- helpers
def features_of(name: str) -> list[rayfs.Feature]:
    return [rayfs.Feature(name=f"{name}_n", stream=name, entity="k", agg="count"),
            rayfs.Feature(name=f"{name}_c", stream=name, entity="k", agg="count", column="v"),
            rayfs.Feature(name=f"{name}_l", stream=name, entity="k", agg="last", column="v"),
            rayfs.Feature(name=f"{name}_x", stream=name, entity="k", agg="max", column="v")]


def offsets(st_) -> list:
    return [(i["next_offset"], i["log_bytes"]) for i in st_.info()]


def lookup_keys(keys: list) -> list:
    """Distinct non-null keys, whole floats as ints (how rayfs normalises them), plus two never seen."""
    out = []
    for k in keys:
        if k is None:
            continue
        k = int(k) if isinstance(k, float) else k
        if isinstance(k, int) and not -(2**63) <= k < 2**63:
            continue  # refused as a key: nothing to look up
        if not any(type(k) is type(o) and k == o for o in out):
            out.append(k)
    return out + ["never", 123456]


def oracle_frame(keys: list, us: np.ndarray, values: pd.Series) -> pd.DataFrame:
    """The events as the oracle reads them: keys as Python values, exact times, values as objects."""
    vals = values.astype(object).where(values.notna(), None)
    return pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": us.astype("datetime64[us]"),
                         "v": pd.Series([float(v) if isinstance(v, (bool, np.bool_)) else v for v in vals],
                                        dtype=object)})


@pytest.fixture
def store(ray_session, tmp_path):
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2) as st_:
        yield st_


# ------------------------------------------------------------------------------------------- ingest
@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_generated_batches_apply_exactly_or_not_at_all(store, data):
    n = data.draw(st.integers(1, 6))
    ts, ts_ok, us = draw_times(data, n)
    k, k_ok, keys = draw_keys(data, n)
    v, v_ok = draw_values(data, n)
    name = f"g{next(NAMES)}"
    store.register_stream(name, entities=["k"], timestamp="ts")
    feats = features_of(name)
    for f in feats:
        store.register_feature(f)
    batch = pd.DataFrame({"k": k, "ts": ts, "v": v})
    names = [f.name for f in feats]
    before = offsets(store)
    probe = lookup_keys(keys)
    try:
        store.ingest(name, batch)
    except rayfs.RayfsError as exc:
        event(f"refused: {type(exc).__name__}")
        assert not (ts_ok and k_ok and v_ok), f"valid batch refused: {exc}"
        assert offsets(store) == before
        online = store.get_features("k", probe, features=names)
        assert online[f"{name}_n"].tolist() == [0] * len(probe)
        return
    event("applied")
    assert ts_ok and k_ok and v_ok is not False, f"invalid batch accepted: ts {ts_ok}, keys {k_ok}, values {v_ok}"
    streams = {name: Stream(name=name, entities=("k",), timestamp="ts")}
    events = {name: oracle_frame(keys, us, v)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = oracle_online(events, streams, feats, "k", probe)
    got = store.get_features("k", probe, features=names)
    assert_features_equal(got, want, names, context=f"{name}: {batch.dtypes.to_dict()}")


# ------------------------------------------------------------------------------------------- observations
EVENTS = pd.DataFrame({"k": pd.Series(["a", "a", "", "é", 0, 2**63 - 1, -1], dtype=object),
                       "ts": (BASE_S + np.array([0, 300, 10, 20, 30, 400, 999])).astype(np.int64),
                       "v": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0]})


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_generated_observations_give_exact_training_sets_or_a_clean_error(store, data):
    if "obs_ev" not in store.streams:
        store.register_stream("obs_ev", entities=["k"], timestamp="ts")
        for f in features_of("obs_ev"):
            store.register_feature(f)
        store.register_feature(rayfs.Feature(name="obs_ev_w", stream="obs_ev", entity="k", agg="sum",
                                             column="v", window="5m"))
        store.ingest("obs_ev", EVENTS)
    feats = [*features_of("obs_ev"), rayfs.Feature(name="obs_ev_w", stream="obs_ev", entity="k", agg="sum",
                                                   column="v", window="5m")]
    names = [f.name for f in feats]
    n = data.draw(st.integers(1, 6))
    ts, ts_ok, us = draw_times(data, n)
    k, k_ok, keys = draw_keys(data, n)
    obs = pd.DataFrame({"k": k, "ts": ts, "label": np.arange(n)})
    stream = f"o{next(NAMES)}"
    try:
        got = store.training_set(obs, features=names)
    except rayfs.RayfsError as exc:
        event(f"refused: {type(exc).__name__}")
        assert not (ts_ok and k_ok), f"valid observations refused: {exc}"
        if not ts_ok:
            with pytest.raises(rayfs.RayfsError):
                store.append_observation(stream, obs)
            with pytest.raises(rayfs.UnknownStreamError):
                store.observations(stream)  # nothing was written
            return
        # An observation stream does not know which columns are keys: a bad key may be stored as a label,
        # and then a training set on it refuses it the same way.
        try:
            store.append_observation(stream, obs)
        except rayfs.RayfsError:
            with pytest.raises(rayfs.UnknownStreamError):
                store.observations(stream)
        else:
            with pytest.raises(rayfs.RayfsError, match="'k'"):
                store.training_set(stream, features=names)
        return
    event("applied")
    assert ts_ok and k_ok, f"invalid observations accepted: ts {ts_ok}, keys {k_ok}"
    canonical = pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": us.astype("datetime64[us]")})
    streams = {"obs_ev": Stream(name="obs_ev", entities=("k",), timestamp="ts")}
    want = oracle_training_set({"obs_ev": EVENTS}, streams, feats, canonical, timestamp="ts")
    assert_features_equal(got, want, names, context=str(obs.dtypes.to_dict()))
    assert got["label"].tolist() == list(range(n))
    assert store.append_observation(stream, obs) == n
    assert_features_equal(store.training_set(stream, features=names), want, names, context="stream")


# ------------------------------------------------------------------------------------------- stateful
KEYS = ["a", "b", 1, 2]
FEATURE_MENU = [  # (agg, column, window, where)
    ("count", None, None, None), ("sum", "v", None, None), ("mean", "v", "1h", None), ("max", "v", "90s", None),
    ("last", "v", None, "v > 0"), ("count_distinct", "v", "1d", None), ("stddev", "v", None, "v IS NOT NULL"),
    ("first", "s", None, None), ("count", "s", "10m", "s <> 'x'"),
    ("count", None, "1h", "v > 0"),  # a row count: a where's null handling shows (the others skip null values)
]
BAD_FEATURES = [  # (overrides, expected error)
    ({"name": "k"}, rayfs.DefinitionError), ({"name": "ts"}, rayfs.DefinitionError),
    ({"name": "f" * 300}, rayfs.DefinitionError), ({"window": "999999999d"}, rayfs.WindowError),
    ({"where": "ts > 0"}, rayfs.DefinitionError), ({"column": "ts", "agg": "max"}, rayfs.DefinitionError),
    ({"agg": "top_k"}, rayfs.AggregateError), ({"where": "v >"}, rayfs.RayfsError),
    ({"entity": "nope"}, rayfs.DefinitionError),
]


SHARED: dict = {}
"""The state machine's store, shared by its examples (each example works on its own stream and
observation streams): opening a store costs seconds. Closed by :func:`close_shared`."""


@pytest.fixture(scope="module", autouse=True)
def close_shared(tmp_path_factory):
    SHARED["path"] = str(tmp_path_factory.mktemp("machine") / "s")
    yield
    if "store" in SHARED:
        SHARED.pop("store").close()


class StoreMachine(RuleBasedStateMachine):
    """A store and its model (events and observations as the oracle reads them, live features)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[pd.DataFrame] = []
        self.obs: dict[str, list[pd.DataFrame]] = {}
        self.features: dict[str, rayfs.Feature] = {}

    @initialize()
    def new_stream(self) -> None:
        if "store" not in SHARED:
            SHARED["store"] = rayfs.FeatureStore.open(SHARED["path"], shards=2)
        self.ev = f"m{next(NAMES)}"
        self.labs = [f"{self.ev}_lab1", f"{self.ev}_lab2"]
        self.store.register_stream(self.ev, entities=["k"], timestamp="ts")
        for agg, column, window, where in (FEATURE_MENU[1], FEATURE_MENU[4], FEATURE_MENU[-1]):  # from the start
            f = self.store.register_feature(rayfs.Feature(name=f"f{next(NAMES)}", stream=self.ev, entity="k",
                                                          agg=agg, column=column, window=window, where=where))
            self.features[f.name] = f

    @property
    def store(self) -> rayfs.FeatureStore:
        return SHARED["store"]

    def _batch(self, data, n: int) -> pd.DataFrame:
        keys = data.draw(st.lists(st.sampled_from([*KEYS, None]), min_size=n, max_size=n))
        secs = data.draw(st.lists(st.integers(0, 4000), min_size=n, max_size=n))
        v = data.draw(st.lists(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)), min_size=n, max_size=n))
        s = data.draw(st.lists(st.sampled_from(["x", "y", None]), min_size=n, max_size=n))
        return pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": np.array(secs, dtype=np.int64) + BASE_S,
                             "v": pd.Series([np.nan if x is None else x for x in v], dtype=np.float64),
                             "s": pd.Series(s, dtype=object)})

    @rule(data=st.data(), bad=st.sampled_from([None, None, "ns_ts", "no_ts", "nan_ts", "bool_key", "uint64_key",
                                                "surrogate_key", "mixed_v", "huge_ts"]))
    def ingest(self, data, bad) -> None:
        event(f"ingest {bad or 'valid'}")
        batch = self._batch(data, data.draw(st.integers(1, 5)))
        if bad is None:
            self.store.ingest(self.ev, batch)
            self.events.append(batch)
            return
        if bad == "ns_ts":
            batch["ts"] = batch["ts"] * 10**9
        elif bad == "no_ts":
            batch = batch.drop(columns="ts")
        elif bad == "nan_ts":
            batch["ts"] = batch["ts"].astype(float).where(np.arange(len(batch)) > 0, np.nan)
        elif bad == "huge_ts":
            batch["ts"] = batch["ts"].astype(float).where(np.arange(len(batch)) > 0, 1e300)
        elif bad == "bool_key":
            batch["k"] = pd.Series([True] * len(batch), dtype=object)
        elif bad == "uint64_key":
            batch["k"] = np.full(len(batch), 2**64 - 1, dtype=np.uint64)
        elif bad == "surrogate_key":
            batch["k"] = pd.Series(["\ud800"] * len(batch), dtype=object)
        else:
            batch["v"] = pd.Series(["x", *range(len(batch) - 1)], dtype=object)
        with pytest.raises(rayfs.RayfsError):
            self.store.ingest(self.ev, batch)

    @rule(data=st.data(), bad=st.sampled_from([None, None, "no_ts", "nan_ts", "ns_ts", "surrogate_key"]))
    def append_observation(self, data, bad) -> None:
        event(f"append_observation {bad or 'valid'}")
        name = data.draw(st.sampled_from(self.labs))
        n = data.draw(st.integers(1, 3))
        keys = data.draw(st.lists(st.sampled_from(KEYS), min_size=n, max_size=n))
        secs = data.draw(st.lists(st.integers(0, 4500), min_size=n, max_size=n))
        rows = pd.DataFrame({"k": pd.Series(keys, dtype=object), "ts": np.array(secs, dtype=np.int64) + BASE_S,
                             "y": np.arange(n)})
        if bad is None:
            assert self.store.append_observation(name, rows) == n
            self.obs.setdefault(name, []).append(rows)
            return
        if bad == "no_ts":
            rows = rows.drop(columns="ts")
        elif bad == "nan_ts":
            rows["ts"] = rows["ts"].astype(float).where(np.arange(n) > 0, np.nan)
        elif bad == "ns_ts":
            rows["ts"] = rows["ts"] * 10**9
        else:
            rows["k"] = pd.Series(["\ud800"] * n, dtype=object)
        with pytest.raises(rayfs.RayfsError):
            self.store.append_observation(name, rows)

    @rule(i=st.integers(0, len(FEATURE_MENU) - 1), bad=st.one_of(st.none(), st.integers(0, len(BAD_FEATURES) - 1)))
    def register(self, i, bad) -> None:
        event(f"register {'valid' if bad is None else 'invalid'}")
        agg, column, window, where = FEATURE_MENU[i]
        kw = dict(name=f"f{next(NAMES)}", stream=self.ev, entity="k", agg=agg, column=column, window=window,
                  where=where)
        if bad is None:
            f = self.store.register_feature(rayfs.Feature(**kw))
            self.features[f.name] = f
            return
        overrides, error = BAD_FEATURES[bad]
        with pytest.raises(error):
            self.store.register_feature(rayfs.Feature(**{**kw, **overrides}))

    @rule(data=st.data())
    def drop(self, data) -> None:
        event("drop")
        if self.features and data.draw(st.booleans()):
            name = data.draw(st.sampled_from(sorted(self.features)))
            self.store.drop_feature(name)
            del self.features[name]
        else:
            with pytest.raises(rayfs.UnknownFeatureError):
                self.store.drop_feature("never_registered")

    @rule(now=st.integers(0, 2))
    def reopen(self, now: int) -> None:
        if now:  # a third of the time: a reopen costs seconds
            return
        event("reopen")
        SHARED.pop("store").close()
        SHARED["store"] = rayfs.FeatureStore.open(SHARED["path"])

    @invariant()
    def matches_the_oracle(self) -> None:
        if not hasattr(self, "ev"):
            return
        assert {n for n, f in self.store.features.items() if f.stream == self.ev} == set(self.features)
        if not self.features:
            return
        feats = list(self.features.values())
        names = [f.name for f in feats]
        events = {self.ev: pd.concat(self.events, ignore_index=True)} if self.events else {}
        streams = {self.ev: Stream(name=self.ev, entities=("k",), timestamp="ts")}
        got = self.store.get_features("k", [*KEYS, "never"], features=names)
        want = oracle_online(events, streams, feats, "k", [*KEYS, "never"])
        assert_features_equal(got, want, names, context="online")
        for name, parts in self.obs.items():
            obs = pd.concat(parts, ignore_index=True)
            got = self.store.training_set(name, features=names)
            want = oracle_training_set(events, streams, feats, obs, timestamp="ts")
            assert_features_equal(got, want, names, context=f"training set {name}")
            assert got["y"].tolist() == obs["y"].tolist()


StoreMachine.TestCase.settings = settings(max_examples=10, stateful_step_count=12, deadline=None,
                                          derandomize=True, database=None,
                                          phases=(Phase.explicit, Phase.generate, Phase.shrink))


@pytest.mark.usefixtures("ray_session")
class TestStoreMachine(StoreMachine.TestCase):
    pass
