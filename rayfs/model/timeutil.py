"""Timestamps and windows as int64 microseconds.

Every event time inside rayfs is an int64 count of microseconds since the Unix epoch (UTC). Inputs may
be numeric epoch seconds (int or float), numpy ``datetime64``, pandas timestamps or ``datetime``
objects; a missing or NaN timestamp is bad input.
"""

from __future__ import annotations

import datetime as _dt
import re

import numpy as np
import pandas as pd

from rayfs.errors import TimestampError, WindowError

__all__ = ["US_PER_S", "format_window", "parse_window", "scalar_to_micros", "to_micros"]

US_PER_S = 1_000_000
_UNITS = {"us": 1, "ms": 1_000, "s": US_PER_S, "m": 60 * US_PER_S, "h": 3600 * US_PER_S,
          "d": 86400 * US_PER_S, "w": 7 * 86400 * US_PER_S}
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


def to_micros(values, *, what: str = "timestamp") -> np.ndarray:
    """Convert a column of timestamps to int64 microseconds since the epoch.

    Args:
        values: array-like of epoch seconds (int/float), datetime64, pandas or datetime timestamps.
        what: the name used in error messages (e.g. ``"stream 'upvotes' column 'ts'"``).

    Raises:
        TimestampError: on a missing/NaN value or an unreadable type.

    >>> to_micros([1.5, 2]).tolist()
    [1500000, 2000000]
    >>> to_micros(np.array(["2024-01-01T00:00:01"], dtype="datetime64[s]")).tolist()
    [1704067201000000]
    """
    if isinstance(values, (pd.Series, pd.Index)):
        series = pd.Series(values)
    else:
        arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
        series = pd.Series(arr) if arr.ndim == 1 else pd.Series(list(arr))
    if series.isna().any():
        raise TimestampError(f"{what}: missing or NaN timestamp at row {int(np.argmax(series.isna().to_numpy()))}")
    dtype = series.dtype
    try:
        if pd.api.types.is_bool_dtype(dtype):
            raise TypeError("booleans are not timestamps")
        if pd.api.types.is_integer_dtype(dtype):
            return series.to_numpy(dtype=np.int64) * US_PER_S
        if pd.api.types.is_float_dtype(dtype):
            f = series.to_numpy(dtype=np.float64)
            if not np.isfinite(f).all():
                raise TypeError("infinite timestamp")
            return np.round(f * US_PER_S).astype(np.int64)
        if pd.api.types.is_datetime64_any_dtype(dtype):
            if getattr(dtype, "tz", None) is not None:
                series = series.dt.tz_convert("UTC").dt.tz_localize(None)
            return series.astype("datetime64[us]").to_numpy().astype(np.int64)
        # object column: datetimes, pandas Timestamps, or numbers mixed in Python objects
        items = series.tolist()
        if all(isinstance(v, (_dt.datetime, pd.Timestamp, np.datetime64)) for v in items):
            conv = pd.to_datetime(pd.Series(items), utc=True).dt.tz_localize(None)
            return conv.astype("datetime64[us]").to_numpy().astype(np.int64)
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in items):
            return to_micros(np.asarray(items, dtype=np.float64), what=what)
        bad = next(v for v in items if not isinstance(v, (_dt.datetime, pd.Timestamp, np.datetime64, int, float)))
        raise TypeError(f"value {bad!r} of type {type(bad).__name__}")
    except TimestampError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise TimestampError(f"{what}: unreadable timestamp ({exc}); use epoch seconds, datetime64, "
                             "pandas or datetime timestamps") from None


def scalar_to_micros(value, *, what: str = "timestamp") -> int:
    """Convert one timestamp to int64 microseconds (see :func:`to_micros`)."""
    return int(to_micros(pd.Series([value], dtype=object if not isinstance(value, (int, float)) else None),
                         what=what)[0])
