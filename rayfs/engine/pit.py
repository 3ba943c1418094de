"""Point-in-time evaluation of observations against a shard's events (pure numpy, no Ray).

Rule (Chronon's, held everywhere in rayfs): an observation of entity key ``k`` at time ``t`` sees the
events of ``k`` with ``ts < t``; with a window ``w`` it sees ``t - w <= ts < t``. An event at exactly ``t``
is not seen; an event at exactly ``t - w`` is.

Events are selected by :func:`rayfs.engine.fold.feature_rows` (the same selection as the online fold) and
sorted by ``(slot, ts, seq)``; every observation becomes a half-open index range ``[lo, hi)`` into the
sorted events of its key, and the aggregate's ``range_query`` answers all ranges at once.

Cost model (why it is built this way): the sort is done once per (stream, entity field) and reused until
the shard ingests again; each column is concatenated and permuted into sort order once, on first use (a
random gather is the expensive step, so no column is gathered twice and unused columns never are). The
binary searches run once per observation set over the whole sorted index (one for ``hi``, one for each
distinct window start), and each feature's selection of counted rows maps those positions to its own
through a prefix count: a gather instead of another binary search per feature.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from rayfs.engine.columns import Batch, concat
from rayfs.engine.fold import SEQ, TS, CompiledFeature, feature_rows, slot_column

__all__ = ["ColumnView", "EventIndex", "stable_argsort", "time_ranks"]


class ColumnView(Mapping):
    """Read-only columns of a list of batches, concatenated and optionally permuted, each on first use.

    Concatenation follows :func:`rayfs.engine.columns.concat` (a column a batch lacks is null there).

    >>> v = ColumnView([{"a": np.array([1, 2])}, {"a": np.array([3]), "b": np.array(["x"], dtype=object)}],
    ...                order=np.array([2, 0]))
    >>> v["a"].tolist(), v["b"].tolist(), sorted(v), len(v)
    ([3, 1], ['x', None], ['a', 'b'], 2)
    """

    def __init__(self, batches: list[Batch], order: np.ndarray | None = None) -> None:
        self._batches = [b for b in batches if b]
        self._order = order
        self._names: list[str] = []
        for b in self._batches:
            self._names.extend(n for n in b if n not in self._names)
        self._cols: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        col = self._cols.get(name)
        if col is None:
            if name not in self._names:
                raise KeyError(name)
            if len(self._batches) == 1:
                col = self._batches[0].get(name)
                if col is None:
                    col = concat(self._batches)[name]
            else:
                col = concat([{name: b[name]} if name in b else {name: np.full(len(next(iter(b.values()))), np.nan)}
                              for b in self._batches])[name]
            if self._order is not None:
                col = col[self._order]
            self._cols[name] = col
        return col

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for int64 keys, faster.

    numpy's stable argsort of int64 is a merge sort; its plain ``sort`` is vectorised and several times
    faster. When ``key * n + row`` fits in int64 the packed values are sorted (they are unique, so order
    among equal keys is by row); otherwise an unstable argsort is followed by re-sorting only the runs of
    equal keys by row.

    >>> stable_argsort(np.array([3, 1, 3, 1, 2])).tolist()
    [1, 3, 4, 0, 2]
    >>> stable_argsort(np.array([2**61, 5, 2**61, 5])).tolist()
    [1, 3, 0, 2]
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lo, hi = int(keys.min()), int(keys.max())
    if (hi - lo + 1) * n < 2**62:
        packed = (keys - lo) * np.int64(n) + np.arange(n, dtype=np.int64)
        packed.sort()
        return packed % np.int64(n)
    order = np.argsort(keys)
    k = keys[order]
    tie = np.zeros(n + 1, dtype=bool)
    np.equal(k[1:], k[:-1], out=tie[1:n])
    if tie.any():
        pos = np.flatnonzero(tie[:-1] | tie[1:])  # every member of a run of equal keys
        sub = order[pos]
        order[pos] = sub[np.lexsort((sub, k[pos]))]
    return order


def time_ranks(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct event times, sorted, and the dense rank of each event's time among them.

    >>> [a.tolist() for a in time_ranks(np.array([30, 10, 30, 20]))]
    [[10, 20, 30], [2, 0, 2, 1]]
    """
    by_time = np.argsort(ts)  # one sort (cheaper than np.unique + searchsorted); ranks need no stability
    ts_sorted = ts[by_time]
    new_time = np.empty(len(ts), dtype=bool)
    new_time[:1] = True
    np.not_equal(ts_sorted[1:], ts_sorted[:-1], out=new_time[1:])
    rank = np.empty(len(ts), dtype=np.int64)
    rank[by_time] = np.cumsum(new_time) - 1
    return ts_sorted[new_time], rank


