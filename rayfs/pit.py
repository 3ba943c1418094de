"""Point-in-time evaluation of observations against a shard's events (pure numpy, no Ray).

Rule (Chronon's, held everywhere in rayfs): an observation of entity key ``k`` at time ``t`` sees the
events of ``k`` with ``ts < t``; with a window ``w`` it sees ``t - w <= ts < t``. An event at exactly ``t``
is not seen; an event at exactly ``t - w`` is.

Events are selected by :func:`rayfs.fold.feature_rows` (the same selection as the online fold), sorted
once per entity field by ``(slot, ts, seq)``, and every observation becomes a half-open index range
``[lo, hi)`` into the sorted events of its key; the aggregate's ``range_query`` answers all ranges.
"""

from __future__ import annotations

import numpy as np

from rayfs.columns import Batch
from rayfs.fold import SEQ, TS, CompiledFeature, feature_rows, slot_column


def evaluate(cfs: list[CompiledFeature], cols: Batch, obs_slots: np.ndarray, obs_t: np.ndarray) -> list[np.ndarray]:
    """Values of each feature for each observation ``(slot, t)``; features share one entity field.

    Args:
        cfs: compiled features, all grouped by the same entity field of the stream in ``cols``.
        cols: every event of the stream on this shard (with ``__ts``, ``__seq`` and slot columns).
        obs_slots: the observation keys' slots on this shard (-1: key never seen here).
        obs_t: observation times, int64 µs.
    """
    if not cfs:
        return []
    entity = cfs[0].feature.entity
    n = len(cols.get(TS, ()))
    if n == 0:
        empty = np.full(len(obs_t), -1, dtype=np.int64)
        return [cf.agg.range_query(None if cf.kind == "none" else np.zeros(0, _dtype(cf)),
                                   np.zeros(0, np.int64), np.zeros(0, np.int64), empty + 1, empty + 1)
                for cf in cfs]
    slots_all = cols[slot_column(entity)]
    ts_all, seq_all = cols[TS], cols[SEQ]
    # One sort for all features of this entity field; each feature then filters the sorted order.
    order = np.lexsort((seq_all, ts_all, slots_all))
    order = order[slots_all[order] >= 0]
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(len(order))

    # Dense ranks of every time we compare with, so (slot, time) fits one int64 sort key.
    windows = sorted({cf.window_us for cf in cfs if cf.window_us is not None})
    probe_times = [obs_t] + [obs_t - w for w in windows]
    times = np.unique(np.concatenate([ts_all[order], *probe_times]))
    width = np.int64(len(times) + 1)
    obs_ok = obs_slots >= 0
    obs_base = np.where(obs_ok, obs_slots, 0).astype(np.int64) * width

    out = []
    for cf in cfs:
        idx, vals = feature_rows(cf, cols)
        sel = idx[np.argsort(rank_of[idx], kind="stable")]  # counted events in (slot, ts, seq) order
        if vals is not None:
            vals = vals[np.argsort(rank_of[idx], kind="stable")]
        ts_s, seq_s = ts_all[sel], seq_all[sel]
        keys = slots_all[sel].astype(np.int64) * width + np.searchsorted(times, ts_s)
        hi = np.searchsorted(keys, obs_base + np.searchsorted(times, obs_t), side="left")
        if cf.window_us is None:
            lo = np.searchsorted(keys, obs_base, side="left")
        else:
            lo = np.searchsorted(keys, obs_base + np.searchsorted(times, obs_t - cf.window_us), side="left")
        lo = np.where(obs_ok, lo, 0)
        hi = np.where(obs_ok, np.maximum(hi, lo), 0)
        out.append(cf.agg.range_query(vals, ts_s, seq_s, lo, hi))
    return out


def _dtype(cf: CompiledFeature):
    return object if cf.kind == "str" else np.float64
