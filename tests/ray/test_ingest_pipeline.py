"""Pipelined ingest of many batches (``store.ingest(stream, iterable_of_batches)``) against the oracle.

Each batch of a pipeline must land exactly as if ingested by one call per batch, in order: ties in time
(first/last by ingest order) reveal a reordering, a per-batch count reveals a half-applied batch, counts and
sums reveal a lost or doubled one. No timing is asserted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import rayfs
from rayfs.testing import assert_features_equal, kill_shard, oracle_online, oracle_training_set, shard_pids
from rayfs.workload import random_events

STREAM = rayfs.Stream(name="ev", entities=("user", "item", "batch"), timestamp="ts")
FEATURES = [
    rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
    rayfs.Feature(name="sum_x", stream="ev", entity="user", agg="sum", column="x"),
    rayfs.Feature(name="first_s", stream="ev", entity="user", agg="first", column="s"),
    rayfs.Feature(name="last_x_1d", stream="ev", entity="user", agg="last", column="x", window="1d"),
    rayfs.Feature(name="item_last_s", stream="ev", entity="item", agg="last", column="s"),
    rayfs.Feature(name="item_n_6h", stream="ev", entity="item", agg="count", window="6h"),
    rayfs.Feature(name="batch_rows", stream="ev", entity="batch", agg="count"),
]


def open_store(path, shards: int = 2) -> rayfs.FeatureStore:
    store = rayfs.FeatureStore.open(path, shards=shards)
    store.register_stream("ev", entities=list(STREAM.entities), timestamp="ts")
    for f in FEATURES:
        store.register_feature(f)
    return store


def make_batches(seed: int, n_batches: int) -> list[pd.DataFrame]:
    """Random adversarial events (ties in time, nulls) cut into batches of random sizes; column ``batch``
    names each event's batch."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 80, n_batches)
    events = random_events(seed, int(sizes.sum()))
    out, lo = [], 0
    for b, size in enumerate(sizes):
        part = events.iloc[lo:lo + int(size)].copy()
        part["batch"] = f"b{b}"
        out.append(part.reset_index(drop=True))
        lo += int(size)
    return out


def as_form(batch: pd.DataFrame, form: int):
    """The batch as a DataFrame, a pyarrow Table or a dict of numpy arrays."""
    if form == 1:
        return pa.Table.from_pandas(batch, preserve_index=False)
    if form == 2:
        return {c: batch[c].to_numpy() for c in batch.columns}
    return batch


def check(store, batches: list[pd.DataFrame], all_ids: list[str], context: str) -> None:
    events = pd.concat(batches, ignore_index=True) if batches else None
    streams = {"ev": STREAM}
    counts = store.get_features("batch", all_ids, features=["batch_rows"])["batch_rows"].tolist()
    want = [len(b) for b in batches] + [0] * (len(all_ids) - len(batches))
    assert counts == want, f"{context}: per-batch rows {counts} != {want}"
    for entity in ("user", "item"):
        feats = [f for f in FEATURES if f.entity == entity]
        names = [f.name for f in feats]
        keys = events[entity].dropna().unique().tolist() + ["never"]
        assert_features_equal(store.get_features(entity, keys, features=names),
                              oracle_online({"ev": events}, streams, feats, entity, keys), names,
                              context=f"{context} online {entity}")
    feats = [f for f in FEATURES if f.entity == "user"]
    names = [f.name for f in feats]
    rng = np.random.default_rng(len(events))
    users = events["user"].dropna().unique()
    ts = events["ts"].to_numpy()
    obs = pd.DataFrame({"user": pd.Series(users[rng.integers(0, len(users), 200)], dtype=object),
                        "ts": ts[rng.integers(0, len(ts), 200)] + rng.choice([0.0, 1e-6, 3600.0], 200)})
    assert_features_equal(store.training_set(obs, features=names, timestamp="ts"),
                          oracle_training_set({"ev": events}, streams, feats, obs, timestamp="ts"), names,
                          context=f"{context} training set")


