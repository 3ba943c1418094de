"""Message values → columns, vectorised; the messages that cannot be events become dead letters.

A micro-batch of Kafka message values is decoded as a whole: JSON values are joined by newlines and parsed
by Arrow's JSON reader (one C++ pass on one thread, no Python loop per message); msgpack values go through one streaming
``Unpacker``. Only when that fails (a value that is not one JSON object, a column whose type changes
within the batch) are the values parsed one by one, to find the bad ones. Then every row is checked
against the stream, column by column with array operations:

* a value that does not decode, or is not an object/map, is dead ("not a JSON object", ...);
* an entity key that is missing, null, or neither a string nor an integer is dead;
* a missing, null or unreadable event time is dead (unless the Kafka message timestamp is the event time);
  each time is read on its own (epoch seconds and ISO-8601 strings may share a batch);
* a value whose kind (number or string) differs from the kind the stream's column holds (as recorded in
  the store's schema, else as most of the column's values in the batch say) is dead, alone, as is a
  nested value.

Numbers keep their type as the same values given to ``ingest`` or ``append_observation`` as a list of
dicts would: integers stay int64 (unless a value is null or fractional), the rest become float64.

Decoding is deterministic: the same values and schema give the same rows and the same dead letters, which
exactly-once delivery relies on (a batch re-read from Kafka after a crash is re-sent under its batch id).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pj

from rayfs.errors import SourceError
from rayfs.model.definitions import Stream

__all__ = ["Decoded", "decode", "locate_bad", "parse", "validate"]

_BLOCK = 4 << 20  # bytes per block of Arrow's JSON reader


@dataclass
class Decoded:
    """A decoded micro-batch.

    Attributes:
        frame: the good events, one row per good message, in message order (a fresh index).
        rows: for each row of ``frame``, the position of its message in the input.
        dead: ``(position, reason)`` of every message that is not an event, in position order.
    """

    frame: pd.DataFrame
    rows: np.ndarray
    dead: list[tuple[int, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- parsing
def _parse_json_fast(values: Sequence[bytes]) -> pd.DataFrame | None:
    """All values at once through Arrow; ``None`` if that cannot be trusted to map one value to one row."""
    if not values or None in values:
        return None
    buf = b"\n".join(values)
    # One line per value: a value holding a line break (or an empty one) changes the count of rows.
    if buf.count(b"\n") != len(values) - 1 or b"\r" in buf:
        return None
    longest = max(map(len, values))
    # One thread: consumers and shards share the machine's cores; parsing threads only contend with them.
    opts = pj.ReadOptions(block_size=max(_BLOCK, 2 * longest + 2), use_threads=False)
    try:
        table = pj.read_json(pa.BufferReader(buf), read_options=opts)
        # Arrow reads strings shaped like ISO-8601 times as timestamps; JSON has only strings: read those
        # columns again as the strings they are (an event time is then parsed like any other string).
        times = [f.name for f in table.schema if pa.types.is_timestamp(f.type) or pa.types.is_date(f.type)]
        if times:
            table = pj.read_json(pa.BufferReader(buf), read_options=opts, parse_options=pj.ParseOptions(
                explicit_schema=pa.schema([(name, pa.string()) for name in times])))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(values):
        return None
    return _to_pandas(table)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    # Strings stay Arrow-backed (rayfs encodes those without touching each value).
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype("pyarrow"),
                                         pa.large_string(): pd.StringDtype("pyarrow")}.get)


def _records(values: Sequence[bytes | None], load: Callable[[bytes], object], what: str
             ) -> tuple[list[dict], list[int], list[tuple[int, str]]]:
    """Parse each value on its own: the objects, their positions, and the dead ones."""
    recs, rows, dead = [], [], []
    for i, v in enumerate(values):
        if v is None:
            dead.append((i, "empty message value (a tombstone)"))
            continue
        try:
            obj = load(v)
        except Exception as exc:  # noqa: BLE001 - any decoding failure makes the message dead
            dead.append((i, f"not valid {what}: {type(exc).__name__}: {str(exc)[:200]}"))
            continue
        if not isinstance(obj, dict):
            dead.append((i, f"not a {what} {'object' if what == 'JSON' else 'map'}: a {type(obj).__name__}"))
            continue
        recs.append(obj)
        rows.append(i)
    return recs, rows, dead


def _frame(recs: list[dict]) -> pd.DataFrame:
    """Objects → an object-typed frame (every column object: kinds are checked value by value later)."""
    if not recs:
        return pd.DataFrame(index=pd.RangeIndex(0))
    df = pd.DataFrame.from_records(recs)
    return df.astype(object) if len(df.columns) else df


def parse(values: Sequence[bytes | None], fmt: str) -> tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]]:
    """Parse message values (``fmt`` ``"json"`` or ``"msgpack"``): a frame, the positions of its rows, and
    the messages that are not objects/maps."""
    n = len(values)
    if fmt == "json":
        df = _parse_json_fast(values)
        if df is not None:
            return df, np.arange(n, dtype=np.int64), []
        recs, rows, dead = _records(values, json.loads, "JSON")
        return _frame(recs), np.asarray(rows, dtype=np.int64), dead
    if fmt == "msgpack":
        recs = _unpack_all(values)
        if recs is not None and all(isinstance(r, dict) for r in recs):
            return _frame(recs), np.arange(n, dtype=np.int64), []
        recs, rows, dead = _records(values, lambda v: msgpack.unpackb(v, raw=False, strict_map_key=False),
                                    "msgpack")
        return _frame(recs), np.asarray(rows, dtype=np.int64), dead
    raise SourceError(f"unknown message format {fmt!r}; one of json, msgpack")


def _unpack_all(values: Sequence[bytes | None]) -> list | None:
    """Every value through one Unpacker, or ``None`` unless each value is exactly one msgpack object."""
    if not values or any(v is None or not v for v in values):
        return None
    up = msgpack.Unpacker(io.BytesIO(b"".join(values)), raw=False, strict_map_key=False,
                          max_buffer_size=max(1 << 20, sum(map(len, values)) + 1))
    ends = np.cumsum([len(v) for v in values])
    out = []
    try:
        for i, obj in enumerate(up):
            if i >= len(values) or up.tell() != ends[i]:
                return None
            out.append(obj)
    except Exception:  # noqa: BLE001 - some value is bad: the caller looks value by value
        return None
    return out if len(out) == len(values) else None


# ----------------------------------------------------------------------------------------------- checks
def _classes(s: pd.Series) -> np.ndarray:
    """Per value: 0 null, 1 number (booleans included), 2 string, 3 anything else (nested, bytes...)."""
    dtype = s.dtype
    nulls = s.isna().to_numpy()
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return np.where(nulls, 0, 1).astype(np.int8)
    if isinstance(dtype, pd.StringDtype):
        return np.where(nulls, 0, 2).astype(np.int8)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return np.where(nulls, 0, 3).astype(np.int8)
    items = s.to_numpy(dtype=object)
    kind = pd.api.types.infer_dtype(items[~nulls], skipna=False) if (~nulls).any() else "empty"
    if kind == "string":
        return np.where(nulls, 0, 2).astype(np.int8)
    if kind in ("integer", "floating", "mixed-integer-float", "boolean"):
        return np.where(nulls, 0, 1).astype(np.int8)
    out = np.zeros(len(items), dtype=np.int8)
    for i in np.flatnonzero(~nulls):  # mixed kinds: only here is there a loop per value
        v = items[i]
        out[i] = 2 if isinstance(v, str) else 1 if isinstance(v, (int, float, np.integer, np.floating)) else 3
    return out


def _bad_keys(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(null, bad) masks of an entity-key column: keys must be strings or integers (whole numbers)."""
    cls = _classes(s)
    null = cls == 0
    bad = cls == 3
    if (cls == 1).any():
        items = s.to_numpy(dtype=object)
        num = np.flatnonzero(cls == 1)
        vals = items[num]
        ok = np.array([not isinstance(v, (bool, np.bool_)) and (
            isinstance(v, (int, np.integer)) and -(2**63) <= int(v) < 2**63
            or isinstance(v, (float, np.floating)) and float(v).is_integer() and abs(float(v)) <= 2**53)
            for v in vals], dtype=bool) if s.dtype == object or pd.api.types.is_bool_dtype(s.dtype) else None
        if ok is None:  # a numeric column: whole numbers only
            f = s.to_numpy(dtype=np.float64, na_value=np.nan)[num]
            ok = (f == np.round(f)) & (np.abs(f) <= 2**53) if s.dtype.kind == "f" else np.ones(len(num), bool)
        bad[num[~ok]] = True
    return null, bad


