"""Tests of rayfs.storage.log.SegmentedLog on real files: round trips, rolling, torn tails, corruption."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import struct
import threading
import warnings
import zlib
from pathlib import Path

import msgpack
import pytest

import rayfs.storage.log as log_mod
from rayfs.errors import LogCorruptionError, OptionError, StoreClosedError
from rayfs.storage.log import SegmentedLog


def _record(i: int, rng: random.Random | None = None) -> dict:
    rng = rng or random.Random(i)
    return {"stream": "upvotes", "batch_id": f"b{i}", "n": i,
            "cols": {"ts": {"k": "i", "d": rng.randbytes(rng.randrange(0, 300))}}}


def _bounds(path: str | Path) -> list[int]:
    """Byte positions of the record starts in a segment file, plus its end (parsed independently)."""
    data = Path(path).read_bytes()
    pos, out = 0, [0]
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
        out.append(pos)
    assert pos == len(data)
    return out


def _frame(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _no_warnings():
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error")
    return ctx


@pytest.fixture
def filled(tmp_path):
    """A closed log of 40 records in several segments; returns (dir, records)."""
    d = tmp_path / "log"
    records = [_record(i) for i in range(40)]
    with SegmentedLog(d, segment_bytes=1500) as log:
        log.append_many(records[:10])
        for r in records[10:]:
            log.append(r)
        assert len(log.segments()) >= 4
    return d, records


# ---------------------------------------------------------------------- round trips


def test_round_trip_offsets_and_reopen(tmp_path):
    d = tmp_path / "log"
    big = os.urandom(1 << 20)
    records = [{"a": 1}, [1, 2, "x"], "s", None, {"b": big, 3: {"k": "i", "d": b""}}, 2**63 - 1, -5, 1.5]
    with SegmentedLog(d) as log:
        assert log.next_offset == 0 and log.start_offset == 0 and log.truncated_bytes == 0
        assert [log.append(r) for r in records] == list(range(len(records)))
        assert log.next_offset == len(records)
        got = list(log.read())
        assert got == list(enumerate(records))
        assert type(got[4][1]["b"]) is bytes and got[4][1]["b"] == big
        assert log.size_bytes() == sum(os.path.getsize(p) for _, p, _ in log.segments())
    with SegmentedLog(d) as log:
        assert log.next_offset == len(records)
        assert log.append_many(["x", "y"]) == [8, 9]
        assert log.append_many([]) == []
    with SegmentedLog(d) as log:
        assert [r for _, r in log.read()] == records + ["x", "y"]
        assert [o for o, _ in log.read()] == list(range(10))


def test_read_ranges(filled):
    d, records = filled
    with SegmentedLog(d, segment_bytes=1500) as log:
        n = len(records)
        assert list(log.read(5, 9)) == [(i, records[i]) for i in range(5, 9)]
        assert list(log.read(17)) == [(i, records[i]) for i in range(17, n)]
        assert list(log.read(0, 1)) == [(0, records[0])]
        assert list(log.read(n - 1, n + 100)) == [(n - 1, records[-1])]
        assert list(log.read(n)) == [] and list(log.read(9, 9)) == [] and list(log.read(9, 3)) == []
        assert list(log.read(-3, 2)) == [(0, records[0]), (1, records[1])]
        for i in range(n):  # every single record, across segment boundaries
            assert list(log.read(i, i + 1)) == [(i, records[i])]


def test_read_from_middle_uses_sparse_index(tmp_path, monkeypatch):
    monkeypatch.setattr(log_mod, "_INDEX_INTERVAL_BYTES", 500)
    rng = random.Random(7)
    records = [_record(i, rng) for i in range(300)]
    d = tmp_path / "log"
    with SegmentedLog(d, durability="none") as log:
        log.append_many(records[:150])
        for r in records[150:]:
            log.append(r)
    with SegmentedLog(d) as log:
        seg = log._segments[0]
        assert len(seg.idx_rel) > 20  # the index is sparse but not trivial
        for _ in range(50):
            a = rng.randrange(300)
            b = rng.randrange(a, 301)
            assert list(log.read(a, b)) == [(i, records[i]) for i in range(a, b)]


def test_read_is_a_snapshot_and_reads_files(tmp_path):
    with SegmentedLog(tmp_path / "log", durability="none") as log:
        log.append_many([0, 1, 2])
        it = log.read()
        log.append(3)
        assert [r for _, r in it] == [0, 1, 2]
        # reads go to the files: corrupting the file is noticed by a later read
        (_, path, _), = log.segments()
        data = bytearray(Path(path).read_bytes())
        data[-1] ^= 0xFF
        Path(path).write_bytes(bytes(data))
        with pytest.raises(LogCorruptionError, match="fails its CRC"):
            list(log.read(3))


# ---------------------------------------------------------------------- rolling


def test_rolling_names_and_reopen(filled):
    d, records = filled
    names = sorted(os.listdir(d))
    assert all(re.fullmatch(r"\d{20}\.log", n) for n in names)
    with SegmentedLog(d, segment_bytes=1500) as log:
        segs = log.segments()
        assert [os.path.basename(p) for _, p, _ in segs] == names
        assert [int(n[:20]) for n in names] == [b for b, _, _ in segs]
        assert segs[0][0] == 0
        for (b0, p0, c0), (b1, _, _) in zip(segs, segs[1:], strict=False):
            assert b1 == b0 + c0
            assert os.path.getsize(p0) >= 1500  # only a full segment is rolled ...
            assert os.path.getsize(p0) - (_bounds(p0)[-1] - _bounds(p0)[-2]) < 1500  # ... by its last record
        assert list(log.read()) == list(enumerate(records))


def test_record_crossing_limit_stays_in_segment(tmp_path):
    with SegmentedLog(tmp_path / "log", segment_bytes=100) as log:
        log.append(b"x" * 500)  # bigger than a segment: still one record in segment 0
        log.append(b"y")
        # a batch that spans segments: b"z" * 300 crosses the limit of segment 1, so it stays there
        log.append_many([b"z" * 300, b"w", b"v"])
        assert [(b, c) for b, _, c in log.segments()] == [(0, 1), (1, 2), (3, 2)]
    with SegmentedLog(tmp_path / "log", segment_bytes=100) as log:
        assert [r for _, r in log.read()] == [b"x" * 500, b"y", b"z" * 300, b"w", b"v"]


# ---------------------------------------------------------------------- torn and garbled tails


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_torn_tail_at_many_cut_points(filled, tmp_path):
    d, records = filled
    last_base, last_path, last_count = SegmentedLog(d, segment_bytes=1500).segments()[-1]
    bounds = _bounds(last_path)
    size = bounds[-1]
    rng = random.Random(1234)
    cuts = sorted(set(rng.sample(range(size), 25) + bounds[:3] + [1, 7, 8, 9, size - 1]))
    assert len(cuts) >= 20
    name = os.path.basename(last_path)
    for k, cut in enumerate(cuts):
        c = _copy(d, tmp_path / f"cut{k}")
        with open(c / name, "r+b") as f:
            f.truncate(cut)
        whole = max(i for i, b in enumerate(bounds) if b <= cut)  # records fully before the cut
        dropped = cut - bounds[whole]
        if dropped:
            with pytest.warns(RuntimeWarning, match=rf"{re.escape(name)}.*\b{dropped} bytes") as rec:
                log = SegmentedLog(c, segment_bytes=1500)
            assert len(rec) == 1
        else:
            ctx = _no_warnings()
            try:
                log = SegmentedLog(c, segment_bytes=1500)
            finally:
                ctx.__exit__(None, None, None)
        with log:
            assert log.truncated_bytes == dropped
            assert os.path.getsize(c / name) == bounds[whole]
            n = last_base + whole
            assert log.next_offset == n
            assert list(log.read()) == list(enumerate(records[:n]))
            assert log.append_many(["after1", "after2"]) == [n, n + 1]
            assert log.append({"after": 3}) == n + 2
        ctx = _no_warnings()
        try:
            with SegmentedLog(c, segment_bytes=1500) as log:
                assert log.truncated_bytes == 0
                assert [r for _, r in log.read()] == records[:n] + ["after1", "after2", {"after": 3}]
        finally:
            ctx.__exit__(None, None, None)


@pytest.mark.parametrize("seed", range(12))
def test_garbled_tail_record_is_dropped(filled, tmp_path, seed):
    d, records = filled
    rng = random.Random(seed)
    last_base, last_path, last_count = SegmentedLog(d, segment_bytes=1500).segments()[-1]
    bounds = _bounds(last_path)
    # garble the last record, or (odd seeds) an earlier one of the last segment if it has one
    victim = last_count - 1 if seed % 2 == 0 or last_count == 1 else rng.randrange(last_count - 1)
    c = _copy(d, tmp_path / "c")
    path = c / os.path.basename(last_path)
    data = bytearray(path.read_bytes())
    lo, hi = bounds[victim], bounds[victim + 1]
    for pos in rng.sample(range(lo, hi), rng.randint(1, min(4, hi - lo))):
        data[pos] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match=rf"{bounds[-1] - lo} bytes"):
        log = SegmentedLog(c, segment_bytes=1500)
    with log:
        assert log.truncated_bytes == bounds[-1] - lo
        assert log.next_offset == last_base + victim
        assert list(log.read()) == list(enumerate(records[:last_base + victim]))


@pytest.mark.parametrize("tail", [
    b"\0" * 37,  # zero-filled tail: header of length 0 and CRC 0 (which is crc32(b""))
    _frame(b"\xc1"),  # valid CRC, but 0xc1 is never valid msgpack
    _frame(msgpack.packb(1) + msgpack.packb(2)),  # valid CRC, but two objects
    _frame(b"\x92\x01"),  # valid CRC, truncated array
    _frame(msgpack.packb("ok"))[:-1],  # incomplete payload
    b"\x05\x00",  # incomplete header
])
def test_bad_tails_are_dropped(tmp_path, tail):
    d = tmp_path / "log"
    with SegmentedLog(d) as log:
        log.append_many(["a", "b"])
        (_, path, _), = log.segments()
    with open(path, "ab") as f:
        f.write(tail)
    with pytest.warns(RuntimeWarning, match=rf"{len(tail)} bytes"):
        log = SegmentedLog(d)
    with log:
        assert log.truncated_bytes == len(tail)
        assert [r for _, r in log.read()] == ["a", "b"]
        assert log.append("c") == 2
    with SegmentedLog(d) as log:
        assert [r for _, r in log.read()] == ["a", "b", "c"]


# ---------------------------------------------------------------------- corruption of older segments


@pytest.mark.parametrize("seed", range(8))
def test_garbled_older_segment_raises(filled, tmp_path, seed):
    d, _ = filled
    rng = random.Random(seed)
    segs = SegmentedLog(d, segment_bytes=1500).segments()
    _, path, _ = segs[rng.randrange(len(segs) - 1)]
    bounds = _bounds(path)
    pos = rng.randrange(1, bounds[-1] - 1)
    start = max(b for b in bounds if b <= pos)  # the damaged record starts here
    c = _copy(d, tmp_path / "c")
    victim = c / os.path.basename(path)
    data = bytearray(victim.read_bytes())
    data[pos] ^= rng.randrange(1, 256)
    victim.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in c.iterdir()}
    with pytest.raises(LogCorruptionError) as exc:
        SegmentedLog(c, segment_bytes=1500)
    msg = str(exc.value)
    assert str(victim) in msg and f"at byte {start}" in msg
    assert {p.name: p.read_bytes() for p in c.iterdir()} == before  # nothing was "repaired"


def test_torn_older_segment_raises(filled, tmp_path):
    d, _ = filled
    segs = SegmentedLog(d, segment_bytes=1500).segments()
    c = _copy(d, tmp_path / "c")
    victim = c / os.path.basename(segs[1][1])
    bounds = _bounds(victim)
    with open(victim, "r+b") as f:
        f.truncate(bounds[-2] + 3)
    with pytest.raises(LogCorruptionError, match=rf"{re.escape(str(victim))}.*at byte {bounds[-2]}"):
        SegmentedLog(c, segment_bytes=1500)


def test_missing_middle_segment_raises(filled, tmp_path):
    d, _ = filled
    segs = SegmentedLog(d, segment_bytes=1500).segments()
    c = _copy(d, tmp_path / "c")
    os.remove(c / os.path.basename(segs[2][1]))
    with pytest.raises(LogCorruptionError, match="missing"):
        SegmentedLog(c, segment_bytes=1500)


def test_missing_first_segment_raises(filled, tmp_path):
    d, _ = filled
    c = _copy(d, tmp_path / "c")
    os.remove(c / "00000000000000000000.log")
    with pytest.raises(LogCorruptionError, match="missing"):
        SegmentedLog(c, segment_bytes=1500)


def test_older_segment_losing_whole_records_raises(filled, tmp_path):
    d, _ = filled
    segs = SegmentedLog(d, segment_bytes=1500).segments()
    c = _copy(d, tmp_path / "c")
    victim = c / os.path.basename(segs[1][1])
    with open(victim, "r+b") as f:
        f.truncate(_bounds(victim)[-2])  # a clean record boundary, one record short
    with pytest.raises(LogCorruptionError, match="holds"):
        SegmentedLog(c, segment_bytes=1500)


def test_torn_tail_is_not_truncated_when_a_segment_is_missing(filled, tmp_path):
    d, _ = filled
    segs = SegmentedLog(d, segment_bytes=1500).segments()
    c = _copy(d, tmp_path / "c")
    os.remove(c / os.path.basename(segs[1][1]))
    last = c / os.path.basename(segs[-1][1])
    with open(last, "ab") as f:
        f.write(b"\x01\x02\x03")
    size = os.path.getsize(last)
    with pytest.raises(LogCorruptionError):
        SegmentedLog(c, segment_bytes=1500)
    assert os.path.getsize(last) == size


# ---------------------------------------------------------------------- empty segments, modes, lifecycle


def test_new_and_empty_last_segment(tmp_path):
    d = tmp_path / "log"
    with SegmentedLog(d) as log:
        assert log.segments() == [(0, str(d / "00000000000000000000.log"), 0)]
        assert list(log.read()) == [] and log.size_bytes() == 0
        log.append_many(["a", "b", "c"])
    (d / "00000000000000000003.log").touch()  # rolled, then crashed before the first write
    ctx = _no_warnings()
    try:
        with SegmentedLog(d) as log:
            assert [(b, c) for b, _, c in log.segments()] == [(0, 3), (3, 0)]
            assert log.append("d") == 3
            assert log.segments()[-1][2] == 1
    finally:
        ctx.__exit__(None, None, None)
    with SegmentedLog(d) as log:
        assert [r for _, r in log.read()] == ["a", "b", "c", "d"]


def test_empty_older_segment_raises(tmp_path):
    d = tmp_path / "log"
    with SegmentedLog(d) as log:
        log.append("a")
    os.rename(d / "00000000000000000000.log", d / "00000000000000000001.log")
    (d / "00000000000000000000.log").touch()
    with pytest.raises(LogCorruptionError):
        SegmentedLog(d)


def test_other_files_are_ignored(tmp_path):
    d = tmp_path / "log"
    with SegmentedLog(d) as log:
        log.append("a")
    (d / "notes.txt").write_text("hi")
    (d / "123.log").write_bytes(b"junk")
    with SegmentedLog(d) as log:
        assert [r for _, r in log.read()] == ["a"] and len(log.segments()) == 1


def _count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_durability_sync_fsyncs(tmp_path, monkeypatch):
    with SegmentedLog(tmp_path / "log", durability="sync") as log:
        calls = _count_fsyncs(monkeypatch)
        log.append("a")
        assert len(calls) == 1
        calls.clear()
        log.append_many(list(range(100)))  # one write, one fsync
        assert len(calls) == 1


def test_durability_sync_fsyncs_directory_on_roll(tmp_path, monkeypatch):
    with SegmentedLog(tmp_path / "log", durability="sync", segment_bytes=10) as log:
        log.append(b"x" * 20)
        calls = _count_fsyncs(monkeypatch)
        log.append("y")  # fsync old segment, create new file + fsync directory, fsync new segment
        assert len(calls) == 3


def test_durability_none(tmp_path, monkeypatch):
    d = tmp_path / "log"
    log = SegmentedLog(d, durability="none")
    calls = _count_fsyncs(monkeypatch)
    log.append("a")
    log.append_many(["b", "c"])
    assert calls == []
    # visible to other readers of the files without any fsync
    assert msgpack.unpackb(Path(log.segments()[0][1]).read_bytes()[8:10]) == "a"
    log.sync()
    assert len(calls) == 1
    log.close()
    with SegmentedLog(d, durability="none") as log2:
        assert [r for _, r in log2.read()] == ["a", "b", "c"]


def test_close_is_idempotent_and_append_after_close_raises(tmp_path):
    log = SegmentedLog(tmp_path / "log")
    log.append("a")
    log.close()
    log.close()
    log.sync()  # nothing left to sync
    with pytest.raises(StoreClosedError):
        log.append("b")
    with pytest.raises(StoreClosedError):
        log.append_many(["b"])
    with pytest.raises(StoreClosedError):
        log.read()
    assert log.next_offset == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(OptionError, match="durability"):
        SegmentedLog(tmp_path / "a", durability="fast")
    with pytest.raises(OptionError, match="segment_bytes"):
        SegmentedLog(tmp_path / "b", segment_bytes=0)
    with SegmentedLog(tmp_path / "c") as log:
        log.append("a")
        with pytest.raises(TypeError):
            log.append_many(["b", object()])  # nothing of the batch is written
        assert log.next_offset == 1
        assert [r for _, r in log.read()] == ["a"]


def test_failed_write_leaves_no_partial_record(tmp_path, monkeypatch):
    d = tmp_path / "log"
    with SegmentedLog(d) as log:
        log.append("a")
        real_writev = os.writev

        def failing_writev(fd, bufs):
            os.write(fd, bytes(bufs[0])[:5])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "writev", failing_writev)
        with pytest.raises(OSError):
            log.append_many(["b", "c"])
        monkeypatch.setattr(os, "writev", real_writev)
        assert log.next_offset == 1
        assert log.append("d") == 1
    ctx = _no_warnings()
    try:
        with SegmentedLog(d) as log:
            assert [r for _, r in log.read()] == ["a", "d"]
    finally:
        ctx.__exit__(None, None, None)


def test_failed_fsync_poisons_the_log(tmp_path, monkeypatch):
    with SegmentedLog(tmp_path / "log") as log:
        def failing_fsync(fd):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError):
            log.append("a")
        monkeypatch.undo()
        with pytest.raises(StoreClosedError, match="I/O error"):
            log.append("b")


def test_concurrent_appends(tmp_path):
    d = tmp_path / "log"
    with SegmentedLog(d, durability="none", segment_bytes=4000) as log:
        def worker(t):
            for k in range(30):
                log.append_many([(t, k, j) for j in range(3)])

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert log.next_offset == 4 * 30 * 3
    with SegmentedLog(d, segment_bytes=4000) as log:
        got = [tuple(r) for _, r in log.read()]
    assert sorted(got) == sorted((t, k, j) for t in range(4) for k in range(30) for j in range(3))
    for t in range(4):  # each thread's batches are contiguous and in order
        mine = [g for g in got if g[0] == t]
        assert mine == [(t, k, j) for k in range(30) for j in range(3)]
        idx = [i for i, g in enumerate(got) if g[0] == t]
        assert all(idx[3 * b + 2] - idx[3 * b] == 2 for b in range(30))
