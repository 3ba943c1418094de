"""last_k, first_k, top_k, approx_count_distinct and approx_quantile on a real store (Ray actors, logs, LMDB).

Pinned cases by hand (ties, nulls, the observation-time and window-start boundaries, unseen and null keys,
int keys, SQL registration), then a differential run against the brute-force oracle (exact for the list
aggregates, documented error bounds plus equality with a sketch built directly with datasketches for the
approximate ones) with backfill and reopen, and sketches beyond their exact range.
"""

from __future__ import annotations

import math

import datasketches as ds
import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.aggregates.sketches import HLL_LG_K, KLL_K
from rayfs.testing import (
    approx_error,
    assert_approx_features,
    assert_features_equal,
    oracle_online,
    oracle_training_set,
)
from rayfs.workload import random_events

T = pd.Timestamp("2024-01-01 12:00:00")
H = pd.Timedelta(hours=1)
US = pd.Timedelta(microseconds=1)
LISTS = ("last_k", "first_k", "top_k")
APPROX = ("approx_count_distinct", "approx_quantile")


def F(name, agg, column, *, window=None, where=None, entity="user", stream="ev", **params) -> rayfs.Feature:
    return rayfs.Feature(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window,
                         where=where, **params)


def hll_direct(values) -> int:
    """approx_count_distinct as documented, built here with datasketches directly."""
    sk = ds.hll_sketch(HLL_LG_K, ds.HLL_4)
    for v in values:
        sk.update(math.nan if v == "" else v)
    u = ds.hll_union(HLL_LG_K)
    u.update(sk)
    u.update(sk)
    return round(u.get_estimate())


def inverse_cdf(values, q: float) -> float:
    return sorted(values)[max(math.ceil(q * len(values)) - 1, 0)]


def assert_fresh_lists(df: pd.DataFrame, feats, context: str) -> None:
    for f in feats:
        if f.agg in LISTS:
            col = df[f.name].tolist()
            assert all(isinstance(v, list) for v in col), (context, f.name)
            assert len({id(v) for v in col}) == len(col), f"{context}: {f.name} shares list objects between rows"


def assert_sketches(actual: pd.DataFrame, scope: pd.DataFrame, feats, context: str, int_columns=()) -> None:
    """Approximate features within their documented bounds, and equal to datasketches' own answer where
    that is deterministic (HLL always; KLL up to KLL_K values, where it is the exact quantile)."""
    approx = [f for f in feats if f.agg in APPROX]
    assert_approx_features(actual, scope, approx, context=context)
    for f in approx:
        for i, (x, vals) in enumerate(zip(actual[f.name].tolist(), scope[f.name].tolist(), strict=True)):
            if f.agg == "approx_count_distinct":
                if f.column in int_columns:
                    vals = [int(v) for v in vals]  # integer keys are hashed as ints
                assert x == hll_direct(vals), f"{context}: {f.name} row {i}: {x} != {hll_direct(vals)}"
            elif vals and len(vals) <= KLL_K:
                assert x == inverse_cdf(vals, f.q), f"{context}: {f.name} row {i}"


# ------------------------------------------------------------------------------------------------ pinned cases


