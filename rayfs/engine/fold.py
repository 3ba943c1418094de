"""The fold path: from a columnar batch to per-entity aggregate states.

Every way rayfs computes a feature value selects the events that count through :func:`feature_rows`, so
which events count cannot differ between them. How the selected events are aggregated takes two forms:

* **Folds** (the aggregate's ``update``/``merge``): online ingest, backfill and recovery fold batches into
  :class:`StateTable` (:func:`fold_into` and the shard's planned folds), and windowed online reads fold the
  buffered events of each key at read time (:class:`WindowEvents`).
* **Range queries** (the aggregate's ``range_query``): point-in-time replay, which answers training sets
  and the audit, evaluates every observation as a range of sorted events (:mod:`rayfs.engine.pit`) with
  prefix or segment kernels built from the same ``update``/``merge``. The contract tests
  (``tests/unit/test_aggregates.py``: ``range_query`` equals a fold of the slice, for every aggregate in
  the registry) and the end-to-end differential tests keep the two equal.

The selection rule and the order of events:

* an event counts for a feature iff its entity key is non-null and owned by this shard, the feature's
  ``where`` predicate is TRUE for it, and (when the feature has a column) its value is non-null;
* events are ordered by ``(ts, seq)``; ``seq`` grows with ingest order on a shard, so among events with
  equal timestamps the later-ingested one is later;
* folding is order-independent: any arrival order and batching yields identical state.

The kind of value a feature aggregates (``"num"``, ``"str"`` or ``"none"``) is decided by
:func:`value_kind`, on the shards and the driver alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from rayfs.aggregates import Aggregate, make_aggregate
from rayfs.engine.columns import TS, Batch, null_mask
from rayfs.errors import SchemaError
from rayfs.model.definitions import MAX_BATCH_ROWS, SEQ_ROW_BITS, Feature, Stream

__all__ = ["MAX_BATCH_ROWS", "SEQ", "SEQ_ROW_BITS", "TS", "CompiledFeature", "StateTable", "WindowEvents",
           "compile_feature", "feature_rows", "fold_into", "slot_column", "value_kind"]

SEQ = "__seq"  # an event's sequence number: log offset << SEQ_ROW_BITS | row (batches hold <= MAX_BATCH_ROWS rows)


def slot_column(entity: str) -> str:
    """Name of the internal column holding the shard-local slot of ``entity`` (-1: not counted here)."""
    return f"__slot_{entity}"


@dataclass
class CompiledFeature:
    """A feature bound to its aggregate and predicate for the value kind seen so far."""

    feature: Feature
    agg: Aggregate
    kind: str
    predicate: object | None  # rayfs.model.predicate.Predicate

    @property
    def window_us(self) -> int | None:
        return self.feature.window_us


def compile_feature(feature: Feature, kind: str | None) -> CompiledFeature:
    """Bind ``feature`` to an aggregate for value kind ``kind`` (``None``: no non-null value seen yet)."""
    from rayfs.model.predicate import Predicate

    if feature.column is None:
        kind = "none"
    elif kind is None:
        kind = "num" if "num" in _kinds(feature.agg) else "str"
    agg = make_aggregate(feature.agg, kind, **feature.params)
    pred = Predicate.parse(feature.where, feature=feature.name) if feature.where else None
    return CompiledFeature(feature=feature, agg=agg, kind=kind, predicate=pred)


def value_kind(feature: Feature, stream: Stream, schema: Mapping[str, str]) -> str | None:
    """The kind of value ``feature`` aggregates, given the column kinds ``schema`` of its stream.

    A feature over an entity column aggregates the keys themselves (ints and/or strings) as Python
    objects: ``"str"`` when the aggregate accepts strings, else ``"num"``. Any other column has the kind
    its stream's schema records, ``None`` while no non-null value was seen; a feature without a column has
    none (``None``). :func:`compile_feature` turns ``None`` into the default kind.

    >>> s = Stream(name="ev", entities=("user",), timestamp="ts")
    >>> value_kind(Feature(name="u", stream="ev", entity="user", agg="count_distinct", column="user"), s, {})
    'str'
    >>> value_kind(Feature(name="x", stream="ev", entity="user", agg="sum", column="x"), s, {"x": "num"})
    'num'
    """
    if feature.column is None:
        return None
    if feature.column in stream.entities:
        return "str" if "str" in _kinds(feature.agg) else "num"
    return schema.get(feature.column)


def _kinds(agg: str) -> frozenset[str]:
    from rayfs.aggregates import REGISTRY

    return REGISTRY[agg].kinds


def feature_rows(cf: CompiledFeature, cols: Batch, *,
                 nulls: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of ``cols`` that count for ``cf`` and the aggregated values at those rows.

    Args:
        cf: the compiled feature.
        cols: the batch.
        nulls: optional null masks of columns of ``cols`` by name, a cache shared by the features of one
            batch: masks missing from it are computed and added (the result never depends on it).

    Returns:
        (indices of counted rows, values at those rows or ``None`` for row counts).
    """
    f = cf.feature
    slots = cols[slot_column(f.entity)]
    mask = slots >= 0
    n = len(slots)
    if cf.predicate is not None:
        mask &= cf.predicate.evaluate(_with_nulls(cols, cf.predicate.columns, n), n)
    if f.column is None:
        return np.flatnonzero(mask), None
    col = cols[f.column] if f.column in cols else _nulls(n)
    if nulls is None:
        mask &= ~null_mask(col)
    else:
        if f.column not in nulls:
            nulls[f.column] = null_mask(col)
        mask &= ~nulls[f.column]
    idx = np.flatnonzero(mask)
    vals = col[idx]
    if cf.kind == "num":
        if vals.dtype == object and len(vals) == 0:
            vals = np.zeros(0, dtype=np.float64)
        elif vals.dtype == object:
            raise SchemaError(f"feature {f.name!r}: column {f.column!r} of stream {f.stream!r} holds strings")
        vals = vals.astype(np.float64, copy=False)
    elif vals.dtype != object:  # integer entity keys aggregated as objects
        vals = vals.astype(object)
    return idx, vals


