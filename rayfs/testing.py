"""Helpers for testing code built on rayfs.

Oracle
------
:func:`oracle_training_set` and :func:`oracle_online` compute feature values by brute force with plain
pandas and Python, independently of rayfs's engine (the ``where`` predicates are evaluated by DuckDB,
not by rayfs's own predicate code). They are deliberately simple -- one loop per observation -- and
meant for differential tests on small data: build a store, ingest the same events, and compare.

The contract they implement:

* Every timestamp becomes int64 microseconds (:func:`rayfs.model.timeutil.to_micros`).
* An observation ``(k, t)`` sees the events of the feature's stream whose entity column equals ``k``
  and whose time is strictly before ``t``; with a window ``w`` it sees ``t - w <= ts < t``.
* ``where`` is a SQL predicate over the event's columns; an event counts only where it is true (SQL
  null semantics: null is not true).
* Nulls in the aggregated column are skipped. ``count`` without a column counts rows.
  ``count``/``count_distinct`` of nothing is 0; every other aggregate of nothing is null (NaN for
  numbers, ``None`` for strings). ``variance``/``stddev`` are sample statistics (ddof=1), null below
  two values. ``first``/``last`` take the earliest/latest non-null value ordered by
  ``(ts, ingest position)``: of two events with the same time, the later-ingested one is later.
* An event whose entity key is null counts for no entity; an observation with a null key gets the
  empty value. Keys compare as Python values: ``1`` and ``"1"`` are different keys.
* The online value of a feature is its value at ``T + 1us``, where ``T`` is the newest event time
  of the feature's stream over all its events (null keys and ``where`` included).
* ``last_k``/``first_k`` list the values of the newest/oldest ``k`` non-null events (same order as
  ``first``/``last``), newest first for ``last_k`` and oldest first for ``first_k``. ``top_k`` lists the ``k``
  most frequent non-null values as ``{"value": v, "count": c}`` dicts, by count descending, ties by value
  ascending (numbers before strings). Each of them is ``[]`` when empty.
* The approximate aggregates get their exact counterparts here: ``approx_count_distinct`` the exact
  number of distinct values, ``approx_quantile`` the exact inverse-CDF quantile
  ``sorted(values)[max(ceil(q * n) - 1, 0)]`` (NaN when empty). Compare rayfs's estimates with
  :func:`assert_approx_features`, which checks the documented error bounds against the values in scope
  (the oracles with ``in_scope=True``).
* Count features (``approx_count_distinct`` too) are int64, other numeric features float64,
  string-valued and list-valued features object (``None`` for null).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rayfs.errors import AggregateError, DefinitionError, OptionError, SchemaError, UnknownStreamError
from rayfs.model.timeutil import parse_window, to_micros

__all__ = ["approx_error", "assert_approx_features", "assert_features_equal", "garble", "kill_shard", "log_segments",
           "oracle_online", "oracle_training_set", "pid_alive", "record_ends", "shard_actor_names", "shard_dir",
           "shard_pids", "truncate_tail", "wait_store_released", "worker_stderr"]

# ---------------------------------------------------------------------------------------------------
# Oracle (self-contained: depends only on rayfs.model.timeutil, rayfs.errors, pandas, numpy, duckdb)
# ---------------------------------------------------------------------------------------------------

_AGGS = ("count", "sum", "mean", "min", "max", "count_distinct", "stddev", "variance", "first", "last",
         "last_k", "first_k", "top_k", "approx_count_distinct", "approx_quantile")
_COUNTS = ("count", "count_distinct", "approx_count_distinct")
_NUMERIC_ONLY = ("sum", "mean", "stddev", "variance", "approx_quantile")
_LISTS = ("last_k", "first_k", "top_k")
_VALUES = "__values__"  # internal: the list of values in scope (oracle_in_scope)
_POS = "__rayfs_oracle_pos__"


def _is_null(v) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, (float, np.floating)):
        return bool(np.isnan(v))
    if isinstance(v, np.datetime64):
        return bool(np.isnat(v))
    return False


def _norm_key(v):
    """A key as a plain Python value (``None`` for null) so equal keys hash equal: 1 != "1"."""
    if _is_null(v):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def _is_string_column(s: pd.Series) -> bool:
    if isinstance(s.dtype, pd.StringDtype):
        return True
    if s.dtype == object:
        return any(isinstance(v, str) for v in s.tolist() if not _is_null(v))
    return False


def _where_mask(df: pd.DataFrame, where: str | None, *, feature: str) -> np.ndarray:
    """Row mask of ``df`` where the SQL predicate is true, evaluated by DuckDB (not rayfs)."""
    n = len(df)
    if where is None or n == 0:
        return np.ones(n, dtype=bool)
    import duckdb  # lazy: only needed for features with a predicate

    frame = df.reset_index(drop=True).copy()
    for c in frame.columns:  # make NaN an explicit SQL null rather than relying on DuckDB's scan
        if pd.api.types.is_float_dtype(frame[c].dtype) and not isinstance(frame[c].dtype, pd.ArrowDtype):
            frame[c] = frame[c].astype("Float64")
    frame[_POS] = np.arange(n, dtype=np.int64)
    con = duckdb.connect()
    try:
        con.register("events", frame)
        rows = con.execute(f'SELECT "{_POS}" FROM events WHERE ({where})').fetchall()
    except duckdb.Error as exc:
        raise DefinitionError(f"feature {feature!r}: oracle could not evaluate where {where!r}: {exc}") \
            from None
    finally:
        con.close()
    mask = np.zeros(n, dtype=bool)
    if rows:
        mask[np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))] = True
    return mask


@dataclass
class _Prepared:
    """One feature's events grouped by key; per key, indices sorted by (ts, ingest position)."""

    name: str
    agg: str
    window_us: int | None
    string_valued: bool          # the aggregated column holds strings
    ts: np.ndarray               # int64 us, all events of the stream
    values: object               # float ndarray (NaN = null), list (None = null), or None (row count)
    groups: dict                 # key -> int64 ndarray of event indices, ordered by (ts, position)
    max_ts: int | None           # newest event time of the stream, None if it has no events
    k: int | None = None         # last_k, first_k, top_k
    q: float | None = None       # approx_quantile

    @property
    def out_dtype(self):
        if self.agg in _COUNTS:
            return np.int64
        return object if self.string_valued or self.agg in _LISTS or self.agg == _VALUES else np.float64

    @property
    def empty(self):
        if self.agg in _COUNTS:
            return 0
        if self.agg in _LISTS or self.agg == _VALUES:
            return []  # a new list each time
        return None if self.string_valued else math.nan


