"""Columnar batches: user input → validated numpy columns, and columns ↔ msgpack-able wire form.

Inside rayfs a batch is a ``dict[str, np.ndarray]`` of equal-length columns with one of these kinds:

* ``"i"``: int64, no nulls (integers, booleans);
* ``"f"``: float64, NaN is null (floats; integers with nulls);
* ``"s"``: object array of ``str``, ``None`` is null;
* ``"k"``: object array of ``int``/``str`` keys, ``None`` is null (entity columns mixing types);
* ``"t"``: int64 microseconds since the epoch (the timestamp column, and datetime values).

Value kinds seen by aggregates: ``"num"`` for ``i``/``f``, ``"str"`` for ``s``. A stream's schema maps each
column to ``"num"`` or ``"str"``; a later batch must agree, a column that is all null agrees with either.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayfs.errors import SchemaError
from rayfs.model.timeutil import to_micros

__all__ = ["Batch", "Coded", "concat", "conform", "decode", "decode_batch", "encode", "encode_batch", "key_column",
           "key_kind", "key_nulls", "kind_of", "null_mask", "take", "take_wire", "timestamps", "to_frame",
           "value_column"]

Batch = dict[str, np.ndarray]
_INT64_MAX = 2**63 - 1


def _unencodable(columns: Mapping, what: str) -> SchemaError:
    """The error for a string that is not valid Unicode (a lone surrogate), naming its column and row."""
    for name, col in columns.items():
        for i, v in enumerate(col if np.ndim(col) else [col]):
            if isinstance(v, str) and not valid_utf8(v):
                return SchemaError(f"{what} column {name!r}: string {v!r} at row {i} is not valid Unicode "
                                   "(it holds a lone surrogate, which has no UTF-8 encoding)")
    return SchemaError(f"{what}: a string is not valid Unicode (it holds a lone surrogate)")


def valid_utf8(s: str) -> bool:
    """Whether ``s`` has a UTF-8 encoding (no lone surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_strings(items: np.ndarray, *, what: str) -> None:
    """Raise SchemaError naming the first string of ``items`` (an object array of ``str`` and nulls) that
    has no UTF-8 encoding: keys are hashed and values stored as UTF-8, so such a string would fail later.

    One join and encode at C speed (~35 ms per million short strings); only object arrays need it (Arrow
    strings are valid UTF-8 by construction).
    """
    strs = [v for v in items if isinstance(v, str)] if pd.isna(items).any() else items
    try:
        "".join(strs).encode("utf-8")
    except (UnicodeEncodeError, TypeError):
        for i, v in enumerate(items):
            if isinstance(v, str) and not valid_utf8(v):
                raise SchemaError(f"{what}: string {v!r} at row {i} is not valid Unicode (it holds a lone "
                                  "surrogate, which has no UTF-8 encoding)") from None


def to_frame(data, *, what: str) -> pd.DataFrame:
    """Accept a DataFrame, pyarrow Table, list of dicts or dict of arrays; return a DataFrame."""
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        return data.to_pandas()
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame({k: (v if np.ndim(v) else [v]) for k, v in data.items()})
        except UnicodeEncodeError:  # pandas' Arrow-backed strings refuse lone surrogates
            raise _unencodable(data, what) from None
        except ValueError as exc:
            raise SchemaError(f"{what}: columns of a dict batch must have equal lengths ({exc})") from None
    if isinstance(data, (list, tuple)):
        if not all(isinstance(r, Mapping) for r in data):
            raise SchemaError(f"{what}: a list batch must hold dicts (one per event)")
        try:
            return pd.DataFrame(list(data))
        except UnicodeEncodeError:
            names = list(dict.fromkeys(k for r in data for k in r))
            raise _unencodable({k: [r.get(k) for r in data] for k in names}, what) from None
    raise SchemaError(f"{what}: unsupported batch type {type(data).__name__}; use a pandas DataFrame, "
                      "pyarrow Table, list of dicts or dict of arrays")


class Coded(np.ndarray):
    """An object column of strings that carries its wire form (:func:`encode`), made from pandas' Arrow
    string storage by Arrow's dictionary encoding: :func:`encode` returns it instead of factorizing the
    column again. Views, copies and slices do not carry it (``wire`` is ``None``); never mutate one."""

    wire: dict | None = None

    def __array_finalize__(self, obj) -> None:
        self.wire = None


def _arrow_strings(series: pd.Series) -> pa.Array | None:
    """The Arrow array behind a pandas string column (``str``/``string[pyarrow]`` dtypes), else ``None``."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
        return None
    arr = pa.array(series.array)
    if isinstance(arr, pa.ChunkedArray):  # e.g. a column of several Parquet row groups or a pd.concat
        arr = arr.combine_chunks()
    return arr if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) else None


def _coded_strings(arr: pa.Array) -> Coded:
    """The strings of ``arr`` as a :class:`Coded` object array (None for nulls), encoded as by :func:`encode`
    (dictionary in order of first appearance, code -1 for null)."""
    enc = pc.dictionary_encode(arr)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    uniq = enc.dictionary.to_pylist()
    table = np.empty(len(uniq) + 1, dtype=object)
    table[:-1] = uniq
    out = table[codes].view(Coded)  # code -1 picks the trailing None
    out.wire = {"k": "s", "u": uniq, "c": codes.tobytes()}
    return out


def value_column(series: pd.Series, *, what: str, coded: bool = False) -> np.ndarray:
    """Normalise one value column to kind ``i``, ``f`` or ``s`` (see module docstring).

    ``coded``: return a pandas Arrow string column as a :class:`Coded` array (cheaper to encode).
    """
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
        if series.isna().any():
            return series.astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)
        if pd.api.types.is_unsigned_integer_dtype(dtype):
            ints = series.to_numpy()
            if len(ints) and ints.max() > _INT64_MAX:  # would wrap to negative int64: numbers, as floats
                return ints.astype(np.float64)
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        raise SchemaError(f"{what}: datetime values are only supported in the timestamp column")
    arrow = _arrow_strings(series)
    if arrow is not None:  # strings by construction: no per-value check
        if arrow.null_count == len(arrow):
            return np.full(len(arrow), np.nan)
        if coded:
            return _coded_strings(arrow)
        return series.to_numpy(dtype=object, na_value=None)
    # strings and Python objects
    items = series.to_numpy(dtype=object)
    nulls = pd.isna(series).to_numpy()
    nonnull = items[~nulls]
    if len(nonnull) == 0:
        return np.full(len(items), np.nan)
    inferred = pd.api.types.infer_dtype(nonnull, skipna=False)  # C speed, no loop per value
    if inferred == "string":
        out = items.copy()
        out[nulls] = None
        check_strings(out, what=what)
        return out
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        return np.where(nulls, np.nan, items).astype(np.float64)
    types = {type(v) for v in nonnull}
    if all(issubclass(t, (int, float, np.integer, np.floating)) and not issubclass(t, bool) for t in types):
        return np.where(nulls, np.nan, items).astype(np.float64)
    if all(issubclass(t, (bool, np.bool_)) for t in types):
        return np.where(nulls, np.nan, items).astype(np.float64)
    bad = sorted(t.__name__ for t in types)
    raise SchemaError(f"{what}: values must be all numbers or all strings, got {', '.join(bad)}")


def key_column(series: pd.Series, *, what: str, coded: bool = False) -> np.ndarray:
    """Normalise an entity-key column: int64 (no nulls), or object array of ``int``/``str`` with None.

    Floats that are whole numbers become ints (pandas turns int columns with nulls into floats).
    ``coded``: return a pandas Arrow string column as a :class:`Coded` array (cheaper to encode).
    """
    dtype = series.dtype
    arrow = _arrow_strings(series)
    if arrow is not None:  # strings by construction
        return _coded_strings(arrow) if coded else series.to_numpy(dtype=object, na_value=None)
    if pd.api.types.is_bool_dtype(dtype):
        raise SchemaError(f"{what}: entity keys must be strings or integers, not booleans")
    if pd.api.types.is_integer_dtype(dtype) and not series.isna().any():
        if pd.api.types.is_unsigned_integer_dtype(dtype):
            ints = series.to_numpy()
            big = ints > _INT64_MAX
            if big.any():
                i = int(np.argmax(big))
                raise SchemaError(f"{what}: integer key {int(ints[i])} at row {i} does not fit in int64 (keys are "
                                  "signed 64-bit integers); send such keys as strings")
        return series.to_numpy(dtype=np.int64)
    nulls = pd.isna(series).to_numpy()
    if pd.api.types.is_integer_dtype(dtype):  # nullable integers holding nulls: exact, never through floats
        if pd.api.types.is_unsigned_integer_dtype(dtype):
            big = (series > _INT64_MAX).fillna(False).to_numpy(dtype=bool)
            if big.any():
                i = int(np.argmax(big))
                raise SchemaError(f"{what}: integer key {int(series.iloc[i])} at row {i} does not fit in int64 "
                                  "(keys are signed 64-bit integers); send such keys as strings")
        out = np.empty(len(series), dtype=object)
        out[~nulls] = series[~nulls].to_numpy(dtype=np.int64).tolist()
        out[nulls] = None
        return out
    if pd.api.types.is_float_dtype(dtype):
        f = series.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = f[~nulls]
        if not np.isfinite(ok).all():
            raise SchemaError(f"{what}: entity keys must be strings or integers, got {ok[~np.isfinite(ok)][0]}")
        if not np.all(ok == np.round(ok)):
            raise SchemaError(f"{what}: entity keys must be strings or integers, got fractional numbers")
        if len(ok) and np.abs(ok).max() > 2**53:
            raise SchemaError(f"{what}: integer keys above 2**53 in a float column have lost precision; "
                              "send them as an integer column (pandas 'Int64' for nullable keys)")
        if not nulls.any():
            return f.astype(np.int64)
        out = np.empty(len(f), dtype=object)
        out[~nulls] = f[~nulls].astype(np.int64).tolist()
        out[nulls] = None
        return out
    items = series.to_numpy(dtype=object).copy()
    items[nulls] = None
    kind = pd.api.types.infer_dtype(items[~nulls], skipna=False)
    if kind == "string":
        check_strings(items, what=what)
        return items
    if kind == "integer" and not nulls.any():
        try:
            return items.astype(np.int64)
        except OverflowError:
            pass  # a key beyond int64: the loop below names it
    for i in np.flatnonzero(~nulls):
        v = items[i]
        if isinstance(v, str):
            if not valid_utf8(v):
                raise SchemaError(f"{what}: string key {v!r} at row {i} is not valid Unicode (it holds a lone "
                                  "surrogate, which has no UTF-8 encoding)")
            continue
        if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            if not -(2**63) <= int(v) < 2**63:
                raise SchemaError(f"{what}: integer key {int(v)} does not fit in 64 bits; send such keys as strings")
            items[i] = int(v)
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            if abs(v) > 2**53:  # as in a float column: such a float is no longer the integer it was
                raise SchemaError(f"{what}: float key {float(v)!r} at row {i} is above 2**53 and has lost "
                                  "precision; send integer keys as integers")
            items[i] = int(v)
        else:
            raise SchemaError(f"{what}: entity keys must be strings or integers, got {type(v).__name__} {v!r}")
    return items


def key_kind(keys: np.ndarray) -> str | None:
    """``"num"`` (integer keys), ``"str"``, ``"mixed"`` (both), or ``None`` (all null) for a key column.

    >>> key_kind(np.array([1, 2])), key_kind(np.array(["a", None], dtype=object))
    ('num', 'str')
    >>> key_kind(np.array([1, "1"], dtype=object)), key_kind(np.array([None], dtype=object))
    ('mixed', None)
    """
    if keys.dtype != object:
        return "num"
    if isinstance(keys, Coded) and keys.wire is not None:
        return "str" if keys.wire["u"] else None
    inferred = pd.api.types.infer_dtype(keys, skipna=True)  # C speed; nulls (None) are skipped
    return {"string": "str", "integer": "num", "empty": None}.get(inferred, "mixed")


def key_nulls(keys: np.ndarray) -> np.ndarray:
    """Boolean mask of null keys."""
    if keys.dtype == object:
        return pd.isna(keys)
    return np.zeros(len(keys), dtype=bool)


def kind_of(col: np.ndarray) -> str | None:
    """The schema kind (``"num"``/``"str"``) of a value column, ``None`` if it is all null.

    Object arrays are string columns (an all-null column of a known string column is sent as one).
    """
    if col.dtype == object:
        return "str"
    if col.dtype.kind == "f" and np.isnan(col).all():
        return None
    return "num"


def null_mask(col: np.ndarray) -> np.ndarray:
    """Boolean mask of nulls in a value column."""
    if col.dtype == object:
        return pd.isna(col)
    if col.dtype.kind == "f":
        return np.isnan(col)
    return np.zeros(len(col), dtype=bool)


def conform(col: np.ndarray, kind: str | None) -> np.ndarray:
    """Give an all-null column the representation of ``kind``."""
    if kind == "str" and col.dtype != object:
        return np.full(len(col), None, dtype=object)
    return col


# ---------------------------------------------------------------------------------------------- wire form
def encode(col: np.ndarray) -> dict:
    """Encode a column as msgpack-able primitives (strings dictionary-encoded)."""
    if col.dtype == object:
        if isinstance(col, Coded) and col.wire is not None:
            return col.wire
        codes, uniques = pd.factorize(np.asarray(col), use_na_sentinel=True)
        uniq = uniques.tolist()
        if pd.api.types.infer_dtype(uniques, skipna=False) == "string" or not uniq:
            return {"k": "s", "u": uniq, "c": codes.astype(np.int32).tobytes()}
        return {"k": "k", "u": [int(u) if not isinstance(u, str) else u for u in uniq],
                "c": codes.astype(np.int32).tobytes()}
    if col.dtype.kind in "iub":
        return {"k": "i", "d": col.astype(np.int64, copy=False).tobytes()}
    if col.dtype.kind == "f":
        return {"k": "f", "d": col.astype(np.float64, copy=False).tobytes()}
    if col.dtype.kind == "M":
        return {"k": "t", "d": col.astype("datetime64[us]").astype(np.int64).tobytes()}
    raise TypeError(f"cannot encode dtype {col.dtype}")


def decode(wire: dict) -> np.ndarray:
    """Inverse of :func:`encode` (returns writable arrays)."""
    k = wire["k"]
    if k in ("s", "k"):
        codes = np.frombuffer(wire["c"], dtype=np.int32)
        table = np.empty(len(wire["u"]) + 1, dtype=object)
        table[:-1] = wire["u"]
        table[-1] = None
        return table[codes]  # code -1 picks the trailing None
    if k == "i":
        return np.frombuffer(wire["d"], dtype=np.int64).copy()
    if k == "f":
        return np.frombuffer(wire["d"], dtype=np.float64).copy()
    if k == "t":
        return np.frombuffer(wire["d"], dtype=np.int64).copy().astype("datetime64[us]")
    raise ValueError(f"unknown column kind {k!r}")


def take_wire(wire: dict, rows: np.ndarray) -> dict:
    """The rows of an encoded batch selected by a boolean mask or by row numbers, still encoded (string
    dictionaries are shared, not rebuilt)."""
    idx = np.flatnonzero(rows) if rows.dtype == bool else rows  # taking by index beats a random mask ~4x
    out = {}
    for name, col in wire.items():
        if col["k"] in ("s", "k"):
            out[name] = {"k": col["k"], "u": col["u"], "c": np.frombuffer(col["c"], dtype=np.int32).take(idx).tobytes()}
        else:
            out[name] = {"k": col["k"], "d": np.frombuffer(col["d"], dtype=np.int64 if col["k"] != "f"
                                                            else np.float64).take(idx).tobytes()}
    return out


def encode_batch(cols: Batch) -> dict:
    return {name: encode(c) for name, c in cols.items()}


def decode_batch(wire: dict) -> Batch:
    return {name: decode(c) for name, c in wire.items()}


def take(cols: Batch, idx) -> Batch:
    return {k: v[idx] for k, v in cols.items()}


def concat(batches: list[Batch]) -> Batch:
    """Concatenate batches column-wise (columns missing from a batch are filled with nulls)."""
    if not batches:
        return {}
    names: list[str] = []
    for b in batches:
        names.extend(n for n in b if n not in names)
    out = {}
    for name in names:
        parts = []
        for b in batches:
            n = len(next(iter(b.values()))) if b else 0
            parts.append(b[name] if name in b else np.full(n, np.nan))
        times = [p.dtype for p in parts if p.dtype.kind == "M"]
        if times:  # a datetime column absent from a batch (or all null there, a float NaN column) is NaT
            parts = [p if p.dtype.kind == "M" else _to_times(p, times[0], name) for p in parts]
        if any(p.dtype == object for p in parts):
            parts = [p if p.dtype == object else _to_object(p) for p in parts]
        out[name] = np.concatenate(parts)
    return out


def _to_times(col: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if not null_mask(col).all():
        raise SchemaError(f"column {name!r} holds datetimes in some batches and other values in others")
    return np.full(len(col), np.datetime64("NaT"), dtype=dtype)


def _to_object(col: np.ndarray) -> np.ndarray:
    out = col.astype(object)
    if col.dtype.kind == "f":
        out[np.isnan(col)] = None
    return out


def timestamps(series: pd.Series, *, what: str) -> np.ndarray:
    """The timestamp column as int64 µs (see :func:`rayfs.model.timeutil.to_micros`)."""
    return to_micros(series, what=what)


# ------------------------------------------------------------------------------- logged batch records
# A record as the driver sends it to a shard and the shard logs it: ``{"stream", "batch_id", "cols": wire
# columns, ...}``; these read it without decoding more than they need.

TS = "__ts"  # the event-time column of every batch (int64 µs)


def record_times(record: dict) -> np.ndarray:
    """The event times of a logged batch record (empty for a batch that only carries a watermark)."""
    return decode(record["cols"][TS])


def wire_codes(wire: dict) -> np.ndarray:
    """The int32 codes of a dictionary-encoded wire column (kinds ``s``/``k``; -1 = null), not copied."""
    return np.frombuffer(wire["c"], dtype=np.int32)


def wire_nulls(wire_cols: dict) -> dict[str, np.ndarray]:
    """Null masks of the dictionary-encoded columns of an encoded batch (``codes < 0``), by column name.

    >>> wire_nulls({"s": encode(np.array(["a", None], dtype=object)), "x": encode(np.array([1.0]))})
    {'s': array([False,  True])}
    """
    return {name: wire_codes(w) < 0 for name, w in wire_cols.items() if w["k"] in ("s", "k")}
