"""Observation streams (labels) subscribed to Kafka topics, against a real broker.

Labels produced to a topic feed ``training_set("labels", ...)``: the training set equals the oracle's over
exactly the good labels produced, bad messages are dead letters, and SIGKILLed consumers or a reopened
store neither lose nor double a label. Every label carries a unique ``id`` so that a lost or doubled one
shows; the training set is compared row by row after ordering by it.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.model.timeutil import to_micros
from rayfs.testing import assert_features_equal, oracle_training_set

from .conftest import Producer, consumer_pid, create_topic, open_event_store

STREAM = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"),
    rayfs.Feature(name="n_1h", stream="ev", entity="user", agg="count", window="1h"),
]
NAMES = [f.name for f in FEATURES]
USERS = [f"u{i}" for i in range(40)]
T0 = 1_700_000_000.0
N_EVENTS = 5000


def events(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), N_EVENTS)],
                         "ts": T0 + rng.permutation(N_EVENTS) * 5.0 + 0.5,
                         "x": rng.integers(1, 100, N_EVENTS).astype(np.float64)})


def labels(seed: int, n: int, first_id: int = 0) -> pd.DataFrame:
    """``n`` labels at times among the events' (never equal to one), each with a unique id."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"id": np.arange(first_id, first_id + n, dtype=np.int64),
                         "user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), n)],
                         "ts": T0 + rng.integers(0, N_EVENTS, n) * 5.0 + 2.0,
                         "label": rng.integers(0, 2, n).astype(np.float64)})


def open_store(path) -> rayfs.FeatureStore:
    return open_event_store(path, FEATURES)


def check_training_set(store: rayfs.FeatureStore, ev: pd.DataFrame, lab: pd.DataFrame, context: str) -> None:
    """``training_set("labels")`` holds every label of ``lab`` exactly once, with the oracle's values."""
    got = store.training_set("labels", NAMES)
    ids = got["id"].to_numpy(dtype=np.int64)
    assert len(ids) == len(set(ids)), f"{context}: doubled labels {pd.Series(ids).value_counts().head()}"
    assert sorted(ids) == sorted(lab["id"]), f"{context}: {len(ids)} labels, expected {len(lab)}"
    got = got.sort_values("id", kind="stable").reset_index(drop=True)
    lab = lab.sort_values("id", kind="stable").reset_index(drop=True)
    assert (got["user"].to_numpy(dtype=object) == lab["user"].to_numpy(dtype=object)).all(), context
    assert (got["label"].to_numpy() == lab["label"].to_numpy()).all(), context
    assert (to_micros(got["ts"]) == to_micros(lab["ts"])).all(), context
    assert_features_equal(got, oracle_training_set({"ev": ev}, {"ev": STREAM}, FEATURES, lab, timestamp="ts"),
                          NAMES, context=context)


def test_labels_from_a_topic_feed_training_sets(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 3)
    ev = events(1)
    lab = labels(2, 2400)
    bad = {7: b"{not json", 30: b'{"id": -1, "ts": 1700000001.0, "label": 1}',
           31: b'{"id": -2, "user": "u1", "label": 1}', 32: b'{"id": -3, "user": 1.5, "ts": 1700000001.0}',
           33: b'{"id": -4, "user": "u1", "ts": 1700000001.0, "label": {"a": 1}}',
           34: b'{"id": -5, "user": "u1", "ts": {"a": 1}}', 35: None}
    prod = Producer(bootstrap, topic)
    for i, row in enumerate(lab.to_dict("records")):
        if i in bad:
            prod.send(i % 3, bad[i], key=f"k{i}".encode())
        prod.send(i % 3, row)
    prod.finish()
    with open_store(tmp_path / "s") as store:
        store.ingest("ev", ev)
        src = rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2, max_batch_rows=400)
        store.subscribe("labels", src, observation_keys=["user"])
        store.subscribe("labels", src, observation_keys=["user"])  # the same again: a no-op
        store.wait_caught_up("labels", timeout=120)
        check_training_set(store, ev, lab, "labels from Kafka")
        # labels appended directly join those from Kafka in the same stream
        more = labels(3, 50, first_id=10_000)
        store.append_observation("labels", more)
        check_training_set(store, ev, pd.concat([lab, more], ignore_index=True), "Kafka and direct labels")

        dead = store.dead_letters("labels")
        reasons = dict(zip(dead["key"], dead["reason"], strict=True))
        assert sorted(reasons) == sorted(f"k{i}".encode() for i in bad)
        assert "not valid JSON" in reasons[b"k7"] and "lacks entity 'user'" in reasons[b"k30"]
        assert "lacks timestamp 'ts'" in reasons[b"k31"] and "entity 'user'" in reasons[b"k32"]
        assert "column 'label' holds a nested" in reasons[b"k33"] and "timestamp 'ts'" in reasons[b"k34"]
        assert "tombstone" in reasons[b"k35"]
        subs = store.subscriptions()
        assert list(subs["stream"]) == ["labels"] * 3 and (subs["lag"] == 0).all()
        assert subs["events"].sum() == len(lab) and subs["dead_letters"].sum() == len(bad)
        assert (subs["state"] == "running").all()

        with pytest.raises(rayfs.SourceError, match="unsubscribe it first"):
            store.subscribe("labels", src, observation_keys=["user", "id"])
        with pytest.raises(rayfs.DefinitionError, match="event stream"):
            store.subscribe("ev", src, observation_keys=["user"])
        with pytest.raises(rayfs.SourceError, match="observation"):
            store.subscribe("other", src, observation_keys=[])
        with pytest.raises(rayfs.SourceError, match="timestamp"):
            store.subscribe("ev", src, timestamp="ts")


