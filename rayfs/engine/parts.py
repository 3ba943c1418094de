"""The pure ingest logic: from user input to the parts each shard receives (no Ray, no I/O).

A driver turns a batch into shard parts in four steps, all here:

1. :func:`normalise` validates user input against the stream and the catalog's column kinds, giving
   normalised columns (:mod:`rayfs.engine.columns`) and the kinds seen for the first time.
2. :func:`split` cuts a normalised batch into chunks of at most ``MAX_BATCH_ROWS`` rows, each with its own
   batch id; each chunk is logged whole to the driver's write-ahead log as a :class:`Record`.
3. :func:`owners` gives the shard of each row's key per entity field; :func:`make_parts` cuts a record into
   one :class:`Part` per shard, with the packed ownership bits.
4. :func:`content_digest` hashes a normalised batch for content-derived batch ids (Ray Data ingest).

A :class:`Part` is what :meth:`rayfs.shard.core.ShardCore.ingest` receives, a plain dict on the wire:

* ``stream``: the stream's name.
* ``batch_id``: the id making the part idempotent: a shard drops a part whose ``(stream, batch_id)`` it
  applied before. Chunks of a split batch carry ``f"{batch_id}#{i}"``.
* ``cols``: the part's rows in wire form (:func:`rayfs.engine.columns.encode_batch`): the timestamp column
  ``__ts`` and every other column of the batch. Rows are cut from the encoded record, so string columns keep
  the whole batch's dictionary. A shard whose part holds every row of the batch gets the record's ``cols``
  object itself.
* ``wm``: the newest event time of the *whole* batch (µs), the same in every part. Every shard gets a part,
  also one owning no rows (``cols`` then has zero rows), so that each shard knows every stream's newest
  acknowledged event time, the instant online values are served at.
* ``own``: per entity field, ``np.packbits`` of one bit per row of the part: the row's key in that field is
  the receiving shard's (``routing.shard_of`` of the key equals the shard id). A null key's bit is 0. The
  shard looks up only its own keys. A part without ``own`` (a record of an older driver) is still valid:
  the shard hashes the keys itself.
* ``cv``: the catalog version the sending driver knew, so a shard can tell other drivers their copy is
  stale.

Invariants: a row goes to every shard that owns one of its keys (a row keyed by two entity fields may go
to two shards); a row whose every key is null goes to shard 0 (it is still logged); the rows of a part keep
the order of the batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple, Protocol, TypedDict

import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa

from rayfs.engine import columns as C
from rayfs.engine.fold import MAX_BATCH_ROWS, TS
from rayfs.engine.routing import shard_of, shard_of_strs
from rayfs.errors import RayfsError, SchemaError
from rayfs.model.definitions import Feature, Stream

__all__ = ["CatalogView", "Normalised", "Part", "Record", "content_digest", "is_batches", "make_parts",
           "normalise", "owners", "split"]


class Record(TypedDict):
    """One logged batch (or chunk of a batch) as the write-ahead log holds it."""

    stream: str
    batch_id: str
    cols: dict  # wire form of the rows (rayfs.engine.columns.encode_batch)


class _PartBase(TypedDict):
    stream: str
    batch_id: str
    wm: int
    cv: int
    cols: dict


class Part(_PartBase, total=False):
    """One shard's share of a logged batch (see the module docstring for each field and its invariants)."""

    own: dict[str, bytes]


class CatalogView(Protocol):
    """What :func:`normalise` reads of a catalog (:class:`rayfs.storage.catalog.Catalog` has it)."""

    schema: dict[str, dict[str, str]]
    features: Mapping[str, Feature]

    def required_columns(self, stream: str) -> dict[str, str]: ...

    def check_types(self, f: Feature, kinds: dict[str, str], *, error: type[RayfsError] | None = None) -> None: ...


class Normalised(NamedTuple):
    """A batch validated against its stream and the catalog."""

    cols: C.Batch  # the timestamp column (TS) and every other column, normalised
    kinds: dict[str, str | None]  # column -> kind seen in this batch (None: all null)
    changed: dict[str, str]  # column -> kind the catalog does not hold yet (to be recorded before writing)


