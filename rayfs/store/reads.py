"""The parallel replay driver: fan observations out to the shards that own their keys, gather, restore order.

Each shard answers its observations with :meth:`rayfs.shard.core.ShardCore.replay`: its logged events,
ordered by (entity, event time, ingest order), evaluated point in time for every observation at once
(:mod:`rayfs.engine.pit`). Shards work in parallel; the driver only routes and scatters the answers back into
the input order; a null key gets the empty value without a shard call. Online reads (``method="get"``)
take the same route.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import ray

from rayfs.engine.routing import shard_of


class Request(NamedTuple):
    """One entity field's share of a read: its keys, per-key arrays, and the outputs to fill."""

    entity: str
    keys: np.ndarray  # normalised entity keys (see rayfs.engine.columns.key_column)
    extra: Sequence[np.ndarray]  # per-key arrays passed along, sliced like keys (replay: [times])
    defaults: dict[str, np.ndarray]  # feature key -> output pre-filled with its empty value; filled in place


def fan_out(handles: Sequence, method: str, requests: Sequence[Request], tail: tuple = ()) -> int:
    """Call ``method`` on every shard owning some keys of each request and scatter the answers back.

    Every call of every request is submitted before any answer is awaited, so the shards work while the
    driver routes the next entity field's keys, and each shard runs its calls back to back.

    Args:
        handles: shard actor handles, index = shard id.
        method: ``"replay"`` (extra = [times]) or ``"get"`` (extra = []).
        requests: one per entity field; ``defaults`` are filled in place (and may be widened to object).
        tail: extra positional arguments appended to each call.

    Returns:
        The newest catalog version the shards reported (so the caller can tell its catalog is stale).
    """
    calls, where = [], []
    for req in requests:
        names = list(req.defaults)
        owner = shard_of(req.keys, len(handles))
        for s in np.unique(owner[owner >= 0]).tolist():
            pos = np.flatnonzero(owner == s)
            args = [req.entity, req.keys[pos], *[e[pos] for e in req.extra], names, *tail]
            if method == "get":  # small: one buffer each way (see rayfs.shard.actor.ShardService.get_packed)
                calls.append(handles[s].get_packed.remote(pickle.dumps(tuple(args), protocol=pickle.HIGHEST_PROTOCOL)))
            else:
                calls.append(getattr(handles[s], method).remote(*args))
            where.append((req, pos))
    cv = 0
    for (req, pos), res in zip(where, ray.get(calls), strict=True):
        if isinstance(res, bytes):  # a small answer packed into one buffer (ShardService.get_packed)
            res = pickle.loads(res)
        cv = max(cv, res.get("__cv__", 0))
        _scatter(req.defaults, res, pos)
    return cv


def _scatter(defaults: dict[str, np.ndarray], res: dict, pos: np.ndarray) -> None:
    for n in list(defaults):
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
