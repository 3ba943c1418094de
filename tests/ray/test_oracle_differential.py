"""rayfs against the brute-force oracle on randomized adversarial data (real Ray, files, LMDB).

Every rule of the core contract is exercised: events at exactly the observation time and at exactly
the window boundary (timestamps on a 6-hour grid, windows of 6h/1d), nulls in values and keys, ties in
time (first/last by ingest order), shuffled arrival in random batch sizes, string/int/mixed keys,
entities never seen, and reopen after close.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.testing import assert_features_equal, oracle_online, oracle_training_set
from rayfs.workload import random_events

NUM_AGGS = ["count", "sum", "mean", "min", "max", "count_distinct", "stddev", "variance", "first", "last"]
STR_AGGS = ["count", "min", "max", "count_distinct", "first", "last"]
WHERES = [None, "x > 1", "s IS NULL OR x <= 0", "s = 'p' AND NOT (x < 0)"]


def feature_set(seed: int) -> list[rayfs.Feature]:
    rng = np.random.default_rng(seed)
    feats = [rayfs.Feature(name="n_rows", stream="ev", entity="user", agg="count"),
             rayfs.Feature(name="n_rows_1d", stream="ev", entity="user", agg="count", window="1d"),
             rayfs.Feature(name="item_rows_6h", stream="ev", entity="item", agg="count", window="6h")]
    for col, aggs in (("x", NUM_AGGS), ("s", STR_AGGS)):
        for agg in aggs:
            for window in (None, "6h", "1d", "2d"):
                where = WHERES[rng.integers(len(WHERES))]
                entity = "user" if rng.random() < 0.75 else "item"
                name = f"{entity}_{agg}_{col}_{window or 'life'}"
                feats.append(rayfs.Feature(name=name, stream="ev", entity=entity, agg=agg, column=col,
                                           window=window, where=where))
    return feats


def observations(events: pd.DataFrame, seed: int, n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = events["user"].dropna().unique().tolist() + [None, "never", 999]
    items = events["item"].dropna().unique().tolist() + [None, "nope"]
    grid = np.unique(events["ts"].to_numpy())
    ts = np.concatenate([grid[rng.integers(0, len(grid), n // 2)],  # exactly at event times
                         grid.min() - 3600 + rng.random(n - n // 2) * (grid.max() - grid.min() + 3 * 86400)])
    return pd.DataFrame({"user": pd.Series([users[i] for i in rng.integers(0, len(users), n)], dtype=object),
                         "item": pd.Series([items[i] for i in rng.integers(0, len(items), n)], dtype=object),
                         "ts": ts})


def ingest_in_random_batches(store, events: pd.DataFrame, seed: int) -> None:
    rng = np.random.default_rng(seed)
    i = 0
    while i < len(events):
        size = int(rng.integers(1, 60))
        batch = events.iloc[i:i + size]
        form = rng.integers(3)
        if form == 0:
            store.ingest("ev", batch)
        elif form == 1:
            store.ingest("ev", batch.to_dict("records"))
        else:
            store.ingest("ev", {c: batch[c].to_numpy() for c in batch.columns})
        i += size


def check(store, events, feats, obs, context):
    streams = {"ev": rayfs.Stream(name="ev", entities=("user", "item"), timestamp="ts")}
    names = [f.name for f in feats]
    got = store.training_set(obs, features=names, timestamp="ts")
    want = oracle_training_set({"ev": events}, streams, feats, obs, timestamp="ts")
    assert list(got.columns) == list(obs.columns) + names
    assert_features_equal(got, want, names, context=f"{context} training_set")
    for entity in ("user", "item"):
        keys = events[entity].dropna().unique().tolist() + ["never", 12345]
        efeats = [f for f in feats if f.entity == entity]
        got = store.get_features(entity, keys, features=[f.name for f in efeats])
        want = oracle_online({"ev": events}, streams, efeats, entity, keys)
        assert_features_equal(got, want, [f.name for f in efeats], context=f"{context} online {entity}")


@pytest.mark.parametrize("seed,key_kind", [(1, "str"), (2, "int"), (3, "mixed")])
def test_matches_oracle_and_survives_reopen(tmp_path, seed, key_kind):
    events = random_events(seed, 400, key_kind=key_kind)
    feats = feature_set(seed)
    obs = observations(events, seed)
    path = tmp_path / "store"
    with rayfs.FeatureStore.open(path, shards=4) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        half = len(feats) // 2
        for f in feats[:half]:
            store.register_feature(f)
        ingest_in_random_batches(store, events.iloc[:250], seed)
        for f in feats[half:]:  # registered after events exist: backfilled from the log
            store.register_feature(f)
        ingest_in_random_batches(store, events.iloc[250:], seed + 100)
        check(store, events, feats, obs, f"seed {seed} live")
    with rayfs.FeatureStore.open(path) as store:  # snapshot + log tail
        check(store, events, feats, obs, f"seed {seed} reopened")
        more = random_events(seed + 7, 80, key_kind=key_kind)
        store.ingest("ev", more)
        check(store, pd.concat([events, more], ignore_index=True), feats, obs, f"seed {seed} reopened+more")


def test_online_equals_training_set_just_after_newest_event(tmp_path):
    events = random_events(11, 300)
    feats = feature_set(11)
    with rayfs.FeatureStore.open(tmp_path / "s", shards=3) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        for f in feats:
            store.register_feature(f)
        store.ingest("ev", events)
        keys = events["user"].dropna().unique().tolist()
        names = [f.name for f in feats if f.entity == "user"]
        online = store.get_features("user", keys, features=names)
        t = pd.Timestamp(events["ts"].max(), unit="s") + pd.Timedelta(microseconds=1)
        obs = pd.DataFrame({"user": keys, "ts": [t] * len(keys)})
        offline = store.training_set(obs, features=names, timestamp="ts")
        assert_features_equal(online, offline, names, rtol=0, context="online vs offline")
