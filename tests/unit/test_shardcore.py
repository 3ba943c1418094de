"""ShardCore without Ray: recovery (snapshot + log tail, lost or corrupt snapshot), exactly-once batch ids,
backfill of late features and growth of the window buffer, checked against an unrestarted shard and the
brute-force oracle (rayfs.testing).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from rayfs.engine.columns import encode_batch, key_column, value_column
from rayfs.model.definitions import Feature, Stream
from rayfs.shard.core import ShardCore
from rayfs.testing import assert_features_equal, oracle_online, oracle_training_set

STREAM = Stream(name="ev", entities=("user", "item"), timestamp="ts")
DAY = 86400
T0 = 1_700_006_400  # a day boundary, epoch seconds


def feat(name, agg, column=None, *, window=None, where=None, entity="user") -> Feature:
    return Feature(name=name, stream="ev", entity=entity, agg=agg, column=column, window=window, where=where)


FEATS = [feat("n", "count"), feat("n_6h", "count", window="6h"), feat("sx", "sum", "x"),
         feat("sx_1d", "sum", "x", window="1d", where="x > 0"), feat("last_s", "last", "s"),
         feat("first_s_6h", "first", "s", window="6h"), feat("var_x", "variance", "x"),
         feat("cd_s", "count_distinct", "s"), feat("i_max", "max", "x", entity="item"),
         feat("i_n_1d", "count", window="1d", entity="item")]


def events(seed: int, n: int) -> pd.DataFrame:
    """Events on a 1-hour grid over 4 days (ties and exact window boundaries), ~10% nulls."""
    rng = np.random.default_rng(seed)
    s = np.array(["p", "q", "r"], dtype=object)[rng.integers(0, 3, n)]
    s[rng.random(n) < 0.1] = None
    user = np.array([f"u{i}" for i in rng.integers(0, 6, n)], dtype=object)
    user[rng.random(n) < 0.05] = None
    return pd.DataFrame({
        "user": pd.Series(user, dtype=object),
        "item": pd.Series(rng.integers(0, 4, n), dtype=np.int64),
        "ts": T0 + rng.integers(0, 4 * 24, n).astype(np.int64) * 3600,
        "x": np.where(rng.random(n) < 0.1, np.nan, rng.integers(-3, 8, n).astype(float)),
        "s": pd.Series(s, dtype=object),
    })


def record(df: pd.DataFrame, bid: str) -> dict:
    """A routed record like FeatureStore._send builds (n_shards=1: every row goes to shard 0)."""
    cols = {"__ts": df["ts"].to_numpy(dtype=np.int64) * 1_000_000,
            "user": key_column(df["user"], what="user"), "item": key_column(df["item"], what="item"),
            "x": value_column(df["x"], what="x"), "s": value_column(df["s"], what="s")}
    return {"stream": "ev", "batch_id": bid, "cols": encode_batch(cols)}


def batches(df: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [df.iloc[i:i + size] for i in range(0, len(df), size)]


def core(root, feats=FEATS, **kw) -> ShardCore:
    return ShardCore(str(root), 0, 1, [STREAM.to_dict()], [f.to_dict() for f in feats], **kw)


def stop_without_snapshot(c: ShardCore) -> None:
    """Simulate a shard that stops (e.g. is killed) without its closing snapshot."""
    c.log.close()
    c.snap.close()
    if c.online_view is not None:  # LMDB opens an environment once per process: a restart opens it again
        c.online_view.close()
    c._dir_lock.close()  # a dead process holds no lock


USER_KEYS = [f"u{i}" for i in range(6)] + ["never", 3]
ITEM_KEYS = [0, 1, 2, 3, 42, "0"]


def probe(df: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(99)
    n = 120
    t = np.concatenate([df["ts"].to_numpy()[rng.integers(0, len(df), n // 2)],
                        T0 - 3600 + rng.integers(0, 5 * 24 * 3600, n - n // 2)])
    return pd.DataFrame({"user": pd.Series([USER_KEYS[i] for i in rng.integers(0, len(USER_KEYS), n)], dtype=object),
                         "item": pd.Series([ITEM_KEYS[i] for i in rng.integers(0, 4, n)], dtype=object),
                         "ts": t.astype(np.int64)})


def read_all(c: ShardCore, df: pd.DataFrame, feats=FEATS) -> dict[str, pd.DataFrame]:
    """Online values (as of the newest event) and a point-in-time replay, per entity field."""
    obs = probe(df)
    out = {}
    for entity, keys in (("user", USER_KEYS), ("item", ITEM_KEYS)):
        names = [f.name for f in feats if f.entity == entity]
        if not names:
            continue
        k = key_column(pd.Series(keys, dtype=object), what="keys")
        out[f"get_{entity}"] = pd.DataFrame(c.get(entity, k, names)["values"]).assign(**{entity: keys})
        ok = key_column(obs[entity], what="obs")
        out[f"replay_{entity}"] = pd.DataFrame(c.replay(entity, ok, obs["ts"].to_numpy() * 1_000_000, names)["values"])
    return out


def assert_same(a: dict, b: dict, feats=FEATS, context="") -> None:
    for key in a:
        entity = key.split("_", 1)[1]
        names = [f.name for f in feats if f.entity == entity]
        assert_features_equal(a[key], b[key], names, rtol=0, context=f"{context} {key}")


def assert_oracle(got: dict, df: pd.DataFrame, feats=FEATS, context="") -> None:
    streams = {"ev": STREAM}
    obs = probe(df)
    for entity, keys in (("user", USER_KEYS), ("item", ITEM_KEYS)):
        ef = [f for f in feats if f.entity == entity]
        names = [f.name for f in ef]
        if not names:
            continue
        want_on = oracle_online({"ev": df}, streams, ef, entity, keys)
        assert_features_equal(got[f"get_{entity}"], want_on, names, context=f"{context} online {entity}")
        want_off = oracle_training_set({"ev": df}, streams, ef, obs, timestamp="ts")
        assert_features_equal(got[f"replay_{entity}"], want_off, names, context=f"{context} replay {entity}")


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return events(1, 400)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """A shard that never restarts and never snapshots."""
    c = core(tmp_path_factory.mktemp("ref"), snapshot_every=10**9)
    for i, b in enumerate(batches(data, 23)):
        c.ingest(record(b, f"b{i}"))
    got = read_all(c, data)
    assert_oracle(got, data, context="reference")
    return got


def fill(root, data, snapshot_every=4) -> ShardCore:
    c = core(root, snapshot_every=snapshot_every)
    for i, b in enumerate(batches(data, 23)):  # 18 batches: snapshots after 4, 8, 12, 16; tail of 2
        c.ingest(record(b, f"b{i}"))
    return c


def test_restart_from_midway_snapshot_plus_log_tail(tmp_path, data, reference):
    c = fill(tmp_path, data)
    assert c.since_snapshot == 2
    assert_same(read_all(c, data), reference, context="live")
    stop_without_snapshot(c)
    r = core(tmp_path, snapshot_every=4)
    assert r.since_snapshot == 2  # restored from the snapshot at offset 16, then the 2-batch tail
    assert r.log.next_offset == 18
    assert_same(read_all(r, data), reference, context="restarted")
    r.close()  # closing snapshot covers everything
    r2 = core(tmp_path, snapshot_every=4)
    assert r2.since_snapshot == 0
    assert_same(read_all(r2, data), reference, context="after close")
    # And it keeps ingesting correctly.
    more = events(2, 50)
    r2.ingest(record(more, "more"))
    both = pd.concat([data, more], ignore_index=True)
    assert_oracle(read_all(r2, both), both, context="after close + more")
    r2.close()


def test_missing_snapshot_is_rebuilt_from_log(tmp_path, data, reference):
    c = fill(tmp_path, data)
    c.close()
    shutil.rmtree(os.path.join(c.dir, "snapshot.lmdb"))
    r = core(tmp_path)
    assert r.since_snapshot == 18
    assert_same(read_all(r, data), reference, context="no snapshot")
    r.close()


@pytest.mark.parametrize("target", ["keys", "meta"])
def test_corrupt_snapshot_is_rebuilt_from_log(tmp_path, data, reference, target):
    c = fill(tmp_path, data)
    c.close()
    path = os.path.join(c.dir, "snapshot.lmdb", "data.mdb")
    raw = bytearray(open(path, "rb").read())
    # Flip bytes inside a stored value: a key name in the key index, or the meta record's "offset".
    needle = b"u3" if target == "keys" else b"offset"
    # LMDB is copy-on-write: the file also holds stale pages of older snapshots, so flip every copy.
    hits = 0
    pos = raw.find(needle)
    while pos >= 0:
        raw[pos:pos + len(needle)] = bytes(b ^ 0x5A for b in needle)
        hits += 1
        pos = raw.find(needle, pos + 1)
    assert hits > 0
    with open(path, "wb") as fh:
        fh.write(raw)
    with pytest.warns(RuntimeWarning, match="snapshot"):
        r = core(tmp_path)
    assert r.since_snapshot == 18  # rebuilt from the whole log
    assert_same(read_all(r, data), reference, context=f"corrupt {target}")
    r.close()


def test_garbage_snapshot_file_is_rebuilt_from_log(tmp_path, data, reference):
    c = fill(tmp_path, data)
    c.close()
    path = os.path.join(c.dir, "snapshot.lmdb", "data.mdb")
    size = os.path.getsize(path)
    with open(path, "wb") as fh:
        fh.write(np.random.default_rng(3).bytes(size))
    with pytest.warns(RuntimeWarning, match="snapshot"):
        r = core(tmp_path)
    assert_same(read_all(r, data), reference, context="garbage snapshot")
    r.close()


def test_repeated_batch_id_is_applied_once(tmp_path, data, reference):
    c = fill(tmp_path, data)
    bs = batches(data, 23)
    # Retries of a batch in the snapshot, and of one in the log tail, before and after a restart.
    for i in (0, 5, 17):
        res = c.ingest(record(bs[i], f"b{i}"))
        assert res["duplicate"] is True
    assert c.log.next_offset == 18
    assert_same(read_all(c, data), reference, context="retried live")
    stop_without_snapshot(c)
    r = core(tmp_path, snapshot_every=4)
    for i in (3, 16, 17):
        assert r.ingest(record(bs[i], f"b{i}"))["duplicate"] is True
    assert r.log.next_offset == 18
    assert_same(read_all(r, data), reference, context="retried after restart")
    # A new id with the same rows is a new batch.
    r.ingest(record(bs[0], "fresh"))
    both = pd.concat([data, bs[0]], ignore_index=True)
    assert_oracle(read_all(r, both), both, context="same rows, new id")
    r.close()
    r2 = core(tmp_path)
    assert r2.ingest(record(bs[0], "fresh"))["duplicate"] is True
    assert r2.ingest(record(bs[1], "b1"))["duplicate"] is True
    assert_oracle(read_all(r2, both), both, context="retried after close")
    r2.close()


def test_feature_added_after_data_is_backfilled(tmp_path, data):
    early = FEATS[:3]
    c = core(tmp_path, feats=early, snapshot_every=5)
    bs = batches(data, 23)
    for i, b in enumerate(bs[:12]):
        c.ingest(record(b, f"b{i}"))
    for f in FEATS[3:]:
        c.add_feature(f.to_dict())
    first = pd.concat(bs[:12], ignore_index=True)
    assert_oracle(read_all(c, first), first, context="backfilled")
    for i, b in enumerate(bs[12:], start=12):
        c.ingest(record(b, f"b{i}"))
    assert_oracle(read_all(c, data), data, context="backfilled + more")
    stop_without_snapshot(c)
    # The restarted shard knows every feature from its definitions; the snapshot predates some of them.
    r = core(tmp_path, snapshot_every=5)
    assert_oracle(read_all(r, data), data, context="backfilled, restarted")
    r.close()


def test_growing_longest_window_rebuilds_buffer(tmp_path, data):
    small = [feat("n_1h", "count", window="1h"), feat("sx_1h", "sum", "x", window="1h")]
    c = core(tmp_path, feats=small, snapshot_every=3)
    bs = batches(data, 23)
    for i, b in enumerate(bs[:10]):
        c.ingest(record(b, f"b{i}"))
    first = pd.concat(bs[:10], ignore_index=True)
    assert_oracle(read_all(c, first, small), first, small, context="1h")
    # The buffer held only the last hour; a 3-day window needs older events back from the log.
    big = small + [feat("n_3d", "count", window="3d"), feat("last_s_2d", "last", "s", window="2d"),
                   feat("i_cd_3d", "count_distinct", "s", window="3d", entity="item")]
    for f in big[2:]:
        c.add_feature(f.to_dict())
    assert_oracle(read_all(c, first, big), first, big, context="grown")
    for i, b in enumerate(bs[10:], start=10):
        c.ingest(record(b, f"b{i}"))
    assert_oracle(read_all(c, data, big), data, big, context="grown + more")
    stop_without_snapshot(c)
    r = core(tmp_path, feats=big, snapshot_every=3)
    assert_oracle(read_all(r, data, big), data, big, context="grown, restarted")
    r.close()
    # Reopening with the longer-window features removed shrinks the window; a smaller one still reads right.
    r2 = core(tmp_path, feats=small)
    assert_oracle(read_all(r2, data, small), data, small, context="shrunk")
    r2.close()
    # ...and growing again on reopen (definitions passed at start) rebuilds from the log.
    r3 = core(tmp_path, feats=big)
    assert_oracle(read_all(r3, data, big), data, big, context="grown on reopen")
    r3.close()


@pytest.mark.parametrize("size", [5, 400])
def test_replay_between_ingests_equals_oracle(tmp_path, data, size):
    """Replays interleaved with ingest (indexes rebuilt, time ranks shared by the two entity fields, the
    event cache compacted once it holds more than COMPACT_PARTS batches) equal the oracle each time."""
    c = core(tmp_path, snapshot_every=10**9)
    parts = batches(data, size)
    checkpoints = {len(parts) // 3, len(parts) - 1}
    for i, b in enumerate(parts):
        c.ingest(record(b, f"b{i}"))
        if i in checkpoints:
            seen = data.iloc[:(i + 1) * size]
            assert_oracle(read_all(c, seen), seen, context=f"after batch {i}")
    c.close()
