"""Subscribing streams to Kafka topics against a real broker: values, formats, dead letters, status.

Every test compares the store with the oracle (:mod:`rayfs.testing`) over exactly the messages produced.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.testing import assert_features_equal, oracle_online, oracle_training_set

from .conftest import Producer, consumer_timings, create_topic

STREAM = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"),
    rayfs.Feature(name="last_x", stream="ev", entity="user", agg="last", column="x"),
    rayfs.Feature(name="n_1h", stream="ev", entity="user", agg="count", window="1h"),
]
USERS = [f"u{i}" for i in range(30)]
T0 = 1_700_000_000.0


def events(seed: int, n: int) -> pd.DataFrame:
    """``n`` events with distinct times, shuffled (event time is not arrival order)."""
    rng = np.random.default_rng(seed)
    ts = T0 + rng.permutation(n) * 7.0 + 0.5
    return pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), n)], "ts": ts,
                         "x": rng.integers(1, 100, n).astype(np.float64)})


def open_store(path, **kw) -> rayfs.FeatureStore:
    store = rayfs.FeatureStore.open(path, shards=2, **kw)
    store.register_stream("ev", entities=["user"], timestamp="ts")
    for f in FEATURES:
        store.register_feature(f)
    return store


def check_against_oracle(store: rayfs.FeatureStore, ev: pd.DataFrame, context: str) -> None:
    """Online values and a training set equal the oracle's over ``ev`` (order: by (partition, offset))."""
    streams = {"ev": STREAM}
    names = [f.name for f in FEATURES]
    got = store.get_features("user", USERS, names)
    assert_features_equal(got, oracle_online({"ev": ev}, streams, FEATURES, "user", USERS), names, context=context)
    rng = np.random.default_rng(7)
    obs = pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), 200)],
                        "ts": T0 + rng.random(200) * 7.0 * len(ev)})
    ts_got = store.training_set(obs, names)
    assert_features_equal(ts_got, oracle_training_set({"ev": ev}, streams, FEATURES, obs, timestamp="ts"), names,
                          context=context)


def in_offset_order(sent: list[tuple[int, dict]], partitions: int) -> pd.DataFrame:
    """The events in the order the store applies them: partition by partition, offsets ascending."""
    rows = [e for p in range(partitions) for q, e in sent if q == p]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("catch_up", [0, 1])  # 1: the history is read by record batches (rayfs.sources.fetch)
def test_json_subscription_matches_oracle_with_dead_letters(tmp_path, bootstrap, topic, catch_up):
    create_topic(bootstrap, topic, 3)
    ev = events(1, 3000)
    prod = Producer(bootstrap, topic)
    sent: list[tuple[int, dict]] = []
    bad = {5: b"{not json", 17: b"[1, 2]", 40: b'{"ts": 1.0, "x": 1}', 41: b'{"user": "u1", "x": 2}',
           42: b'{"user": "u1", "ts": 5.0, "x": "a string"}', 43: b'{"user": {"a": 1}, "ts": 5.0}', 44: None}
    for i, row in enumerate(ev.to_dict("records")):
        p = i % 3
        if i in bad:
            prod.send(p, bad[i], key=f"k{i}".encode())
        prod.send(p, row)
        sent.append((p, row))
    prod.finish()
    with open_store(tmp_path / "s") as store:
        src = rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2, max_batch_rows=500,
                                catch_up=catch_up)
        store.subscribe("ev", src)
        store.subscribe("ev", src)  # the same again: a no-op
        store.wait_caught_up("ev", timeout=120)
        by_catch_up = sum(consumer_timings(store, "ev", i)["catch_up_messages"] for i in range(2))
        assert by_catch_up == (len(ev) + len(bad) if catch_up else 0)
        check_against_oracle(store, in_offset_order(sent, 3), "json")
        dead = store.dead_letters("ev")
        assert len(dead) == len(bad)
        assert sorted(dead["key"]) == sorted(f"k{i}".encode() for i in bad)
        assert set(dead.columns) >= {"topic", "partition", "offset", "key", "value", "reason"}
        reasons = dict(zip(dead["key"], dead["reason"], strict=True))
        assert "not valid JSON" in reasons[b"k5"] and "not a JSON object" in reasons[b"k17"]
        assert "lacks entity 'user'" in reasons[b"k40"] and "lacks timestamp 'ts'" in reasons[b"k41"]
        assert "column 'x' holds numbers" in reasons[b"k42"] and "entity 'user'" in reasons[b"k43"]
        assert "tombstone" in reasons[b"k44"]
        assert dead.loc[dead["key"] == b"k5", "value"].iloc[0] == b"{not json"
        subs = store.subscriptions()
        assert list(subs["partition"]) == [0, 1, 2]
        assert (subs["lag"] == 0).all() and (subs["state"] == "running").all()
        assert subs["events"].sum() == len(ev) and subs["dead_letters"].sum() == len(bad)
        assert subs["pid"].nunique() == 2 and (subs["next_offset"] == subs["high_watermark"]).all()
        with pytest.raises(rayfs.SourceError, match="unsubscribe it first"):
            store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap))
        store.unsubscribe("ev")
        assert store.subscriptions().empty
        # bad subscriptions: nothing is recorded
        with pytest.raises(rayfs.SourceError, match="no such topic|UNKNOWN_TOPIC"):
            store.subscribe("ev", rayfs.KafkaSource(topic="never-made-" + topic, bootstrap_servers=bootstrap))
        with pytest.raises(rayfs.UnknownStreamError):
            store.subscribe("nope", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap))
        with pytest.raises(rayfs.SourceError, match="not subscribed"):
            store.wait_caught_up("ev")
        assert store.subscriptions().empty