class EventIndex:
    """The events of one stream on one shard, sorted for one entity field.

    Sort keys are ``slot * width + rank(ts)`` with ``rank`` the position of ``ts`` among the distinct event
    times, so "key ``k`` and ``ts < t``" is one binary search: ``searchsorted(times, t)`` counts the
    distinct event times before ``t``.

    Args:
        cols: the events, as one batch or a list of batches (concatenated lazily, column by column).
        entity: the entity field whose slots the index sorts by.
    """

    def __init__(self, cols: Batch | list[Batch], entity: str, same_events: EventIndex | None = None) -> None:
        batches = cols if isinstance(cols, list) else [cols]
        raw = ColumnView(batches)
        self.n = sum(len(b.get(TS, ())) for b in batches if b)
        self.entity = entity
        self._features: dict[str, tuple] = {}
        self._selections: dict[tuple, tuple] = {}
        if self.n == 0:
            return
        slots = raw[slot_column(entity)]
        if same_events is not None and same_events.n == self.n:  # another entity's index of these events
            self.times, self.rank = same_events.times, same_events.rank
        else:
            self.times, self.rank = time_ranks(raw[TS])
        self.width = np.int64(len(self.times) + 1)
        key_all = slots.astype(np.int64) * self.width + self.rank
        # Events in (slot, ts, seq) order: seq grows with the row, so a stable sort of the key does it.
        order = stable_argsort(key_all)
        order = order[slots[order] >= 0]  # events of keys this shard does not count are never seen
        self.keys = key_all[order]
        self.sorted = ColumnView(batches, order)
        self.m = len(order)

    def _selection(self, cf: CompiledFeature) -> tuple:
        """``(positions, prefix count or None, ts, seq, slots, values)`` of the feature's counted events
        in sort order; shared by features counting the same rows, values cached per compiled feature."""
        hit = self._features.get(cf.feature.key)
        if hit is not None and hit[0] is cf:
            return hit[1]
        idx, vals = feature_rows(cf, self.sorted)  # positions in sort order, increasing
        signature = (cf.feature.column, cf.feature.where)
        shared = self._selections.get(signature)
        if shared is None:
            ts, seq, slots = self.sorted[TS], self.sorted[SEQ], self.sorted[slot_column(self.entity)]
            if len(idx) == self.m:  # every event counts: positions are the selection's own
                shared = (None, ts, seq, slots)
            else:
                counted = np.zeros(self.m, dtype=bool)
                counted[idx] = True
                cum = np.zeros(self.m + 1, dtype=np.int64)
                np.cumsum(counted, out=cum[1:])
                shared = (cum, ts[idx], seq[idx], slots[idx])
            self._selections[signature] = shared
        out = (*shared, vals)
        self._features[cf.feature.key] = (cf, out)
        return out

    def evaluate(self, cfs: list[CompiledFeature], obs_slots: np.ndarray, obs_t: np.ndarray) -> list[np.ndarray]:
        """Values of each feature (all grouped by this entity field) for observations ``(slot, t)``.

        Args:
            cfs: compiled features of this index's stream and entity field.
            obs_slots: the observation keys' slots on this shard (-1: key never seen here).
            obs_t: observation times, int64 µs.
        """
        q = len(obs_t)
        if self.n == 0:
            out = []
            for cf in cfs:
                empty = np.zeros(q, dtype=np.int64)
                vals = None if cf.kind == "none" else np.zeros(0, object if cf.kind == "str" else np.float64)
                out.append(cf.agg.range_query(vals, np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty))
            return out
        # Binary searches with sorted needles touch memory in order: sort the observations once.
        by_key = np.lexsort((obs_t, obs_slots))
        obs_slots, obs_t = obs_slots[by_key], obs_t[by_key]
        obs_ok = obs_slots >= 0
        base = np.where(obs_ok, obs_slots, 0).astype(np.int64) * self.width
        by_time = np.argsort(obs_t, kind="stable")

        def rank_of(t: np.ndarray) -> np.ndarray:
            # The number of distinct event times before each t; needles in time order (t - w keeps the
            # order of t) make the binary searches walk memory forwards, several times faster.
            r = np.empty(q, dtype=np.int64)
            r[by_time] = np.searchsorted(self.times, t[by_time], side="left")
            return r

        # Positions in the whole sorted index: the end of each range (events before t) and its start per
        # window (lifetime: the key's first event); features map them to their own selection below.
        hi_all = np.searchsorted(self.keys, base + rank_of(obs_t), side="left")
        starts: dict[int | None, np.ndarray] = {}
        out = []
        for cf in cfs:
            w = cf.window_us
            if w not in starts:
                first = base if w is None else base + rank_of(obs_t - w)
                starts[w] = np.searchsorted(self.keys, first, side="left")
            cum, ts, seq, slots, vals = self._selection(cf)
            lo, hi = (starts[w], hi_all) if cum is None else (cum[starts[w]], cum[hi_all])
            lo = np.where(obs_ok, lo, 0)
            hi = np.where(obs_ok, np.maximum(hi, lo), 0)
            out.append(cf.agg.range_query(vals, ts, seq, lo, hi, groups=slots))
        unsort = np.empty(q, dtype=np.int64)
        unsort[by_key] = np.arange(q)
        return [o[unsort] for o in out]
