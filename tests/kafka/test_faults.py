"""Exactly once from Kafka under faults, against a real broker.

While a producer thread writes messages to several partitions, consumer processes and shard processes are
SIGKILLed at random moments, or the store is closed and reopened mid-stream; afterwards online values and a
training set equal the oracle over every message produced: nothing lost, nothing doubled. Randomness is
seeded; sleeps only randomise kill points; nothing asserts on timing.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

import rayfs
from rayfs.testing import assert_features_equal, kill_shard, oracle_online, oracle_training_set

from .conftest import Producer, consumer_pid, create_topic, open_event_store

STREAM = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
FEATURES = [  # counts and sums reveal a lost or doubled message; distinct times make order irrelevant
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"),
    rayfs.Feature(name="n_1d", stream="ev", entity="user", agg="count", window="1d"),
]
NAMES = [f.name for f in FEATURES]
USERS = [f"u{i}" for i in range(50)]
T0 = 1_700_000_000.0
PARTITIONS = 4


def make_events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), n)],
                         "ts": T0 + rng.permutation(n) * 3.0 + 0.25,
                         "x": rng.integers(1, 1000, n).astype(np.float64)})


def open_store(path) -> rayfs.FeatureStore:
    return open_event_store(path, FEATURES)


class Feeder(threading.Thread):
    """Produces ``ev`` to the topic in chunks with pauses, spreading rows over the partitions."""

    def __init__(self, bootstrap: str, topic: str, ev: pd.DataFrame, chunk: int = 400, pause: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.prod = Producer(bootstrap, topic)
        self.rows = ev.to_dict("records")
        self.chunk, self.pause = chunk, pause
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for lo in range(0, len(self.rows), self.chunk):
                for i, row in enumerate(self.rows[lo:lo + self.chunk], start=lo):
                    self.prod.send(i % PARTITIONS, row)
                self.prod.p.flush(60)
                time.sleep(self.pause)
            self.prod.finish()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc


def check(store: rayfs.FeatureStore, ev: pd.DataFrame, context: str) -> None:
    streams = {"ev": STREAM}
    assert_features_equal(store.get_features("user", USERS, NAMES),
                          oracle_online({"ev": ev}, streams, FEATURES, "user", USERS), NAMES, context=context)
    rng = np.random.default_rng(3)
    obs = pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), 300)],
                        "ts": T0 + rng.random(300) * 3.0 * len(ev)})
    assert_features_equal(store.training_set(obs, NAMES),
                          oracle_training_set({"ev": ev}, streams, FEATURES, obs, timestamp="ts"), NAMES,
                          context=context)
    subs = store.subscriptions()
    assert subs["events"].sum() == len(ev), f"{context}: {subs}"
    assert (subs["lag"] == 0).all(), f"{context}: {subs}"


# catch_up=1: every (re)start of a consumer behind its partitions reads that history by record batches
# first (rayfs.sources.fetch), then goes on through librdkafka; 0: librdkafka only.
@pytest.mark.parametrize("catch_up", [0, 1])
def test_sigkill_consumers_and_shards_while_producing(tmp_path, bootstrap, topic, catch_up):
    create_topic(bootstrap, topic, PARTITIONS)
    ev = make_events(11, 24_000)
    rng = np.random.default_rng(5)
    with open_store(tmp_path / "s") as store:
        store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2,
                                                max_batch_rows=300, max_delay=0.02, catch_up=catch_up))
        feeder = Feeder(bootstrap, topic, ev)
        feeder.start()
        kills = []
        while feeder.is_alive() or len(kills) < 6:
            time.sleep(float(rng.uniform(0.2, 1.2)))
            what = len(kills) % 3
            if what < 2:  # consumer 0 or 1: the process dies mid-whatever (polling, logging, ingesting)
                pid = consumer_pid(store, "ev", what)
                os.kill(pid, signal.SIGKILL)
                kills.append(("consumer", what, pid))
                while consumer_pid(store, "ev", what) == pid:
                    time.sleep(0.05)
            else:
                j = int(rng.integers(0, 2))
                kills.append(("shard", j, kill_shard(store, j)))
        feeder.join()
        assert feeder.error is None, feeder.error
        store.wait_caught_up("ev", timeout=180)
        check(store, ev, f"after kills {kills}")
        # the consumers' processes changed; the store's record of offsets is whole
        assert store.subscriptions()["state"].eq("running").all()


@pytest.mark.parametrize("catch_up", [0, 1])
def test_close_and_reopen_mid_stream(tmp_path, bootstrap, topic, catch_up):
    create_topic(bootstrap, topic, PARTITIONS)
    ev = make_events(12, 12_000)
    path = tmp_path / "s"
    store = open_store(path)
    store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, consumers=2,
                                            max_batch_rows=500, catch_up=catch_up))
    feeder = Feeder(bootstrap, topic, ev, pause=0.2)
    feeder.start()
    try:
        for _ in range(2):
            time.sleep(1.0)
            store.close()  # the subscription stops with the store...
            store = rayfs.FeatureStore.open(path)  # ...and resumes where it stopped
        feeder.join()
        assert feeder.error is None, feeder.error
        store.wait_caught_up("ev", timeout=180)
        check(store, ev, "after reopening")
    finally:
        store.close()
