"""Durability and fault tolerance with real processes and real files (issue "Durability and fault tolerance").

* shard actors SIGKILLed at random moments during a long ingest while the client retries each batch with
  its batch id: the store equals the oracle over exactly the acknowledged batches (none lost, none doubled);
* the driver process SIGKILLed mid-ingest: after reopening, every acknowledged batch is there and every
  other batch is there completely or not at all;
* torn and garbled log tails are cut back to whole batches; damage in an older segment is an error naming
  the file and byte offset;
* a deleted or corrupt LMDB snapshot is rebuilt from the log;
* a batch id is applied once, also across close/reopen and shard crashes.

Randomness is seeded; sleeps only randomise kill points; nothing asserts on timing. Recovery times are
printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import ray

import rayfs
from rayfs.testing import (
    assert_features_equal,
    garble,
    kill_shard,
    log_segments,
    oracle_online,
    oracle_training_set,
    record_ends,
    shard_dir,
    shard_pids,
    truncate_tail,
    wait_store_released,
    worker_stderr,
)

STREAM = rayfs.Stream(name="ev", entities=("user", "batch"), timestamp="ts")
# count and sum reveal a doubled or lost batch; the per-batch count shows a half-applied one.
FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"),
    rayfs.Feature(name="max_x", stream="ev", entity="user", agg="max", column="x"),
    rayfs.Feature(name="n_1d", stream="ev", entity="user", agg="count", window="1d"),
    rayfs.Feature(name="batch_rows", stream="ev", entity="batch", agg="count"),
]
USER_FEATURES = [f for f in FEATURES if f.entity == "user"]
USERS = [f"u{i}" for i in range(40)]
T0 = 1_700_000_000.0


def make_batch(seed: int, b: int) -> pd.DataFrame:
    """Batch ``b``: 10-60 events of random users; ``batch`` is the batch's own entity key."""
    rng = np.random.default_rng([seed, b])
    n = int(rng.integers(10, 60))
    return pd.DataFrame({"user": np.array(USERS, dtype=object)[rng.integers(0, len(USERS), n)],
                         "batch": f"b{b}",
                         "ts": T0 + np.round(rng.random(n) * 5 * 86400, 3),
                         "x": rng.integers(1, 10, n).astype(np.float64)})


def setup_store(path, shards: int, *, reopen: bool = False, **kw) -> rayfs.FeatureStore:
    """A store with the stream and features registered; ``reopen`` closes and reopens it, so the shard
    actors are created knowing the definitions (see test_shard_crash_after_registering_in_this_session)."""
    store = rayfs.FeatureStore.open(path, shards=shards, **kw)
    store.register_stream("ev", entities=list(STREAM.entities), timestamp="ts")
    for f in FEATURES:
        store.register_feature(f)
    if reopen:
        store.close()
        store = rayfs.FeatureStore.open(path, **kw)
    return store


def observations(seed: int, n: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": np.array(USERS + ["nobody"], dtype=object)[rng.integers(0, len(USERS) + 1, n)],
                         "ts": T0 - 3600 + rng.random(n) * 6 * 86400})


def check_against_oracle(store, events: pd.DataFrame, batch_ids: list[str], context: str) -> None:
    """Online user features, a training set and the per-batch row counts equal the oracle over ``events``."""
    ev = {"ev": events}
    streams = {"ev": STREAM}
    names = [f.name for f in USER_FEATURES]
    keys = USERS + ["nobody"]
    assert_features_equal(store.get_features("user", keys, features=names),
                          oracle_online(ev, streams, USER_FEATURES, "user", keys), names,
                          context=f"{context} online")
    obs = observations(len(events))
    assert_features_equal(store.training_set(obs, features=names, timestamp="ts"),
                          oracle_training_set(ev, streams, USER_FEATURES, obs, timestamp="ts"), names,
                          context=f"{context} training set")
    got = store.get_features("batch", batch_ids, features=["batch_rows"])["batch_rows"].tolist()
    want = events.groupby("batch").size().reindex(batch_ids, fill_value=0).tolist()
    assert got == want, f"{context}: per-batch row counts {got} != {want}"