def _prepare(events: Mapping[str, pd.DataFrame], streams: Mapping, f, *, in_scope: bool = False) -> _Prepared:
    agg = str(f.agg).lower()
    if agg not in _AGGS:
        raise AggregateError(f"feature {f.name!r}: unknown aggregate {f.agg!r}")
    param_k, param_q = getattr(f, "k", None), getattr(f, "q", None)
    if (agg in _LISTS and param_k is None) or (agg == "approx_quantile" and param_q is None):
        raise AggregateError(f"feature {f.name!r}: aggregate {agg!r} needs parameter "
                             f"{'k' if agg in _LISTS else 'q'}")
    if in_scope:
        agg = _VALUES
    if f.column is None and agg != "count":
        raise AggregateError(f"feature {f.name!r}: aggregate {agg!r} needs a column")
    if f.stream not in streams:
        raise UnknownStreamError(f"feature {f.name!r}: unknown stream {f.stream!r}")
    stream = streams[f.stream]
    if f.entity not in tuple(stream.entities):
        raise DefinitionError(f"feature {f.name!r}: {f.entity!r} is not an entity of stream {f.stream!r}")
    df = events.get(f.stream)
    if df is None:
        df = pd.DataFrame({stream.timestamp: pd.Series([], dtype=np.float64),
                           f.entity: pd.Series([], dtype=object)})
    for col in (stream.timestamp, f.entity) + ((f.column,) if f.column is not None else ()):
        if col not in df.columns:
            if len(df) == 0 and col == f.column:
                continue
            raise SchemaError(f"stream {f.stream!r}: events lack column {col!r} (feature {f.name!r})")
    n = len(df)
    ts = (to_micros(df[stream.timestamp], what=f"stream {f.stream!r} column {stream.timestamp!r}")
          if n else np.zeros(0, dtype=np.int64))
    mask = _where_mask(df, f.where, feature=f.name)
    keys = [_norm_key(v) for v in df[f.entity].tolist()]

    string_valued = False
    values: object = None
    if f.column is not None:
        col = df[f.column] if f.column in df.columns else pd.Series([], dtype=np.float64)
        string_valued = _is_string_column(col)
        if string_valued:
            values = [None if _is_null(v) else v for v in col.tolist()]
            if agg in _NUMERIC_ONLY:
                raise AggregateError(f"feature {f.name!r}: {agg!r} needs a numeric column, "
                                     f"{f.column!r} holds strings")
        else:
            values = np.array([math.nan if _is_null(v) else float(v) for v in col.tolist()], dtype=np.float64)

    pos_by_key: dict = {}
    for i, k in enumerate(keys):
        if k is not None and mask[i]:
            pos_by_key.setdefault(k, []).append(i)
    groups = {}
    for k, idx in pos_by_key.items():
        idx = np.asarray(idx, dtype=np.int64)          # ascending = ingest order
        groups[k] = idx[np.lexsort((idx, ts[idx]))]    # by ts, then ingest position
    return _Prepared(name=f.name, agg=agg, window_us=parse_window(f.window, feature=f.name),
                     string_valued=string_valued, ts=ts, values=values, groups=groups,
                     max_ts=int(ts.max()) if n else None, k=param_k, q=param_q)


