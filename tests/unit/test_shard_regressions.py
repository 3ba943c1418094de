"""Regressions pinned on the shard state machine (no Ray)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest

from rayfs.engine.columns import encode_batch, key_column, value_column
from rayfs.model.definitions import Feature, Stream
from rayfs.shard.core import ShardCore

S = Stream(name="ev", entities=("user",), timestamp="ts")
S2 = Stream(name="ev", entities=("user", "post"), timestamp="ts")


def rec(df: pd.DataFrame, bid: str, stream: Stream = S) -> dict:
    cols = {"__ts": (df["ts"].to_numpy(dtype=np.float64) * 1_000_000).astype(np.int64)}
    for c in df.columns:
        if c != "ts":
            cols[c] = key_column(df[c], what=c) if c in stream.entities else value_column(df[c], what=c)
    return {"stream": stream.name, "batch_id": bid, "cols": encode_batch(cols)}


def core(root, feats, stream: Stream = S, **kw) -> ShardCore:
    return ShardCore(str(root), 0, 1, [stream.to_dict()], [f.to_dict() for f in feats], **kw)


USERS = np.array(["a", "b"], dtype=object)
EARLY = pd.DataFrame({"user": ["a", "b"], "ts": [1.0, 2.0]})  # has no column x yet
LATE = pd.DataFrame({"user": ["a", "b"], "ts": [3.0, 4.0], "x": [10.0, -20.0]})
SUM_X = Feature(name="sx", stream="ev", entity="user", agg="sum", column="x")
POS_X = Feature(name="n_pos", stream="ev", entity="user", agg="count", where="x > 0")


@pytest.mark.parametrize("replay_first", [False, True])
def test_feature_on_a_column_older_batches_lack(tmp_path, replay_first):
    """A batch without a column holds nulls there: backfill and recovery from the log alone both work."""
    c = core(tmp_path, [])
    c.ingest(rec(EARLY, "1"))
    c.ingest(rec(LATE, "2"))
    if replay_first:  # the replay cache concatenates batches, which used to hide the bug
        c.replay("user", USERS, np.array([10**7, 10**7]), [])
    c.add_feature(SUM_X.to_dict())
    c.add_feature(POS_X.to_dict())
    want = c.get("user", USERS, ["sx", "n_pos"])["values"]
    assert want["sx"].tolist() == [10.0, -20.0] and want["n_pos"].tolist() == [1, 0]
    c.close()
    shutil.rmtree(os.path.join(c.dir, "snapshot.lmdb"))  # the log alone must suffice
    again = core(tmp_path, [SUM_X, POS_X])
    got = again.get("user", USERS, ["sx", "n_pos"])["values"]
    assert got["sx"].tolist() == [10.0, -20.0] and got["n_pos"].tolist() == [1, 0]
    again.close()


def test_a_batch_that_cannot_be_folded_is_not_logged(tmp_path):
    """min over keys that mix ints and strings cannot be ordered: refused before the log append."""
    feat = Feature(name="min_post", stream="ev", entity="user", agg="min", column="post")
    c = core(tmp_path, [feat], stream=S2)
    c.ingest(rec(pd.DataFrame({"user": ["a"], "post": [5], "ts": [1.0]}), "1", S2))
    bad = rec(pd.DataFrame({"user": ["a"], "post": pd.Series(["x"], dtype=object), "ts": [2.0]}), "2", S2)
    with pytest.raises(TypeError):
        c.ingest(bad)
    assert c.log.next_offset == 1
    c.close()
    again = core(tmp_path, [feat], stream=S2)  # recovers: nothing unfoldable in the log
    assert again.get("user", np.array(["a"], dtype=object), ["min_post"])["values"]["min_post"].tolist() == [5]
    again.close()


def test_batch_ids_are_per_stream(tmp_path):
    other = Stream(name="buys", entities=("user",), timestamp="ts")
    c = ShardCore(str(tmp_path), 0, 1, [S.to_dict(), other.to_dict()], [])
    a = c.ingest(rec(EARLY, "2024-01-01"))
    b = c.ingest(rec(EARLY, "2024-01-01", other))
    assert not a["duplicate"] and not b["duplicate"]
    assert c.ingest(rec(EARLY, "2024-01-01", other))["duplicate"]
    c.close()


def test_a_retried_batch_is_acknowledged_only_once_durable(tmp_path):
    """Group commit: a retry arriving while the original waits for its fsync waits for it too."""
    c = core(tmp_path, [SUM_X], durability="group")
    real_sync, synced = c.group._sync, threading.Event()
    release = threading.Event()

    def slow_sync() -> None:
        release.wait(10)  # hold the fsync until the retry has been submitted
        real_sync()
        synced.set()

    c.group._sync = slow_sync
    first = threading.Thread(target=c.ingest, args=(rec(LATE, "1"),))
    first.start()
    while c.group._issued < 1:  # the original is appended and waiting for its fsync
        time.sleep(0.001)
    retry_done = []
    retry = threading.Thread(target=lambda: retry_done.append((c.ingest(rec(LATE, "1")), synced.is_set())))
    retry.start()
    while c.group._issued < 2 and retry.is_alive():  # the retry took its ticket (or, wrongly, returned)
        time.sleep(0.001)
    release.set()
    retry.join()
    first.join()
    result, was_synced = retry_done[0]
    assert result["duplicate"] and was_synced
    c.close()
