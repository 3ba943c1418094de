"""The drivers' write-ahead logs (rayfs.storage.wal) without Ray: a fake ``send`` stands in for the shards.

Pinned: a live writer's WAL is never touched by recovery (its OWNER flock is held); a dead writer's WAL
(lock released, files left behind) is re-sent in order and deleted; a record refused with a RayfsError is
kept in ``wal-rejected/`` with a warning while the others go through; any other failure keeps the WAL for
a later recovery; the rayfs 0.1 layout (segments directly in ``wal/``) is adopted; ``maybe_reset`` never
drops a batch that is not acknowledged.
"""

from __future__ import annotations

import os
import warnings

import pytest

from rayfs.errors import SchemaError
from rayfs.storage import wal as W
from rayfs.storage.locks import try_lock
from rayfs.storage.log import SegmentedLog


def rec(i: int, stream: str = "ev") -> dict:
    return {"stream": stream, "batch_id": f"b{i}", "cols": {"__ts": i.to_bytes(8, "little"), "n": i}}


class Sink:
    """A fake ``send``: records what it got; refuses (RayfsError) or fails (other errors) on demand."""

    def __init__(self, refuse=(), fail=()) -> None:
        self.got: list[dict] = []
        self.refuse, self.fail = set(refuse), set(fail)

    def __call__(self, record: dict) -> None:
        bid = record["batch_id"]
        if bid in self.fail:
            raise ConnectionError(f"shard unreachable for {bid}")
        if bid in self.refuse:
            raise SchemaError(f"refused {bid}")
        self.got.append(record)

    @property
    def ids(self) -> list[str]:
        return [r["batch_id"] for r in self.got]


def die(w: W.WriteAheadLog) -> str:
    """Simulate the writer process dying: its files stay, its lock goes (the kernel drops it)."""
    w.log.close()
    w._owner.close()
    return w.dir


def writer_dirs(store) -> list[str]:
    root = os.path.join(store, W.WAL_DIR)
    return sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n))) if os.path.isdir(root) else []


def rejected(store) -> list[dict]:
    d = os.path.join(store, W.REJECTED_DIR)
    if not os.path.isdir(d):
        return []
    log = SegmentedLog(d, durability="none")
    try:
        return [r for _, r in log.read(0)]
    finally:
        log.close()


@pytest.fixture
def store(tmp_path) -> str:
    p = tmp_path / "store"
    p.mkdir()
    return str(p)


# ------------------------------------------------------------------------------------------ live vs dead
def test_live_writer_is_left_alone(store):
    live = W.WriteAheadLog(store, "none")
    for i in range(3):
        live.append(rec(i))
    live.failed(("ev", "b2"))
    sink = Sink()
    assert W.recover_orphans(store, sink) == 0  # the same process, another open file: still locked
    assert sink.got == [] and os.path.isdir(live.dir)
    assert [r["batch_id"] for _, r in live.log.read(0)] == ["b0", "b1", "b2"]
    live.append(rec(3))  # and it keeps working
    assert live.log.next_offset == 4
    live.close()
    assert os.path.isdir(live.dir)  # b2 unacknowledged: kept for recovery


def test_dead_writer_is_resent_in_order_and_deleted(store):
    dead = W.WriteAheadLog(store, "sync")
    records = [rec(i) for i in range(7)]
    for r in records:
        dead.append(r)
    d = die(dead)
    live = W.WriteAheadLog(store, "none")  # the recovering process has its own WAL already
    sink = Sink()
    assert W.recover_orphans(store, sink, skip=live.dir) == 7
    assert sink.got == records  # whole records, in WAL order
    assert not os.path.exists(d)
    assert writer_dirs(store) == [os.path.basename(live.dir)]
    assert W.recover_orphans(store, Sink(), skip=live.dir) == 0  # nothing twice
    live.close()
    assert writer_dirs(store) == []


