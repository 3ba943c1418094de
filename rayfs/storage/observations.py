"""Observation streams: durable, append-only tables of (entity keys, time, labels) to build training sets on.

Each stream is a :class:`~rayfs.storage.log.SegmentedLog` under ``<store>/observations/<name>/``, one record per
append (columns encoded like event batches). Every append carries the timestamp column (``ts``) with a
valid time in every row; other columns may be absent from an append (null there, NaT for datetimes).

A column holds one kind of value, fixed by the first append that gives it a value: ``"timestamp"``
(datetimes), ``"num"`` (numbers) or ``"str"`` (strings). Only columns checked as entity keys may mix
numbers and strings (``1`` and ``"1"`` are different keys), as an event stream's entity columns may. The
first kind of a column is decided under a lock file in the stream's folder, so that two writers (drivers,
Kafka consumers) cannot each fix a different one.

A process other than the drivers may feed a stream: the consumer ``i`` of a Kafka subscription writes its own
log, ``<store>/observations/<name>/kafka-<i>/`` (a log has one writer), each record tagged with the id of
the micro-batch it holds so that appending a batch twice is a no-op (:meth:`ObservationStreams.append`
with ``batch_id``). :meth:`ObservationStreams.read` returns the stream's own records, then those of each
writer's log (in writer order, each in append order), reading the latter as files another process may be
appending to: a record not yet wholly written is not yet there.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import zlib
from collections.abc import Collection

import numpy as np
import pandas as pd

from rayfs.engine import columns as C
from rayfs.errors import OptionError, SchemaError, UnknownStreamError
from rayfs.model.definitions import check_name
from rayfs.model.timeutil import to_micros
from rayfs.storage.locks import wait_lock
from rayfs.storage.log import _HEADER, SegmentedLog

__all__ = ["ObservationStreams", "read_committed", "writer_dirs"]

_INT64_MAX = 2**63 - 1
_SEGMENT = re.compile(r"^(\d{20})\.log$")
_WRITER = re.compile(r"^kafka-(\d+)$")
_KINDS_LOCK = "KINDS.lock"  # in the stream's folder: held while a writer fixes a column's kind
RECENT_BATCHES = 256  # records of a writer's log searched for a batch id (batches in flight are the newest)


def read_committed(directory: str, start: int = 0):
    """Yield the records from number ``start`` on of the log in ``directory``, read as files that another
    process may be appending to (never opened for writing, never truncated).

    A record that is incomplete or fails its CRC at the very end of the last segment is one being written:
    reading stops there. Anywhere else it is damage (:class:`~rayfs.errors.LogCorruptionError`).
    """
    import msgpack

    from rayfs.errors import LogCorruptionError

    if not os.path.isdir(directory):
        return
    segs = sorted(int(m.group(1)) for m in map(_SEGMENT.match, os.listdir(directory)) if m)
    n = 0
    for j, base in enumerate(segs):
        path = os.path.join(directory, f"{base:020d}.log")
        last = j == len(segs) - 1
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            head = data[pos:pos + _HEADER.size]
            length, crc = _HEADER.unpack(head) if len(head) == _HEADER.size else (0, 0)
            payload = data[pos + _HEADER.size:pos + _HEADER.size + length]
            if not length or len(payload) != length or zlib.crc32(payload) != crc:
                if last:
                    return  # the tail a writer is appending (or a torn tail its recovery drops)
                raise LogCorruptionError(f"observation log {path}: bad record at byte {pos}")
            if n >= start:
                yield msgpack.unpackb(payload, raw=False, strict_map_key=False)
            n += 1
            pos += _HEADER.size + length


def writer_dirs(stream_dir: str) -> list[str]:
    """The logs of the processes other than drivers that feed a stream (``kafka-<i>``), in writer order."""
    try:
        names = os.listdir(stream_dir)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), n) for n in names if (m := _WRITER.match(n)))
    return [os.path.join(stream_dir, n) for _, n in found if os.path.isdir(os.path.join(stream_dir, n))]


def _kind(col: np.ndarray) -> str | None:
    """``"timestamp"``, ``"num"``, ``"str"``, ``"mixed"`` (numbers and strings: keys) or ``None`` (all null)."""
    if col.dtype.kind == "M":
        return "timestamp"
    if col.dtype != object:
        return None if col.dtype.kind == "f" and np.isnan(col).all() else "num"
    return C.key_kind(col)


def _conflict(old: str | None, new: str | None, key: bool) -> bool:
    """Whether a column that held ``old`` values cannot take ``new`` ones (``key``: an entity-key column,
    where numbers and strings may mix)."""
    if old is None or new is None or old == new:
        return False
    if "timestamp" in (old, new):
        return True
    return not key and old != "mixed"


def _merge(old: str | None, new: str | None) -> str | None:
    """The kind of a column holding ``old`` values and then ``new`` ones (that do not conflict)."""
    if old is None or old == new:
        return new if old is None else old
    return old if new is None else "mixed"


_NAMES = {"timestamp": "datetime", "num": "number", "str": "string", "mixed": "number and string"}


def _is_time(s: pd.Series) -> bool:
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return True
    if s.dtype != object or not s.notna().any():
        return False
    return isinstance(s.dropna().iloc[0], (_dt.datetime, pd.Timestamp, np.datetime64))


def _times(s: pd.Series, what: str) -> np.ndarray:
    """A datetime column other than the timestamp: datetime64[us], NaT where null."""
    nulls = s.isna().to_numpy()
    out = np.full(len(s), np.datetime64("NaT"), dtype="datetime64[us]")
    if not nulls.all():
        out[~nulls] = to_micros(s[~nulls].reset_index(drop=True), what=what).astype("datetime64[us]")
    return out


class ObservationStreams:
    """The observation streams of one store, as seen by one process.

    Args:
        store_path: the store's folder.
        durability: of appends, ``"sync"`` or ``"none"`` (see :class:`~rayfs.storage.log.SegmentedLog`).
        writer: ``None`` for a driver (appends go to a stream's own log); ``"kafka-<i>"`` for the consumer
            ``i`` of a Kafka subscription (appends go to that writer's log in the stream's folder).
    """

    def __init__(self, store_path: str, durability: str, writer: str | None = None) -> None:
        if writer is not None and not _WRITER.match(writer):
            raise OptionError(f"observation writer must be 'kafka-<i>', not {writer!r}")
        self.root = os.path.join(store_path, "observations")
        self.durability = durability
        self.writer = writer
        self._logs: dict[str, SegmentedLog] = {}
        self._kinds: dict[str, dict[str, str]] = {}
        self._batches: dict[str, set[str]] = {}  # batch ids among the newest records of this writer's log

    def _log(self, name: str) -> SegmentedLog:
        if name not in self._logs:
            check_name(name, "observation stream")
            path = os.path.join(self.root, name)
            if self.writer is not None:
                path = os.path.join(path, self.writer)
            self._logs[name] = SegmentedLog(path, durability=self.durability)
        return self._logs[name]

    def _records(self, name: str):
        """Every record of the stream: its own log's, then each writer's (see the module docstring)."""
        path = os.path.join(self.root, name)
        if self.writer is None:
            yield from (r for _, r in self._log(name).read(0))
        else:
            yield from read_committed(path)
        for d in writer_dirs(path):
            if self.writer is not None and os.path.basename(d) == self.writer:
                yield from (r for _, r in self._log(name).read(0))
            else:
                yield from read_committed(d)

    def has_batch(self, name: str, batch_id: str) -> bool:
        """Whether this writer's log holds the batch ``batch_id`` among its newest records."""
        if name not in self._batches:
            log = self._log(name)
            start = max(0, log.next_offset - RECENT_BATCHES)
            self._batches[name] = {r["batch"] for _, r in log.read(start) if r.get("batch")}
        return batch_id in self._batches[name]

    def append(self, name: str, rows, timestamp: str = "ts", keys: Collection[str] = (), *,
               batch_id: str | None = None) -> int:
        """Validate ``rows`` and append them as one record; nothing is written if any check fails.

        Args:
            name: the observation stream.
            rows: one dict, a list of dicts, a DataFrame, a pyarrow Table or a dict of arrays.
            timestamp: the stream's time column: every append must carry it, with a valid time in every
                row (training sets read it). Other columns may be absent from an append: they are null
                there (NaT for a datetime column).
            keys: columns that hold entity keys (e.g. every entity field of the store's streams): checked
                as keys (strings or int64 integers) here rather than when a training set reads them.
            batch_id: the id of the batch (a writer's appends only): a batch already in the writer's log
                is not appended again, and 0 is returned.

        Returns:
            The number of rows appended.

        Raises:
            SchemaError: an empty batch, a missing timestamp column, a column whose kind differs from
                the one the stream's records hold (module docstring), or values that cannot be stored
                (naming the column).
            TimestampError: a missing or unreadable time in the timestamp column (naming the row).
            TimeoutError: another writer held the stream's lock file for a minute (nothing was appended).
        """
        check_name(name, "observation stream")
        if batch_id is not None and self.has_batch(name, batch_id):
            return 0
        cols, kinds, known, n = self._columns(name, rows, timestamp, keys)
        fresh = [c for c, k in kinds.items() if k is not None and known.get(c) is None]
        lock = None
        if fresh:  # the first values of a column fix its kind: decided by one writer at a time
            self._log(name)  # the stream's folder (and its name checked)
            lock = wait_lock(os.path.join(self.root, name, _KINDS_LOCK), 60.0)
            if lock is None:  # not the input's fault: a Kafka consumer retries the batch, a driver may too
                raise TimeoutError(f"observation stream {name!r}: another writer held its lock file "
                                   f"{_KINDS_LOCK} for 60 s; nothing was appended")
        try:
            if fresh:
                self._kinds.pop(name, None)  # what other writers stored meanwhile
                known = self._check_kinds(name, kinds, keys)
            record = {"cols": C.encode_batch(cols)}
            if batch_id is not None:
                record["batch"] = batch_id
            self._log(name).append(record)
        finally:
            if lock is not None:
                lock.close()
        if batch_id is not None:
            self._batches[name].add(batch_id)
        self._kinds[name] = {c: _merge(known.get(c), kinds.get(c)) for c in {**known, **kinds}}
        return n

    def check(self, name: str, rows, timestamp: str = "ts", keys: Collection[str] = ()) -> None:
        """Raise what :meth:`append` would raise for ``rows``, writing nothing."""
        self._columns(name, rows, timestamp, keys)

    def _columns(self, name: str, rows, timestamp: str, keys: Collection[str]):
        """Validated, stored columns of ``rows``, their kinds, the stream's known kinds, and the row count."""
        rows = [rows] if isinstance(rows, dict) else rows
        stream = f"observation stream {name!r}"
        df = C.to_frame(rows, what=stream)
        if len(df) == 0:
            raise SchemaError(f"{stream}: empty batch")
        if df.columns.duplicated().any():  # a record holds one column of each name
            raise SchemaError(f"{stream}: duplicate column names {list(df.columns[df.columns.duplicated()])}; "
                              "nothing was appended")
        if timestamp not in df.columns:
            raise SchemaError(f"{stream}: the batch lacks the timestamp column {timestamp!r} "
                              f"(it has {[str(c) for c in df.columns]}); nothing was appended")
        cols = {}
        key_cols = set(keys)
        for c in df.columns:
            what = f"{stream} column {c!r}"
            if isinstance(c, str) and not C.valid_utf8(c):  # stored as UTF-8 in the log record
                raise SchemaError(f"{what}: the column name is not valid Unicode (it holds a lone surrogate)")
            s = df[c]
            if c == timestamp:
                us = to_micros(s, what=what)  # every row needs a valid time
                cols[c] = us.astype("datetime64[us]") if _is_time(s) else C.value_column(s, what=what)
                continue
            if _is_time(s):
                cols[c] = _times(s, what)
                continue
            if pd.api.types.is_unsigned_integer_dtype(s.dtype):
                ints = s.dropna().to_numpy()
                if len(ints) and ints.max() > _INT64_MAX:
                    raise SchemaError(f"{what}: integer {int(ints.max())} does not fit in int64; send such keys "
                                      "as strings")
            if c in key_cols:
                C.key_column(s, what=what)  # refuses what a training set could not use as keys
                try:
                    cols[c] = C.value_column(s, what=what)
                except SchemaError:  # keys may mix numbers and strings
                    cols[c] = C.key_column(s, what=what)
            else:
                cols[c] = C.value_column(s, what=what)  # one kind: numbers, or strings
        kinds = {c: _kind(v) for c, v in cols.items()}
        return cols, kinds, self._check_kinds(name, kinds, key_cols), len(df)

    def _check_kinds(self, name: str, kinds: dict[str, str | None], keys: Collection[str]) -> dict[str, str | None]:
        """The stream's known kinds, after checking that the new ``kinds`` agree with them."""
        known = self._known(name)
        for c, k in kinds.items():
            if _conflict(known.get(c), k, c in keys):
                raise SchemaError(f"observation stream {name!r} column {c!r}: holds {_NAMES[known[c]]} values; "
                                  f"this append gives it {_NAMES[k]} values (a column holds one kind, fixed by "
                                  "the first values the stream stored; nothing was appended)")
        return known

    def _known(self, name: str) -> dict[str, str | None]:
        """The kind of each column of the stream's records so far (see :meth:`kind`)."""
        known = self._kinds.get(name)
        if known is None:  # every record: a column may first appear (or first hold values) in any of them
            known = {}
            for record in self._records(name):
                for c, v in record["cols"].items():
                    if known.get(c) != "mixed":
                        known[c] = _merge(known.get(c), _kind(C.decode(v)))
            self._kinds[name] = known
        return known

    def kind(self, name: str, column: str) -> str | None:
        """The kind of values ``column`` of stream ``name`` holds: ``"timestamp"``, ``"num"``, ``"str"``,
        ``"mixed"`` (an entity-key column holding numbers and strings), or ``None`` while no record gave it
        a value. Another writer may fix a kind this one does not know yet: an append re-reads the stream's
        records before it fixes one."""
        return self._known(name).get(column)

    def kinds(self, name: str) -> dict[str, str]:
        """Every column of stream ``name`` with a known kind (see :meth:`kind`)."""
        return {c: k for c, k in self._known(name).items() if k is not None}

    def read(self, name: str) -> pd.DataFrame:
        """Every observation of stream ``name``: its own appends, then each writer's (module docstring)."""
        if not isinstance(name, str) or (name not in self._logs and not os.path.isdir(os.path.join(self.root, name))):
            raise UnknownStreamError(f"unknown observation stream {name!r}")
        batches = [C.decode_batch(r["cols"]) for r in self._records(name)]
        return pd.DataFrame(C.concat(batches)) if batches else pd.DataFrame()

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