def concat(batches: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(batches, ignore_index=True) if batches else make_batch(0, 0).iloc[:0]


# ------------------------------------------------------------------------------------------------ 1
KILLS_PER_RUN = 11  # x2 durability modes: 22 shard kill points


@pytest.mark.parametrize("durability,seed", [("sync", 101), ("group", 202)])
def test_shard_sigkill_during_ingest_loses_and_doubles_nothing(tmp_path, durability, seed):
    shards = 2
    store = setup_store(tmp_path / "s", shards, reopen=True, durability=durability, snapshot_every=3)
    first_pids = shard_pids(store)
    kills: list[tuple[int, int]] = []
    killer_errors: list[BaseException] = []
    stop = threading.Event()

    def killer() -> None:
        rng = np.random.default_rng(seed + 1)
        while len(kills) < KILLS_PER_RUN and not stop.is_set():
            time.sleep(float(rng.uniform(0.0, 0.3)))  # a random moment of the ingest loop
            i = int(rng.integers(shards))
            # Now and then a burst: the same shard killed again as soon as it is back, so a pending ingest
            # exhausts Ray's task retries and the client has to retry the batch itself.
            for _ in range(6 if rng.random() < 0.3 else 1):
                try:
                    pid = kill_shard(store, i)  # waits for the shard to be back up after the previous kill
                except Exception as exc:  # noqa: BLE001 - the pid call itself may hit the dying actor
                    killer_errors.append(exc)
                    if len(killer_errors) > 50:
                        return
                    continue
                if pid is not None:
                    kills.append((i, pid))

    thread = threading.Thread(target=killer, name="shard-killer", daemon=True)
    acked: list[int] = []
    retries = 0
    deadline = time.monotonic() + 150
    thread.start()
    try:
        b = 0
        while thread.is_alive() or b < 20:
            assert time.monotonic() < deadline, f"ingest made no progress: {len(acked)} acked, {len(kills)} kills"
            batch = make_batch(seed, b)
            for attempt in range(30):
                try:
                    store.ingest("ev", batch, batch_id=f"b{b}")
                    break
                except Exception:  # noqa: BLE001 - RayActorError, RayTaskError, ...: retry the same id
                    retries += 1
                    time.sleep(0.05 * attempt)
            else:
                pytest.fail(f"batch b{b} never acknowledged after 30 attempts")
            acked.append(b)  # only once ingest has returned
            b += 1
    finally:
        stop.set()
        thread.join(timeout=60)
    assert len(kills) >= KILLS_PER_RUN, (kills, killer_errors[-3:])
    assert not set(shard_pids(store)) & set(first_pids)
    events = concat([make_batch(seed, b) for b in acked])
    ids = [f"b{b}" for b in acked] + ["b-never"]
    print(f"\n[faults] durability={durability}: {len(kills)} shard kills, {len(acked)} batches "
          f"({len(events)} events) acknowledged, {retries} client retries")
    check_against_oracle(store, events, ids, f"{durability} after {len(kills)} kills")
    store.close()
    with rayfs.FeatureStore.open(tmp_path / "s") as store:
        check_against_oracle(store, events, ids, f"{durability} reopened")


# ------------------------------------------------------------------------------------------------ 2
CHILD = r"""
import os, sys
import pandas as pd
import rayfs
from rayfs.testing import shard_pids

path, batches, first = sys.argv[1], pd.read_pickle(sys.argv[2]), int(sys.argv[3])
store = rayfs.FeatureStore.open(path)
print("pids", *shard_pids(store), flush=True)
for b in range(first, first + len(batches)):
    store.ingest("ev", batches[b - first], batch_id=f"b{b}")
    print("ack", b, flush=True)
print("done", flush=True)
"""


def test_driver_sigkill_mid_ingest_applies_each_batch_fully_or_not_at_all(tmp_path):
    seed, shards, per_round = 303, 2, 300
    path = tmp_path / "s"
    setup_store(path, shards).close()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    rng = np.random.default_rng(seed)
    present: list[int] = []  # batches found complete after a crash, in ingest order
    tried: list[int] = []
    for rnd in range(3):
        first = rnd * per_round
        batches = [make_batch(seed, b) for b in range(first, first + per_round)]
        pd.to_pickle(batches, tmp_path / "batches.pkl")
        with open(tmp_path / f"child{rnd}.err", "w") as err:
            child = subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path / "batches.pkl"),
                                      str(first)], stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        try:
            line = child.stdout.readline().split()
            assert line and line[0] == "pids", f"child failed to open the store: {line}"
            pids = [int(p) for p in line[1:]]
            kill_after = int(rng.integers(1, 40))
            acked = []
            while len(acked) < kill_after:
                line = child.stdout.readline().split()
                assert line and line[0] == "ack", f"child stopped early: {line}"
                acked.append(int(line[1]))
            time.sleep(float(rng.uniform(0.0, 0.1)))
            os.kill(child.pid, signal.SIGKILL)
            rest = child.stdout.read().split("\n")  # acks printed before the kill still count
        finally:
            child.kill()
            child.wait()
        acked += [int(ln.split()[1]) for ln in rest if ln.startswith("ack ")]
        assert "done" not in rest, "the child finished before it was killed: no mid-ingest kill"
        # The child owned the shard actors: Ray kills them with it. Reopen only once they are gone.
        wait_store_released(path, shards, pids)
        tried += list(range(first, first + per_round))
        store = rayfs.FeatureStore.open(path)  # re-sends the driver's write-ahead log
        try:
            ids = [f"b{b}" for b in tried]
            counts = store.get_features("batch", ids, features=["batch_rows"])["batch_rows"].tolist()
            sizes = {b: len(make_batch(seed, b)) for b in tried}
            for b, c in zip(tried, counts, strict=True):
                assert c in (0, sizes[b]), f"round {rnd}: batch b{b} is half applied: {c} of {sizes[b]} rows"
            now = [b for b, c in zip(tried, counts, strict=True) if c]
            assert set(present) <= set(now), f"round {rnd}: batches vanished: {set(present) - set(now)}"
            assert set(acked) <= set(now), f"round {rnd}: acknowledged batches lost: {set(acked) - set(now)}"
            present = now
            print(f"\n[faults] driver kill {rnd}: {len(acked)} acked, {len([b for b in now if b >= first])} "
                  f"present in this round")
            check_against_oracle(store, concat([make_batch(seed, b) for b in present]), ids,
                                 f"driver kill {rnd}")
        finally:
            store.close()