def test_pinned_semantics(tmp_path):
    ev = pd.DataFrame({
        "user": ["a", "a", "a", "a", "a", "a", "b", None],
        "post": ["p1", "p2", "p3", None, "p2", "p9", "q", "n"],
        "x": [1.0, 2.0, 3.0, np.nan, 2.0, 9.0, 5.0, 7.0],
        "ts": [T - 3 * H, T - 2 * H, T - 2 * H, T - H, T - H + US, T, T - 5 * H, T - H],
    })
    feats = [F("lk", "last_k", "post", k=3), F("lk_2h", "last_k", "post", k=3, window="2h"),
             F("fk", "first_k", "post", k=2), F("fk_2h", "first_k", "post", k=5, window="2h"),
             F("tk", "top_k", "post", k=2), F("tk_x", "top_k", "x", k=5, window="2h"),
             F("acd", "approx_count_distinct", "post"), F("acd_2h", "approx_count_distinct", "x", window="2h"),
             F("aq", "approx_quantile", "x", q=0.5), F("aq_max_2h", "approx_quantile", "x", q=1.0, window="2h")]
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2, durability="none") as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for f in feats:
            store.register_feature(f)
        store.ingest("ev", ev.iloc[:3])
        store.ingest("ev", ev.iloc[3:])  # p2 at T - 2h (row 1) was ingested before p3 (row 2): p3 is later
        obs = pd.DataFrame({"user": pd.Series(["a", "b", "zz", None], dtype=object), "ts": [T] * 4})
        got = store.training_set(obs, features=[f.name for f in feats], timestamp="ts")
        # "a" at T: the event at exactly T is excluded; the 2h window starts at exactly T - 2h (included)
        assert got["lk"].tolist() == [["p2", "p3", "p2"], ["q"], [], []]
        assert got["lk_2h"].tolist() == [["p2", "p3", "p2"], [], [], []]
        assert got["fk"].tolist() == [["p1", "p2"], ["q"], [], []]
        assert got["fk_2h"].tolist() == [["p2", "p3", "p2"], [], [], []]
        assert got["tk"].tolist() == [[{"value": "p2", "count": 2}, {"value": "p1", "count": 1}],
                                      [{"value": "q", "count": 1}], [], []]
        assert got["tk_x"].tolist() == [[{"value": 2.0, "count": 2}, {"value": 3.0, "count": 1}], [], [], []]
        assert got["acd"].tolist() == [3, 1, 0, 0] and got["acd"].dtype == np.int64
        assert got["acd_2h"].tolist() == [2, 0, 0, 0]
        assert got["aq"].tolist()[:2] == [2.0, 5.0] and np.isnan(got["aq"].tolist()[2:]).all()
        assert got["aq_max_2h"].tolist()[0] == 3.0 and np.isnan(got["aq_max_2h"].tolist()[1:]).all()
        assert_fresh_lists(got, feats, "training_set")
        # online: as of just after the newest event (T), so the event at T counts
        on = store.get_features("user", ["a", "zz", "b", None], features=[f.name for f in feats])
        assert on["lk"].tolist() == [["p9", "p2", "p3"], [], ["q"], []]
        assert on["lk_2h"].tolist() == [["p9", "p2"], [], [], []]  # window [T + 1us - 2h, T]
        assert on["fk_2h"].tolist() == [["p2", "p9"], [], [], []]
        assert on["tk"].tolist()[0] == [{"value": "p2", "count": 2}, {"value": "p1", "count": 1}]
        assert on["acd"].tolist() == [4, 0, 1, 0]
        assert on["aq"].tolist()[0] == 2.0 and on["aq_max_2h"].tolist()[0] == 9.0
        assert_fresh_lists(on, feats, "online")
        on["lk"][1].append("mutated")  # a caller mutating a result changes nothing in the store
        again = store.get_features("user", ["zz", "zz"], features=["lk", "tk"])
        assert again["lk"].tolist() == [[], []] and again["tk"].tolist() == [[], []]


def test_int_keys_and_sql_registration(tmp_path):
    ev = pd.DataFrame({"item": [7, 7, 7, 8, 7], "user": ["u1", "u2", "u1", "u1", None],
                       "x": [1.0, 4.0, 2.0, 3.0, 8.0], "ts": [T - 3 * H, T - 2 * H, T - 2 * H, T - H, T - H]})
    with rayfs.FeatureStore.open(tmp_path / "s", shards=3, durability="none") as store:
        store.register_stream("ev", entities=["item", "user"], timestamp="ts")
        store.ingest("ev", ev)  # features registered after the events: backfilled
        sql = store.register_sql(
            "SELECT item, LAST_K(user, 2), FIRST_K(x, 2) AS fx, TOP_K(user, 1) AS top_user, "
            "APPROX_COUNT_DISTINCT(user), APPROX_QUANTILE(x, 0.5) AS med FROM ev GROUP BY item", window="1d")
        assert [(f.name, f.agg, f.params) for f in sql] == [
            ("ev_last_k_user", "last_k", {"k": 2}), ("fx", "first_k", {"k": 2}), ("top_user", "top_k", {"k": 1}),
            ("ev_approx_count_distinct_user", "approx_count_distinct", {}), ("med", "approx_quantile", {"q": 0.5})]
        by_user = store.register_sql("SELECT user, LAST_K(item, 5) AS items, TOP_K(item, 2) AS top_items, "
                                     "APPROX_COUNT_DISTINCT(item) AS n_items FROM ev GROUP BY user")
        names = [f.name for f in sql]
        on = store.get_features("item", [7, 8, 9, "7"], features=names)
        assert on["ev_last_k_user"].tolist() == [["u1", "u2"], ["u1"], [], []]  # null user skipped
        assert on["fx"].tolist() == [[1.0, 4.0], [3.0], [], []]
        assert on["top_user"].tolist() == [[{"value": "u1", "count": 2}], [{"value": "u1", "count": 1}], [], []]
        assert on["ev_approx_count_distinct_user"].tolist() == [2, 1, 0, 0]
        assert on["med"].tolist()[:2] == [2.0, 3.0] and np.isnan(on["med"].tolist()[2:]).all()
        u = store.get_features("user", ["u1", "u2", "u3"], features=[f.name for f in by_user])
        assert u["items"].tolist() == [[8, 7, 7], [7], []]
        assert [type(v) for v in u["items"][0]] == [int, int, int]  # integer keys stay ints
        assert u["top_items"].tolist()[0] == [{"value": 7, "count": 2}, {"value": 8, "count": 1}]
        assert u["n_items"].tolist() == [2, 1, 0]
        assert_fresh_lists(on, sql, "sql online")


