"""Point-in-time evaluation of observations against a shard's events (pure numpy, no Ray).

Rule (Chronon's, held everywhere in rayfs): an observation of entity key ``k`` at time ``t`` sees the
events of ``k`` with ``ts < t``; with a window ``w`` it sees ``t - w <= ts < t``. An event at exactly ``t``
is not seen; an event at exactly ``t - w`` is.

Events are selected by :func:`rayfs.fold.feature_rows` (the same selection as the online fold) and
sorted by ``(slot, ts, seq)``; every observation becomes a half-open index range ``[lo, hi)`` into the
sorted events of its key, and the aggregate's ``range_query`` answers all ranges at once. The sort is
done once per (stream, entity field) and reused until the shard ingests again.
"""

from __future__ import annotations

import numpy as np

from rayfs.columns import Batch
from rayfs.fold import SEQ, TS, CompiledFeature, feature_rows, slot_column


class EventIndex:
    """The events of one stream on one shard, sorted for one entity field.

    Sort keys are ``slot * width + rank(ts)`` with ``rank`` the position of ``ts`` among the distinct event
    times, so "key ``k`` and ``ts < t``" is one binary search: ``searchsorted(times, t)`` counts the
    distinct event times before ``t``.
    """

    def __init__(self, cols: Batch, entity: str) -> None:
        self.cols = cols
        self.n = len(cols.get(TS, ()))
        self.entity = entity
        self._features: dict[str, tuple] = {}
        self._selections: dict[tuple, tuple] = {}
        if self.n == 0:
            return
        slots, ts = cols[slot_column(entity)], cols[TS]
        # Dense rank of each event time, from one sort (cheaper than np.unique + searchsorted).
        by_time = np.argsort(ts, kind="stable")
        ts_sorted = ts[by_time]
        new_time = np.empty(self.n, dtype=bool)
        new_time[0] = True
        np.not_equal(ts_sorted[1:], ts_sorted[:-1], out=new_time[1:])
        self.times = ts_sorted[new_time]
        rank = np.empty(self.n, dtype=np.int64)
        rank[by_time] = np.cumsum(new_time) - 1
        self.width = np.int64(len(self.times) + 1)
        self.key_all = slots.astype(np.int64) * self.width + rank
        # Events in (slot, ts, seq) order: seq grows with the row, so a stable sort of the key does it.
        order = np.argsort(self.key_all, kind="stable")
        self.order = order[slots[order] >= 0]

    def _sorted(self, cf: CompiledFeature) -> tuple:
        """The feature's counted events in sort order: (keys, values, ts, seq); cached per compiled feature."""
        hit = self._features.get(cf.feature.key)
        if hit is not None and hit[0] is cf:
            return hit[1]
        idx, vals = feature_rows(cf, self.cols)
        # Features that count the same rows (same column and where) share the sorted selection.
        signature = (cf.feature.column, cf.feature.where)
        shared = self._selections.get(signature)
        if shared is None:
            counted = np.zeros(self.n, dtype=bool)
            counted[idx] = True
            sel = self.order[counted[self.order]]  # the counted rows, already in sort order: no second sort
            shared = self._selections[signature] = (sel, self.key_all[sel], self.cols[TS][sel],
                                                    self.cols[SEQ][sel], self.cols[slot_column(self.entity)][sel])
        sel, keys, ts, seq, slots = shared
        if vals is not None:
            full = np.empty(self.n, dtype=vals.dtype)
            full[idx] = vals
            vals = full[sel]
        out = (keys, vals, ts, seq, slots)
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
        # Binary searches with sorted needles touch memory in order: sort the observations once.
        by_key = np.lexsort((obs_t, obs_slots))
        obs_slots, obs_t = obs_slots[by_key], obs_t[by_key]
        obs_ok = obs_slots >= 0
        out = []
        if self.n:
            base = np.where(obs_ok, obs_slots, 0).astype(np.int64) * self.width
            hi_key = base + np.searchsorted(self.times, obs_t, side="left")
        for cf in cfs:
            if self.n == 0:
                empty = np.zeros(q, dtype=np.int64)
                vals = None if cf.kind == "none" else np.zeros(0, object if cf.kind == "str" else np.float64)
                out.append(cf.agg.range_query(vals, np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty))
                continue
            keys, vals, ts, seq, slots = self._sorted(cf)
            hi = np.searchsorted(keys, hi_key, side="left")
            if cf.window_us is None:
                lo = np.searchsorted(keys, base, side="left")
            else:
                lo = np.searchsorted(keys, base + np.searchsorted(self.times, obs_t - cf.window_us), side="left")
            lo = np.where(obs_ok, lo, 0)
            hi = np.where(obs_ok, np.maximum(hi, lo), 0)
            out.append(cf.agg.range_query(vals, ts, seq, lo, hi, groups=slots))
        unsort = np.empty(q, dtype=np.int64)
        unsort[by_key] = np.arange(q)
        return [o[unsort] for o in out]
