"""A segmented, CRC-checked, msgpack append-only log (in the style of Kafka's ``LogSegment``).

Layout and invariants
---------------------
* A log is a directory of segment files named ``<base offset>.log`` with the base offset written as 20
  zero-padded decimal digits, e.g. ``00000000000000000000.log``. The base offset is the offset of the
  segment's first record. Other files in the directory are ignored.
* Offsets grow by exactly one per record (a record is one ingested batch). The first segment starts at
  offset 0 (retention is future work), and each later segment's base offset equals the previous
  segment's base offset plus its record count; anything else means a segment is missing or damaged.
* A record on disk is ``u32 length | u32 crc32(payload) | payload`` (both integers little endian), where
  the payload is ``msgpack.packb(obj, use_bin_type=True)``. A payload is never empty, so a zero length is
  damage (e.g. a zero-filled tail after a crash).
* The active (last) segment is rolled when it has reached ``segment_bytes``: the record that crosses the
  limit still goes into the current segment and the next record starts a new file. A segment is always
  fsynced before the next one is created, whatever the durability mode, so only the last segment can
  have a torn tail after a crash.
* Durability of :meth:`SegmentedLog.append`: ``"sync"`` fsyncs the segment before returning (and the
  directory when a new segment file is created); ``"none"`` hands the bytes to the OS only.
  :meth:`SegmentedLog.sync` forces an fsync.

Recovery (run by the constructor) reads every segment in order with large buffered reads and checks every
record's length and CRC; payloads of older segments are not unpacked, those of the last segment are
checked to be exactly one msgpack object (cheaply, without building it). In the **last** segment the
first incomplete, bad-CRC or undecodable record and everything after it is a torn tail: the file is
truncated there and fsynced and a :class:`RuntimeWarning` names the file and the number of bytes dropped.
A bad record in an **older** segment raises :class:`~rayfs.errors.LogCorruptionError` naming the file and
the byte offset; nothing is ever skipped silently.

Reads go to the files (there is no record cache); an in-memory index keeps, per segment, its base offset,
record count, size and a sparse offset -> byte position index so a read from the middle of a segment does
not rescan it.
"""

from __future__ import annotations

import os
import re
import struct
import threading
import warnings
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from typing import Any

import msgpack

from rayfs.errors import LogCorruptionError, OptionError, SchemaError, StoreClosedError

__all__ = ["SegmentedLog", "segment_name", "DURABILITY_MODES"]

DURABILITY_MODES = ("sync", "none")
_HEADER = struct.Struct("<II")
_HEADER_SIZE = _HEADER.size
_MAX_PAYLOAD = 0xFFFFFFFF
_NAME_RE = re.compile(r"^(\d{20})\.log$")
_READ_BUFFER = 1 << 20  # buffered reads of 1 MiB for recovery and reads
_INDEX_INTERVAL_BYTES = 64 << 10  # one sparse index entry per ~64 KiB of segment
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024


def segment_name(base_offset: int) -> str:
    """Return the file name of the segment whose first record has offset ``base_offset``.

    >>> segment_name(42)
    '00000000000000000042.log'
    """
    return f"{base_offset:020d}.log"


class _Segment:
    """In-memory index entry of one segment file."""

    __slots__ = ("base", "path", "count", "size", "idx_rel", "idx_pos", "_since_index")

    def __init__(self, base: int, path: str) -> None:
        self.base = base
        self.path = path
        self.count = 0
        self.size = 0
        self.idx_rel = array("Q")  # record number within the segment ...
        self.idx_pos = array("Q")  # ... and its byte position, about every _INDEX_INTERVAL_BYTES
        self._since_index = 0

    def add(self, pos: int, nbytes: int) -> None:
        """Account for a whole record of ``nbytes`` bytes written at byte ``pos``."""
        if self.count == 0 or self._since_index >= _INDEX_INTERVAL_BYTES:
            self.idx_rel.append(self.count)
            self.idx_pos.append(pos)
            self._since_index = 0
        self._since_index += nbytes
        self.count += 1
        self.size = pos + nbytes

    def seek_point(self, rel: int) -> tuple[int, int]:
        """Return ``(record number, byte position)`` of the indexed record at or before ``rel``."""
        i = bisect_right(self.idx_rel, rel) - 1
        if i < 0:
            return 0, 0
        return self.idx_rel[i], self.idx_pos[i]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def _write_all(fd: int, bufs: list[bytes]) -> None:
    """Write ``bufs`` back to back with as few system calls as possible (``writev``, no joining)."""
    if not hasattr(os, "writev"):
        data = memoryview(b"".join(bufs))
        while data:
            data = data[os.write(fd, data):]
        return
    pending: list[Any] = list(bufs)
    i = 0
    while i < len(pending):
        chunk = pending[i:i + _IOV_MAX]
        written = os.writev(fd, chunk)
        if written <= 0:
            raise OSError(f"writev wrote {written} bytes")
        for b in chunk:
            if written >= len(b):
                written -= len(b)
                i += 1
            else:
                pending[i] = memoryview(b)[written:]
                break