# ------------------------------------------------------------------------------------------------ 3
def build_single_shard_store(path, seed: int, n_batches: int, **kw) -> list[pd.DataFrame]:
    store = setup_store(path, 1, **kw)
    batches = [make_batch(seed, b) for b in range(n_batches)]
    for b, batch in enumerate(batches):
        store.ingest("ev", batch, batch_id=f"b{b}")
    store.close()  # snapshots and empties the driver WAL: a reopen re-sends nothing
    return batches


def test_torn_or_garbled_log_tail_is_cut_back_to_whole_batches(tmp_path):
    seed, n_batches = 404, 12
    base = tmp_path / "base"
    batches = build_single_shard_store(base, seed, n_batches)
    (segment,) = log_segments(base)
    ends = record_ends(segment)
    assert len(ends) == n_batches and ends[-1] == os.path.getsize(segment)
    rng = np.random.default_rng(seed)
    cases = [("truncate", int(x)) for x in rng.choice(np.setdiff1d(np.arange(1, ends[-1]), ends), 5,
                                                          replace=False)]
    cases += [("garble", int(x)) for x in rng.integers(ends[-4], ends[-1], 2)]
    ids = [f"b{b}" for b in range(n_batches)]
    for k, (how, pos) in enumerate(cases):
        path = tmp_path / f"case{k}"
        shutil.copytree(base, path)
        (seg,) = log_segments(path)
        if how == "truncate":
            truncate_tail(seg, pos)
        else:
            garble(seg, pos, seed=k)
        kept = sum(e <= pos for e in ends)  # whole records before the damage
        with rayfs.FeatureStore.open(path) as store:
            pid = shard_pids(store)[0]
            info = ray.get(store._handles[0].info.remote())
            assert info["next_offset"] == kept, (how, pos, info)
            check_against_oracle(store, concat(batches[:kept]), ids, f"{how} at byte {pos}")
        assert os.path.getsize(seg) == (ends[kept - 1] if kept else 0)
        stderr = worker_stderr(pid)
        assert "RuntimeWarning" in stderr and "dropped torn tail" in stderr and os.path.basename(seg) in stderr, \
            stderr[-2000:]