def normalise(s: Stream, catalog: CatalogView, data) -> Normalised:
    """Validate user input against stream ``s`` and the catalog's column kinds.

    Args:
        s: the stream the batch goes to.
        catalog: the driver's catalog (column kinds seen so far, the features of ``s``).
        data: a DataFrame, pyarrow Table or RecordBatch, list of dicts or dict of arrays.

    Returns:
        The normalised columns, the kind of each column, and the kinds the catalog lacks (checked against
        every feature of ``s``; the caller records them before anything is written).

    Raises:
        SchemaError, TimestampError: naming the stream and the column.
    """
    what = f"stream {s.name!r}"
    df = C.to_frame(data, what=what)
    if len(df) == 0:
        raise SchemaError(f"{what}: empty batch")
    if df.columns.duplicated().any():
        raise SchemaError(f"{what}: duplicate column names {list(df.columns[df.columns.duplicated()])}")
    for c in (s.timestamp, *s.entities):
        if c not in df.columns:
            raise SchemaError(f"{what}: batch lacks column {c!r}")
    for c, fname in catalog.required_columns(s.name).items():
        if c not in df.columns:
            raise SchemaError(f"{what}: batch lacks column {c!r} used by feature {fname!r}")
    cols: C.Batch = {TS: C.timestamps(df[s.timestamp], what=f"{what} column {s.timestamp!r}")}
    kinds: dict[str, str | None] = {}
    schema = catalog.schema.get(s.name, {})
    for c in df.columns:
        if c == s.timestamp:
            continue
        if not isinstance(c, str) or c.startswith("__"):
            raise SchemaError(f"{what}: bad column name {c!r}")
        where = f"{what} column {c!r}"
        if c in s.entities:
            # Keys may mix ints and strings across batches ("mixed"), unless a feature reads the
            # column as a typed value (check_types below refuses "mixed" for those).
            col = C.key_column(df[c], what=where, coded=True)
            kind = C.key_kind(col)
            old = schema.get(c)
            if kind is not None and old is not None and old != kind:
                kind = "mixed"
            cols[c] = col
        else:
            col = C.value_column(df[c], what=where, coded=True)
            kind = C.kind_of(col)
            if kind is not None and schema.get(c, kind) != kind:
                raise SchemaError(f"{where}: holds {kind} values but earlier batches held {schema[c]} values")
            cols[c] = C.conform(col, schema.get(c, kind))
        kinds[c] = kind
    changed = {c: k for c, k in kinds.items() if k is not None and schema.get(c) != k}
    seen = catalog.null_columns.get(s.name, ())
    # first sight of a column holding nulls only: recorded (kind None) so that features may read it
    changed.update((c, None) for c, k in kinds.items() if k is None and c not in schema and c not in seen)
    if changed:  # first sight of a column's type: it must suit every feature that reads it
        merged = {**schema, **changed}
        for f in catalog.features.values():
            if f.stream == s.name:
                catalog.check_types(f, merged, error=SchemaError)
    return Normalised(cols, kinds, changed)


def split(cols: C.Batch, batch_id: str) -> Iterator[tuple[str, C.Batch]]:
    """The chunks of a normalised batch that are logged and sent one by one: ``(batch id, columns)``.

    A batch of at most ``MAX_BATCH_ROWS`` rows is one chunk keeping ``batch_id`` (and its ``cols`` object);
    a longer one is cut into chunks of ``MAX_BATCH_ROWS`` rows with ids ``f"{batch_id}#{i}"``.
    """
    chunks = range(0, len(cols[TS]), MAX_BATCH_ROWS)
    if len(chunks) == 1:
        yield batch_id, cols
        return
    for i, lo in enumerate(chunks):
        yield f"{batch_id}#{i}", C.take(cols, slice(lo, lo + MAX_BATCH_ROWS))