def _is_one_msgpack_object(payload: bytes) -> bool:
    """Whether ``payload`` is exactly one well-formed msgpack object (checked without building it)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(1, len(payload)))
    unpacker.feed(payload)
    try:
        unpacker.skip()
    except Exception:  # OutOfData, FormatError, StackError, ...
        return False
    return unpacker.tell() == len(payload)


def _scan_segment(seg: _Segment, *, check_decode: bool) -> tuple[int, int, str] | None:
    """Index every good record of ``seg`` from its start.

    Returns ``None`` if the whole file is good, else ``(bad byte position, file size, reason)``; the
    records before the bad one are indexed in ``seg`` either way.
    """
    with open(seg.path, "rb", buffering=_READ_BUFFER) as f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos < size:
            header = f.read(_HEADER_SIZE)
            if len(header) < _HEADER_SIZE:
                return pos, size, f"incomplete record header ({size - pos} bytes)"
            length, crc = _HEADER.unpack(header)
            if length == 0:
                return pos, size, "zero-length record (zero-filled tail?)"
            if length > size - pos - _HEADER_SIZE:
                return pos, size, f"record length {length} runs past the end of the file"
            payload = f.read(length)
            if len(payload) != length:
                return pos, size, "file shrank while being read"
            if zlib.crc32(payload) != crc:
                return pos, size, "CRC mismatch"
            if check_decode and not _is_one_msgpack_object(payload):
                return pos, size, "payload is not one valid msgpack object"
            seg.add(pos, _HEADER_SIZE + length)
            pos += _HEADER_SIZE + length
    return None


class SegmentedLog:
    """An append-only log of msgpack-able records in CRC-checked segment files; see the module docs.

    Thread-safe: appends, :meth:`sync` and :meth:`close` are serialised by a lock, and :meth:`read`
    may run concurrently with appends (it reads what was committed when it was called). Only one
    ``SegmentedLog`` may have a directory open at a time.
    """

    def __init__(self, directory: str | os.PathLike, *, segment_bytes: int = 64 << 20,
                 durability: str = "sync") -> None:
        if durability not in DURABILITY_MODES:
            raise OptionError(f"log {directory}: durability must be one of {DURABILITY_MODES}, not {durability!r}")
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or segment_bytes <= 0:
            raise OptionError(f"log {directory}: segment_bytes must be a positive int, not {segment_bytes!r}")
        self._dir = os.path.abspath(os.fspath(directory))
        self._segment_bytes = segment_bytes
        self._durability = durability
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._fd: int | None = None
        self._closed = False
        self._failed: BaseException | None = None
        self._truncated_bytes = 0
        if not os.path.isdir(self._dir):
            os.makedirs(self._dir, exist_ok=True)
            if durability == "sync":
                _fsync_dir(os.path.dirname(self._dir))
        self.recover()

    # ------------------------------------------------------------------ properties

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def durability(self) -> str:
        return self._durability

    @property
    def next_offset(self) -> int:
        """The offset the next appended record gets."""
        seg = self._segments[-1]
        return seg.base + seg.count

    @property
    def start_offset(self) -> int:
        """The first offset in the log (always 0 until retention exists)."""
        return self._segments[0].base

    @property
    def truncated_bytes(self) -> int:
        """Bytes of torn tail dropped by the last :meth:`recover`."""
        return self._truncated_bytes

    # ------------------------------------------------------------------ recovery

    def recover(self) -> int:
        """Rebuild the index from the files, truncating a torn tail of the last segment.

        Returns the number of bytes dropped (also kept in :attr:`truncated_bytes`). Raises
        :class:`LogCorruptionError` if an older segment is damaged or a segment is missing.
        """
        with self._lock:
            self._check_open()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            try:
                return self._recover_locked()
            except BaseException:
                self._closed = True  # a log that failed recovery is unusable; reopen after repair
                raise

    def _recover_locked(self) -> int:
        """Scan and validate every segment; the lock is held and no segment is open for writing."""
        self._segments = []
        self._failed = None
        segments = self._list_segments()
        dropped = 0
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            # Validate the chain before scanning, so that a torn tail is only ever truncated in a log
            # that is otherwise sound.
            if i == 0 and seg.base != 0:
                raise LogCorruptionError(
                    f"log segment {seg.path} is the first segment but starts at offset {seg.base}, "
                    f"not 0: the segments before it are missing")
            if i > 0:
                prev = segments[i - 1]
                if seg.base != prev.base + prev.count:
                    raise LogCorruptionError(
                        f"log segment {seg.path} starts at offset {seg.base} but the previous segment "
                        f"{prev.path} holds {prev.count} records and ends at offset "
                        f"{prev.base + prev.count}: a segment is missing or damaged")
            bad = _scan_segment(seg, check_decode=last)
            if bad is not None:
                pos, size, reason = bad
                if not last:
                    raise LogCorruptionError(
                        f"log segment {seg.path} is corrupt at byte {pos} (record offset "
                        f"{seg.base + seg.count}): {reason}; it is not the last segment, so this is "
                        "not a torn write and the log cannot be opened")
                dropped = size - pos
                with open(seg.path, "r+b") as f:
                    f.truncate(pos)
                    f.flush()
                    os.fsync(f.fileno())
                warnings.warn(
                    f"log segment {seg.path}: dropped torn tail of {dropped} bytes from byte {pos} "
                    f"({reason}); the log now ends at offset {seg.base + seg.count}",
                    RuntimeWarning, stacklevel=4)
        if not segments:
            segments.append(self._create_segment(0))
        self._segments = segments
        self._fd = self._open_active(segments[-1].path)
        self._truncated_bytes = dropped
        return dropped

    def _list_segments(self) -> list[_Segment]:
        found = []
        for name in os.listdir(self._dir):
            m = _NAME_RE.match(name)
            if m and os.path.isfile(os.path.join(self._dir, name)):
                found.append(_Segment(int(m.group(1)), os.path.join(self._dir, name)))
        found.sort(key=lambda s: s.base)
        return found

    @staticmethod
    def _open_active(path: str) -> int:
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        return os.open(path, flags)

    def _create_segment(self, base: int) -> _Segment:
        path = os.path.join(self._dir, segment_name(base))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        os.close(fd)
        if self._durability == "sync":
            _fsync_dir(self._dir)
        return _Segment(base, path)

    # ------------------------------------------------------------------ writing

    def append(self, record: Any) -> int:
        """Append one record and return its offset; durable per the durability mode on return."""
        return self.append_many([record])[0]

    def append_many(self, records: list[Any]) -> list[int]:
        """Append records in order and return their offsets.

        All records are encoded before anything is written (an unencodable record leaves the log
        unchanged). They are written with one ``writev`` per segment touched and, in ``"sync"`` mode,
        one fsync (plus one per segment rolled inside the batch).
        """
        frames: list[bytes] = []
        sizes: list[int] = []
        for record in records:
            payload = msgpack.packb(record, use_bin_type=True)
            if len(payload) > _MAX_PAYLOAD:
                raise SchemaError(f"log {self._dir}: a record must encode to at most {_MAX_PAYLOAD} bytes, "
                                  f"not {len(payload)}; ingest it in smaller batches")
            frames.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
            frames.append(payload)
            sizes.append(_HEADER_SIZE + len(payload))
        if not sizes:
            return []
        with self._lock:
            self._check_writable()
            first = self.next_offset
            i = 0
            undone = False  # a failed write of this batch's first group was cleanly rolled back
            try:
                while i < len(sizes):
                    seg = self._segments[-1]
                    if seg.size >= self._segment_bytes:
                        seg = self._roll()
                    j, end = i, seg.size
                    while j < len(sizes) and end < self._segment_bytes:
                        end += sizes[j]
                        j += 1
                    start = seg.size
                    try:
                        _write_all(self._fd, frames[2 * i:2 * j])
                    except BaseException:
                        # Leave no partial record behind: recovery would take it for a torn tail and
                        # drop every record appended after it.
                        os.ftruncate(self._fd, start)
                        undone = i == 0
                        raise
                    pos = start
                    for n in sizes[i:j]:
                        seg.add(pos, n)
                        pos += n
                    i = j
                if self._durability == "sync":
                    os.fsync(self._fd)
            except BaseException as exc:
                if not undone:  # part of the batch is in the log, or fsync/roll/rollback failed
                    self._failed = exc
                raise
            return list(range(first, first + len(sizes)))

    def _roll(self) -> _Segment:
        """Close the full active segment (always fsynced) and start the next one."""
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        seg = self._create_segment(self.next_offset)
        self._segments.append(seg)
        self._fd = self._open_active(seg.path)
        return seg

    def sync(self) -> None:
        """Force what was appended so far to stable storage (a no-op once closed)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                os.fsync(self._fd)
            except BaseException as exc:
                self._failed = exc
                raise

    def close(self) -> None:
        """Fsync and close the log; idempotent. Later appends raise :class:`StoreClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
            if fd is not None:
                try:
                    if self._failed is None:
                        os.fsync(fd)
                finally:
                    os.close(fd)

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"log {self._dir} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failed is not None:
            raise StoreClosedError(f"log {self._dir} cannot be written after an I/O error "
                                   f"({self._failed!r}); reopen it to recover") from self._failed

    # ------------------------------------------------------------------ reading

    def read(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(offset, record)`` for ``start <= offset < end`` in order, read from the files.

        ``end=None`` means the end of the log when ``read`` is called; records appended later are not
        included. A record that fails its CRC or does not decode raises :class:`LogCorruptionError`.
        """
        with self._lock:
            self._check_open()
            stop = self.next_offset if end is None else min(end, self.next_offset)
            begin = max(start, self.start_offset)
            plan = [(seg, seg.count) for seg in self._segments
                    if seg.base < stop and seg.base + seg.count > begin]
        return self._read(plan, begin, stop)

    @staticmethod
    def _read(plan: list[tuple[_Segment, int]], begin: int, stop: int) -> Iterator[tuple[int, Any]]:
        for seg, count in plan:
            lo = max(begin, seg.base) - seg.base
            hi = min(stop, seg.base + count) - seg.base
            rel, pos = seg.seek_point(lo)
            with open(seg.path, "rb", buffering=_READ_BUFFER) as f:
                f.seek(pos)
                while rel < hi:
                    header = f.read(_HEADER_SIZE)
                    if len(header) < _HEADER_SIZE:
                        raise LogCorruptionError(f"log segment {seg.path}: record {seg.base + rel} at byte "
                                                 f"{pos} is truncated")
                    length, crc = _HEADER.unpack(header)
                    if rel < lo:
                        f.seek(length, os.SEEK_CUR)
                    else:
                        payload = f.read(length)
                        if len(payload) != length or zlib.crc32(payload) != crc:
                            raise LogCorruptionError(f"log segment {seg.path}: record {seg.base + rel} at "
                                                     f"byte {pos} is truncated or fails its CRC")
                        try:
                            record = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                        except Exception as exc:
                            raise LogCorruptionError(f"log segment {seg.path}: record {seg.base + rel} at "
                                                     f"byte {pos} does not decode: {exc}") from exc
                        yield seg.base + rel, record
                    pos += _HEADER_SIZE + length
                    rel += 1

    # ------------------------------------------------------------------ introspection

    def size_bytes(self) -> int:
        """Total bytes of all segment files."""
        with self._lock:
            return sum(seg.size for seg in self._segments)

    def segments(self) -> list[tuple[int, str, int]]:
        """``(base offset, path, record count)`` of every segment, oldest first."""
        with self._lock:
            return [(seg.base, seg.path, seg.count) for seg in self._segments]

    def __repr__(self) -> str:
        return (f"SegmentedLog({self._dir!r}, offsets [{self.start_offset}, {self.next_offset}), "
                f"{len(self._segments)} segments, durability={self._durability!r})")
