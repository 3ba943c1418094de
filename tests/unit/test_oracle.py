"""Hand-computed cases pinning each semantic rule on the brute-force oracle (rayfs.testing)."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from rayfs.model.definitions import Stream
from rayfs.testing import oracle_online, oracle_training_set
from rayfs.workload import observations_for, random_events, reddit_upvotes

DAY = 86400.0
T0 = 19676 * DAY  # a day boundary, epoch seconds
US = 1e-6


@dataclass(frozen=True)
class _StandInFeature:
    name: str
    stream: str
    entity: str
    agg: str
    column: str | None = None
    window: str | None = None
    where: str | None = None


def feat(name, agg, column=None, *, window=None, where=None, stream="ev", entity="user"):
    """The real Feature when its modules exist, else a stand-in with the same attributes."""
    kw = dict(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window, where=where)
    try:
        from rayfs.model.definitions import Feature

        return Feature(**kw)
    except ImportError:
        return _StandInFeature(**kw)


STREAMS = {"ev": Stream(name="ev", entities=("user", "item"), timestamp="ts")}


def events(rows, columns=("user", "ts", "x")):
    return {"ev": pd.DataFrame(rows, columns=list(columns))}


def obs(rows, columns=("user", "t")):
    return pd.DataFrame(rows, columns=list(columns))


def run(ev, features, observations, **kw):
    return oracle_training_set(ev, STREAMS, features, observations, timestamp="t", **kw)


def same(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


# --- point in time and windows ------------------------------------------------------------------


def test_event_at_exactly_t_is_not_seen():
    ev = events([("a", T0, 1.0), ("a", T0 + 10, 2.0)])
    o = obs([("a", T0 + 10), ("a", T0), ("a", T0 + 10 + US)])
    out = run(ev, [feat("n", "count"), feat("s", "sum", "x")], o)
    assert out["n"].tolist() == [1, 0, 2]
    assert out["s"].tolist()[0] == 1.0 and math.isnan(out["s"].tolist()[1]) and out["s"].tolist()[2] == 3.0


def test_event_at_exactly_t_minus_window_is_seen():
    ev = events([("a", T0, 1.0), ("a", T0 + DAY / 2, 2.0), ("a", T0 + DAY, 4.0)])
    f = feat("s", "sum", "x", window="1d")
    o = obs([("a", T0 + DAY), ("a", T0 + DAY + US), ("a", T0 + 2 * DAY), ("a", T0 + 2 * DAY + US)])
    out = run(ev, [f], o)
    # [t-1d, t): at T0+1d sees T0 and T0+12h; 1us later T0 drops out and T0+1d comes in.
    assert out["s"].tolist()[:3] == [3.0, 6.0, 4.0] and math.isnan(out["s"].iloc[3])


def test_timedelta_window_and_datetime_timestamps():
    base = pd.Timestamp("2024-01-01")
    ev = {"ev": pd.DataFrame({"user": ["a", "a"], "ts": [base, base + pd.Timedelta(hours=1)],
                              "x": [1.0, 2.0]})}
    f = feat("c", "count", window=dt.timedelta(hours=1))
    # observation time as epoch seconds (float): 2024-01-01T01:00Z
    t = base.timestamp() + 3600
    out = run(ev, [f], obs([("a", t), ("a", t + US)]))
    assert out["c"].tolist() == [1, 1]
    out = run(ev, [feat("c2", "count")], obs([("a", base + pd.Timedelta(hours=1, microseconds=1))]))
    assert out["c2"].tolist() == [2]


# --- ordering: first/last ------------------------------------------------------------------------


def test_first_last_ties_later_ingested_wins():
    ev = events([("a", T0 + 5, 10.0), ("a", T0 + 5, 20.0), ("a", T0 + 5, 30.0), ("a", T0 + 9, 40.0)])
    out = run(ev, [feat("f", "first", "x"), feat("l", "last", "x")], obs([("a", T0 + 6), ("a", T0 + 10)]))
    assert out["f"].tolist() == [10.0, 10.0]
    assert out["l"].tolist() == [30.0, 40.0]


def test_first_last_order_by_time_not_arrival():
    ev = events([("a", T0 + 9, 1.0), ("a", T0 + 1, 2.0), ("a", T0 + 5, 3.0)])
    out = run(ev, [feat("f", "first", "x"), feat("l", "last", "x")], obs([("a", T0 + 6), ("a", T0 + 10)]))
    assert out["f"].tolist() == [2.0, 2.0]
    assert out["l"].tolist() == [3.0, 1.0]


def test_first_last_skip_nulls():
    ev = events([("a", T0 + 1, np.nan), ("a", T0 + 2, 5.0), ("a", T0 + 3, 6.0), ("a", T0 + 3, np.nan)])
    out = run(ev, [feat("f", "first", "x"), feat("l", "last", "x")], obs([("a", T0 + 10), ("a", T0 + 2)]))
    assert out["f"].tolist()[0] == 5.0 and out["l"].tolist()[0] == 6.0
    assert math.isnan(out["f"].iloc[1]) and math.isnan(out["l"].iloc[1])  # only a null value in scope


# --- nulls and empty values ----------------------------------------------------------------------


def test_nulls_skipped_in_numeric_aggregates():
    ev = events([("a", T0, 1.0), ("a", T0, np.nan), ("a", T0, 3.0), ("a", T0, np.nan), ("a", T0, 3.0)])
    fs = [feat("rows", "count"), feat("cnt", "count", "x"), feat("s", "sum", "x"), feat("m", "mean", "x"),
          feat("lo", "min", "x"), feat("hi", "max", "x"), feat("cd", "count_distinct", "x"),
          feat("var", "variance", "x"), feat("sd", "stddev", "x")]
    row = run(ev, fs, obs([("a", T0 + 1)])).iloc[0]
    assert row["rows"] == 5 and row["cnt"] == 3 and row["cd"] == 2
    assert row["s"] == 7.0 and row["m"] == pytest.approx(7 / 3)
    assert row["lo"] == 1.0 and row["hi"] == 3.0
    assert row["var"] == pytest.approx(4 / 3)  # mean 7/3; ((4/3)^2 + 2*(2/3)^2) / 2
    assert row["sd"] == pytest.approx(math.sqrt(4 / 3))


def test_nulls_skipped_in_string_aggregates():
    ev = events([("a", T0 + 1, None), ("a", T0 + 2, "pear"), ("a", T0 + 3, "apple"), ("a", T0 + 4, "pear"),
                 ("a", T0 + 5, None)], columns=("user", "ts", "s"))
    fs = [feat("c", "count", "s"), feat("cd", "count_distinct", "s"), feat("lo", "min", "s"),
          feat("hi", "max", "s"), feat("f", "first", "s"), feat("l", "last", "s")]
    out = run(ev, fs, obs([("a", T0 + 9)]))
    assert out.iloc[0][["c", "cd", "lo", "hi", "f", "l"]].tolist() == [3, 2, "apple", "pear", "pear", "pear"]
    for c in ("lo", "hi", "f", "l"):
        assert out[c].dtype == object


def test_empty_values_and_dtypes():
    ev = {"ev": pd.DataFrame({"user": ["a"], "ts": [T0], "x": [1.0], "s": ["z"]})}
    fs = [feat("rows", "count"), feat("cnt", "count", "x"), feat("cd", "count_distinct", "s"),
          feat("s_sum", "sum", "x"), feat("x_mean", "mean", "x"), feat("x_min", "min", "x"),
          feat("x_first", "first", "x"), feat("s_max", "max", "s"), feat("s_last", "last", "s")]
    out = run(ev, fs, obs([("b", T0 + 1), ("a", T0)]))
    for c in ("rows", "cnt", "cd"):
        assert out[c].dtype == np.int64 and out[c].tolist() == [0, 0]
    for c in ("s_sum", "x_mean", "x_min", "x_first"):
        assert out[c].dtype == np.float64 and out[c].isna().all()
    for c in ("s_max", "s_last"):
        assert out[c].dtype == object and out[c].tolist() == [None, None]


def test_variance_and_stddev_below_two_values_are_null():
    ev = events([("a", T0, 2.0), ("a", T0 + 1, 4.0), ("a", T0 + 2, np.nan)])
    fs = [feat("v", "variance", "x"), feat("sd", "stddev", "x")]
    out = run(ev, fs, obs([("a", T0), ("a", T0 + 1), ("a", T0 + 2), ("a", T0 + 3)]))
    assert out["v"].isna().tolist() == [True, True, False, False]
    assert out["v"].tolist()[2:] == [2.0, 2.0]  # sample variance of {2, 4}
    assert out["sd"].iloc[2] == pytest.approx(math.sqrt(2))


# --- entity keys -----------------------------------------------------------------------------------


def test_null_entity_key_counts_for_no_entity():
    ev = events([(None, T0, 100.0), ("a", T0, 1.0), (np.nan, T0, 100.0)])
    out = run(ev, [feat("c", "count"), feat("s", "sum", "x")], obs([("a", T0 + 1), (None, T0 + 1)]))
    assert out["c"].tolist() == [1, 0]
    assert out["s"].iloc[0] == 1.0 and math.isnan(out["s"].iloc[1])


def test_int_and_string_keys_differ():
    ev = {"ev": pd.DataFrame({"user": pd.Series([1, "1", 1, 2], dtype=object), "ts": [T0] * 4,
                              "x": [1.0, 10.0, 100.0, 1000.0]})}
    o = pd.DataFrame({"user": pd.Series([1, "1", 2, "2"], dtype=object), "t": [T0 + 1] * 4})
    out = run(ev, [feat("s", "sum", "x")], o)
    assert out["s"].tolist()[:3] == [101.0, 10.0, 1000.0] and math.isnan(out["s"].iloc[3])


def test_nullable_int_keys():
    ev = {"ev": pd.DataFrame({"user": pd.array([1, None, 2], dtype="Int64"), "ts": [T0] * 3,
                              "x": [1.0, 2.0, 4.0]})}
    o = pd.DataFrame({"user": pd.array([1, 2, None], dtype="Int64"), "t": [T0 + 1] * 3})
    assert run(ev, [feat("c", "count")], o)["c"].tolist() == [1, 1, 0]


def test_entity_columns_and_second_entity():
    ev = {"ev": pd.DataFrame({"user": ["a", "a", "b"], "item": ["i", "j", "i"], "ts": [T0] * 3,
                              "x": [1.0, 2.0, 4.0]})}
    fs = [feat("by_user", "sum", "x"), feat("by_item", "sum", "x", entity="item")]
    o = pd.DataFrame({"u": ["a", "b"], "item": ["i", "j"], "t": [T0 + 1] * 2})
    out = run(ev, fs, o, entity_columns={"by_user": "u"})
    assert out["by_user"].tolist() == [3.0, 4.0] and out["by_item"].tolist() == [5.0, 2.0]


# --- where -------------------------------------------------------------------------------------------


def test_where_sql_null_semantics():
    ev = events([("a", T0, 0.0), ("a", T0, 2.0), ("a", T0, np.nan), ("a", T0, 5.0)])
    fs = [feat("gt", "count", where="x > 1"), feat("not_gt", "count", where="NOT (x > 1)"),
          feat("isnull", "count", where="x IS NULL"), feat("gt_sum", "sum", "x", where="x > 1"),
          feat("none", "sum", "x", where="x > 100")]
    row = run(ev, fs, obs([("a", T0 + 1)])).iloc[0]
    assert row["gt"] == 2 and row["not_gt"] == 1 and row["isnull"] == 1 and row["gt_sum"] == 7.0
    assert math.isnan(row["none"])


def test_where_on_string_and_other_column():
    ev = {"ev": pd.DataFrame({"user": ["a"] * 4, "ts": [T0] * 4, "x": [1.0, 2.0, 3.0, np.nan],
                              "s": ["p", None, "q", "p"]})}
    fs = [feat("p_sum", "sum", "x", where="s = 'p'"), feat("not_p", "count", where="s <> 'p'"),
          feat("s_null", "last", "x", where="s IS NULL")]
    row = run(ev, fs, obs([("a", T0 + 1)])).iloc[0]
    assert row["p_sum"] == 1.0 and row["not_p"] == 1 and row["s_null"] == 2.0


# --- online ------------------------------------------------------------------------------------------


def test_online_is_observation_just_after_newest_event_of_stream():
    # The newest event has a null key and fails the where: T still comes from it.
    ev = events([("a", T0 + 0.5 * DAY, 1.0), ("a", T0 + 1.25 * DAY, 2.0), ("b", T0, 4.0),
                 (None, T0 + 1.5 * DAY, -1.0)])
    fs = [feat("s1d", "sum", "x", window="1d", where="x > 0"), feat("n", "count"), feat("l", "last", "x")]
    on = oracle_online(ev, STREAMS, fs, "user", ["a", "b", "zz", None])
    assert list(on.columns) == ["user", "s1d", "n", "l"]
    assert on["user"].tolist()[:3] == ["a", "b", "zz"]
    # T = T0+1.5d: window [T0+0.5d+1us, T0+1.5d+1us) excludes the event at T0+0.5d.
    assert on["s1d"].tolist()[0] == 2.0 and math.isnan(on["s1d"].iloc[1])
    assert on["n"].tolist() == [2, 1, 0, 0]
    t = T0 + 1.5 * DAY + US
    training = run(ev, fs, obs([("a", t), ("b", t), ("zz", t), (None, t)]))
    for f in fs:
        pairs = zip(on[f.name].tolist(), training[f.name].tolist(), strict=True)
        assert all(same(x, y) for x, y in pairs), f.name
        assert on[f.name].dtype == training[f.name].dtype


def test_online_empty_stream():
    ev = {"ev": pd.DataFrame({"user": pd.Series([], dtype=object), "ts": pd.Series([], dtype=float),
                              "x": pd.Series([], dtype=float)})}
    on = oracle_online(ev, STREAMS, [feat("n", "count"), feat("s", "sum", "x")], "user", ["a"])
    assert on["n"].tolist() == [0] and math.isnan(on["s"].iloc[0])
    on = oracle_online({}, STREAMS, [feat("n", "count")], "user", ["a"])
    assert on["n"].tolist() == [0]


def test_result_keeps_observation_index_and_order_and_input_untouched():
    ev = events([("a", T0, 1.0), ("b", T0, 2.0)])
    o = pd.DataFrame({"user": ["b", "a", "b"], "t": [T0 + 1, T0 + 1, T0], "label": [1, 0, 1]},
                     index=[7, 3, 5])
    before = o.copy()
    out = run(ev, [feat("s", "sum", "x")], o)
    pd.testing.assert_frame_equal(o, before)
    assert out.index.tolist() == [7, 3, 5] and list(out.columns) == ["user", "t", "label", "s"]
    assert out["s"].tolist()[:2] == [2.0, 1.0]


# --- cross-check against an independent DuckDB formulation on adversarial data ------------------------


@pytest.mark.parametrize("key_kind", ["str", "int"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_agrees_with_duckdb_window_join(seed, key_kind):
    duckdb = pytest.importorskip("duckdb")
    ev = random_events(seed, 120, key_kind=key_kind)
    grid = np.unique(ev["ts"].to_numpy())
    rng = np.random.default_rng(seed)
    o = ev[["user"]].sample(40, random_state=seed, replace=True).reset_index(drop=True)
    o["t"] = rng.choice(np.concatenate([grid, grid + DAY, grid + 3600]), len(o))
    fs = [feat("c", "count", window="1d", where="x > 0"), feat("sx", "sum", "x", window="1d"),
          feat("lo", "min", "s"), feat("hi", "max", "x", window="2d"),
          feat("cd", "count_distinct", "s", window="1d"),
          feat("v", "variance", "x"), feat("f", "first", "s", window="1d"), feat("l", "last", "x")]
    out = run({"ev": ev}, fs, o)

    e = ev.assign(pos=np.arange(len(ev)), tus=np.round(ev["ts"].to_numpy() * 1e6).astype(np.int64))
    q = o.assign(qid=np.arange(len(o)), tus=np.round(o["t"].to_numpy() * 1e6).astype(np.int64))
    d1, d2 = 86_400_000_000, 2 * 86_400_000_000
    sql = f"""
      SELECT q.qid,
        count(*) FILTER (WHERE e.x > 0 AND e.tus >= q.tus - {d1}) AS c,
        sum(e.x) FILTER (WHERE e.tus >= q.tus - {d1}) AS sx,
        min(e.s) AS lo,
        max(e.x) FILTER (WHERE e.tus >= q.tus - {d2}) AS hi,
        count(DISTINCT e.s) FILTER (WHERE e.tus >= q.tus - {d1}) AS cd,
        var_samp(e.x) AS v,
        arg_min(e.s, {{'t': e.tus, 'p': e.pos}})
          FILTER (WHERE e.s IS NOT NULL AND e.tus >= q.tus - {d1}) AS f,
        arg_max(e.x, {{'t': e.tus, 'p': e.pos}}) FILTER (WHERE e.x IS NOT NULL) AS l
      FROM q LEFT JOIN e ON e.user = q.user AND e.tus < q.tus
      GROUP BY q.qid ORDER BY q.qid"""
    con = duckdb.connect()
    con.register("e", e)
    con.register("q", q)
    ref = con.execute(sql).fetchdf()
    for name in ("c", "cd"):
        assert out[name].tolist() == ref[name].fillna(0).astype(int).tolist(), name
    for name in ("sx", "hi", "v", "l"):
        np.testing.assert_allclose(out[name].to_numpy(), ref[name].to_numpy(dtype=float, na_value=np.nan),
                                   rtol=1e-9, atol=1e-9, err_msg=name)
    for name in ("lo", "f"):
        assert out[name].tolist() == [None if pd.isna(v) else v for v in ref[name].tolist()], name


# --- workload generators -----------------------------------------------------------------------------


def test_reddit_upvotes_shape_and_determinism():
    df = reddit_upvotes(20_000, seed=3)
    assert list(df.columns) == ["user", "post", "subreddit", "score", "ts"]
    assert len(df) == 20_000 and df.equals(reddit_upvotes(20_000, seed=3))
    assert not df.equals(reddit_upvotes(20_000, seed=4))
    assert df["post"].dtype == np.int64 and df["score"].dtype == np.float64 and df["ts"].dtype == np.float64
    assert df["user"].str.match(r"^u\d+$").all() and df["subreddit"].str.startswith("r/").all()
    assert 0.005 < df["score"].isna().mean() < 0.04
    ts = df["ts"].to_numpy()
    assert 0.01 < (np.diff(ts) < 0).mean() < 0.10  # some arrive out of order...
    assert (np.maximum.accumulate(ts) - ts).max() <= 3600  # ...by up to an hour
    assert pd.Series(ts).duplicated().sum() > 0
    assert ts.min() >= 1_700_000_000 and ts.max() < 1_700_000_000 + 180 * DAY
    counts = df["user"].value_counts()
    assert counts.iloc[0] > 20 * counts.median()  # skewed
    assert df.groupby("post")["subreddit"].nunique().max() == 1


def test_observations_for_shape_and_determinism():
    ev = reddit_upvotes(5_000, seed=1)
    o = observations_for(ev, 2_000, seed=2)
    assert list(o.columns) == ["user", "ts", "label"] and len(o) == 2_000
    assert o.equals(observations_for(ev, 2_000, seed=2))
    unseen = ~o["user"].isin(set(ev["user"]))
    assert 0.005 < unseen.mean() < 0.05
    exact = o["ts"].isin(set(ev["ts"]))
    assert 0.05 < exact.mean() < 0.2
    assert set(o["label"].unique()) <= {0, 1} and o["label"].dtype == np.int64
    oi = observations_for(random_events(0, 50, key_kind="int"), 30, seed=1)
    assert str(oi["user"].dtype) == "Int64" and oi["user"].notna().all()


@pytest.mark.parametrize("key_kind", ["str", "int", "mixed"])
def test_random_events_shape_and_determinism(key_kind):
    df = random_events(5, 400, key_kind=key_kind)
    assert list(df.columns) == ["user", "item", "ts", "x", "s"] and len(df) == 400
    assert df.equals(random_events(5, 400, key_kind=key_kind))
    assert 0.01 < df["user"].isna().mean() < 0.12 and df["item"].isna().any()
    assert 0.08 < df["x"].isna().mean() < 0.25 and 0.08 < df["s"].isna().mean() < 0.25
    assert df["ts"].nunique() <= 20 and (df["ts"] % DAY == 0).any()
    assert df["user"].dropna().nunique() <= 8
    assert not df["ts"].is_monotonic_increasing
    x = df["x"].dropna()
    assert (x == x.round()).all()