def test_damage_in_an_older_segment_is_an_error_naming_file_and_offset(tmp_path):
    seed, n_batches = 505, 12
    path = tmp_path / "s"
    batches = build_single_shard_store(path, seed, n_batches, segment_bytes=4000)
    segs = log_segments(path)
    assert len(segs) >= 3
    victim = segs[1]
    ends = record_ends(victim)
    k = len(ends) // 2
    start = ends[k - 1]
    where = start + 8 + (ends[k] - start - 8) // 2  # a payload byte of record k
    old = garble(victim, where, seed=1)
    with pytest.raises(Exception) as info:  # noqa: B017 - Ray wraps the shard's LogCorruptionError
        rayfs.FeatureStore.open(path)
    msg = str(info.value)
    assert "LogCorruptionError" in msg and os.path.basename(victim) in msg and f"at byte {start}" in msg, msg
    # Drop the exception: its traceback holds the failed open's actor handles, which keep the store's
    # actor names taken (see test_failed_open_releases_the_store).
    del info
    with open(victim, "r+b") as f:  # repaired, the store opens again and holds everything
        f.seek(where)
        f.write(old)
    wait_store_released(path, 1)
    with rayfs.FeatureStore.open(path) as store:
        check_against_oracle(store, concat(batches), [f"b{b}" for b in range(n_batches)], "repaired")


def test_failed_open_releases_the_store(tmp_path):
    """Shard 0's log is damaged, so open fails. The failed open must not leave shard actors behind: the
    healthy shard 1 must not keep running with its log open, and once the damage is repaired the store
    must open again in this Ray cluster, also while the caller still holds the exception (a logged error,
    ``pytest.raises``, ``sys.last_value`` in a REPL)."""
    seed, n_batches = 606, 16
    path = tmp_path / "s"
    store = setup_store(path, 2, segment_bytes=2000)
    batches = [make_batch(seed, b) for b in range(n_batches)]
    for b, batch in enumerate(batches):
        store.ingest("ev", batch, batch_id=f"b{b}")
    store.close()
    victim = log_segments(path, 0)[0]
    old = garble(victim, 100, seed=2)
    with pytest.raises(Exception, match=os.path.basename(victim)) as failed:  # kept, like a logged error
        rayfs.FeatureStore.open(path)
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(old)
    wait_store_released(path, 2, timeout=10)  # BUG: the open's shard actors stay registered (and shard 1 alive)
    with rayfs.FeatureStore.open(path) as store:
        check_against_oracle(store, concat(batches), [f"b{b}" for b in range(n_batches)], "repaired")
    assert failed.type is not None  # the caller held on to the error all along


# ------------------------------------------------------------------------------------------------ 4
def test_deleted_or_corrupt_snapshot_is_rebuilt_from_the_log(tmp_path):
    seed, n_batches = 707, 15
    path = tmp_path / "s"
    store = setup_store(path, 2, snapshot_every=4)
    batches = [make_batch(seed, b) for b in range(n_batches)]
    for b, batch in enumerate(batches):
        store.ingest("ev", batch, batch_id=f"b{b}")
    names = [f.name for f in USER_FEATURES]
    obs = observations(seed)
    before_online = store.get_features("user", USERS + ["nobody"], features=names)
    before_ts = store.training_set(obs, features=names, timestamp="ts")
    store.close()
    ids = [f"b{b}" for b in range(n_batches)]
    rng = np.random.default_rng(seed)
    for damage in ("delete", "garble", "zero"):
        for i in range(2):
            mdb = os.path.join(shard_dir(path, i), "snapshot.lmdb", "data.mdb")
            assert os.path.getsize(mdb) > 0
            if damage == "delete":
                os.remove(mdb)
            elif damage == "zero":
                with open(mdb, "r+b") as f:
                    f.write(b"\0" * min(8192, os.path.getsize(mdb)))
            else:
                for _ in range(3):
                    garble(mdb, int(rng.integers(0, os.path.getsize(mdb) - 16)), 16, seed=int(rng.integers(1 << 30)))
        with rayfs.FeatureStore.open(path) as store:
            assert_features_equal(store.get_features("user", USERS + ["nobody"], features=names), before_online,
                                  names, rtol=0, context=f"{damage}d snapshot, online")
            assert_features_equal(store.training_set(obs, features=names, timestamp="ts"), before_ts, names,
                                  rtol=0, context=f"{damage}d snapshot, training set")
            check_against_oracle(store, concat(batches), ids, f"{damage}d snapshot")