# ------------------------------------------------------------------------------------------------ differential


def feature_set(rng: np.random.Generator, key_kind: str) -> list[rayfs.Feature]:
    wheres = [None, "x > 1", "s IS NULL OR x <= 0"]
    specs = [("last_k", "x", {"k": 3}), ("last_k", "s", {"k": 2}), ("first_k", "x", {"k": 2}),
             ("first_k", "s", {"k": 4}), ("top_k", "x", {"k": 2}), ("top_k", "s", {"k": 3}),
             ("approx_count_distinct", "x", {}), ("approx_count_distinct", "s", {}),
             ("approx_quantile", "x", {"q": 0.5}), ("approx_quantile", "x", {"q": 0.9})]
    if key_kind != "mixed":  # entity keys as values (one key type)
        specs += [("last_k", "item", {"k": 3}), ("top_k", "item", {"k": 2}), ("approx_count_distinct", "item", {})]
    feats = []
    for agg, col, params in specs:
        for window in (None, "6h", "1d"):
            entity = "user" if col == "item" or rng.random() < 0.7 else "item"
            name = f"{entity}_{agg}_{col}_{window or 'life'}_{len(feats)}"
            feats.append(F(name, agg, col, window=window, where=wheres[rng.integers(len(wheres))], entity=entity,
                           **params))
    return feats


