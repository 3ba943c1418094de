"""Timestamps and windows as int64 microseconds.

Every event time inside rayfs is an int64 count of microseconds since the Unix epoch (UTC). Inputs may
be numeric epoch seconds (int or float), numpy ``datetime64`` of any unit, pandas timestamps (naive or
time-zone aware), Arrow-backed timestamp columns of any unit (naive or aware) or ``datetime`` objects;
naive times are UTC. Accepted times lie in 1678-01-01 .. 2261-12-31 UTC (pandas' ``datetime64[ns]``
range): anything outside, a missing or NaN time, a boolean or a column mixing datetimes and numbers is a
:class:`~rayfs.errors.TimestampError` naming the column and the first bad row. Nanosecond integers (what
``.astype("int64")`` gives for ``datetime64[ns]``) are therefore refused, never read as seconds.
Windows are positive and at most 1,000,000 days, so ``t - w`` stays far inside int64 for every accepted
``t``.
"""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayfs.errors import TimestampError, WindowError

__all__ = ["NEVER", "US_PER_S", "format_window", "parse_window", "scalar_to_micros", "to_micros"]

US_PER_S = 1_000_000
_UNITS = {"us": 1, "ms": 1_000, "s": US_PER_S, "m": 60 * US_PER_S, "h": 3600 * US_PER_S,
          "d": 86400 * US_PER_S, "w": 7 * 86400 * US_PER_S}
MAX_WINDOW_US = 1_000_000 * _UNITS["d"]
"""The longest window (~2,738 years, longer than the accepted time range): ``t - w`` and ``t + w`` stay far
inside int64 µs for every accepted time ``t``."""
_WINDOW_RE = re.compile(r"^\s*(\d+)\s*(us|ms|s|m|h|d|w)\s*$")


def parse_window(window: str | _dt.timedelta | None, *, feature: str = "?") -> int | None:
    """Return a window as a positive number of microseconds, or ``None`` for lifetime.

    >>> parse_window("7d")
    604800000000
    >>> parse_window(_dt.timedelta(minutes=15))
    900000000
    >>> parse_window(None) is None
    True
    """
    if window is None:
        return None
    if isinstance(window, _dt.timedelta):
        us = (window.days * 86400 + window.seconds) * US_PER_S + window.microseconds
    elif isinstance(window, str) and (m := _WINDOW_RE.match(window)):
        us = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise WindowError(f"feature {feature!r}: bad window {window!r}; use e.g. '30s', '15m', '3h', '7d' "
                          "or a datetime.timedelta")
    if us <= 0:
        raise WindowError(f"feature {feature!r}: window {window!r} must be positive")
    if us > MAX_WINDOW_US:
        raise WindowError(f"feature {feature!r}: window {window!r} is longer than {MAX_WINDOW_US // _UNITS['d']}d, "
                          "the longest accepted; a lifetime feature (no window) sees every event")
    return us


def format_window(us: int | None) -> str | None:
    """Render microseconds as the shortest exact window string.

    >>> format_window(604800000000), format_window(90 * 60 * 1_000_000)
    ('7d', '90m')
    """
    if us is None:
        return None
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if us % _UNITS[unit] == 0:
            return f"{us // _UNITS[unit]}{unit}"
    raise AssertionError("unreachable")


MIN_US = -9_214_560_000_000_000
"""The earliest accepted time, 1678-01-01T00:00:00 UTC, in µs since the epoch."""
MAX_US = 9_214_646_400_000_000
"""The first time past the accepted range, 2262-01-01T00:00:00 UTC, in µs since the epoch."""
NEVER = -(2**62)
"""A time below every accepted one, even less the longest window: a stream's newest time before any event."""
RANGE = "1678-01-01 to 2261-12-31 (pandas' datetime64[ns] range)"
_MIN_S, _MAX_S = MIN_US // US_PER_S, MAX_US // US_PER_S
_DATETIMES = (_dt.datetime, pd.Timestamp, np.datetime64)
_FINER_THAN_NS = ("ps", "fs", "as")  # datetime64 units whose whole range lies inside the accepted one


def _fail(what: str, row: int, why: str) -> TimestampError:
    return TimestampError(f"{what}: {why} at row {row}; timestamps are epoch seconds (int or float), "
                          f"datetime64, pandas or datetime timestamps from {RANGE}")


def _first(mask: np.ndarray) -> int:
    return int(np.argmax(mask))