@pytest.mark.parametrize("catch_up", [0, 1])
def test_msgpack_with_kafka_timestamps(tmp_path, bootstrap, topic, catch_up):
    create_topic(bootstrap, topic, 2)
    ev = events(2, 800)
    prod = Producer(bootstrap, topic)
    sent = []
    for i, row in enumerate(ev.to_dict("records")):
        ms = int(row["ts"] * 1000)
        prod.send(i % 2, msgpack.packb({"user": row["user"], "x": row["x"]}), timestamp_ms=ms)
        sent.append((i % 2, {**row, "ts": ms / 1000.0}))
    prod.finish()
    with open_store(tmp_path / "s") as store:
        store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, format="msgpack",
                                                timestamp="kafka", catch_up=catch_up))
        store.wait_caught_up("ev", timeout=120)
        check_against_oracle(store, in_offset_order(sent, 2), "msgpack")
        assert store.dead_letters("ev").empty


def test_start_latest_reads_only_new_messages(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 1)
    ev = events(3, 200)
    rows = ev.to_dict("records")
    prod = Producer(bootstrap, topic)
    for row in rows[:100]:
        prod.send(0, row)
    prod.finish()
    with open_store(tmp_path / "s") as store:
        store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, start="latest"))
        for row in rows[100:]:  # without "x" (a column features read): the events count, x is null
            prod.send(0, {k: v for k, v in row.items() if k != "x"})
        prod.finish()
        store.wait_caught_up("ev", timeout=120)
        assert store.dead_letters("ev").empty
        check_against_oracle(store, pd.DataFrame(rows[100:]).assign(x=np.nan), "latest, no x")


def test_intent_ids_are_the_ids_the_shards_applied(tmp_path, bootstrap, topic):
    """Recovery re-sends an intent under its recorded batch id: that id must be the one the shards applied,
    also for the batches after one that held only dead letters (re-sending every intent changes nothing)."""
    from rayfs.sources.offsets import OffsetsLog, consumer_dir

    create_topic(bootstrap, topic, 1)
    ev = events(4, 40)
    rows = ev.to_dict("records")
    prod = Producer(bootstrap, topic)
    for row in rows[:20]:
        prod.send(0, row)
    for i in range(5):  # with batches of 5 read from a backlog: one batch of dead letters only
        prod.send(0, b"not an event %d" % i)
    for row in rows[20:]:
        prod.send(0, row)
    prod.finish()
    path = tmp_path / "s"
    with open_store(path) as store:
        store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, max_batch_rows=5))
        store.wait_caught_up("ev", timeout=120)
        assert len(store.dead_letters("ev")) == 5
    log = OffsetsLog(consumer_dir(str(path), "ev", 0), {0: 0})
    intents = [r for _, r in log.log.read() if r["t"] == "intent"]
    log.close()
    assert len(intents) == 9 and not intents[4]["n"]  # 8 batches of events, one of dead letters only
    with rayfs.FeatureStore.open(path) as store:
        good = iter(rows)
        for rec in intents:
            (_, first, end), = rec["r"]
            batch = [next(good) for _ in range(rec["n"][0][1])] if rec["n"] else []
            if batch:
                store.ingest("ev", pd.DataFrame(batch), batch_id=rec["id"])  # dropped: applied already
        store.wait_caught_up("ev", timeout=120)
        check_against_oracle(store, ev, "after re-sending every intent")
