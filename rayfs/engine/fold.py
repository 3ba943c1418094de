"""The single fold path: from a columnar batch to per-entity aggregate states.

Online folding (ingest), backfill, windowed online reads and point-in-time replay all select events
through :func:`feature_rows` and aggregate them through the same :class:`~rayfs.aggregates.Aggregate`
objects, so their semantics cannot drift:

* an event counts for a feature iff its entity key is non-null and owned by this shard, the feature's
  ``where`` predicate is TRUE for it, and (when the feature has a column) its value is non-null;
* events are ordered by ``(ts, seq)``; ``seq`` grows with ingest order on a shard, so among events with
  equal timestamps the later-ingested one is later;
* folding is order-independent: any arrival order and batching yields identical state.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rayfs.aggregates import Aggregate, make_aggregate
from rayfs.engine.columns import Batch, decode, null_mask
from rayfs.errors import SchemaError
from rayfs.model.definitions import Feature

try:  # pandas' C hash table of int64 (vectorised look-ups); KeyIndex falls back to its dict without it
    from pandas._libs.hashtable import Int64HashTable
except ImportError:  # pragma: no cover - every supported pandas has it
    Int64HashTable = None

SMALL_LOOKUP = 64  # key look-ups up to this many keys go through the dict, not pandas
SEQ_ROW_BITS = 24  # seq = log offset << 24 | row: batches are capped at 2**24 rows
MAX_BATCH_ROWS = 1 << SEQ_ROW_BITS
TS = "__ts"
SEQ = "__seq"


def slot_column(entity: str) -> str:
    """Name of the internal column holding the shard-local slot of ``entity`` (-1: not counted here)."""
    return f"__slot_{entity}"


class KeyIndex:
    """Dense integer slots for the entity keys of one (stream, entity field) on one shard.

    Keys are Python ``int`` or ``str``; ``1`` and ``"1"`` are different keys.

    >>> ki = KeyIndex()
    >>> ki.lookup(np.array(["a", None, "b", "a"], dtype=object), add=True).tolist()
    [0, -1, 1, 0]
    >>> ki.lookup(np.array([7, 1]), add=False).tolist()
    [-1, -1]
    """

    def __init__(self, keys: list | None = None) -> None:
        self._keys: list = list(keys or [])
        self._slot: dict = {k: i for i, k in enumerate(self._keys)}
        self._ints = None  # Int64HashTable: int key -> slot, built on the first int64 lookup

    def _int_table(self):
        """The vectorised index of the integer keys (pandas' C hash table), built once, then kept in sync."""
        if self._ints is None:
            self._ints = Int64HashTable(max(16, len(self._keys)))
            self._index_ints(self._keys, 0)
        return self._ints

    def _index_ints(self, keys: list, first_slot: int) -> None:
        """Add the integer ones of ``keys`` (slots ``first_slot``, ``first_slot + 1``, ...) to the int table."""
        if self._ints is None:
            return
        at = [i for i, k in enumerate(keys) if isinstance(k, int) and -(2**63) <= k < 2**63]
        if at:
            self._ints.map_keys_to_values(np.array([keys[i] for i in at], dtype=np.int64),
                                          np.array(at, dtype=np.int64) + first_slot)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> list:
        return self._keys

    def lookup(self, keys: np.ndarray, *, add: bool | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Slots of ``keys``: -1 for null keys, and for unknown keys unless added.

        Args:
            keys: int64 or object array of keys.
            add: ``True`` adds every unknown key; a function of an array of unknown keys returning a
                boolean mask adds the keys it selects (e.g. those this shard owns); ``False`` adds none.
        """
        if len(keys) == 0:
            return np.zeros(0, dtype=np.int64)
        if add is False and len(keys) <= SMALL_LOOKUP:
            # An online read of a few keys: dict look-ups beat factorizing (None, a null, is never a key).
            return np.array([self._slot.get(k, -1) for k in keys.tolist()], dtype=np.int64)
        if keys.dtype.kind in "iu" and Int64HashTable is not None:
            # int64 keys: one C pass over the rows; only the unknown ones are factorized and added.
            slots = self._int_table().lookup(keys.astype(np.int64, copy=False)).astype(np.int64, copy=False)
            miss = np.flatnonzero(slots < 0)
            if len(miss) and add is not False:
                codes, uniques = pd.factorize(keys[miss])
                uniques = np.asarray(uniques, dtype=np.int64)
                slots[miss] = self._table(uniques.tolist(), add, False, ints=uniques)[codes]
            return slots
        codes, uniques = pd.factorize(pd.Series(keys, dtype=keys.dtype), use_na_sentinel=True)
        table = self._table(uniques.tolist(), add, keys.dtype == object)
        return table[codes]

    def lookup_encoded(self, uniques: list, codes: np.ndarray, *,
                       add: bool | Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """:meth:`lookup` of a dictionary-encoded key column (``uniques[codes]``, code -1 = null) without
        decoding it: one dict look-up per distinct key present, then a gather by code.

        Equal to ``lookup(decoded column)``, including the order in which new keys get their slots (first
        appearance in the rows); ``uniques`` may hold keys no row uses (they are not added).

        >>> ki = KeyIndex()
        >>> ki.lookup_encoded(["x", "a", "b"], np.array([1, -1, 2, 1], dtype=np.int32), add=True).tolist()
        [0, -1, 1, 0]
        >>> ki.keys()
        ['a', 'b']
        """
        if len(codes) == 0:
            return np.zeros(0, dtype=np.int64)
        local, used = pd.factorize(np.asarray(codes))  # the codes present, in order of first appearance
        used = np.asarray(used, dtype=np.int64)
        present = used >= 0
        pool = np.empty(len(uniques), dtype=object)
        pool[:] = uniques
        table = np.full(len(used) + 1, -1, dtype=np.int64)  # the trailing -1: no row maps there
        if present.all():
            table[:-1] = self._table(pool[used].tolist(), add, True)[:-1]
        else:
            table[np.flatnonzero(present)] = self._table(pool[used[present]].tolist(), add, True)[:-1]
        return table[local]

    def _table(self, uniq: list, add: bool | Callable[[np.ndarray], np.ndarray], objects: bool,
               ints: np.ndarray | None = None) -> np.ndarray:
        """Slots of the distinct non-null keys ``uniq`` plus a trailing -1 (the slot of a null code),
        adding unknown keys per ``add`` (see :meth:`lookup`) in the order of ``uniq``.

        ``ints``: ``uniq`` as an int64 array, all of them known to be unknown (the int64 path of
        :meth:`lookup`, which looked them up in the int table already).
        """
        table = np.empty(len(uniq) + 1, dtype=np.int64)
        if ints is None:
            table[:-1] = np.fromiter(map(self._slot.get, uniq, itertools.repeat(-1)), dtype=np.int64,
                                     count=len(uniq))
        else:
            table[:-1] = -1
        table[-1] = -1
        unknown = np.flatnonzero(table[:-1] < 0)
        if len(unknown) and add is not False:
            if add is not True:
                if ints is not None:
                    arr = ints[unknown]
                else:
                    arr = np.empty(len(unknown), dtype=object)
                    arr[:] = [uniq[i] for i in unknown.tolist()]
                    arr = arr if objects else arr.astype(np.int64)
                unknown = unknown[add(arr)]
            first = len(self._keys)
            added = [uniq[i] for i in unknown.tolist()]
            table[unknown] = np.arange(first, first + len(added))
            self._slot.update(zip(added, range(first, first + len(added)), strict=True))
            self._keys.extend(added)
            if ints is None:
                self._index_ints(added, first)
            elif len(unknown):
                self._ints.map_keys_to_values(ints[unknown], table[unknown])
        return table


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


def _kinds(agg: str) -> frozenset[str]:
    from rayfs.aggregates import REGISTRY

    return REGISTRY[agg].kinds


def record_times(record: dict) -> np.ndarray:
    """The event times of a logged batch record (empty for a batch that only carries a watermark)."""
    return decode(record["cols"][TS])


def wire_codes(wire: dict) -> np.ndarray:
    """The int32 codes of a dictionary-encoded wire column (kinds ``s``/``k``; -1 = null), not copied."""
    return np.frombuffer(wire["c"], dtype=np.int32)


def wire_nulls(wire_cols: dict) -> dict[str, np.ndarray]:
    """Null masks of the dictionary-encoded columns of an encoded batch (``codes < 0``), by column name.

    >>> from rayfs.engine.columns import encode
    >>> wire_nulls({"s": encode(np.array(["a", None], dtype=object)), "x": encode(np.array([1.0]))})
    {'s': array([False,  True])}
    """
    return {name: wire_codes(w) < 0 for name, w in wire_cols.items() if w["k"] in ("s", "k")}


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
    """The counted events of one windowed feature in a window buffer, sorted by (slot, ts, seq).

    Built once per buffer version (ingest invalidates it), so an online read costs a binary search per
    key plus the events of those keys, not a scan of the buffer.
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
        order = np.lexsort((seq, ts, slots))
        self.slots, self.ts, self.seq = slots[order], ts[order], seq[order]
        self.vals = None if vals is None else vals[order]

    def fold(self, query_slots: np.ndarray, lower_us: int) -> np.ndarray:
        """Finalized values over events with ``ts >= lower_us`` for each of ``query_slots`` (-1: unknown)."""
        agg = self.cf.agg
        q = len(query_slots)
        state = agg.zero(q)
        lo = np.searchsorted(self.slots, query_slots, side="left")
        hi = np.where(query_slots >= 0, np.searchsorted(self.slots, query_slots, side="right"), lo)
        lengths = hi - lo
        if lengths.sum():
            owner = np.repeat(np.arange(q), lengths)
            # every row of every range: position within its range + the range's start
            rows = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths - lo, lengths)
            keep = self.ts[rows] >= lower_us
            rows, owner = rows[keep], owner[keep]
            agg.update(state, owner, None if self.vals is None else self.vals[rows], self.ts[rows], self.seq[rows])
        return agg.finalize(state)