def _nulls(n: int) -> np.ndarray:
    """An all-null column of no particular type (fits any comparison, holds no value)."""
    return np.full(n, None, dtype=object)


def _with_nulls(cols: Batch, names, n: int) -> Batch:
    """``cols`` plus all-null columns for ``names`` it lacks: a batch without a column has nulls there."""
    missing = [c for c in names if c not in cols]
    return {**cols, **{c: _nulls(n) for c in missing}} if missing else cols


class StateTable:
    """Aggregate states of one feature for every slot, grown on demand (capacity doubling)."""

    def __init__(self, agg: Aggregate, state: dict | None = None, size: int = 0) -> None:
        self.agg = agg
        self.size = size
        self.state = state if state is not None else agg.zero(0)

    def _capacity(self) -> int:
        return len(next(iter(self.state.values()))) if self.state else 0

    def grow(self, n: int) -> None:
        """Make slots ``[0, n)`` addressable (new slots hold the zero state)."""
        if n <= self._capacity():
            self.size = max(self.size, n)
            return
        cap = max(n, 2 * self._capacity(), 16)
        z = self.agg.zero(cap)
        # The old arrays are dropped: their elements move over without take()'s copies (e.g. of dicts).
        self.agg.put(z, np.arange(self.size), {k: v[:self.size] for k, v in self.state.items()})
        self.state = z
        self.size = n

    def fold(self, slots: np.ndarray, values, ts: np.ndarray, seq: np.ndarray) -> None:
        self.commit(self.prepare(slots, values, ts, seq))

    def prepare(self, slots: np.ndarray, values, ts: np.ndarray, seq: np.ndarray) -> tuple | None:
        """Compute a fold without applying it (any error surfaces here); see :meth:`commit`."""
        if not len(slots):
            return None
        self.grow(int(slots.max()) + 1)  # new zero states only: nothing observable changes
        return self.agg.prepare(self.state, slots, values, ts, seq)

    def commit(self, prepared: tuple | None) -> None:
        if prepared is not None:
            self.agg.commit(self.state, *prepared)

    def read(self, slots: np.ndarray) -> np.ndarray:
        """Finalized values at ``slots`` (-1 or unknown slots give the empty value)."""
        ok = (slots >= 0) & (slots < self.size)
        if ok.all():  # every slot has a state: finalize reads them, so no copy of the states is needed
            return self.agg.finalize({k: v[slots] for k, v in self.state.items()})
        sub = self.agg.zero(len(slots))
        if ok.any():
            self.agg.put(sub, np.flatnonzero(ok), self.agg.take(self.state, slots[ok]))
        return self.agg.finalize(sub)

    def compact(self) -> dict:
        """The state trimmed to its used size."""
        return self.agg.take(self.state, np.arange(self.size))


