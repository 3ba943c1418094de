"""Regressions pinned on a real store: typed reads of entity columns, per-stream batch
ids, observation streams whose timestamp type changes."""

from __future__ import annotations

import pandas as pd
import pytest

import rayfs


@pytest.fixture
def store(tmp_path):
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2, durability="none") as s:
        s.register_stream("ev", entities=["user", "post"], timestamp="ts")
        yield s


def offsets(store) -> list[int]:
    return [i["next_offset"] for i in store.info()]


def test_typed_read_of_an_entity_column_refuses_mixed_keys_whole(store):
    store.register_feature(rayfs.Feature(name="n_big", stream="ev", entity="user", agg="count", where="post > 5"))
    store.ingest("ev", pd.DataFrame({"user": ["u0", "u1"], "post": [7, 9], "ts": [1.0, 2.0]}))
    before = offsets(store)
    bad = pd.DataFrame({"user": ["u0", "u1"], "post": pd.Series([7, "p3"], dtype=object), "ts": [3.0, 4.0]})
    with pytest.raises(rayfs.SchemaError, match="post"):
        store.ingest("ev", bad)
    assert offsets(store) == before  # no shard logged any of it
    assert store.get_features("user", ["u0", "u1"], features=["n_big"])["n_big"].tolist() == [1, 1]


def test_untyped_reads_of_entity_columns_accept_mixed_keys(store):
    store.register_feature(rayfs.Feature(name="last_post", stream="ev", entity="user", agg="last", column="post"))
    store.register_feature(rayfs.Feature(name="n_posts", stream="ev", entity="user", agg="count_distinct",
                                         column="post"))
    store.ingest("ev", pd.DataFrame({"user": ["a", "b"], "post": [5, 6], "ts": [1.0, 2.0]}))
    got = store.get_features("user", ["a", "b", "zz"])
    assert got["last_post"].tolist() == [5, 6, None]  # integer keys stay integers
    store.ingest("ev", pd.DataFrame({"user": ["a"], "post": pd.Series(["5"], dtype=object), "ts": [3.0]}))
    got = store.get_features("user", ["a", "b", "zz"])
    assert got["last_post"].tolist() == ["5", 6, None]
    assert got["n_posts"].tolist() == [2, 1, 0]  # 5 and "5" are different posts
    with pytest.raises(rayfs.AggregateError, match="post"):  # min needs one type: the column now mixes them
        store.register_feature(rayfs.Feature(name="min_post", stream="ev", entity="user", agg="min", column="post"))


def test_batch_ids_are_per_stream(store):
    store.register_stream("buys", entities=["user"], timestamp="ts")
    store.register_feature(rayfs.Feature(name="n_ev", stream="ev", entity="user", agg="count"))
    store.register_feature(rayfs.Feature(name="n_buys", stream="buys", entity="user", agg="count"))
    store.ingest("ev", pd.DataFrame({"user": ["a"], "post": [1], "ts": [1.0]}), batch_id="2024-01-01")
    store.ingest("buys", pd.DataFrame({"user": ["a"], "ts": [1.0]}), batch_id="2024-01-01")
    store.ingest("buys", pd.DataFrame({"user": ["a"], "ts": [1.0]}), batch_id="2024-01-01")  # a retry
    assert store.get_features("user", ["a"]).iloc[0][["n_ev", "n_buys"]].tolist() == [1, 1]


def test_observation_stream_keeps_its_timestamp_type(store):
    store.register_feature(rayfs.Feature(name="n", stream="ev", entity="user", agg="count"))
    store.ingest("ev", pd.DataFrame({"user": ["a", "a"], "post": [1, 2], "ts": [1.0, 2.0]}))
    store.append_observation("obs", {"user": "a", "ts": 1.5})
    with pytest.raises(rayfs.SchemaError, match="ts"):
        store.append_observation("obs", {"user": "a", "ts": pd.Timestamp("2024-01-01")})
    store.append_observation("obs", {"user": 7, "ts": 3.0})  # keys may mix ints and strings
    got = store.training_set("obs", features=["n"])
    assert got["n"].tolist() == [1, 0]


def test_concurrent_metric_exports_add_each_delta_once(tmp_path):
    """Two replays answered at once by one shard (max_concurrency) both export its counters afterwards: each
    delta must reach the Prometheus counter once (the CI failure: replay_observations counted twice)."""
    import threading
    import time

    from rayfs.shard.actor import ShardService

    class SlowCounter:  # widens the window between reading the delta and recording it
        def __init__(self) -> None:
            self.total = 0.0

        def inc(self, v: float) -> None:
            time.sleep(0.01)
            self.total += v

    shard = ShardService(str(tmp_path / "shard"), 0, 1, [], [], durability="none")
    try:
        shard._counters = {k: SlowCounter() for k in shard._counters}
        shard._exported = dict.fromkeys(shard._counters, 0)
        shard.counters["replay_observations"] = 115
        threads = [threading.Thread(target=shard._export) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert shard._counters["replay_observations"].total == 115
    finally:
        shard.close()