def _aggregate(p: _Prepared, sel: np.ndarray):
    """The aggregate over the events ``sel`` (already in scope, ordered by (ts, position))."""
    if p.values is None:  # count of rows
        return len(sel)
    if p.string_valued:
        vals = [p.values[i] for i in sel if p.values[i] is not None]
    else:
        vals = [float(x) for x in p.values[sel] if not math.isnan(x)]
    a = p.agg
    if a == "count":
        return len(vals)
    if a in ("count_distinct", "approx_count_distinct"):
        return len(set(vals))
    if a == _VALUES:
        return vals
    if a == "last_k":
        return vals[::-1][:p.k]
    if a == "first_k":
        return vals[:p.k]
    if a == "top_k":
        counts: dict = {}
        for v in vals:
            counts[v] = counts.get(v, 0) + 1
        best = sorted(counts.items(), key=lambda vc: (-vc[1], isinstance(vc[0], str), vc[0]))[:p.k]
        return [{"value": v, "count": c} for v, c in best]
    if not vals:
        return p.empty
    if a == "approx_quantile":
        return sorted(vals)[max(math.ceil(p.q * len(vals)) - 1, 0)]
    if a == "first":
        return vals[0]
    if a == "last":
        return vals[-1]
    if a == "min":
        return min(vals)
    if a == "max":
        return max(vals)
    if a == "sum":
        return math.fsum(vals)
    if a == "mean":
        return math.fsum(vals) / len(vals)
    if a in ("variance", "stddev"):
        if len(vals) < 2:
            return math.nan
        m = math.fsum(vals) / len(vals)
        var = math.fsum((x - m) ** 2 for x in vals) / (len(vals) - 1)
        return math.sqrt(var) if a == "stddev" else var
    raise AssertionError(a)


def _value_at(p: _Prepared, key, t: int):
    key = _norm_key(key)
    if key is None:
        return p.empty
    idx = p.groups.get(key)
    if idx is None:
        return p.empty
    ts = p.ts[idx]
    m = ts < t
    if p.window_us is not None:
        m &= ts >= t - p.window_us
    return _aggregate(p, idx[m])


def _column(p: _Prepared, keys: Sequence, times: Sequence[int], index) -> pd.Series:
    vals = [_value_at(p, k, int(t)) for k, t in zip(keys, times, strict=True)]
    return pd.Series(vals, index=index, dtype=p.out_dtype, name=p.name)


