"""The parallel replay driver: fan observations out to the shards that own their keys, gather, restore order.

Each shard answers its observations with :meth:`rayfs.shardcore.ShardCore.replay`: its logged events,
ordered by (entity, event time, ingest order), evaluated point in time for every observation at once
(:mod:`rayfs.pit`). Shards work in parallel; the driver only routes and scatters the answers back into
the input order; a null key gets the empty value without a shard call. Online reads (``method="get"``)
take the same route.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray

from rayfs.routing import shard_of


def fan_out(handles: Sequence, method: str, keys: np.ndarray, extra: Sequence[np.ndarray], names: list[str],
            entity: str, defaults: dict[str, np.ndarray], tail: tuple = ()) -> int:
    """Call ``method`` on every shard owning some of ``keys`` and scatter the answers into ``defaults``.

    Args:
        handles: shard actor handles, index = shard id.
        method: ``"replay"`` (extra = [times]) or ``"get"`` (extra = []).
        keys: normalised entity keys (see :func:`rayfs.columns.key_column`).
        extra: per-key arrays passed along (sliced the same way as ``keys``).
        names: feature names to compute.
        entity: the entity field.
        defaults: name → output array pre-filled with each feature's empty value; filled in place.
        tail: extra positional arguments appended to each call.

    Returns:
        The newest catalog version the shards reported (so the caller can tell its catalog is stale).
    """
    owner = shard_of(keys, len(handles))
    calls, positions = [], []
    for s in np.unique(owner[owner >= 0]).tolist():
        pos = np.flatnonzero(owner == s)
        args = [entity, keys[pos], *[e[pos] for e in extra], names, *tail]
        calls.append(getattr(handles[s], method).remote(*args))
        positions.append(pos)
    cv = 0
    for pos, res in zip(positions, ray.get(calls), strict=True):
        cv = max(cv, res.get("__cv__", 0))
        for n in names:
            col = defaults[n]
            vals = res[n]
            if col.dtype == object and vals.dtype.kind == "f":
                # A shard that never saw a non-null value of a string column answers NaN: make it None.
                vals = np.where(np.isnan(vals), None, vals.astype(object))
            elif col.dtype != object and vals.dtype == object:
                wide = col.astype(object)  # a kind this driver had not seen yet (strings): empty is None
                if col.dtype.kind == "f":
                    wide[np.isnan(col)] = None
                col = defaults[n] = wide
            elif col.dtype != vals.dtype and col.dtype != object:
                vals = vals.astype(col.dtype)
            col[pos] = vals
    return cv