def _number_hint(v: float) -> str:
    """Why an out-of-range number is out of range, with the likely cause when it is a finer epoch unit."""
    for unit, scale in (("milliseconds", 1e3), ("microseconds", 1e6), ("nanoseconds", 1e9)):
        if _MIN_S <= v / scale < _MAX_S:
            return (f"number {v!r} is outside the accepted range as epoch seconds (it looks like {unit} "
                    f"since the epoch: divide by {scale:.0e} or send datetime64 values)")
    return f"number {v!r} is outside the accepted range as epoch seconds"


def _seconds(f: np.ndarray, what: str) -> np.ndarray:
    """Epoch seconds (float64) to µs, refusing non-finite and out-of-range values."""
    bad = ~np.isfinite(f)
    if bad.any():
        i = _first(bad)
        raise _fail(what, i, f"non-finite number {f[i]!r}")
    bad = (f < _MIN_S) | (f >= _MAX_S)
    if bad.any():
        i = _first(bad)
        raise _fail(what, i, _number_hint(float(f[i])))
    return np.round(f * US_PER_S).astype(np.int64)


def _integer_seconds(arr: np.ndarray, what: str) -> np.ndarray:
    """Epoch seconds (any numpy integer dtype) to µs, refusing out-of-range values before they can wrap."""
    bad = (arr < _MIN_S) | (arr >= _MAX_S)  # numpy compares signed and unsigned integers exactly
    if bad.any():
        i = _first(bad)
        raise _fail(what, i, _number_hint(int(arr[i])))
    return arr.astype(np.int64) * US_PER_S


def _datetime64(arr: np.ndarray, what: str, rows: np.ndarray | None = None) -> np.ndarray:
    """A numpy ``datetime64`` array of any unit (no NaT) to µs, refusing times outside the range.

    ``rows``: the row number of each element in the user's column (default: its position).
    """
    unit = np.datetime_data(arr.dtype)[0]
    if unit not in _FINER_THAN_NS:
        # First in the array's own unit (a conversion of far-away times to µs would wrap), with bounds
        # floored to that unit; then exactly, in µs.
        lo = np.datetime64(MIN_US, "us").astype(arr.dtype)
        hi = np.datetime64(MAX_US, "us").astype(arr.dtype)
        bad = (arr < lo) | (arr > hi)
        if bad.any():
            i = _first(bad)
            raise _fail(what, i if rows is None else int(rows[i]), f"time {arr[i]} is outside the accepted range")
    us = arr.astype("datetime64[us]").view(np.int64)  # floors finer units, like pandas
    bad = (us < MIN_US) | (us >= MAX_US)
    if bad.any():
        i = _first(bad)
        raise _fail(what, i if rows is None else int(rows[i]), f"time {arr[i]} is outside the accepted range")
    return us


def _arrow_timestamps(series: pd.Series, what: str) -> np.ndarray:
    """An Arrow-backed timestamp column (any unit, naive or time-zone aware) to µs.

    Arrow stores aware timestamps as UTC instants, so the stored integers are taken as they are.
    """
    unit = series.dtype.pyarrow_dtype.unit
    arr = pa.array(series.array)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    ints = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
    return _datetime64(ints.astype(np.int64).view(f"datetime64[{unit}]"), what)