def oracle_training_set(events: Mapping[str, pd.DataFrame], streams: Mapping, features: Sequence,
                        observations: pd.DataFrame, *, timestamp: str,
                        entity_columns: Mapping[str, str] | None = None, in_scope: bool = False) -> pd.DataFrame:
    """Point-in-time feature values for each observation, by brute force.

    Args:
        events: stream name -> DataFrame of its events in arrival order (row order = ingest order).
        streams: stream name -> :class:`rayfs.model.definitions.Stream`.
        features: the features (anything with ``name, stream, entity, agg, column, window, where``).
        observations: one row per observation, with the observation time in ``timestamp`` and, for
            each feature, the entity key in column ``f.entity`` (or ``entity_columns[f.name]``).
        timestamp: the observations' time column.
        entity_columns: per feature name, the observations' column holding its entity key.
        in_scope: instead of each feature's value, the list of the non-null values it aggregates for the
            row (its events in scope), ordered by ``(ts, ingest position)``: for checking approximations.

    Returns:
        A copy of ``observations`` (same index and order) plus one column per feature.

    >>> from types import SimpleNamespace as F
    >>> from rayfs.model.definitions import Stream
    >>> ev = {"votes": pd.DataFrame({"user": ["a", "a", "b"], "ts": [1.0, 2.0, 2.0], "x": [1.0, 5.0, 7.0]})}
    >>> st = {"votes": Stream(name="votes", entities=("user",), timestamp="ts")}
    >>> f = F(name="n", stream="votes", entity="user", agg="sum", column="x", window=None, where=None)
    >>> obs = pd.DataFrame({"user": ["a", "a", "b"], "t": [2.0, 2.5, 2.0]})
    >>> oracle_training_set(ev, st, [f], obs, timestamp="t")["n"].tolist()
    [1.0, 6.0, nan]
    """
    entity_columns = dict(entity_columns or {})
    out = observations.copy()
    if timestamp not in observations.columns:
        raise SchemaError(f"observations lack the timestamp column {timestamp!r}")
    times = (to_micros(observations[timestamp], what=f"observations column {timestamp!r}")
             if len(observations) else np.zeros(0, dtype=np.int64))
    for f in features:
        col = entity_columns.get(f.name, f.entity)
        if col not in observations.columns:
            raise SchemaError(f"observations lack the entity column {col!r} of feature {f.name!r}")
        p = _prepare(events, streams, f, in_scope=in_scope)
        out[f.name] = _column(p, observations[col].tolist(), times, observations.index)
    return out


def oracle_online(events: Mapping[str, pd.DataFrame], streams: Mapping, features: Sequence,
                  entity: str, keys: Sequence, *, in_scope: bool = False) -> pd.DataFrame:
    """Online (latest) feature values per key, by brute force.

    The value of each feature is its value for an observation at ``T + 1us``, ``T`` the newest event
    time of the feature's stream (over all its events); a stream without events gives empty values.
    ``in_scope`` is as for :func:`oracle_training_set`.

    Returns:
        One row per key in the order given: column ``entity`` holding the keys, plus one per feature.
    """
    keys = list(keys)
    key_col = pd.Series(keys)
    if pd.api.types.is_float_dtype(key_col.dtype) and not all(isinstance(k, float) for k in keys):
        key_col = pd.Series(keys, dtype=object)  # ints with None: keep the ints, don't make them floats
    out = pd.DataFrame({entity: key_col})
    for f in features:
        if f.entity != entity:
            raise DefinitionError(f"feature {f.name!r} groups by {f.entity!r}, not {entity!r}")
        p = _prepare(events, streams, f, in_scope=in_scope)
        if p.max_ts is None:
            out[f.name] = pd.Series([p.empty for _ in keys], index=out.index, dtype=p.out_dtype, name=f.name)
        else:
            out[f.name] = _column(p, keys, [p.max_ts + 1] * len(keys), out.index)
    return out