# ------------------------------------------------------------------------------------------------ 5
def test_same_batch_id_is_applied_once_across_retries_reopen_and_crash(tmp_path):
    seed = 808
    path = tmp_path / "s"
    a, b = make_batch(seed, 0), make_batch(seed, 1)
    ids = ["b0", "b1"]
    with setup_store(path, 2, reopen=True, snapshot_every=1000) as store:
        assert store.ingest("ev", a, batch_id="A") == {"rows": len(a), "batch_id": "A"}
        store.ingest("ev", a, batch_id="A")
        check_against_oracle(store, a, ids, "same id twice")
        store.ingest("ev", b, batch_id="B")
        kill_shard(store, 0)  # ids now come back from the log tail (no snapshot yet)
        kill_shard(store, 1)
        store.ingest("ev", a, batch_id="A")
        store.ingest("ev", b, batch_id="B")
        check_against_oracle(store, concat([a, b]), ids, "same ids after shard crashes")
    with rayfs.FeatureStore.open(path) as store:  # ids come back from the snapshot
        store.ingest("ev", b, batch_id="B")
        store.ingest("ev", a, batch_id="A")
        check_against_oracle(store, concat([a, b]), ids, "same ids after reopen")
        store.ingest("ev", a, batch_id="A2")  # a new id is a new batch, even with the same rows
        check_against_oracle(store, concat([a, b, a]), ids, "new id")


def test_shard_crash_after_registering_in_this_session(tmp_path):
    """A shard killed after a stream and feature were registered on the open store must come back.

    Ray restarts a crashed actor with its original constructor arguments; the shard must not forget
    definitions registered after the store was opened.
    """
    seed = 909
    a, b = make_batch(seed, 0), make_batch(seed, 1)
    with setup_store(tmp_path / "s", 1) as store:  # registered on this open store, no reopen
        store.ingest("ev", a, batch_id="A")
        kill_shard(store, 0)
        store.ingest("ev", b, batch_id="B")
        check_against_oracle(store, concat([a, b]), ["b0", "b1"], "after a shard crash")


# ------------------------------------------------------------------------------------------------ measure
def test_measure_recovery_time(tmp_path):
    """Prints (does not assert) shard open time from a fresh snapshot and from the log alone."""
    from rayfs.workload import reddit_upvotes

    n_events = 200_000
    path = tmp_path / "m"
    events = reddit_upvotes(n_events, seed=9)
    with rayfs.FeatureStore.open(path, shards=1) as store:
        store.register_stream("up", entities=["user"], timestamp="ts")
        store.register_sql("SELECT user, COUNT(*) AS n, SUM(score) AS s, COUNT(DISTINCT post) AS posts "
                           "FROM upvotes GROUP BY user".replace("upvotes", "up"))
        store.register_sql("SELECT user, COUNT(*) AS n_7d FROM up GROUP BY user", window="7d")
        for lo in range(0, n_events, 10_000):
            store.ingest("up", events.iloc[lo:lo + 10_000])
        want = store.get_features("user", ["u1", "u2", "u3"])
    timings = {}
    for label in ("fresh snapshot", "log only (snapshot deleted)"):
        if label.startswith("log"):
            shutil.rmtree(os.path.join(shard_dir(path), "snapshot.lmdb"))
        t = time.perf_counter()
        store = rayfs.FeatureStore.open(path)
        timings[label] = time.perf_counter() - t
        try:
            assert_features_equal(store.get_features("user", ["u1", "u2", "u3"]), want, list(want.columns[1:]),
                                  context=label)
        finally:
            store.close()
    for label, secs in timings.items():
        print(f"\n[faults] open with {label}: {secs:.2f} s for {n_events} events "
              f"= {secs / n_events * 1e6:.2f} s per million events in the log tail"
              if label.startswith("log") else f"\n[faults] open with {label}: {secs:.2f} s")
    print(f"[faults] log replay beyond snapshot load: "
          f"{(timings['log only (snapshot deleted)'] - timings['fresh snapshot']) / n_events * 1e6:.2f} s/M events")
