"""What a user sees while a shard is down for a while, and that the subscription recovers without loss.

Shard 0's process is SIGKILLed and its folder lock held by the test, so that Ray's restart of the shard
waits (the way a shard waits for its disk or node to come back). Meanwhile messages keep arriving: the
consumer cannot hand its batch to the store and retries it under the same batch id, in state
``retrying`` with the reason in ``error``, as ``subscriptions()`` shows. Once the lock is released the
shard comes back, the consumer returns to ``running``, and the store equals the oracle over every message.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd

import rayfs
from rayfs.storage.locks import wait_lock
from rayfs.testing import assert_features_equal, kill_shard, oracle_online

from .conftest import Producer, create_topic

STREAM = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
FEATURES = [rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
            rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x")]
NAMES = [f.name for f in FEATURES]
USERS = [f"u{i}" for i in range(20)]
T0 = 1_700_000_000.0


def test_shard_down_for_a_while_shows_retrying_then_recovers(tmp_path, bootstrap, topic):
    create_topic(bootstrap, topic, 2)
    rng = np.random.default_rng(21)
    n = 3000
    ev = pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), n)],
                       "ts": T0 + rng.permutation(n) * 2.0 + 0.5, "x": rng.integers(1, 50, n).astype(np.float64)})
    rows = ev.to_dict("records")
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for f in FEATURES:
            store.register_feature(f)
        store.subscribe("ev", rayfs.KafkaSource(topic=topic, bootstrap_servers=bootstrap, max_batch_rows=200))
        prod = Producer(bootstrap, topic)
        for i, row in enumerate(rows[:1000]):
            prod.send(i % 2, row)
        prod.finish()
        store.wait_caught_up("ev", timeout=120)

        kill_shard(store, 0)
        lock = wait_lock(os.path.join(store.path, "shards", "shard-000", "LOCK"), 30)
        assert lock is not None
        try:
            for i, row in enumerate(rows[1000:2000], start=1000):
                prod.send(i % 2, row)
            prod.finish()
            seen = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                subs = store.subscriptions()
                seen.append(set(subs["state"]))
                if (subs["state"] == "retrying").all():
                    break
                time.sleep(0.1)
            assert (subs["state"] == "retrying").all(), seen
            assert subs["error"].str.contains("retrying").all(), list(subs["error"])
            assert (subs["lag"] > 0).any(), subs
        finally:
            lock.close()  # the shard's restart proceeds

        for i, row in enumerate(rows[2000:], start=2000):
            prod.send(i % 2, row)
        prod.finish()
        store.wait_caught_up("ev", timeout=120)
        subs = store.subscriptions()
        assert (subs["state"] == "running").all() and subs["error"].isna().all(), subs
        assert subs["events"].sum() == n and (subs["lag"] == 0).all(), subs
        order = [r for p in range(2) for i, r in enumerate(rows) if i % 2 == p]  # (partition, offset) order
        assert_features_equal(store.get_features("user", USERS, NAMES),
                              oracle_online({"ev": pd.DataFrame(order)}, {"ev": STREAM}, FEATURES, "user", USERS),
                              NAMES, context="after the shard came back")