def _objects(items: list, what: str) -> np.ndarray:
    """An object column: all datetimes or all numbers (epoch seconds); anything else names its first row."""
    def kind(v) -> str:
        if isinstance(v, _DATETIMES):
            return "datetime"
        if isinstance(v, (bool, np.bool_)):
            return "boolean"
        if isinstance(v, (int, float, np.integer, np.floating)):
            return "number"
        return type(v).__name__

    kinds = [kind(v) for v in items]
    for i, k in enumerate(kinds):
        if k not in ("datetime", "number"):
            raise _fail(what, i, f"value {items[i]!r} of type {k} is not a timestamp")
        if k != kinds[0]:
            raise _fail(what, i, f"{k} {items[i]!r} in a column whose first value is a {kinds[0]}")
    if kinds[0] == "number":
        if all(isinstance(v, (int, np.integer)) for v in items):
            big = [i for i, v in enumerate(items) if not _MIN_S <= int(v) < _MAX_S]
            if big:
                raise _fail(what, big[0], _number_hint(int(items[big[0]])))
            return np.array([int(v) for v in items], dtype=np.int64) * US_PER_S
        return _seconds(np.array([float(v) for v in items], dtype=np.float64), what)
    try:  # vectorised; on failure the loop below names the row
        conv = pd.to_datetime(pd.Series(items, dtype=object), utc=True).dt.tz_localize(None).to_numpy()
    except (ValueError, OverflowError, TypeError):
        conv = None
    if conv is not None:
        return _datetime64(conv, what)
    out = np.empty(len(items), dtype=np.int64)
    for i, v in enumerate(items):  # one by one: units and time zones differ per object
        if not isinstance(v, np.datetime64):
            try:
                ts = pd.Timestamp(v)
            except (ValueError, OverflowError):
                raise _fail(what, i, f"time {v!r} is outside the accepted range") from None
            if ts.tzinfo is not None:
                ts = ts.tz_convert("UTC").tz_localize(None)
            v = ts.to_datetime64()
        out[i] = _datetime64(np.array([v]), what, rows=np.array([i]))[0]
    return out


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def to_micros(values, *, what: str = "timestamp") -> np.ndarray:
    """Convert a column of timestamps to int64 microseconds since the epoch.

    Accepted: numbers as epoch seconds (int or float; nanosecond integers such as
    ``pd.Timestamp(...).value`` are out of range and refused, not reinterpreted), numpy ``datetime64`` of
    any unit, pandas ``datetime64`` columns (naive or time-zone aware), Arrow-backed timestamp columns
    (``pd.ArrowDtype(pa.timestamp(unit, tz))`` of any unit, naive or aware) and object columns of
    ``datetime``/pandas/numpy timestamps or of numbers. Naive times are UTC; finer units than µs are
    floored. Every time must lie in 1678-01-01 .. 2261-12-31 UTC (:data:`MIN_US` .. :data:`MAX_US`).

    Args:
        values: array-like of timestamps as described above.
        what: the name used in error messages (e.g. ``"stream 'upvotes' column 'ts'"``).

    Raises:
        TimestampError: naming the first bad row: a missing/NaN value, a boolean, a value of another
            type, a column mixing datetimes and numbers, a non-finite number or a time out of range.

    >>> to_micros([1.5, 2]).tolist()
    [1500000, 2000000]
    >>> to_micros(np.array(["2024-01-01T00:00:01"], dtype="datetime64[s]")).tolist()
    [1704067201000000]
    """
    if isinstance(values, np.ndarray) and values.dtype.kind == "M" and values.ndim == 1:
        nat = np.isnat(values)
        if nat.any():
            raise _fail(what, _first(nat), "missing timestamp (NaT)")
        return _datetime64(values, what)
    if isinstance(values, (pd.Series, pd.Index)):
        series = pd.Series(values)
    elif isinstance(values, np.ndarray):
        series = pd.Series(values) if values.ndim == 1 else pd.Series(list(values))
    else:  # a list: numpy would coerce mixed datetime64 units to the finest one, wrapping far times
        items = list(values)
        series = pd.Series(np.asarray(items) if all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    for v in items) else _object_array(items))
    nulls = series.isna().to_numpy()
    if nulls.any():
        raise _fail(what, _first(nulls), "missing or NaN timestamp")
    dtype = series.dtype
    if isinstance(dtype, pd.ArrowDtype) and pa.types.is_timestamp(dtype.pyarrow_dtype):
        return _arrow_timestamps(series, what)
    if pd.api.types.is_bool_dtype(dtype):
        raise _fail(what, 0, "boolean column: booleans are not timestamps")
    if pd.api.types.is_integer_dtype(dtype):
        ints = series.to_numpy()
        return _integer_seconds(ints if ints.dtype.kind in "iu" else series.to_numpy(dtype=np.int64), what)
    if pd.api.types.is_float_dtype(dtype):
        return _seconds(series.to_numpy(dtype=np.float64), what)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        if getattr(dtype, "tz", None) is not None:
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        return _datetime64(series.to_numpy(), what)
    if pd.api.types.is_object_dtype(dtype):
        return _objects(series.tolist(), what)
    raise TimestampError(f"{what}: values of type {dtype} are not timestamps; use epoch seconds (int or "
                         f"float), datetime64, pandas or datetime timestamps from {RANGE}")


def scalar_to_micros(value, *, what: str = "timestamp") -> int:
    """Convert one timestamp to int64 microseconds (see :func:`to_micros`)."""
    return int(to_micros(pd.Series([value], dtype=object if not isinstance(value, (int, float)) else None),
                         what=what)[0])