@pytest.mark.parametrize("seed", [1, 2])
def test_pipelined_equals_oracle(tmp_path, seed):
    batches = make_batches(seed, 30)
    rng = np.random.default_rng(seed)
    forms = rng.integers(0, 3, len(batches))
    with open_store(tmp_path / "s") as store:
        got = store.ingest("ev", (as_form(b, int(f)) for b, f in zip(batches[:20], forms, strict=False)))
        assert got == {"rows": sum(len(b) for b in batches[:20]), "batches": 20}
        got = store.ingest("ev", batches[20:])  # a list of DataFrames is many batches too
        assert got == {"rows": sum(len(b) for b in batches[20:]), "batches": 10}
        check(store, batches, [f"b{i}" for i in range(30)], f"seed {seed}")
    with rayfs.FeatureStore.open(tmp_path / "s") as store:
        check(store, batches, [f"b{i}" for i in range(30)], f"seed {seed} reopened")


def test_bad_batch_in_the_middle_names_its_position(tmp_path):
    batches = make_batches(3, 8)
    consumed = []

    def gen():
        for i, b in enumerate(batches):
            consumed.append(i)
            yield b.drop(columns="user") if i == 5 else b

    with open_store(tmp_path / "s") as store:
        with pytest.raises(rayfs.SchemaError, match=r"lacks column 'user'.*batch 5 of the batches") as info:
            store.ingest("ev", gen())
        assert "batches 0..4 were ingested" in str(info.value)
        assert consumed == [0, 1, 2, 3, 4, 5]  # nothing read past the bad batch
        check(store, batches[:5], [f"b{i}" for i in range(8)], "bad batch 5")
        # a bad first batch: nothing written; then the store still ingests normally
        bad = batches[5].assign(ts="not a time")
        with pytest.raises(rayfs.SchemaError, match="batch 0 of the batches: nothing was written"):
            store.ingest("ev", [bad, batches[6]])
        assert store.ingest("ev", iter(batches[5:])) == {"rows": sum(len(b) for b in batches[5:]), "batches": 3}
        check(store, batches, [f"b{i}" for i in range(8)], "after the bad batches")


def test_generator_raising_midway_keeps_earlier_batches(tmp_path):
    batches = make_batches(4, 6)

    def gen():
        yield from batches[:3]
        raise RuntimeError("source went away")

    with open_store(tmp_path / "s") as store:
        with pytest.raises(RuntimeError, match="source went away") as info:
            store.ingest("ev", gen())
        assert any("position 3" in n and "batches 0..2 were ingested" in n for n in info.value.__notes__)
        check(store, batches[:3], [f"b{i}" for i in range(6)], "generator raised at 3")


def test_batch_id_prefix_makes_a_pipelined_retry_idempotent(tmp_path):
    batches = make_batches(5, 7)
    with open_store(tmp_path / "s") as store:
        assert store.ingest("ev", batches[:4], batch_id="load-1")["batches"] == 4
        # the retry of the whole call re-sends 0..3 (no-ops: same ids) and adds 4..6
        assert store.ingest("ev", iter(batches), batch_id="load-1") == {
            "rows": sum(len(b) for b in batches), "batches": 7}
        check(store, batches, [f"b{i}" for i in range(7)], "retried with batch ids")


def test_shard_killed_mid_pipeline(tmp_path):
    batches = make_batches(6, 40)
    kills = []
    with open_store(tmp_path / "s") as store:
        first = shard_pids(store)

        def gen():
            for i, b in enumerate(batches):
                if i in (7, 21):  # batch i - 1 is in flight: Ray re-sends it to the restarted shard
                    kills.append(kill_shard(store, {7: 0, 21: 1}[i]))
                yield b

        assert store.ingest("ev", gen()) == {"rows": sum(len(b) for b in batches), "batches": 40}
        assert all(kills) and not set(shard_pids(store)) == set(first)
        check(store, batches, [f"b{i}" for i in range(40)], "after shard kills")
    with rayfs.FeatureStore.open(tmp_path / "s") as store:
        check(store, batches, [f"b{i}" for i in range(40)], "after shard kills, reopened")


