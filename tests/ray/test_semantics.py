"""Hand-written pinned cases of rayfs's semantics on a real store (Ray actors, log files, LMDB).

Each test builds a tiny store in ``tmp_path`` and asserts exact values computed by hand: the
point-in-time rule (``t - window <= ts < t``), windows, nulls, empty aggregates, ties, arrival order,
keys, ``where`` with SQL null semantics, timestamp and input formats, online vs offline, SQL naming,
idempotent registration, persistence, observation streams, and backfill.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import rayfs
from rayfs.testing import assert_features_equal

T = pd.Timestamp("2024-01-01 12:00:00")  # naive = UTC
US = pd.Timedelta(microseconds=1)
H = pd.Timedelta(hours=1)


def at(**kw) -> pd.Timestamp:
    """T plus an offset given as pd.Timedelta keywords (negative for before)."""
    return T + pd.Timedelta(**kw)


def F(name, agg, column=None, *, window=None, where=None, stream="ev", entity="user") -> rayfs.Feature:
    return rayfs.Feature(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window,
                         where=where)


def norm(v):
    """A cell as a comparable Python value: NaN/None/NA -> None, numpy scalars -> Python."""
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def col(df: pd.DataFrame, name: str) -> list:
    return [norm(v) for v in df[name].tolist()]


def approx(values: list) -> list:
    return [None if v is None else pytest.approx(v, rel=1e-12) for v in values]


def obs(keys, times, entity="user") -> pd.DataFrame:
    return pd.DataFrame({entity: pd.Series(list(keys), dtype=object), "ts": pd.Series(list(times))})


def open_store(tmp_path, **kw):
    kw.setdefault("durability", "none")  # fsync is not under test here; keeps the file fast
    return rayfs.FeatureStore.open(tmp_path / "s", shards=4, **kw)


# ------------------------------------------------------------------------------------------- time rules
def test_observation_time_is_exclusive_window_start_inclusive_and_sample_variance(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count"))
        store.register_feature(F("n_1h", "count", window="1h"))
        store.register_feature(F("sum_1h", "sum", "x", window="1h"))
        store.ingest("ev", pd.DataFrame({
            "user": ["a", "a", "a", "a"],
            "ts": [T - H - US, T - H, T - US, T],
            "x": [1.0, 2.0, 4.0, 8.0]}))
        got = store.training_set(obs(["a"] * 4, [T, T + US, T - H, T - H + US]), timestamp="ts")
        # t=T:       sees T-1h-1us, T-1h, T-1us (not T itself); window [T-1h, T) -> T-1h, T-1us
        # t=T+1us:   all 4; window [T-1h+1us, T+1us) -> T-1us, T
        # t=T-1h:    sees T-1h-1us only; window [T-2h, T-1h) -> T-1h-1us
        # t=T-1h+1us: T-1h-1us, T-1h; window [T-2h+1us, T-1h+1us) -> both
        assert col(got, "n") == [3, 4, 1, 2]
        assert col(got, "n_1h") == [2, 2, 1, 2]
        assert col(got, "sum_1h") == [6.0, 12.0, 1.0, 3.0]
        online = store.get_features("user", ["a"])
        assert col(online, "n") == [4] and col(online, "n_1h") == [2] and col(online, "sum_1h") == [12.0]
        # Sample variance / stddev: null below two values.
        store.register_stream("v", entities=["user"], timestamp="ts")
        store.register_feature(F("var", "variance", "x", stream="v"))
        store.register_feature(F("std", "stddev", "x", stream="v"))
        store.ingest("v", pd.DataFrame({"user": ["a", "a", "a", "b"],
                                        "ts": [at(seconds=1), at(seconds=2), at(seconds=3), at(seconds=1)],
                                        "x": [1.0, 3.0, 8.0, 5.0]}))
        got = store.training_set(obs(["a", "a", "a", "a", "b"],
                                     [at(seconds=1), at(seconds=2), at(seconds=3), at(seconds=4),
                                      at(seconds=4)]), features=["var", "std"], timestamp="ts")
        # values seen: [], [1], [1,3], [1,3,8], [5]
        assert col(got, "var") == approx([None, None, 2.0, 13.0, None])
        assert col(got, "std") == approx([None, None, math.sqrt(2.0), math.sqrt(13.0), None])
        online = store.get_features("user", ["a", "b", "c"], features=["var", "std"])
        assert col(online, "var") == approx([13.0, None, None])


def test_window_spellings(tmp_path):
    d = {"30s": pd.Timedelta(seconds=30), "15m": pd.Timedelta(minutes=15), "3h": pd.Timedelta(hours=3),
         "7d": pd.Timedelta(days=7)}
    # One event at exactly T - w and one 1 us earlier for every window, plus one at T - 1s.
    times = [T - pd.Timedelta(seconds=1)]
    for w in d.values():
        times += [T - w, T - w - US]
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for name in d:
            store.register_feature(F(f"n_{name}", "count", window=name))
        store.register_feature(F("n_td15m", "count", window=dt.timedelta(minutes=15)))
        store.register_feature(F("n_td90m", "count", window=dt.timedelta(hours=1, minutes=30)))
        store.register_feature(F("n_td_us", "count", window=dt.timedelta(seconds=30, microseconds=1)))
        assert store.features["n_td15m"].window == "15m"
        assert store.features["n_td90m"].window == "90m"
        assert store.features["n_td_us"].window == "30000001us"
        store.ingest("ev", pd.DataFrame({"user": ["a"] * len(times), "ts": times}))
        got = store.training_set(obs(["a"], [T]), timestamp="ts")
        assert col(got, "n_30s") == [2]   # T-1s, T-30s
        assert col(got, "n_15m") == [4]   # + T-30s-1us, T-15m
        assert col(got, "n_3h") == [6]
        assert col(got, "n_7d") == [8]
        assert col(got, "n_td15m") == [4]
        assert col(got, "n_td90m") == [5]  # T-15m-1us is within 90m; T-3h is not
        assert col(got, "n_td_us") == [3]  # T-30s-1us is exactly at the start of a 30s+1us window


# ------------------------------------------------------------------------------------------- nulls, empties
def test_nulls_skipped_and_empty_aggregates(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        feats = [F("rows", "count"), F("cnt_x", "count", "x"), F("cd_x", "count_distinct", "x"),
                 F("sum_x", "sum", "x"), F("mean_x", "mean", "x"), F("min_x", "min", "x"),
                 F("max_x", "max", "x"), F("first_x", "first", "x"), F("last_x", "last", "x"),
                 F("var_x", "variance", "x"), F("std_x", "stddev", "x"),
                 F("cnt_s", "count", "s"), F("cd_s", "count_distinct", "s"), F("min_s", "min", "s"),
                 F("max_s", "max", "s"), F("first_s", "first", "s"), F("last_s", "last", "s")]
        for f in feats:
            store.register_feature(f)
        store.ingest("ev", pd.DataFrame({
            "user": ["a", "a", "a", "a", "n", "n"],
            "ts": [at(seconds=1), at(seconds=2), at(seconds=3), at(seconds=4), at(seconds=1), at(seconds=2)],
            "x": [np.nan, 2.0, np.nan, 4.0, np.nan, np.nan],
            "s": pd.Series([None, "q", None, None, None, None], dtype=object)}))
        names = [f.name for f in feats]
        keys = ["a", "n", "never"]
        online = store.get_features("user", keys, features=names)
        offline = store.training_set(obs(keys, [at(seconds=10)] * 3), features=names, timestamp="ts")
        before = store.training_set(obs(["a"], [at(seconds=0)]), features=names, timestamp="ts")
        for got in (online, offline):
            assert col(got, "rows") == [4, 2, 0]
            assert col(got, "cnt_x") == [2, 0, 0]
            assert col(got, "cd_x") == [2, 0, 0]
            assert col(got, "sum_x") == [6.0, None, None]
            assert col(got, "mean_x") == [3.0, None, None]
            assert col(got, "min_x") == [2.0, None, None]
            assert col(got, "max_x") == [4.0, None, None]
            assert col(got, "first_x") == [2.0, None, None]  # first non-null value
            assert col(got, "last_x") == [4.0, None, None]
            assert col(got, "var_x") == [2.0, None, None]
            assert col(got, "std_x") == approx([math.sqrt(2.0), None, None])
            assert col(got, "cnt_s") == [1, 0, 0]
            assert col(got, "cd_s") == [1, 0, 0]
            for name in ("min_s", "max_s", "first_s", "last_s"):
                assert col(got, name) == ["q", None, None], name
                assert got[name].iloc[1] is None and got[name].iloc[2] is None, name
            for name in ("rows", "cnt_x", "cd_x", "cnt_s", "cd_s"):
                assert got[name].dtype == np.int64, name
        assert [col(before, n)[0] for n in names] == [0, 0, 0] + [None] * 8 + [0, 0] + [None] * 4


def test_first_last_ties_later_ingested_wins(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for c in ("x", "s"):
            store.register_feature(F(f"first_{c}", "first", c))
            store.register_feature(F(f"last_{c}", "last", c))
        store.register_feature(F("last_x_1h", "last", "x", window="1h"))
        store.register_feature(F("first_x_1h", "first", "x", window="1h"))
        # a: equal timestamps across two ingest calls; b: equal timestamps within one batch,
        # listed in an order that is not the value order; c: tie plus an earlier event arriving later.
        store.ingest("ev", pd.DataFrame({"user": ["a", "b", "b", "b", "c"], "ts": [T] * 5,
                                         "x": [1.0, 7.0, 5.0, 6.0, 20.0],
                                         "s": ["a1", "b7", "b5", "b6", "c20"]}))
        store.ingest("ev", pd.DataFrame({"user": ["a", "c", "c"], "ts": [T, T, T - US],
                                         "x": [2.0, 21.0, 19.0], "s": ["a2", "c21", "c19"]}))
        keys = ["a", "b", "c"]
        online = store.get_features("user", keys)
        offline = store.training_set(obs(keys, [T + US] * 3), timestamp="ts")
        for got in (online, offline):
            assert col(got, "first_x") == [1.0, 7.0, 19.0]
            assert col(got, "last_x") == [2.0, 6.0, 21.0]
            assert col(got, "first_x_1h") == [1.0, 7.0, 19.0]
            assert col(got, "last_x_1h") == [2.0, 6.0, 21.0]
            assert col(got, "first_s") == ["a1", "b7", "c19"]
            assert col(got, "last_s") == ["a2", "b6", "c21"]


def test_out_of_order_arrival_in_many_batch_sizes(tmp_path):
    rng = np.random.default_rng(7)
    n = 150
    secs = rng.choice(np.arange(0, 3 * 86400, 60), size=n, replace=False)  # distinct times: no ties
    events = pd.DataFrame({
        "user": np.array(["a", "b", "c", "d"], dtype=object)[rng.integers(0, 4, n)],
        "ts": [T + pd.Timedelta(seconds=int(s)) for s in secs],
        "x": np.where(rng.random(n) < 0.15, np.nan, rng.integers(-3, 9, n).astype(float)),
        "s": pd.Series(np.where(rng.random(n) < 0.15, None,
                                np.array(["p", "q", "r"], dtype=object)[rng.integers(0, 3, n)]), dtype=object),
    })
    ordered = events.sort_values("ts", kind="stable").reset_index(drop=True)
    shuffled = events.sample(frac=1.0, random_state=3).reset_index(drop=True)
    streams = {"sorted1": (ordered, [n]), "rev": (ordered.iloc[::-1].reset_index(drop=True), [7]),
               "single": (shuffled, [1]), "b3": (shuffled, [3]),
               "mixed": (shuffled, [1, 40, 3, 17, 1, 64])}
    aggs = [("count", None), ("sum", "x"), ("mean", "x"), ("min", "x"), ("max", "x"), ("first", "x"),
            ("last", "x"), ("variance", "x"), ("count_distinct", "s"), ("first", "s"), ("last", "s")]
    suffixes = []
    with open_store(tmp_path, durability="none") as store:
        for stream, (frame, sizes) in streams.items():
            store.register_stream(stream, entities=["user"], timestamp="ts")
            for agg, c in aggs:
                for w in (None, "6h"):
                    sfx = f"{agg}_{c}_{w or 'life'}"
                    if stream == "sorted1":
                        suffixes.append(sfx)
                    store.register_feature(F(f"{stream}_{sfx}", agg, c, window=w, stream=stream))
            i = k = 0
            while i < len(frame):
                size = sizes[k % len(sizes)]
                store.ingest(stream, frame.iloc[i:i + size])
                i += size
                k += 1
        keys = ["a", "b", "c", "d", "zz"]
        probe = sorted({T + pd.Timedelta(seconds=int(s)) for s in rng.choice(secs, 40)}
                       | {T + pd.Timedelta(seconds=int(s) + 1) for s in rng.choice(secs, 40)})
        o = obs([keys[i % 5] for i in range(len(probe))], probe)
        base_off = store.training_set(o, features=[f"sorted1_{s}" for s in suffixes], timestamp="ts")
        base_on = store.get_features("user", keys, features=[f"sorted1_{s}" for s in suffixes])
        assert col(base_on, "sorted1_count_None_life") == [int((events.user == k).sum()) for k in keys]
        for stream in streams:
            if stream == "sorted1":
                continue
            names = [f"{stream}_{s}" for s in suffixes]
            off = store.training_set(o, features=names, timestamp="ts")
            on = store.get_features("user", keys, features=names)
            off.columns = [c.replace(stream, "sorted1", 1) for c in off.columns]
            on.columns = [c.replace(stream, "sorted1", 1) for c in on.columns]
            cols = [f"sorted1_{s}" for s in suffixes]
            assert_features_equal(off, base_off, cols, rtol=1e-12, context=f"{stream} training_set")
            assert_features_equal(on, base_on, cols, rtol=1e-12, context=f"{stream} online")


# ------------------------------------------------------------------------------------------- keys
def test_int_and_string_keys_are_distinct_and_unseen_keys_are_empty(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_stream("iv", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count"))
        store.register_feature(F("sx", "sum", "x"))
        store.register_feature(F("iv_n", "count", stream="iv"))
        store.ingest("ev", pd.DataFrame({"user": pd.Series([1, "1", "1", 2, "x"], dtype=object),
                                         "ts": [T] * 5, "x": [10.0, 20.0, 40.0, 1.0, 2.0]}))
        store.ingest("iv", pd.DataFrame({"user": np.array([1, 1, 3], dtype=np.int64), "ts": [T] * 3}))
        keys = [1, "1", 2, "2", "x", 3, "never", 999]
        online = store.get_features("user", keys)
        assert col(online, "user") == keys
        assert col(online, "n") == [1, 2, 1, 0, 1, 0, 0, 0]
        assert col(online, "sx") == [10.0, 60.0, 1.0, None, 2.0, None, None, None]
        assert col(online, "iv_n") == [2, 0, 0, 0, 0, 1, 0, 0]
        offline = store.training_set(obs(keys, [T + US] * len(keys)), timestamp="ts")
        assert col(offline, "n") == col(online, "n")
        assert col(offline, "sx") == col(online, "sx")
        assert col(offline, "iv_n") == col(online, "iv_n")
        # An int64 observation column finds the int keys; a string one the string keys.
        ints = store.training_set(pd.DataFrame({"user": np.array([1, 2, 3]), "ts": [T + US] * 3}),
                                  timestamp="ts")
        assert col(ints, "n") == [1, 1, 0] and col(ints, "iv_n") == [2, 0, 1]
        strs = store.training_set(pd.DataFrame({"user": ["1", "2", "3"], "ts": [T + US] * 3}), timestamp="ts")
        assert col(strs, "n") == [2, 0, 0] and col(strs, "iv_n") == [0, 0, 0]


def test_null_entity_key_counts_only_for_other_entity(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        store.register_feature(F("u_n", "count"))
        store.register_feature(F("u_sx", "sum", "x"))
        store.register_feature(F("i_n", "count", entity="item"))
        store.register_feature(F("i_sx", "sum", "x", entity="item"))
        store.ingest("ev", pd.DataFrame({
            "user": pd.Series(["a", None, "a", None], dtype=object),
            "item": pd.Series(["i1", "i1", None, None], dtype=object),
            "ts": [T, T + US, T + 2 * US, T + 3 * US], "x": [1.0, 2.0, 4.0, 8.0]}))
        u = store.get_features("user", ["a", None, "None"])
        assert col(u, "u_n") == [2, 0, 0] and col(u, "u_sx") == [5.0, None, None]
        i = store.get_features("item", ["i1", None])
        assert col(i, "i_n") == [2, 0] and col(i, "i_sx") == [3.0, None]
        o = pd.DataFrame({"user": pd.Series(["a", None, "a"], dtype=object),
                          "item": pd.Series(["i1", "i1", None], dtype=object),
                          "ts": [T + 4 * US, T + 4 * US, T + US]})
        got = store.training_set(o, timestamp="ts")
        assert col(got, "u_n") == [2, 0, 1] and col(got, "u_sx") == [5.0, None, 1.0]
        assert col(got, "i_n") == [2, 2, 0] and col(got, "i_sx") == [3.0, 3.0, None]


# ------------------------------------------------------------------------------------------- where, strings
def test_where_sql_null_semantics(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        wheres = {"gt1": "x > 1", "isnull": "x IS NULL", "not_gt1": "NOT (x > 1)", "notnull": "x IS NOT NULL",
                  "either": "NOT (x > 1) OR x IS NULL", "s_p": "s = 'p'", "s_not_p": "s <> 'p'",
                  "s_in": "s IN ('p', 'q')", "s_null_or_x": "s IS NULL AND x >= 0"}
        for name, w in wheres.items():
            store.register_feature(F(f"n_{name}", "count", where=w))
        store.register_feature(F("sum_gt1", "sum", "x", where="x > 1"))
        store.register_feature(F("sum_not_gt1", "sum", "x", where="NOT (x > 1)"))
        store.ingest("ev", pd.DataFrame({
            "user": ["a"] * 6, "ts": [at(seconds=i) for i in range(6)],
            "x": [0.0, 1.0, 2.0, 3.0, np.nan, np.nan],
            "s": pd.Series(["p", None, "q", "p", "r", None], dtype=object)}))
        for got in (store.get_features("user", ["a"]),
                    store.training_set(obs(["a"], [at(seconds=6)]), timestamp="ts")):
            assert col(got, "n_gt1") == [2]        # 2, 3
            assert col(got, "n_isnull") == [2]
            assert col(got, "n_not_gt1") == [2]    # 0, 1 (null is not true either way)
            assert col(got, "n_notnull") == [4]
            assert col(got, "n_either") == [4]
            assert col(got, "n_s_p") == [2]
            assert col(got, "n_s_not_p") == [2]    # q, r; the nulls drop out
            assert col(got, "n_s_in") == [3]
            assert col(got, "n_s_null_or_x") == [1]  # x=1 with s null; the s-null row with x NaN is out
            assert col(got, "sum_gt1") == [5.0]
            assert col(got, "sum_not_gt1") == [1.0]


def test_string_aggregates(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for agg in ("min", "max", "first", "last", "count_distinct", "count"):
            store.register_feature(F(f"{agg}_s", agg, "s"))
            store.register_feature(F(f"{agg}_s_1h", agg, "s", window="1h"))
        store.ingest("ev", pd.DataFrame({
            "user": ["a"] * 6,
            "ts": [at(hours=-3), at(hours=-2), at(minutes=-30), at(minutes=-20), at(minutes=-10), at(minutes=-5)],
            "s": pd.Series(["pear", "Zed", "apple", None, "zoo", "apple"], dtype=object)}))
        store.ingest("ev", pd.DataFrame({"user": ["b"], "ts": [T], "s": ["é"]}))
        a = store.training_set(obs(["a", "b"], [T + US, T + US]), timestamp="ts")
        on = store.get_features("user", ["a", "b"])
        for got in (a, on):
            assert col(got, "min_s") == ["Zed", "é"]   # code point order: upper case first
            assert col(got, "max_s") == ["zoo", "é"]
            assert col(got, "first_s") == ["pear", "é"]
            assert col(got, "last_s") == ["apple", "é"]
            assert col(got, "count_distinct_s") == [4, 1]
            assert col(got, "count_s") == [5, 1]
            assert col(got, "min_s_1h") == ["apple", "é"]
            assert col(got, "max_s_1h") == ["zoo", "é"]
            assert col(got, "first_s_1h") == ["apple", "é"]
            assert col(got, "last_s_1h") == ["apple", "é"]
            assert col(got, "count_distinct_s_1h") == [2, 1]
            assert col(got, "count_s_1h") == [3, 1]


# ------------------------------------------------------------------------------------------- input forms
def test_timestamp_formats_agree(tmp_path):
    base = 1_704_110_400  # 2024-01-01 12:00:00 UTC in epoch seconds
    secs = [0, 60, 60, 3600, 3599, 7200, 86400]
    users = ["a", "b", "a", "a", "b", "a", "b"]
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    paris = [pd.Timestamp(base + s, unit="s", tz="UTC").tz_convert("Europe/Paris") for s in secs]
    forms = {
        "t_int": np.array([base + s for s in secs], dtype=np.int64),
        "t_float": np.array([base + s for s in secs], dtype=np.float64),
        "t_np": np.array([base + s for s in secs], dtype="datetime64[s]"),
        "t_np_us": np.array([(base + s) * 1_000_000 for s in secs], dtype="datetime64[us]"),
        "t_pd_naive": pd.to_datetime([base + s for s in secs], unit="s"),
        "t_pd_tz": pd.DatetimeIndex(paris),
        "t_pd_obj": pd.Series(paris, dtype=object),  # tz-aware Timestamps as objects
        "t_dt_utc": pd.Series([dt.datetime.fromtimestamp(base + s, tz=dt.UTC) for s in secs], dtype=object),
        "t_dt_naive": pd.Series([dt.datetime(1970, 1, 1) + dt.timedelta(seconds=base + s) for s in secs],
                                dtype=object),
        "t_dt_tz": pd.Series([dt.datetime.fromtimestamp(base + s, tz=dt.timezone(dt.timedelta(hours=-5)))
                              for s in secs], dtype=object),
    }
    assert pd.Timestamp(base, unit="s") == T
    with open_store(tmp_path, durability="none") as store:
        for name, ts in forms.items():
            store.register_stream(name, entities=["user"], timestamp="when")
            store.register_feature(F(f"{name}_n", "count", stream=name))
            store.register_feature(F(f"{name}_s1h", "sum", "x", window="1h", stream=name))
            store.register_feature(F(f"{name}_last", "last", "x", stream=name))
            store.ingest(name, pd.DataFrame({"user": users, "when": ts, "x": x}))
        o = obs(["a", "a", "b", "a", "b"], [T + H, T + H + US, T + pd.Timedelta(seconds=60), T + 3 * H, T + 2 * H])
        got = store.training_set(o, timestamp="ts")
        on_a = store.get_features("user", ["a", "b"])
        for name in forms:
            assert col(got, f"{name}_n") == [2, 3, 0, 4, 2], name
            # windows of 1h: [T, T+1h) -> x 1+3; [T+1us, T+1h+1us) -> 3+4; b at T+60s sees nothing;
            # [T+2h, T+3h) -> 6; b in [T+1h, T+2h) -> nothing
            assert col(got, f"{name}_s1h") == [4.0, 7.0, None, 6.0, None], name
            assert col(got, f"{name}_last") == [3.0, 4.0, None, 6.0, 5.0], name
            assert col(on_a, f"{name}_n") == [4, 3], name
            assert col(on_a, f"{name}_last") == [6.0, 7.0], name
        # Observation times in every format give the same answers too.
        ots = [int((t - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)) for t in
               [T + H, T + 3 * H, T + 2 * H]]
        okeys = ["a", "a", "b"]
        for oform in (np.array(ots, dtype=np.int64), np.array(ots, dtype=np.float64),
                      np.array(ots, dtype="datetime64[s]"), pd.to_datetime(ots, unit="s", utc=True),
                      pd.Series([dt.datetime.fromtimestamp(s, tz=dt.UTC) for s in ots], dtype=object)):
            g = store.training_set(pd.DataFrame({"user": okeys, "when": oform}),
                                   features=["t_int_n", "t_int_s1h"], timestamp="when")
            vals = (col(g, "t_int_n"), col(g, "t_int_s1h"))
            assert vals == ([2, 4, 2], [4.0, 6.0, None])
        # Fractional float seconds keep microseconds.
        store.register_stream("t_frac", entities=["user"], timestamp="ts")
        store.register_feature(F("frac_n", "count", stream="t_frac"))
        store.ingest("t_frac", {"user": np.array(["a", "a", "a"], dtype=object),
                                "ts": np.array([base + 0.000001, base + 0.5, base + 0.999999])})
        got = store.training_set(obs(["a"] * 4, [T, T + US, T + 2 * US, T + pd.Timedelta(seconds=1)]),
                                 features=["frac_n"], timestamp="ts")
        assert col(got, "frac_n") == [0, 0, 1, 3]


def test_input_containers_agree(tmp_path):
    users = np.array(["a", "b", "a", "c", "a"], dtype=object)
    ts = np.array([T + pd.Timedelta(minutes=m) for m in (0, 5, 10, 10, 90)], dtype="datetime64[us]")
    x = np.array([1.0, np.nan, 3.0, 4.0, 5.0])
    s = np.array(["p", "q", None, "r", "p"], dtype=object)
    frame = pd.DataFrame({"user": users, "ts": ts, "x": x, "s": s})
    forms = {"df": frame, "arrow": pa.Table.from_pandas(frame, preserve_index=False),
             "records": frame.to_dict("records"), "arrays": {"user": users, "ts": ts, "x": x, "s": s},
             "arrow_batch": pa.RecordBatch.from_pandas(frame, preserve_index=False)}
    aggs = [("count", None), ("count", "x"), ("sum", "x"), ("last", "s"), ("count_distinct", "s")]
    with open_store(tmp_path) as store:
        for name, data in forms.items():
            store.register_stream(name, entities=["user"], timestamp="ts")
            for agg, c in aggs:
                store.register_feature(F(f"{name}_{agg}_{c}", agg, c, stream=name))
                store.register_feature(F(f"{name}_{agg}_{c}_1h", agg, c, stream=name, window="1h"))
            store.ingest(name, data)
        o = obs(["a", "a", "b", "c", "zz"], [T + pd.Timedelta(minutes=10), T + 2 * H, T + H, T + H, T + H])
        got = store.training_set(o, timestamp="ts")
        on = store.get_features("user", ["a", "b", "c"])
        for name in forms:
            assert col(got, f"{name}_count_None") == [1, 3, 1, 1, 0], name
            assert col(got, f"{name}_count_x") == [1, 3, 0, 1, 0], name
            assert col(got, f"{name}_sum_x") == [1.0, 9.0, None, 4.0, None], name
            assert col(got, f"{name}_last_s") == ["p", "p", "q", "r", None], name
            assert col(got, f"{name}_count_distinct_s") == [1, 1, 1, 1, 0], name
            assert col(got, f"{name}_count_None_1h") == [1, 1, 1, 1, 0], name  # a at T+2h: [T+1h, T+2h) -> 90m
            assert col(on, f"{name}_count_None") == [3, 1, 1], name
            assert col(on, f"{name}_sum_x_1h") == [5.0, None, None], name  # [T+30m+1us, T+90m+1us)


# ------------------------------------------------------------------------------------------- online vs offline
def test_online_equals_training_set_just_after_newest_event(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_stream("other", entities=["user"], timestamp="ts")
        feats = [F("n", "count"), F("n_1h", "count", window="1h"), F("s_1h", "sum", "x", window="1h"),
                 F("last_1h", "last", "x", window="1h"), F("n_2h", "count", window="2h"),
                 F("o_n_1h", "count", window="1h", stream="other")]
        for f in feats:
            store.register_feature(f)
        # The newest event of "ev" belongs to b; a's events sit around the 1h boundary before it.
        store.ingest("ev", pd.DataFrame({
            "user": ["a", "a", "a", "a", "b"],
            "ts": [T - 2 * H, T - H, T - H + US, T - pd.Timedelta(minutes=30), T],
            "x": [1.0, 2.0, 4.0, 8.0, 16.0]}))
        # The other stream is much newer: it must not move the window of "ev" features.
        store.ingest("other", pd.DataFrame({"user": ["a", "a"], "ts": [T + 5 * H, T + 10 * H]}))
        names = [f.name for f in feats]
        keys = ["a", "b", "c"]
        online = store.get_features("user", keys, features=names)
        assert col(online, "n") == [4, 1, 0]
        assert col(online, "n_1h") == [2, 1, 0]       # window [T-1h+1us, T+1us)
        assert col(online, "s_1h") == [12.0, 16.0, None]
        assert col(online, "last_1h") == [8.0, 16.0, None]
        assert col(online, "n_2h") == [3, 1, 0]
        assert col(online, "o_n_1h") == [1, 0, 0]     # window [T+9h+1us, T+10h+1us)
        ev_names = [n for n in names if n != "o_n_1h"]
        offline = store.training_set(obs(keys, [T + US] * 3), features=ev_names, timestamp="ts")
        assert_features_equal(online, offline, ev_names, rtol=0, context="ev online vs offline")
        off_o = store.training_set(obs(keys, [T + 10 * H + US] * 3), features=["o_n_1h"], timestamp="ts")
        assert_features_equal(online, off_o, ["o_n_1h"], rtol=0, context="other online vs offline")
        # A later event of another entity moves the window for a too.
        store.ingest("ev", pd.DataFrame({"user": ["c"], "ts": [T + pd.Timedelta(minutes=31)], "x": [32.0]}))
        online = store.get_features("user", keys, features=names)
        assert col(online, "n_1h") == [0, 1, 1]      # window [T-29m+1us, T+31m+1us)
        offline = store.training_set(obs(keys, [T + pd.Timedelta(minutes=31) + US] * 3), features=ev_names,
                                     timestamp="ts")
        assert_features_equal(online, offline, ev_names, rtol=0, context="after c")


# ------------------------------------------------------------------------------------------- definitions
def test_register_sql_naming_and_window(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        fs = store.register_sql("SELECT user, COUNT(*), COUNT(x), SUM(x), AVG(x) AS avg_x, COUNT(DISTINCT s), "
                                "min(s), STDDEV_SAMP(x) FROM ev WHERE x >= 0 GROUP BY user", window="1d")
        assert [f.name for f in fs] == ["ev_count", "ev_count_x", "ev_sum_x", "avg_x", "ev_count_distinct_s",
                                        "ev_min_s", "ev_stddev_x"]
        assert [(f.agg, f.column) for f in fs] == [("count", None), ("count", "x"), ("sum", "x"), ("mean", "x"),
                                                   ("count_distinct", "s"), ("min", "s"), ("stddev", "x")]
        assert {f.window for f in fs} == {"1d"} and {f.where for f in fs} == {"x >= 0"}
        assert {f.entity for f in fs} == {"user"}
        life = store.register_sql("SELECT e.item, LAST(e.x) AS item_last FROM ev AS e GROUP BY e.item")
        assert [(f.name, f.entity, f.window, f.where) for f in life] == [("item_last", "item", None, None)]
        td = store.register_sql("SELECT user, MAX(x) AS mx FROM ev GROUP BY user", window=dt.timedelta(hours=6))
        assert td[0].window == "6h"
        assert set(store.features) == {f.name for f in fs + life + td}
        store.ingest("ev", pd.DataFrame({"user": ["a", "a", "a", "a"], "item": ["i", "i", "j", "i"],
                                         "ts": [T - pd.Timedelta(days=2), T - H, T - US, T],
                                         "x": [100.0, -1.0, 2.0, 4.0], "s": ["p", "q", "r", "r"]}))
        got = store.training_set(obs(["a"], [T + US]).assign(item="i"), timestamp="ts")
        assert col(got, "ev_count") == [2]  # x >= 0 inside 1d: T-1us, T
        assert col(got, "ev_sum_x") == [6.0]
        assert col(got, "avg_x") == [3.0]
        assert col(got, "ev_count_distinct_s") == [1]
        assert col(got, "ev_min_s") == ["r"]
        assert col(got, "ev_stddev_x") == approx([math.sqrt(2.0)])
        assert col(got, "item_last") == [4.0]
        assert col(got, "mx") == [4.0]


def test_reregistering_is_idempotent_and_redefinitions_make_versions(tmp_path):
    with open_store(tmp_path) as store:
        s = store.register_stream("ev", entities=["user"], timestamp="ts")
        assert store.register_stream("ev", entities="user", timestamp="ts") == s
        f = store.register_feature(F("sx", "sum", "x", window="1d"))
        assert (f.version, f.key) == (1, "sx") and f.created
        store.ingest("ev", pd.DataFrame({"user": ["a", "a"], "ts": [T, T + US], "x": [1.0, 2.0]}))
        before = store.info()
        # Same definition, window and aggregate spelled differently: a no-op that changes nothing anywhere.
        same = rayfs.Feature(name="sx", stream="ev", entity="user", agg="SUM", column="x", window=dt.timedelta(days=1))
        assert store.register_feature(same) == f and store.info() == before
        # Only metadata differs: updated in place, same version, same values.
        g = store.register_feature(rayfs.Feature(name="sx", stream="ev", entity="user", agg="sum", column="x",
                                                 window="1d", description="other words", owner="ana", tags=["t"]))
        assert (g.version, g.description, g.owner, g.tags) == (1, "other words", "ana", ("t",))
        assert store.describe("sx")["owner"] == "ana" and len(store.list_features()) == 1
        with pytest.raises(rayfs.DefinitionError, match="ev"):
            store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        with pytest.raises(rayfs.DefinitionError, match="ev"):
            store.register_stream("ev", entities=["user"], timestamp="time")
        # A different definition is a new version; the bare name follows the latest, older ones stay queryable.
        v2 = store.register_feature(F("sx", "sum", "x", window="1d", where="x > 1"))
        [v3] = store.register_sql("SELECT user, COUNT(*) AS sx FROM ev GROUP BY user")
        assert (v2.version, v2.key, v3.version, v3.key) == (2, "sx@2", 3, "sx@3")
        got = store.get_features("user", ["a", "zz"], ["sx", "sx@1", "sx@2", "sx@3"])
        assert list(got.columns) == ["user", "sx", "sx@1", "sx@2", "sx@3"]
        assert got.iloc[0, 1:].tolist() == [2, 3.0, 2.0, 2] and col(got, "sx@1")[1] is None
        o = obs(["a"], [T + 2 * US])
        ts = store.training_set(o, ["sx", "sx@1", "sx@2"], timestamp="ts")
        assert ts.iloc[0, 2:].tolist() == [2, 3.0, 2.0]
        assert store.features["sx"].version == 3 and set(store.features) == {"sx"}
        assert store.list_features()["key"].tolist() == ["sx", "sx@2", "sx@3"]
        assert [v["version"] for v in store.describe("sx")["versions"]] == [1, 2, 3]
        # Dropping the latest makes the previous one the latest; version numbers are never reused.
        assert store.drop_feature("sx").version == 3
        assert store.features["sx"].version == 2
        with pytest.raises(rayfs.UnknownFeatureError, match="sx@3"):
            store.get_features("user", ["a"], ["sx@3"])
        store.drop_feature("sx", 1)
        assert store.register_feature(F("sx", "count", window="2d")).version == 4
        assert store.list_features()["key"].tolist() == ["sx@2", "sx@4"]
        kept = store.get_features("user", ["a"], ["sx", "sx@2"])
    with rayfs.FeatureStore.open(tmp_path / "s") as store:  # versions persist with the store
        assert store.list_features()["key"].tolist() == ["sx@2", "sx@4"]
        pd.testing.assert_frame_equal(store.get_features("user", ["a"], ["sx", "sx@2"]), kept)
        assert store.register_feature(F("sx", "count", window="2d")).version == 4


def test_definitions_schema_and_data_persist_across_reopen(tmp_path):
    path = tmp_path / "s"
    feats = [F("n", "count"), F("sx_1h", "sum", "x", window="1h"), F("last_s", "last", "s"),
             F("i_n", "count", entity="item", where="x > 0")]
    o = obs(["a", "b", "a"], [T, T + H, T + 3 * H]).assign(item=["i", "j", "i"])
    with rayfs.FeatureStore.open(path, shards=4, snapshot_every=2) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        for f in feats:
            store.register_feature(f)
        for k in range(5):
            store.ingest("ev", pd.DataFrame({"user": ["a", "b"], "item": ["i", "j"],
                                             "ts": [T + k * H, T + k * H + US], "x": [float(k), -1.0],
                                             "s": [f"s{k}", None]}))
        streams, features = store.streams, store.features
        schema = [i["schema"] for i in store.info()]
        online = store.get_features("user", ["a", "b", "zz"])
        online_i = store.get_features("item", ["i", "j"])
        offline = store.training_set(o, timestamp="ts")
        assert col(online, "n") == [5, 5, 0]
        assert col(offline, "sx_1h") == [None, -1.0, 2.0]
    with rayfs.FeatureStore.open(path) as store:
        assert store.streams == streams and store.features == features
        assert [i["schema"] for i in store.info()] == schema
        assert {s for sh in schema for s in sh.get("ev", {})} >= {"x", "s"}
        pd.testing.assert_frame_equal(store.get_features("user", ["a", "b", "zz"]), online)
        pd.testing.assert_frame_equal(store.get_features("item", ["i", "j"]), online_i)
        pd.testing.assert_frame_equal(store.training_set(o, timestamp="ts"), offline)
        # The reopened store still enforces the persisted schema and keeps ingesting.
        with pytest.raises(rayfs.SchemaError, match="x"):
            store.ingest("ev", pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [T], "x": ["str"], "s": ["q"]}))
        store.ingest("ev", pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [T + 5 * H], "x": [7.0], "s": ["z"]}))
        got = store.get_features("user", ["a"])
        assert col(got, "n") == [6] and col(got, "sx_1h") == [7.0] and col(got, "last_s") == ["z"]
    with pytest.raises(rayfs.DefinitionError):
        rayfs.FeatureStore.open(path, shards=3)


def test_observation_streams_persist_and_replay_in_order(tmp_path):
    path = tmp_path / "s"
    with rayfs.FeatureStore.open(path, shards=4) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count"))
        store.register_feature(F("sx", "sum", "x", window="1h"))
        store.ingest("ev", pd.DataFrame({"user": ["a", "a", "b"], "ts": [T, T + H, T], "x": [1.0, 2.0, 4.0]}))
        assert store.append_observation("labels", {"user": "a", "ts": T + US, "label": 1}) == 1
        assert store.append_observation("labels", pd.DataFrame({
            "user": ["b", "a", "zz", "a"], "ts": [T + US, T, T + 2 * H, T + H + US], "label": [0, 1, 0, 1]})) == 4
        with pytest.raises(rayfs.DefinitionError, match="ev"):
            store.append_observation("ev", {"user": "a", "ts": T})
    with rayfs.FeatureStore.open(path) as store:
        assert store.append_observation("labels", [{"user": "b", "ts": T + 5 * H, "label": 1}]) == 1
        stored = store.observations("labels")
        assert col(stored, "user") == ["a", "b", "a", "zz", "a", "b"]
        assert col(stored, "label") == [1, 0, 1, 0, 1, 1]
        got = store.training_set("labels", timestamp="ts")
        assert len(got) == 6
        assert list(got.columns[:3]) == ["user", "ts", "label"]
        assert col(got, "n") == [1, 1, 0, 0, 2, 1]
        assert col(got, "sx") == [1.0, 4.0, None, None, 2.0, None]
        assert list(pd.to_datetime(got["ts"])) == [T + US, T + US, T, T + 2 * H, T + H + US, T + 5 * H]
        with pytest.raises(rayfs.UnknownStreamError, match="nolabels"):
            store.training_set("nolabels", timestamp="ts")


def test_training_set_keeps_rows_order_index_and_columns(tmp_path):
    with open_store(tmp_path) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count"))
        store.register_feature(F("last_x", "last", "x"))
        rng = np.random.default_rng(5)
        users = np.array(["a", "b", "c"], dtype=object)[rng.integers(0, 3, 200)]
        t = [T + pd.Timedelta(seconds=int(s)) for s in rng.integers(0, 1000, 200)]
        events = pd.DataFrame({"user": users, "ts": t, "x": rng.random(200)})
        store.ingest("ev", events)
        n_obs = 300
        o = pd.DataFrame({
            "label": rng.integers(0, 2, n_obs),
            "when": [T + pd.Timedelta(seconds=int(s)) for s in rng.integers(-10, 1100, n_obs)],
            "user": pd.Series(np.array(["a", "b", "c", "zz", None], dtype=object)[rng.integers(0, 5, n_obs)],
                              dtype=object),
            "extra": [f"row{i}" for i in range(n_obs)],
        }, index=pd.Index(rng.permutation(n_obs) * 3 + 7, name="obs_id"))
        o = pd.concat([o, o.iloc[:5]])  # duplicated rows (and index values) stay duplicated
        copy = o.copy()
        got = store.training_set(o, timestamp="when")
        pd.testing.assert_frame_equal(o, copy)  # input not modified
        assert list(got.columns) == ["label", "when", "user", "extra", "n", "last_x"]
        assert got.index.equals(o.index)
        pd.testing.assert_frame_equal(got[list(o.columns)], o)
        ev_t = events["ts"].to_numpy()
        ev_u = events["user"].to_numpy()
        for i, (u, w) in enumerate(zip(o["user"], o["when"], strict=True)):
            seen = (ev_u == u) & (ev_t < np.datetime64(w))
            assert got["n"].iloc[i] == (seen.sum() if u is not None else 0), i
        # The same rows in another order give the same values, row by row.
        perm = rng.permutation(len(o))
        again = store.training_set(o.iloc[perm], timestamp="when")
        pd.testing.assert_frame_equal(again, got.iloc[perm])


def test_feature_registered_after_events_is_backfilled(tmp_path):
    with open_store(tmp_path, snapshot_every=1) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        store.register_feature(F("early_n", "count"))
        store.ingest("ev", pd.DataFrame({"user": ["a", "a", "b"], "item": ["i", "j", "i"],
                                         "ts": [T - 2 * H, T - H, T], "x": [1.0, 2.0, 4.0]}))
        store.ingest("ev", pd.DataFrame({"user": ["a"], "item": ["i"], "ts": [T - pd.Timedelta(minutes=10)],
                                         "x": [8.0]}))
        store.register_feature(F("late_sum", "sum", "x"))
        store.register_feature(F("late_sum_1h", "sum", "x", window="1h"))
        store.register_feature(F("late_i_n_3h", "count", entity="item", window="3h"))
        store.register_sql("SELECT item, MAX(x) AS late_i_max FROM ev WHERE x < 5 GROUP BY item")
        on = store.get_features("user", ["a", "b"])
        assert col(on, "early_n") == [3, 1]
        assert col(on, "late_sum") == [11.0, 4.0]
        assert col(on, "late_sum_1h") == [8.0, 4.0]   # [T-1h+1us, T+1us)
        on_i = store.get_features("item", ["i", "j"])
        assert col(on_i, "late_i_n_3h") == [3, 1] and col(on_i, "late_i_max") == [4.0, 2.0]
        o = obs(["a", "a", "b"], [T - H, T, T + US]).assign(item=["i", "j", "i"])
        got = store.training_set(o, timestamp="ts")
        assert col(got, "late_sum") == [1.0, 11.0, 4.0]
        assert col(got, "late_sum_1h") == [1.0, 10.0, 4.0]
        assert col(got, "late_i_n_3h") == [1, 1, 3]
        assert col(got, "late_i_max") == [1.0, 2.0, 4.0]
        # Later events fold into the backfilled features normally.
        store.ingest("ev", pd.DataFrame({"user": ["a"], "item": ["j"], "ts": [T + US], "x": [3.0]}))
        on = store.get_features("user", ["a", "b"])
        assert col(on, "late_sum") == [14.0, 4.0] and col(on, "late_sum_1h") == [11.0, 4.0]
