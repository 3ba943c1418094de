"""What a shard tells about itself: counters, feature statistics, key samples and the consistency audit.

:class:`Inspection` is a read-only part of :class:`rayfs.shard.core.ShardCore` (no Ray here). It owns no
state and sees the shard only through :class:`ShardView`, the core's public surface it needs.

The audit recomputes online values the slow, independent way: it re-reads the shard's log from disk (not
the in-memory event cache), rebuilds a fresh point-in-time index and replays an observation at
``watermark + 1µs`` for each sampled key, which by the point-in-time rule sees exactly the events the
online value covers.

Invariants: every method holds the shard's lock for its whole answer (one consistent state), and waits for
running backfills of the features it reads (their state is incomplete until then).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from rayfs.engine.featurestats import partial_stats
from rayfs.engine.fold import CompiledFeature
from rayfs.engine.pit import EventIndex
from rayfs.model.definitions import Feature
from rayfs.model.timeutil import NEVER
from rayfs.shard.online import OnlineView
from rayfs.shard.replay_cache import ReplayCache
from rayfs.storage.log import SegmentedLog

__all__ = ["Inspection", "ShardView"]


class ShardView(Protocol):
    """The part of a shard :class:`Inspection` reads (implemented by :class:`~rayfs.shard.core.ShardCore`)."""

    shard_id: int
    lock: threading.RLock
    log: SegmentedLog
    counters: dict
    counts: dict[str, int]
    watermark: dict[str, int]
    features: Mapping[str, Feature]
    replays: ReplayCache
    online_view: OnlineView | None
    snapshot_time: float
    events_since_snapshot: int
    since_snapshot: int

    def get(self, entity: str, keys: np.ndarray, names: list[str]) -> dict: ...

    def online(self, key: str, slots: np.ndarray) -> np.ndarray: ...

    def slots(self, stream: str, entity: str, keys: np.ndarray) -> np.ndarray: ...

    def known_keys(self, stream: str, entity: str) -> list: ...

    def key_counts(self) -> dict[tuple[str, str], int]: ...

    def compiled_feature(self, key: str) -> CompiledFeature: ...

    def await_backfills(self, names: list[str]) -> None: ...


class Inspection:
    """Read-only views of a shard's state.

    Args:
        shard: the shard, through its public surface.
    """

    def __init__(self, shard: ShardView) -> None:
        self._shard = shard

    def stats(self) -> dict:
        """Counters and gauges of this shard (see :meth:`rayfs.FeatureStore.stats`)."""
        s = self._shard
        with s.lock:
            segs = s.log.segments()
            rs = s.counters["replay_seconds"]
            return {"shard": s.shard_id, **dict(s.counters.items()),
                    "replay_events_per_s": s.counters["replay_events"] / rs if rs else None,
                    "log_segments": len(segs), "log_bytes": s.log.size_bytes(),
                    "log_batches": s.log.next_offset, "snapshot_age_s": time.time() - s.snapshot_time,
                    "events_since_snapshot": s.events_since_snapshot,
                    "batches_since_snapshot": s.since_snapshot,
                    "events": sum(s.counts.values()),
                    "entities": {f"{st}.{e}": n for (st, e), n in s.key_counts().items()}}

    def _online_all(self, key: str) -> np.ndarray:
        """Online values of feature ``key`` for every entity this shard knows."""
        f = self._shard.features[key]
        slots = np.arange(len(self._shard.known_keys(f.stream, f.entity)), dtype=np.int64)
        return self._shard.online(key, slots)

    def feature_stats(self, keys: list[str]) -> dict[str, dict]:
        """Mergeable statistics (:func:`rayfs.engine.featurestats.partial_stats`) of the online values."""
        with self._shard.lock:
            self._shard.await_backfills(keys)
            return {k: partial_stats(self._online_all(k)) for k in keys if k in self._shard.features}

    def sample_keys(self, stream: str, entity: str, n: int, seed: int = 0) -> list:
        """Up to ``n`` entity keys of ``entity`` seen on ``stream`` by this shard, sampled without replacement."""
        with self._shard.lock:
            keys = self._shard.known_keys(stream, entity)
            if not keys:
                return []
            pick = np.random.default_rng(seed).choice(len(keys), size=min(n, len(keys)), replace=False)
            return [keys[i] for i in sorted(pick.tolist())]

    def audit(self, entity: str, keys: np.ndarray, names: list[str]) -> dict:
        """Served online values and a fresh replay from the on-disk log at the same instant, for ``keys``.

        The online values are the shard's state, except where the state agrees with the log and the online
        table readers get values from does not (a key without a row there reads as the empty value): then
        the table's, so that either kind of disagreement with the log shows.

        Returns ``{"online": {name: values}, "replay": {name: values}, "at": {name: replay time}}``.
        """
        s = self._shard
        with s.lock:
            s.await_backfills(names)
            online = s.get(entity, keys, names)["values"]
            table = s.online_view.read(entity, keys.tolist(), names) if s.online_view is not None else None
            fresh = s.replays.read_log()
            replay, at = {}, {}
            indexes: dict[str, EventIndex] = {}
            for n in names:
                f = s.features[n]
                if f.stream not in indexes:
                    indexes[f.stream] = EventIndex(fresh.get(f.stream, []), entity)
                slots = s.slots(f.stream, entity, keys)
                t = s.watermark.get(f.stream, NEVER) + 1
                at[n] = t
                replay[n] = indexes[f.stream].evaluate([s.compiled_feature(n)], slots, np.full(len(keys), t))[0]
            for n in names if table is not None else ():
                present, values = table["values"][n]
                served = s.online(n, np.full(len(keys), -1, dtype=np.int64)).tolist()  # no row: empty
                for i, v in zip(np.flatnonzero(present).tolist(), values.tolist(), strict=True):
                    served[i] = v
                state, want = online[n].tolist(), replay[n].tolist()
                # Report the state, unless it agrees with the log and what readers get does not.
                shown = [t if _equal(st, w) and not _equal(t, w) else st
                         for t, st, w in zip(served, state, want, strict=True)]
                if any(not _equal(x, st) for x, st in zip(shown, state, strict=True)):
                    online[n] = np.empty(len(keys), dtype=object)
                    for i, x in enumerate(shown):  # element by element: list values must not broadcast
                        online[n][i] = x
            return {"online": online, "replay": replay, "at": at}


def _equal(a, b) -> bool:
    """Values equal as served (NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and a == b or (isinstance(a, int | float) and isinstance(b, int | float)
                                              and not isinstance(a, bool) and a == b)