# ---------------------------------------------------------------------------------------------------
# Comparing results
# ---------------------------------------------------------------------------------------------------
def assert_features_equal(actual: pd.DataFrame, expected: pd.DataFrame, columns: Sequence[str], *,
                          rtol: float = 1e-9, context: str = "") -> None:
    """Assert two result frames agree on ``columns``, row by row (NaN equals NaN, None equals None).

    Floats compare with relative tolerance ``rtol`` (sums in a different order round differently);
    everything else must be equal. The message names the column, row and both values.
    """
    assert len(actual) == len(expected), f"{context}: {len(actual)} rows, expected {len(expected)}"
    for c in columns:
        a = actual[c].to_numpy(dtype=object)
        e = expected[c].to_numpy(dtype=object)
        for i, (x, y) in enumerate(zip(a, e, strict=True)):
            if _is_null(x) and _is_null(y):
                continue
            if isinstance(x, (float, np.floating)) or isinstance(y, (float, np.floating)):
                ok = (not _is_null(x) and not _is_null(y)
                      and math.isclose(float(x), float(y), rel_tol=rtol, abs_tol=1e-12))
            else:
                ok = x == y
            assert ok, f"{context}: feature {c!r} row {i}: got {x!r}, expected {y!r}"


def approx_error(agg: str, got, values: Sequence, q: float | None = None, *, slack: float = 1.0) -> str | None:
    """Why ``got`` is not an acceptable ``agg`` of ``values`` (the events in scope), or ``None`` if it is.

    * ``approx_count_distinct``: within 3 standard errors (``3 * 1.04 / sqrt(2**12)`` relative) plus 1
      of the exact number of distinct values; exactly 0 for no values.
    * ``approx_quantile``: NaN for no values; otherwise one of the values whose rank brackets ``q * n``
      within KLL's normalized rank error (k = 200): ``#{x < got} - e n <= q n <= #{x <= got} + e n``.

    ``slack`` scales both bounds.
    """
    from rayfs.aggregates.sketches import HLL_RSE, KLL_RANK_ERROR

    vals = list(values)
    if agg == "approx_count_distinct":
        exact = len(set(vals))
        bound = slack * (3 * HLL_RSE * exact + 1) if exact else 0
        return None if abs(int(got) - exact) <= bound else f"{got} distinct, exact {exact} (bound ±{bound:.1f})"
    if agg == "approx_quantile":
        if not vals:
            return None if _is_null(got) else f"{got!r} for no values"
        if _is_null(got) or float(got) not in {float(v) for v in vals}:
            return f"{got!r} is not one of the values"
        x = np.asarray(vals, dtype=np.float64)
        n, e = len(x), slack * KLL_RANK_ERROR * len(x)
        below, upto = int((x < got).sum()), int((x <= got).sum())
        if below - e <= q * n <= upto + e:
            return None
        return f"{got} has rank [{below}, {upto}] of {n}, target {q * n:.1f} ± {e:.1f}"
    raise AggregateError(f"aggregate {agg!r} is not approximate")


def assert_approx_features(actual: pd.DataFrame, in_scope: pd.DataFrame, features: Sequence, *,
                           slack: float = 1.0, context: str = "") -> None:
    """Assert every approximate feature of ``actual`` is within its error bound (:func:`approx_error`).

    ``in_scope`` is the oracle's frame for the same rows with ``in_scope=True`` (the values each row's
    feature aggregates).
    """
    assert len(actual) == len(in_scope), f"{context}: {len(actual)} rows, expected {len(in_scope)}"
    for f in features:
        got, vals = actual[f.name].tolist(), in_scope[f.name].tolist()
        for i, (x, v) in enumerate(zip(got, vals, strict=True)):
            why = approx_error(f.agg, x, v, getattr(f, "q", None), slack=slack)
            assert why is None, f"{context}: feature {f.name!r} row {i}: {why}"


# ---------------------------------------------------------------------------------------------------
# Crash and damage helpers (fault-injection tests: real processes, real files)
# ---------------------------------------------------------------------------------------------------
# Ray is imported lazily: this module is also imported where Ray must not start (unit tests).


def shard_pids(store) -> list[int]:
    """The operating-system process id of every shard actor of an open store, by shard index."""
    import ray

    return ray.get([h.pid.remote() for h in store._handles])