def _times(s: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """An event-time column made readable, and its (null, bad) masks: epoch seconds or ISO-8601 strings.

    Each value is read on its own kind: a column of strings only stays datetimes; numbers, and ISO strings
    beside numbers, become epoch seconds (one float column).
    """
    cls = _classes(s)
    null = cls == 0
    bad = cls == 3
    strs = cls == 2
    iso = None
    if strs.any():
        conv = pd.to_datetime(s.astype(object).where(strs, None), utc=True, errors="coerce", format="ISO8601")
        bad |= strs & conv.isna().to_numpy()
        if not (cls == 1).any():
            return conv.dt.tz_localize(None), null, bad
        ok = strs & ~bad
        iso = conv.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")[ok].astype(np.int64) / 1e6, ok
    if s.dtype == object or isinstance(s.dtype, pd.StringDtype):
        num = np.full(len(s), np.nan)
        m = cls == 1
        if m.any():
            num[m] = np.array([float(v) for v in s.to_numpy(dtype=object)[m]])
        if iso is not None:
            num[iso[1]] = iso[0]
        s = pd.Series(num, index=s.index)
    elif pd.api.types.is_bool_dtype(s.dtype):
        return s, null, bad | ~null
    f = s.to_numpy(dtype=np.float64, na_value=np.nan)
    bad |= ~null & ~np.isfinite(np.where(null, 0.0, f))
    bad |= ~null & (np.abs(np.where(null, 0.0, f)) > 9.2e12)  # beyond int64 microseconds
    return s, null, bad


def _numbers(col: pd.Series) -> pd.Series:
    """The numbers of an object column typed as ``append_observation`` and ``ingest`` type the same values
    given as a list of dicts: int64 when every value is an integer that fits (none null), booleans when every
    value is one, else float64."""
    items = col.to_numpy(dtype=object)
    nulls = pd.isna(col).to_numpy()
    if not nulls.any() and len(items):
        kind = pd.api.types.infer_dtype(items, skipna=False)
        if kind == "integer":
            try:
                return pd.Series(items.astype(np.int64), index=col.index)
            except OverflowError:
                pass  # beyond int64: floats, as a uint64 column beyond int64 is stored
        elif kind == "boolean":
            return pd.Series(items.astype(bool), index=col.index)
    return pd.to_numeric(col, errors="coerce").astype(np.float64)


def validate(df: pd.DataFrame, rows: np.ndarray, dead: list[tuple[int, str]], stream: Stream,
             schema: Mapping[str, str], kafka_ts: np.ndarray | None = None, required: Sequence[str] = (),
             mixed: Collection[str] = ()) -> Decoded:
    """Check parsed rows against ``stream`` and its column kinds ``schema`` (``"num"``/``"str"``).

    A column without a kind in ``schema`` takes the kind most of its values in the batch have (on a tie,
    the kind of its first value); its values of the other kind are dead.

    ``kafka_ts``: per input position, the Kafka message timestamp in milliseconds, to use as the event time.
    ``required``: columns the stream's features read; a batch whose messages all lack one gets it as nulls
    (a key missing from a message is a null value).
    ``mixed``: columns whose values may mix numbers and strings (entity keys stored beside labels); no kind
    is checked there.
    """
    n = len(df)
    reason = np.full(n, None, dtype=object)

    def kill(mask: np.ndarray, why: str) -> None:
        fresh = mask & (reason == None)  # noqa: E711 - elementwise
        reason[fresh] = why

    out: dict[str, pd.Series] = {}
    for e in stream.entities:
        if e not in df.columns:
            kill(np.ones(n, dtype=bool), f"lacks entity {e!r}")
            continue
        null, bad = _bad_keys(df[e])
        kill(null, f"lacks entity {e!r} (null)")
        kill(bad, f"entity {e!r} must be a string or an integer")
    ts = stream.timestamp
    if kafka_ts is not None:
        out[ts] = pd.Series(np.asarray(kafka_ts, dtype=np.int64)[rows].astype("datetime64[ms]"), index=df.index)
    elif ts not in df.columns:
        kill(np.ones(n, dtype=bool), f"lacks timestamp {ts!r}")
    else:
        conv, null, bad = _times(df[ts])
        kill(null, f"lacks timestamp {ts!r} (null)")
        kill(bad, f"timestamp {ts!r} is not epoch seconds or an ISO-8601 time")
        out[ts] = conv
    for c in df.columns:
        if c in stream.entities or c == ts:
            continue
        s = df[c]
        if not isinstance(c, str) or c.startswith("__"):
            kill(s.notna().to_numpy(), f"bad column name {c!r}")
            continue
        cls = _classes(s)
        kill(cls == 3, f"column {c!r} holds a nested or non-scalar value")
        want = {"num": 1, "str": 2}.get(schema.get(c, ""))
        if want is None and c not in mixed:  # the kind most of the batch's values have decides
            alive = ((cls == 1) | (cls == 2)) & (reason == None)  # noqa: E711
            nums, strs = int((alive & (cls == 1)).sum()), int((alive & (cls == 2)).sum())
            if nums or strs:
                want = 1 if nums > strs else 2 if strs > nums else int(cls[np.flatnonzero(alive)[0]])
        if want is not None and c not in mixed:
            name = "number" if want == 1 else "string"
            kill(((cls == 1) | (cls == 2)) & (cls != want), f"column {c!r} holds {name}s; this value is not one")
        out[c] = s
    good = reason == None  # noqa: E711
    dead = dead + [(int(rows[i]), str(reason[i])) for i in np.flatnonzero(~good)]
    dead.sort()
    frame = pd.DataFrame({c: (v if good.all() else v[good]) for c, v in out.items()})
    frame = frame.reset_index(drop=True)
    for e in stream.entities:
        if e in df.columns:
            frame[e] = _keys(df[e][good].reset_index(drop=True))
    for c in required:
        if c not in frame.columns and c not in stream.entities and c != ts:
            frame[c] = np.full(len(frame), np.nan)
    for c in frame.columns:
        if c in stream.entities or c == ts:
            continue
        if frame[c].dtype == object:  # numbers of a number column as numbers, strings as strings
            col = frame[c]
            if schema.get(c) == "num" or _classes(col).max(initial=0) == 1:
                frame[c] = _numbers(col)
    return Decoded(frame=frame, rows=rows[good], dead=dead)


def _keys(s: pd.Series) -> pd.Series:
    """Integer-valued floats of a key column back to integers (JSON parsers may read ``1`` as ``1.0``)."""
    if s.dtype.kind == "f":
        if s.isna().any():
            return pd.Series([None if np.isnan(v) else int(v) for v in s], dtype=object)
        return s.astype(np.int64)
    if s.dtype == object:
        items = s.to_numpy(dtype=object).copy()
        for i, v in enumerate(items):
            if isinstance(v, (float, np.floating)):
                items[i] = int(v)
        return pd.Series(items, dtype=object)
    return s


def decode(values: Sequence[bytes | None], fmt: str, stream: Stream, schema: Mapping[str, str], *,
           kafka_ts: np.ndarray | None = None, required: Sequence[str] = (), mixed: Collection[str] = (),
           parsed: tuple[pd.DataFrame, np.ndarray, list[tuple[int, str]]] | None = None) -> Decoded:
    """Decode message values into events of ``stream`` (see the module docstring and :func:`validate`).

    ``parsed``: what :func:`parse` gave for these very values, if it ran already (it depends on nothing
    but the values, so it may run ahead, on another thread)."""
    df, rows, dead = parsed if parsed is not None else parse(values, fmt)
    return validate(df.reset_index(drop=True), rows, dead, stream, schema, kafka_ts, required, mixed)


def locate_bad(n: int, check: Callable[[np.ndarray], bool]) -> list[int]:
    """The positions among ``range(n)`` that ``check`` refuses, by bisection.

    ``check(positions)`` says whether those rows together are acceptable; a row is bad when it is refused
    alone. Costs O(bad · log n) checks: the fallback for a batch refused whole for a reason the
    column checks did not foresee.
    """
    bad: list[int] = []
    todo = [np.arange(n, dtype=np.int64)]
    while todo:
        idx = todo.pop()
        if not len(idx) or check(idx):
            continue
        if len(idx) == 1:
            bad.append(int(idx[0]))
            continue
        mid = len(idx) // 2
        todo += [idx[mid:], idx[:mid]]
    return sorted(bad)