def observations(events: pd.DataFrame, seed: int, n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = events["user"].dropna().unique().tolist() + [None, "never", 999]
    items = events["item"].dropna().unique().tolist() + [None, "nope"]
    grid = np.unique(events["ts"].to_numpy())
    ts = np.concatenate([grid[rng.integers(0, len(grid), n // 2)],  # exactly at event times (and window starts)
                         grid.min() - 3600 + rng.random(n - n // 2) * (grid.max() - grid.min() + 2 * 86400)])
    return pd.DataFrame({"user": pd.Series([users[i] for i in rng.integers(0, len(users), n)], dtype=object),
                         "item": pd.Series([items[i] for i in rng.integers(0, len(items), n)], dtype=object),
                         "ts": ts})


def ingest_in_batches(store, events: pd.DataFrame, seed: int) -> None:
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(events):
        size = int(rng.integers(1, 80))
        store.ingest("ev", events.iloc[i:i + size])
        i += size


def check(got: dict, events: pd.DataFrame, feats, obs, keys: dict, context: str, key_kind: str) -> None:
    streams = {"ev": rayfs.Stream(name="ev", entities=("user", "item"), timestamp="ts")}
    ints = ("user", "item") if key_kind == "int" else ()
    exact = [f for f in feats if f.agg not in APPROX]
    want = oracle_training_set({"ev": events}, streams, feats, obs, timestamp="ts")
    scope = oracle_training_set({"ev": events}, streams, feats, obs, timestamp="ts", in_scope=True)
    assert_features_equal(got["training"], want, [f.name for f in exact], context=f"{context} training_set")
    assert_sketches(got["training"], scope, feats, f"{context} training_set", ints)
    assert_fresh_lists(got["training"], feats, f"{context} training_set")
    for entity in ("user", "item"):
        ef = [f for f in feats if f.entity == entity]
        want = oracle_online({"ev": events}, streams, ef, entity, keys[entity])
        scope = oracle_online({"ev": events}, streams, ef, entity, keys[entity], in_scope=True)
        got_on = got[f"online_{entity}"]
        assert_features_equal(got_on, want, [f.name for f in ef if f.agg not in APPROX],
                              context=f"{context} online {entity}")
        assert_sketches(got_on, scope, ef, f"{context} online {entity}", ints)
        assert_fresh_lists(got_on, ef, f"{context} online {entity}")


@pytest.mark.parametrize("seed,key_kind", [(21, "str"), (22, "int"), (23, "mixed")])
def test_matches_oracle_backfill_and_reopen(tmp_path, seed, key_kind):
    events = random_events(seed, 400, key_kind=key_kind)
    feats = feature_set(np.random.default_rng(seed), key_kind)
    obs = observations(events, seed)
    keys = {e: events[e].dropna().unique().tolist() + ["never", 12345] for e in ("user", "item")}
    names = [f.name for f in feats]
    path = tmp_path / "store"

    def read_all(store) -> dict:
        out = {"training": store.training_set(obs, features=names, timestamp="ts")}
        for entity in ("user", "item"):
            out[f"online_{entity}"] = store.get_features(entity, keys[entity],
                                                         features=[f.name for f in feats if f.entity == entity])
        return out

    with rayfs.FeatureStore.open(path, shards=3, durability="none", snapshot_every=5) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        for f in feats[::2]:
            store.register_feature(f)
        ingest_in_batches(store, events.iloc[:250], seed)
        for f in feats[1::2]:  # registered after events exist: backfilled from the log
            store.register_feature(f)
        ingest_in_batches(store, events.iloc[250:], seed + 1)
        live = read_all(store)
        check(live, events, feats, obs, keys, f"seed {seed} live", key_kind)
    with rayfs.FeatureStore.open(path) as store:  # snapshot round trip
        reopened = read_all(store)
        for k in live:
            cols = names if k == "training" else [f.name for f in feats if f.entity == k.split("_")[1]]
            assert_features_equal(reopened[k], live[k], cols, rtol=0, context=f"seed {seed} reopened {k}")
        more = random_events(seed + 50, 60, key_kind=key_kind)
        store.ingest("ev", more)
        check(read_all(store), pd.concat([events, more], ignore_index=True), feats, obs, keys,
              f"seed {seed} reopened + more", key_kind)


# ------------------------------------------------------------------------------------------------ big sketches


def test_sketches_beyond_their_exact_range(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    ev = pd.DataFrame({"user": ["big"] * n + ["small"] * 50,
                       "x": np.concatenate((rng.lognormal(0, 1.5, n), rng.normal(size=50))),
                       "s": [f"v{i}" for i in rng.integers(0, 2500, n + 50)],
                       "ts": T - pd.to_timedelta(rng.integers(0, 48 * 3600, n + 50), unit="s")})
    feats = [F("aq", "approx_quantile", "x", q=0.5), F("aq99_1d", "approx_quantile", "x", q=0.99, window="1d"),
             F("aq0", "approx_quantile", "x", q=0.0), F("acd", "approx_count_distinct", "s"),
             F("acd_1d", "approx_count_distinct", "s", window="1d")]
    names = [f.name for f in feats]
    streams = {"ev": rayfs.Stream(name="ev", entities=("user",), timestamp="ts")}
    newest = ev["ts"].max() + US  # the online values are as of just after the newest event
    obs = pd.DataFrame({"user": ["big", "big", "big", "small", "big"],
                        "ts": [newest, T - 20 * H, T - 47 * H, newest, T + 25 * H]})
    scope = oracle_training_set({"ev": ev}, streams, feats, obs, timestamp="ts", in_scope=True)
    on_scope = oracle_online({"ev": ev}, streams, feats, "user", ["big", "small"], in_scope=True)
    path = tmp_path / "s"
    with rayfs.FeatureStore.open(path, shards=2, durability="none") as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for f in feats:
            store.register_feature(f)
        for part in np.array_split(np.arange(len(ev)), 4):
            store.ingest("ev", ev.iloc[part])
        got = store.training_set(obs, features=names, timestamp="ts")
        online = store.get_features("user", ["big", "small"], features=names)
    assert_sketches(got, scope, feats, "training_set")  # HLL equal to datasketches, KLL within its bound
    assert_sketches(online, on_scope, feats, "online")
    assert got["aq0"][0] == ev["x"][ev["user"] == "big"].min() == online["aq0"][0]
    # HLL is deterministic however the events were batched: online equals the training set just after
    assert online["acd"][0] == got["acd"][0] and online["acd_1d"][0] == got["acd_1d"][0]
    with rayfs.FeatureStore.open(path) as store:
        again = store.get_features("user", ["big", "small"], features=names)
        assert_features_equal(again, online, ["aq", "aq0", "acd", "acd_1d"], rtol=0,
                              context="reopened: lifetime sketches restored from the snapshot")
        for f in feats:  # windowed KLL folds at read time: same bound, not necessarily the same value
            assert approx_error(f.agg, again[f.name][0], on_scope[f.name][0], f.q) is None, f.name


def test_the_differential_suites_cover_every_registered_aggregate():
    """Training sets use each aggregate's range_query, online reads its folds: the end-to-end comparisons with
    the oracle (this file and test_oracle_differential.py) must exercise every aggregate in the registry."""
    from rayfs.aggregates import REGISTRY
    from tests.ray import test_oracle_differential as basic

    def cases(test) -> list[tuple]:  # the (seed, key kind) pairs the test runs with
        return next(m.args[1] for m in test.pytestmark if m.name == "parametrize")

    covered = {f.agg for seed, kind in cases(test_matches_oracle_backfill_and_reopen)
               for f in feature_set(np.random.default_rng(seed), kind)}
    covered |= {f.agg for seed, _ in cases(basic.test_matches_oracle_and_survives_reopen)
                for f in basic.feature_set(seed)}
    assert covered == set(REGISTRY), sorted(set(REGISTRY) - covered)