def kill_shard(store, i: int, sig: int | None = None) -> int | None:
    """Kill shard ``i``'s process with ``sig`` (default SIGKILL), like a crash; Ray restarts the actor.

    Returns the pid killed, or ``None`` if the process was already gone.
    """
    import os
    import signal

    pid = shard_pids(store)[i]
    try:
        os.kill(pid, signal.SIGKILL if sig is None else sig)
    except ProcessLookupError:
        return None
    return pid


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust kill(0)


def shard_actor_names(path, shards: int, name: str | None = None) -> list[str]:
    """The Ray actor names of the shards of the store at ``path`` (or of the store called ``name``)."""
    import os

    from rayfs.shard.actor import actor_name
    from rayfs.store.cluster import store_id

    sid = store_id(os.path.abspath(os.fspath(path)), name)
    return [actor_name(sid, i) for i in range(shards)]


def wait_store_released(path, shards: int, pids: Sequence[int] = (), timeout: float = 60.0) -> None:
    """Wait until no shard actor of the store at ``path`` is registered in Ray (e.g. after its driver
    died) and every process in ``pids`` has exited; raise ``TimeoutError`` otherwise."""
    import os
    import time

    import ray

    def registered(name: str) -> bool:
        try:
            ray.get_actor(name)
        except ValueError:
            return False
        except Exception:  # noqa: BLE001 - e.g. AssertionError while the dead owner's job is cleaned up
            return True
        return True

    from rayfs.store.cluster import coordinator_name, store_id

    names = [*shard_actor_names(path, shards), coordinator_name(store_id(os.path.abspath(os.fspath(path)), None))]
    deadline = time.monotonic() + timeout
    while any(registered(n) for n in names) or any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"store {path}: shard actors {names} / processes {list(pids)} still alive "
                               f"after {timeout}s")
        time.sleep(0.05)


def shard_dir(path, i: int = 0) -> str:
    """The data folder of shard ``i`` of the store at ``path``."""
    import os

    return os.path.join(os.fspath(path), "shards", f"shard-{i:03d}")


def log_segments(path, i: int = 0) -> list[str]:
    """The log segment files of shard ``i`` of the store at ``path``, oldest first."""
    import os
    import re

    d = os.path.join(shard_dir(path, i), "log")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if re.fullmatch(r"\d{20}\.log", n))


def record_ends(segment: str) -> list[int]:
    """Byte position just after each whole record of a log segment file (framing only, no CRC check)."""
    import os
    import struct

    ends, pos = [], 0
    size = os.path.getsize(segment)
    with open(segment, "rb") as f:
        while pos + 8 <= size:
            f.seek(pos)
            (length,) = struct.unpack("<I", f.read(4))
            if length == 0 or pos + 8 + length > size:
                break
            pos += 8 + length
            ends.append(pos)
    return ends


def truncate_tail(file: str, offset: int) -> int:
    """Cut ``file`` at byte ``offset`` (a torn write); returns the number of bytes removed."""
    import os

    size = os.path.getsize(file)
    if not 0 <= offset <= size:
        raise OptionError(f"truncate_tail({file!r}): offset {offset} outside [0, {size}]")
    os.truncate(file, offset)
    return size - offset


def garble(file: str, offset: int, n: int = 1, *, seed: int = 0) -> bytes:
    """Flip bits of ``n`` bytes of ``file`` from byte ``offset`` (each byte changes); returns the old bytes."""
    rng = np.random.default_rng(seed)
    with open(file, "r+b") as f:
        f.seek(offset)
        old = f.read(n)
        if len(old) != n:
            raise OptionError(f"garble({file!r}): cannot garble {n} bytes at {offset}: file has {offset + len(old)}")
        new = bytes(b ^ int(x) for b, x in zip(old, rng.integers(1, 256, n), strict=True))
        f.seek(offset)
        f.write(new)
        f.flush()
    return old


def worker_stderr(pid: int) -> str:
    """What the Ray worker process ``pid`` (e.g. a shard) wrote to stderr, from this Ray node's log files.

    Shard warnings (a torn log tail cut back, a snapshot rebuilt) are raised inside the actor process, so
    the driver never sees them as Python warnings; this is where they land.
    """
    import glob
    import os

    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    return "".join(open(f, errors="replace").read()
                   for f in sorted(glob.glob(os.path.join(logs, f"worker-*-{pid}.err"))))
