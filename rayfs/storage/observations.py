"""Observation streams: durable, append-only tables of (entity keys, time, labels) to build training sets on.

Each stream is a :class:`~rayfs.storage.log.SegmentedLog` under ``<store>/observations/<name>/``, one record per
append (columns encoded like event batches). Every append carries the timestamp column (``ts``) with a
valid time in every row; other columns may be absent from an append (null there, NaT for datetimes). A
column keeps one type across appends: timestamps stay timestamps; numbers and strings may mix (they can
be entity keys).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Collection

import numpy as np
import pandas as pd

from rayfs.engine import columns as C
from rayfs.errors import SchemaError, UnknownStreamError
from rayfs.model.definitions import check_name
from rayfs.model.timeutil import to_micros
from rayfs.storage.log import SegmentedLog

__all__ = ["ObservationStreams"]

_INT64_MAX = 2**63 - 1


def _kind(col: np.ndarray) -> str | None:
    """Timestamps and other values cannot share an observation column (numbers and strings can: keys)."""
    if col.dtype.kind == "M":
        return "timestamp"
    if (col.dtype == object and pd.isna(col).all()) or (col.dtype.kind == "f" and np.isnan(col).all()):
        return None
    return "non-timestamp"


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
    """The observation streams of one store, as seen by one process."""

    def __init__(self, store_path: str, durability: str) -> None:
        self.root = os.path.join(store_path, "observations")
        self.durability = durability
        self._logs: dict[str, SegmentedLog] = {}
        self._kinds: dict[str, dict[str, str]] = {}

    def _log(self, name: str) -> SegmentedLog:
        if name not in self._logs:
            check_name(name, "observation stream")
            self._logs[name] = SegmentedLog(os.path.join(self.root, name), durability=self.durability)
        return self._logs[name]

    def append(self, name: str, rows, timestamp: str = "ts", keys: Collection[str] = ()) -> int:
        """Validate ``rows`` and append them as one record; nothing is written if any check fails.

        Args:
            name: the observation stream.
            rows: one dict, a list of dicts, a DataFrame, a pyarrow Table or a dict of arrays.
            timestamp: the stream's time column: every append must carry it, with a valid time in every
                row (training sets read it). Other columns may be absent from an append: they are null
                there (NaT for a datetime column).
            keys: columns that hold entity keys (e.g. every entity field of the store's streams): checked
                as keys (strings or int64 integers) here rather than when a training set reads them.

        Returns:
            The number of rows appended.

        Raises:
            SchemaError: an empty batch, a missing timestamp column, a column whose type differs from
                earlier appends, or values that cannot be stored (naming the column).
            TimestampError: a missing or unreadable time in the timestamp column (naming the row).
        """
        rows = [rows] if isinstance(rows, dict) else rows
        stream = f"observation stream {name!r}"
        df = C.to_frame(rows, what=stream)
        if len(df) == 0:
            raise SchemaError(f"{stream}: empty batch")
        if timestamp not in df.columns:
            raise SchemaError(f"{stream}: the batch lacks the timestamp column {timestamp!r} "
                              f"(it has {[str(c) for c in df.columns]}); nothing was appended")
        cols = {}
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
            if c in keys:
                C.key_column(s, what=what)  # refuses what a training set could not use as keys
            try:
                cols[c] = C.value_column(s, what=what)
            except SchemaError:
                cols[c] = C.key_column(s, what=what)
        kinds = {c: _kind(v) for c, v in cols.items()}
        known = self._kinds.get(name)
        if known is None:  # every record: a column may first appear (or first hold values) in any of them
            known = {}
            for _, record in self._log(name).read(0):
                for c, v in record["cols"].items():
                    if known.get(c) is None:
                        known[c] = _kind(C.decode(v))
        for c, k in kinds.items():
            if k is not None and known.get(c, k) != k:
                raise SchemaError(f"{stream} column {c!r}: holds {k} values but earlier "
                                  f"observations held {known[c]} values")
        self._log(name).append({"cols": C.encode_batch(cols)})
        self._kinds[name] = {**known, **{c: k for c, k in kinds.items() if k is not None}}
        return len(df)

    def read(self, name: str) -> pd.DataFrame:
        if name not in self._logs and not os.path.isdir(os.path.join(self.root, name)):
            raise UnknownStreamError(f"unknown observation stream {name!r}")
        batches = [C.decode_batch(r["cols"]) for _, r in self._log(name).read(0)]
        return pd.DataFrame(C.concat(batches)) if batches else pd.DataFrame()

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