def test_several_dead_writers_and_a_live_one(store):
    live = W.WriteAheadLog(store, "none")
    live.append(rec(100))
    sent = []
    for w in range(3):
        d = W.WriteAheadLog(store, "none")
        for i in range(w * 10, w * 10 + 4):
            d.append(rec(i))
            sent.append(f"b{i}")
        die(d)
    sink = Sink()
    assert W.recover_orphans(store, sink) == 12  # no skip given: the live one is still recognised
    assert sorted(sink.ids) == sorted(sent)
    for w in range(3):  # each writer's records stay in order
        mine = [b for b in sink.ids if int(b[1:]) // 10 == w]
        assert mine == [f"b{i}" for i in range(w * 10, w * 10 + 4)]
    assert writer_dirs(store) == [os.path.basename(live.dir)]
    live.close()


def test_dead_writer_without_records_or_owner_file_is_cleaned(store):
    root = os.path.join(store, W.WAL_DIR)
    os.makedirs(os.path.join(root, "crashed-before-owner"))  # died between makedirs and the OWNER file
    empty = W.WriteAheadLog(store, "none")
    die(empty)
    assert W.recover_orphans(store, Sink()) == 0
    assert writer_dirs(store) == []


def test_refused_record_goes_to_rejected_and_the_rest_goes_through(store):
    dead = W.WriteAheadLog(store, "none")
    records = [rec(i) for i in range(5)]
    for r in records:
        dead.append(r)
    die(dead)
    sink = Sink(refuse={"b1", "b3"})
    with pytest.warns(RuntimeWarning, match="wal-rejected") as caught:
        n = W.recover_orphans(store, sink)
    assert n == 5
    assert sink.ids == ["b0", "b2", "b4"]
    assert {str(w.message).split("'")[1] for w in caught} == {"b1", "b3"}
    assert rejected(store) == [records[1], records[3]]  # kept whole, in order, never lost
    assert writer_dirs(store) == []
    # A later rejection appends to the same folder.
    again = W.WriteAheadLog(store, "none")
    again.append(rec(9))
    die(again)
    with pytest.warns(RuntimeWarning):
        W.recover_orphans(store, Sink(refuse={"b9"}))
    assert [r["batch_id"] for r in rejected(store)] == ["b1", "b3", "b9"]


def test_transient_failure_keeps_the_wal_for_a_later_recovery(store):
    dead = W.WriteAheadLog(store, "none")
    records = [rec(i) for i in range(4)]
    for r in records:
        dead.append(r)
    d = die(dead)
    first = Sink(fail={"b2"})
    with pytest.raises(ConnectionError):
        W.recover_orphans(store, first)
    assert first.ids == ["b0", "b1"]
    assert os.path.isdir(d) and rejected(store) == []  # not rejected: it may succeed later
    second = Sink()
    assert W.recover_orphans(store, second) == 4  # everything again (shards drop ids they applied)
    assert second.got == records and not os.path.exists(d)


def test_a_torn_tail_in_a_dead_wal_is_dropped_not_fatal(store):
    dead = W.WriteAheadLog(store, "none")
    for i in range(3):
        dead.append(rec(i))
    d = die(dead)
    seg = sorted(os.listdir(os.path.join(d, "log")))[-1]
    with open(os.path.join(d, "log", seg), "ab") as fh:
        fh.write(b"\x10\x00\x00\x00garbage")  # a record that was being written when the writer died
    sink = Sink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert W.recover_orphans(store, sink) == 3
    assert sink.ids == ["b0", "b1", "b2"]


# ------------------------------------------------------------------------------------------ 0.1 layout
def test_rayfs_01_layout_is_adopted(store):
    old = SegmentedLog(os.path.join(store, W.WAL_DIR), durability="none", segment_bytes=200)  # several segments
    records = [rec(i) for i in range(6)]
    for r in records:
        old.append(r)
    old.close()
    assert len([n for n in os.listdir(os.path.join(store, W.WAL_DIR)) if n.endswith(".log")]) > 1
    sink = Sink()
    assert W.recover_orphans(store, sink) == 6
    assert sink.got == records
    assert not [n for n in os.listdir(os.path.join(store, W.WAL_DIR)) if n.endswith(".log")]
    assert W.recover_orphans(store, Sink()) == 0
    # The new layout works in the same folder afterwards.
    w = W.WriteAheadLog(store, "none")
    w.append(rec(7))
    die(w)
    s = Sink()
    assert W.recover_orphans(store, s) == 1 and s.ids == ["b7"]


def test_rayfs_01_layout_with_a_refused_batch_and_a_new_writer_beside_it(store):
    old = SegmentedLog(os.path.join(store, W.WAL_DIR), durability="none")
    for i in range(3):
        old.append(rec(i))
    old.close()
    live = W.WriteAheadLog(store, "none")
    live.append(rec(50))
    sink = Sink(refuse={"b0"})
    with pytest.warns(RuntimeWarning, match="b0"):
        assert W.recover_orphans(store, sink, skip=live.dir) == 3
    assert sink.ids == ["b1", "b2"] and [r["batch_id"] for r in rejected(store)] == ["b0"]
    assert [r["batch_id"] for _, r in live.log.read(0)] == ["b50"]  # untouched
    live.close()


def test_rayfs_01_layout_failure_keeps_the_segments(store):
    old = SegmentedLog(os.path.join(store, W.WAL_DIR), durability="none")
    for i in range(3):
        old.append(rec(i))
    old.close()
    with pytest.raises(ConnectionError):
        W.recover_orphans(store, Sink(fail={"b1"}))
    s = Sink()
    assert W.recover_orphans(store, s) == 3 and s.ids == ["b0", "b1", "b2"]


# ------------------------------------------------------------------------------------------ resets
def test_maybe_reset_never_drops_unacked_batches(store):
    w = W.WriteAheadLog(store, "none")
    for i in range(4):
        w.append(rec(i))
        w.acked(("ev", f"b{i}")) if i != 2 else w.failed(("ev", "b2"))
    w.maybe_reset(force=True)
    assert w.log.next_offset == 4  # b2 is in it: nothing dropped
    w.close()
    assert os.path.isdir(w.dir)  # close keeps it too
    s = Sink()
    assert W.recover_orphans(store, s) == 4 and "b2" in s.ids


def test_maybe_reset_after_the_failed_batch_is_retried(store):
    w = W.WriteAheadLog(store, "none")
    w.append(rec(0))
    w.failed(("ev", "b0"))
    w.append(rec(1))
    w.acked(("ev", "b1"))
    w.maybe_reset(force=True)
    assert w.log.next_offset == 2
    w.append(rec(0))  # the retry with the same batch id succeeds
    w.acked(("ev", "b0"))
    w.maybe_reset(force=True)
    assert w.log.next_offset == 0
    w.close()
    assert not os.path.exists(w.dir)


def test_maybe_reset_thresholds(store, monkeypatch):
    monkeypatch.setattr(W, "MAX_BATCHES", 5)
    w = W.WriteAheadLog(store, "none")
    for i in range(4):
        w.append(rec(i))
        w.acked(("ev", f"b{i}"))
        w.maybe_reset()
    assert w.log.next_offset == 4  # below the threshold: kept (cheap appends, no churn)
    w.append(rec(4))
    w.acked(("ev", "b4"))
    w.maybe_reset()
    assert w.log.next_offset == 0
    assert not os.path.exists(os.path.join(w.dir, "log.old"))
    w.append(rec(5))  # and the fresh log works
    die(w)
    s = Sink()
    assert W.recover_orphans(store, s) == 1 and s.ids == ["b5"]  # only what came after the reset


def test_maybe_reset_on_an_empty_log_and_double_close(store):
    w = W.WriteAheadLog(store, "none")
    w.maybe_reset(force=True)
    assert w.log.next_offset == 0
    w.close()
    assert not os.path.exists(w.dir)


def test_writers_get_separate_directories_and_locks(store):
    a, b = W.WriteAheadLog(store, "none"), W.WriteAheadLog(store, "sync")
    assert a.dir != b.dir and os.path.dirname(a.dir) == os.path.dirname(b.dir) == os.path.join(store, W.WAL_DIR)
    a.append(rec(1))
    b.append(rec(2))
    assert [r["batch_id"] for _, r in a.log.read(0)] == ["b1"]
    assert try_lock(os.path.join(a.dir, "OWNER")) is None
    a.close()
    b.close()
    assert writer_dirs(store) == []