def test_failed_object_store_put_leaves_the_wal_consistent(tmp_path, monkeypatch):
    """A failure handing batch 2 to Ray's object store: batches 0..1 acknowledged, batch 2 kept in the WAL
    (completed by the next ingest), and the in-flight count back at zero (so the WAL still resets)."""
    import rayfs.store.ingest as ingest_mod

    batches = make_batches(7, 5)
    real_put, calls = ingest_mod.ray.put, {"n": 0}

    def flaky_put(obj, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the first part of batch 2 (two shards, two parts per batch)
            raise MemoryError("object store full")
        return real_put(obj, *args, **kwargs)

    with open_store(tmp_path / "s") as store:
        monkeypatch.setattr(ingest_mod.ray, "put", flaky_put)
        with pytest.raises(MemoryError, match="object store full") as info:
            store.ingest("ev", iter(batches[:3]))
        assert any("batch 2 of the batches" in n and "write-ahead log" in n for n in info.value.__notes__)
        monkeypatch.setattr(ingest_mod.ray, "put", real_put)
        assert store._ingestor._inflight == 0
        assert len(store._ingestor.wal.unacked) == 1  # batch 2, logged but never sent
        check(store, batches[:2], [f"b{i}" for i in range(5)], "after the failed put")
        store.ingest("ev", batches[3:])  # completes batch 2 first, then 3..4 in order
        assert store._ingestor._inflight == 0 and store._ingestor.wal.unacked == {}
        check(store, batches, [f"b{i}" for i in range(5)], "after the next ingest")


def test_multi_chunk_arrow_strings_ingest(tmp_path):
    """Arrow-backed string columns in several chunks (Parquet row groups, concatenated tables)."""
    batches = make_batches(8, 4)
    table = pa.concat_tables([pa.Table.from_pandas(b, preserve_index=False) for b in batches[:3]])
    assert table.column("user").num_chunks == 3
    with open_store(tmp_path / "s") as store:
        store.ingest("ev", table)
        store.ingest("ev", pd.concat([b.astype({"user": "string[pyarrow]", "s": "string[pyarrow]"})
                                      for b in batches[3:]], ignore_index=True))
        check(store, batches, [f"b{i}" for i in range(4)], "multi-chunk strings")


def _rejected(path) -> list[dict]:
    from rayfs.storage.log import SegmentedLog
    from rayfs.storage.wal import REJECTED_DIR

    log = SegmentedLog(str(path / REJECTED_DIR), durability="none")
    try:
        return [r for _, r in log.read(0)]
    finally:
        log.close()


@pytest.mark.parametrize("pipelined", [False, True])
def test_a_batch_the_shards_refuse_is_set_aside_and_blocks_nothing(tmp_path, monkeypatch, pipelined):
    """A batch that passed this driver's checks but that the shards refuse (a stale catalog would do it):
    the caller gets the shard's error, the batch is kept whole in wal-rejected/, and the next ingest of this
    process goes through instead of re-sending the refused batch forever."""
    from rayfs.engine import columns as C

    batches = make_batches(9, 4)
    with open_store(tmp_path / "s") as store:
        store.ingest("ev", batches[0])
        real = store._ingestor.normalise

        def stale(s, data):  # as if the driver had not known that x holds numbers
            cols, kinds = real(s, data)
            if data is batches[1]:
                cols["x"] = C.value_column(pd.Series(["oops"] * len(data), dtype=object), what="x")
            return cols, kinds

        monkeypatch.setattr(store._ingestor, "normalise", stale)
        with pytest.warns(RuntimeWarning, match="wal-rejected"):
            with pytest.raises(rayfs.SchemaError, match="x"):
                store.ingest("ev", iter(batches[1:3]) if pipelined else batches[1])
        monkeypatch.setattr(store._ingestor, "normalise", real)
        refused = _rejected(tmp_path / "s")
        assert len(refused) == 1 and len(C.decode(refused[0]["cols"]["__ts"])) == len(batches[1])
        store.ingest("ev", batches[3] if pipelined else iter(batches[2:]))
        assert store._ingestor._inflight == 0 and store._ingestor.wal.unacked == {}
        kept = [b for i, b in enumerate(batches) if i != 1]
        ids = ["b0", "b2", "b3", "b1"]  # b1 last: refused, no rows anywhere
        check(store, kept, ids, "after a refused batch")
        assert refused[0]["cols"]["x"]["u"] == ["oops"]  # kept whole, as logged
    with rayfs.FeatureStore.open(tmp_path / "s") as store:  # nothing left to replay
        check(store, kept, ids, "after a refused batch, reopened")