def fold_into(table: StateTable, cf: CompiledFeature, cols: Batch) -> None:
    """Fold every counted event of ``cols`` into ``table`` (online ingest and backfill)."""
    idx, vals = feature_rows(cf, cols)
    table.fold(cols[slot_column(cf.feature.entity)][idx], vals, cols[TS][idx], cols[SEQ][idx])


class WindowEvents:
    """The counted events of one windowed feature in (part of) a window buffer, grouped by slot.

    A shard keeps a feature's buffered events as a few such sorted runs (one per recent batch, merged as
    they accumulate), so an online read costs a binary search per key and run plus the events of those
    keys, never a scan or a re-sort of the buffer.
    """

    def __init__(self, cf: CompiledFeature, cols: Batch) -> None:
        self.cf = cf
        if not len(cols.get(TS, ())):
            self.slots = np.zeros(0, np.int64)
            self.ts = self.seq = self.slots
            self.vals = None if cf.kind == "none" else np.zeros(0, object if cf.kind == "str" else np.float64)
            return
        idx, vals = feature_rows(cf, cols)
        slots, ts, seq = cols[slot_column(cf.feature.entity)][idx], cols[TS][idx], cols[SEQ][idx]
        self._sort(slots, ts, seq, vals)

    def _sort(self, slots: np.ndarray, ts: np.ndarray, seq: np.ndarray, vals: np.ndarray | None) -> None:
        # By slot only: a fold is order-independent (aggregates order events by (ts, seq) themselves), and a
        # stable sort of concatenated runs is a linear merge (timsort finds the runs).
        order = np.argsort(slots, kind="stable")
        self.slots, self.ts, self.seq = slots[order], ts[order], seq[order]
        self.vals = None if vals is None else vals[order]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def merge(cls, runs: list[WindowEvents], floor: int) -> WindowEvents:
        """One run holding the events of ``runs`` with ``ts >= floor`` (older ones no window can see)."""
        out = cls.__new__(cls)
        out.cf = runs[0].cf
        slots = np.concatenate([r.slots for r in runs])
        ts = np.concatenate([r.ts for r in runs])
        seq = np.concatenate([r.seq for r in runs])
        vals = None if runs[0].vals is None else np.concatenate([r.vals for r in runs])
        keep = ts >= floor
        if not keep.all():
            slots, ts, seq = slots[keep], ts[keep], seq[keep]
            vals = None if vals is None else vals[keep]
        out._sort(slots, ts, seq, vals)
        return out

    def accumulate(self, state: dict, query_slots: np.ndarray, lower_us: int) -> None:
        """Fold the events with ``ts >= lower_us`` of each of ``query_slots`` (-1: unknown) into ``state``
        (row ``i`` of ``state`` belongs to ``query_slots[i]``)."""
        lo = np.searchsorted(self.slots, query_slots, side="left")
        hi = np.where(query_slots >= 0, np.searchsorted(self.slots, query_slots, side="right"), lo)
        lengths = hi - lo
        if lengths.sum():
            owner = np.repeat(np.arange(len(query_slots)), lengths)
            # every row of every range: position within its range + the range's start
            rows = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
            keep = self.ts[rows] >= lower_us
            rows, owner = rows[keep], owner[keep]
            self.cf.agg.update(state, owner, None if self.vals is None else self.vals[rows], self.ts[rows],
                               self.seq[rows])

    def slots_between(self, lo_us: int, hi_us: int) -> np.ndarray:
        """The slots of the events with ``lo_us <= ts < hi_us`` (with repeats)."""
        return self.slots[(self.ts >= lo_us) & (self.ts < hi_us)]

    def fold(self, query_slots: np.ndarray, lower_us: int) -> np.ndarray:
        """Finalized values over events with ``ts >= lower_us`` for each of ``query_slots`` (-1: unknown)."""
        agg = self.cf.agg
        state = agg.zero(len(query_slots))
        self.accumulate(state, query_slots, lower_us)
        return agg.finalize(state)