def owners(wire: dict, keys: np.ndarray | None, n_shards: int) -> np.ndarray:
    """The shard of each key (-1 for null) of one entity column.

    Args:
        wire: the column in wire form; dictionary-encoded keys are hashed once per distinct key.
        keys: the same column normalised, if at hand (saves decoding ``wire``).
        n_shards: the store's shard count.
    """
    if wire["k"] not in ("s", "k"):
        return shard_of(C.decode(wire) if keys is None else keys, n_shards)
    uniques = np.empty(len(wire["u"]), dtype=object)
    uniques[:] = wire["u"]
    per_unique = np.empty(len(uniques) + 1, dtype=np.int64)
    per_unique[:-1] = shard_of_strs(uniques, n_shards) if wire["k"] == "s" else shard_of(uniques, n_shards)
    per_unique[-1] = -1  # code -1: a null key
    return per_unique[np.frombuffer(wire["c"], dtype=np.int32)]


def make_parts(record: Record | dict, entities: Sequence[str], n_shards: int, cv: int,
               cols: C.Batch | None = None) -> list[Part]:
    """One :class:`Part` of a logged batch per shard: the rows of its keys (maybe none) and the watermark.

    Args:
        record: the logged batch (``stream``, ``batch_id``, ``cols`` in wire form).
        entities: the stream's entity fields.
        n_shards: the store's shard count; the result has this many parts, index = shard id.
        cv: the catalog version the sending driver knows.
        cols: the record's columns normalised, if at hand (saves decoding the wire form).
    """
    wire = record["cols"]
    ts = C.decode(wire[TS]) if cols is None else cols[TS]
    by_entity = [owners(wire[e], None if cols is None else cols[e], n_shards) for e in entities]
    mine = None  # per shard, per entity field: is the row's key this shard's
    if n_shards <= 16:  # a comparison per shard and entity beats scattering into a matrix
        mine = [[o == j for o in by_entity] for j in range(n_shards)]
        routed = [np.logical_or.reduce(m) for m in mine]
    else:
        routed = np.zeros((n_shards, len(ts)), dtype=bool)
        for o in by_entity:
            ok = o >= 0
            routed[o[ok], np.flatnonzero(ok)] = True
    keyless = ~np.logical_or.reduce([o >= 0 for o in by_entity])
    if keyless.any():
        routed[0] = routed[0] | keyless  # rows with only null keys are still logged (on shard 0)
    wm = int(ts.max())
    parts: list[Part] = []
    for j, mask in enumerate(routed):
        whole = mask.all()
        own = {}
        for i, (e, o) in enumerate(zip(entities, by_entity, strict=True)):
            bits = mine[j][i] if mine is not None else o == j
            own[e] = np.packbits(bits if whole else bits[mask]).tobytes()
        # Rows are cut from the encoded batch: strings keep the batch's dictionary, no re-encoding.
        parts.append({"stream": record["stream"], "batch_id": record["batch_id"], "wm": wm, "cv": cv,
                      "cols": wire if whole else C.take_wire(wire, mask), "own": own})
    return parts


def content_digest(cols: C.Batch) -> str:
    """A hash of a normalised batch that does not depend on the catalog.

    An all-null column (which normalising turns into NaNs or Nones depending on the column kinds known so
    far) hashes as a marker, so the same rows hash alike before and after another writer recorded the
    column's kind.
    """
    h = hashlib.blake2b(digest_size=16)
    for name, col in cols.items():
        h.update(msgpack.packb(name))
        if len(col) and C.null_mask(col).all():
            h.update(msgpack.packb(["null", len(col)]))
        else:
            h.update(msgpack.packb(C.encode(col), use_bin_type=True))
    return h.hexdigest()


_FRAMES = (pd.DataFrame, pa.Table, pa.RecordBatch)
_ARRAYS = (np.ndarray, pd.Series, pd.Index, pa.Array, pa.ChunkedArray, list, tuple)


def is_batches(data) -> bool:
    """Whether ``data`` is many batches rather than one.

    Many batches: an iterator (a generator, :func:`rayfs.sources.files.iter_batches`), or a list/tuple of
    DataFrames, pyarrow Tables or dicts of arrays. One batch: a DataFrame, a dict of arrays, or a list of
    dicts of scalars (events).
    """
    if isinstance(data, (*_FRAMES, Mapping, str, bytes)):
        return False
    if isinstance(data, (list, tuple)):
        return bool(data) and all(isinstance(b, _FRAMES) or (isinstance(b, Mapping) and b and all(
            isinstance(v, _ARRAYS) for v in b.values())) for b in data)
    return isinstance(data, Iterator)
