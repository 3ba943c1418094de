"""Observation streams: durable, append-only tables of (entity keys, time, labels) to build training sets on.

Each stream is a :class:`~rayfs.storage.log.SegmentedLog` under ``<store>/observations/<name>/``, one record per
append (columns encoded like event batches). A column keeps one type across appends: timestamps stay
timestamps; numbers and strings may mix (they can be entity keys).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from rayfs.engine import columns as C
from rayfs.errors import SchemaError, UnknownStreamError
from rayfs.model.definitions import check_name
from rayfs.model.timeutil import to_micros
from rayfs.storage.log import SegmentedLog

__all__ = ["ObservationStreams"]


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
    return isinstance(s.dropna().iloc[0], (pd.Timestamp, np.datetime64))


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

    def append(self, name: str, rows) -> int:
        rows = [rows] if isinstance(rows, dict) else rows
        df = C.to_frame(rows, what=f"observation stream {name!r}")
        if len(df) == 0:
            raise SchemaError(f"observation stream {name!r}: empty batch")
        cols = {}
        for c in df.columns:
            what = f"observation stream {name!r} column {c!r}"
            s = df[c]
            if _is_time(s):
                cols[c] = to_micros(s, what=what).astype("datetime64[us]")
                continue
            try:
                cols[c] = C.value_column(s, what=what)
            except SchemaError:
                cols[c] = C.key_column(s, what=what)
        kinds = {c: _kind(v) for c, v in cols.items()}
        known = self._kinds.get(name)
        if known is None:
            first = next(iter(self._log(name).read(0, 1)), None)
            known = {} if first is None else {c: _kind(C.decode(v)) for c, v in first[1]["cols"].items()}
        for c, k in kinds.items():
            if k is not None and known.get(c, k) != k:
                raise SchemaError(f"observation stream {name!r} column {c!r}: holds {k} values but earlier "
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