def test_sigkill_consumers_and_reopen_while_labels_arrive(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 4)
    ev = events(4)
    lab = labels(5, 12_000)
    rows = lab.to_dict("records")
    rng = np.random.default_rng(6)
    path = tmp_path / "s"
    store = open_store(path)
    try:
        store.ingest("ev", ev)
        # catch_up=1: a consumer restarted behind reads that history by record batches, then librdkafka
        store.subscribe("labels", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2,
                                                    max_batch_rows=300, max_delay=0.02, catch_up=1),
                        observation_keys=["user"])
        prod = Producer(bootstrap, topic)
        kills = []
        chunks = np.array_split(np.arange(len(rows)), 12)
        for j, chunk in enumerate(chunks):
            for i in chunk:
                prod.send(int(i) % 4, rows[int(i)])
            prod.p.flush(60)
            time.sleep(float(rng.uniform(0.05, 0.4)))  # the kill lands anywhere in the consumer's loop
            if j % 4 == 1:
                c = int(rng.integers(0, 2))
                pid = consumer_pid(store, "labels", c)
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
                while consumer_pid(store, "labels", c) == pid:
                    time.sleep(0.05)
            elif j == 6:
                store.close()  # the subscription stops with the store and resumes where it stopped
                store = rayfs.FeatureStore.open(path)
        prod.finish()
        store.wait_caught_up("labels", timeout=180)
        check_training_set(store, ev, lab, f"after SIGKILLs {kills} and a reopen")
        subs = store.subscriptions()
        assert subs["events"].sum() == len(lab) and (subs["lag"] == 0).all(), subs
    finally:
        store.close()


def test_label_kinds_and_times_agree_with_direct_appends(tmp_path, bootstrap, topic):
    """A label column holds one kind: in a first batch most values decide and only the others are dead
    letters; later batches and direct appends keep that kind. Integer labels stay int64 as appended directly,
    and epoch seconds and ISO-8601 times share a batch."""
    create_topic(bootstrap, topic, 1)
    prod = Producer(bootstrap, topic)
    first = [{"id": 0, "user": "u1", "ts": T0 + 10, "amount": "4", "clicks": 1},
             {"id": 1, "user": "u2", "ts": "2023-11-14T22:13:40Z", "amount": 5, "clicks": 0},
             {"id": 2, "user": "u1", "ts": T0 + 30, "amount": 6.5, "clicks": 2}]
    for row in first:
        prod.send(0, row, key=f"k{row['id']}".encode())
    prod.finish()
    with open_store(tmp_path / "s") as store:
        store.subscribe("labels", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, max_delay=0.5),
                        observation_keys=["user"])
        store.wait_caught_up("labels", timeout=60)
        later = [{"id": 3, "user": "u2", "ts": "2023-11-14T22:13:50.5Z", "amount": "7", "clicks": 3},
                 {"id": 4, "user": "u3", "ts": T0 + 60, "amount": 8, "clicks": 4}]
        prod = Producer(bootstrap, topic)
        for row in later:
            prod.send(0, row, key=f"k{row['id']}".encode())
        prod.finish()
        store.wait_caught_up("labels", timeout=60)
        dead = store.dead_letters("labels")
        assert sorted(dead["key"]) == [b"k0", b"k3"], dead
        assert all("column 'amount' holds numbers" in r for r in dead["reason"])
        with pytest.raises(rayfs.SchemaError, match="'amount'"):  # a direct append agrees with Kafka's labels
            store.append_observation("labels", {"id": 9, "user": "u1", "ts": T0 + 70, "amount": "9", "clicks": 9})
        store.append_observation("direct", [{k: v for k, v in r.items() if k != "ts"} | {"ts": T0}
                                            for r in first[1:] + later[1:]])
        got = store.training_set("labels", NAMES)
        assert got["id"].tolist() == [1, 2, 4] and got["amount"].tolist() == [5.0, 6.5, 8.0]
        assert to_micros(got["ts"]).tolist() == [int((T0 + d) * 1e6) for d in (20, 30, 60)]
        direct = store.observations("direct")
        for c in ("id", "clicks", "amount"):
            assert got[c].dtype == direct[c].dtype, c
        assert got["clicks"].dtype == np.int64
        assert store.training_set("labels", NAMES, output="arrow").num_rows == 3
