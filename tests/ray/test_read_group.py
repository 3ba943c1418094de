"""Reads through a shard actor answer while every thread of its default concurrency group waits for the shard's
lock (as ingests, replays and definitions do behind a long holder), and while every thread of its group of
reads that may wait for the lock does too.

The calls that fill the default group run a function in the actor (``__ray_call__``, which runs in the
default group unless told otherwise) that notes it started, then takes the shard's lock and holds it until a
file exists.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import traceback
import uuid

import numpy as np
import pandas as pd
import pytest
import ray

import rayfs
from rayfs.shard.actor import CONCURRENCY_GROUPS, MAX_CONCURRENCY, READS, STATE_READS, ShardService
from rayfs.storage.online import meta_of, rows_to_values
from rayfs.store.reads import REMOTE_TABLE, LocalTables

T0 = 1_704_067_200  # 2024-01-01 UTC, epoch seconds
USERS = [f"u{i}" for i in range(6)]
KEYS = [*USERS, "nobody"]
ANSWER_S = 60  # a read that waits for a free thread waits until the lock is let go: it never answers in time


def _hold_lock(shard: ShardService, started: str, gate: str) -> int:
    """Note that this call runs (a file in ``started``), then hold the shard's lock until ``gate`` exists."""
    with open(os.path.join(started, uuid.uuid4().hex), "w"):
        pass
    with shard.lock:
        while not os.path.exists(gate):
            time.sleep(0.01)
    return os.getpid()


def _running(shard: ShardService, method: str) -> int:
    """How many of the shard's threads are inside ``method`` now."""
    del shard  # the call runs in the shard's process; its threads are all this needs
    return sum(any(f.f_code.co_name == method for f, _ in traceback.walk_stack(frame))
               for frame in sys._current_frames().values())


def _wait_running(started: str, n: int) -> None:
    """Wait until ``n`` calls noted they run (a generous bound only so that a broken actor fails the test)."""
    deadline = time.monotonic() + 120
    while len(os.listdir(started)) < n:
        assert time.monotonic() < deadline, f"only {len(os.listdir(started))} of {n} calls started"
        time.sleep(0.01)


def _raw_counts(handle, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Feature ``key`` of every key of :data:`KEYS` as the shard's actor reads it for another node:
    (present, values of the present keys)."""
    ask = pickle.dumps([("ev", "user", KEYS)], protocol=pickle.HIGHEST_PROTOCOL)
    meta, rows = pickle.loads(ray.get(handle.get_online_raw.remote(ask), timeout=ANSWER_S))
    return rows_to_values(meta_of(meta), {"ev": [key]}, "user", rows)["values"][key]


def _events(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    users = np.empty(len(USERS), dtype=object)
    users[:] = USERS
    return pd.DataFrame({"user": users[rng.integers(0, len(USERS), n)],
                         "ts": T0 + rng.integers(0, 3_600, n),
                         "x": rng.integers(0, 100, n).astype(float)})


@pytest.mark.timeout(600)
def test_reads_answer_while_every_lock_taking_thread_waits_for_the_lock(tmp_path, monkeypatch):
    df = _events(14, 200)
    store = rayfs.FeatureStore.open(tmp_path / "s", shards=1, online_table=True)
    gate = tmp_path / "gate"
    held: list = []
    waiting: list = []
    try:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(rayfs.Feature(name="n", stream="ev", entity="user", agg="count"))
        store.register_feature(rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"))
        store.ingest("ev", df)
        fkeys = {f.name: f.key for f in (store.features["n"], store.features["sum_x"])}
        by_user = df.groupby("user")["x"]
        want_n = np.array([by_user.count().get(u, 0) for u in KEYS])
        want_sum = np.array([by_user.sum().get(u, 0.0) for u in KEYS])
        (handle,) = store._handles

        started = tmp_path / "default"
        started.mkdir()
        held += [handle.__ray_call__.remote(_hold_lock, str(started), str(gate)) for _ in range(MAX_CONCURRENCY + 1)]
        _wait_running(str(started), MAX_CONCURRENCY)  # the default group is full: one holds the lock, 7 wait

        # A read from another node: the encoded rows of the shard's table.
        present, n = _raw_counts(handle, fkeys["n"])
        assert present.tolist() == [u != "nobody" for u in KEYS]
        assert n.tolist() == want_n[present].tolist()

        # A read that takes the lock only for a feature not in the table answers from the table.
        args = pickle.dumps(("user", np.array(KEYS, dtype=object), [fkeys["sum_x"]]), protocol=pickle.HIGHEST_PROTOCOL)
        present, sums = pickle.loads(ray.get(handle.get_online_packed.remote(args), timeout=ANSWER_S))["values"][
            fkeys["sum_x"]]
        assert sums.tolist() == want_sum[present].tolist()

        # A process's first read asks where the table is: that answers too.
        loc = ray.get(handle.table_location.remote(), timeout=ANSWER_S)
        assert loc["online_table"].endswith("online.lmdb") and loc["node_id"]

        # The store's read path as a driver on another node takes it: through the actor.
        monkeypatch.setattr(LocalTables, "readers", lambda self, handles: [REMOTE_TABLE] * len(handles))
        got = store.get_features("user", KEYS, ["n", "sum_x"])
        assert got["n"].tolist() == want_n.tolist()
        np.testing.assert_array_equal(got["sum_x"].to_numpy(), np.where(want_n > 0, want_sum, np.nan))

        # Reads that wait for the lock (here: of a feature the shard does not know, as for one being backfilled)
        # fill their own group, not that of the lock-free reads.
        unknown = pickle.dumps(("user", np.array(KEYS, dtype=object), ["nope@1"]), protocol=pickle.HIGHEST_PROTOCOL)
        waiting = [handle.get_online_packed.remote(unknown) for _ in range(CONCURRENCY_GROUPS[STATE_READS])]
        deadline = time.monotonic() + 120
        while ray.get(handle.__ray_call__.options(concurrency_group=READS).remote(_running, "get_online_packed"),
                      timeout=ANSWER_S) < len(waiting):
            assert time.monotonic() < deadline, "the reads of an unknown feature did not start"
            time.sleep(0.01)
        present, n = _raw_counts(handle, fkeys["n"])
        assert n.tolist() == want_n[present].tolist()
    finally:
        gate.touch()  # every holder lets go; the queued calls run and return
        ray.get(held, timeout=300)
        for ref in waiting:
            with pytest.raises(rayfs.UnknownFeatureError, match="nope@1"):
                ray.get(ref, timeout=300)
        store.close()
