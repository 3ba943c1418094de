"""What a shard tells about itself: counters, feature statistics, key samples and the consistency audit.

A mixin of :class:`rayfs.shard.core.ShardCore` (no Ray here). The audit recomputes online values the slow,
independent way: it re-reads the shard's log from disk (not the in-memory event cache), rebuilds a fresh
point-in-time index and replays an observation at ``watermark + 1µs`` for each sampled key, which by the
point-in-time rule sees exactly the events the online value covers.
"""

from __future__ import annotations

import time

import numpy as np

from rayfs.engine.featurestats import partial_stats
from rayfs.engine.fold import WindowEvents
from rayfs.engine.pit import EventIndex


class ShardInspection:
    """Read-only views of a shard's state (mixed into ShardCore; uses its attributes and lock)."""

    def stats(self) -> dict:
        """Counters and gauges of this shard (see :meth:`rayfs.FeatureStore.stats`)."""
        with self.lock:
            segs = self.log.segments()
            rs = self.counters["replay_seconds"]
            return {"shard": self.shard_id, **{k: v for k, v in self.counters.items()},
                    "replay_events_per_s": self.counters["replay_events"] / rs if rs else None,
                    "log_segments": len(segs), "log_bytes": self.log.size_bytes(),
                    "log_batches": self.log.next_offset, "snapshot_age_s": time.time() - self.snapshot_time,
                    "events_since_snapshot": self.events_since_snapshot,
                    "batches_since_snapshot": self.since_snapshot,
                    "events": sum(self.counts.values()), "entities": {f"{s}.{e}": len(ki)
                                                                       for (s, e), ki in self.keys.items()}}

    def _online_all(self, key: str) -> np.ndarray:
        """Online values of feature ``key`` for every entity this shard knows."""
        f = self.features[key]
        self._ensure_compiled(key)
        ki = self.keys.get((f.stream, f.entity))
        slots = np.arange(len(ki) if ki else 0, dtype=np.int64)
        if f.window is None:
            return self.tables[key].read(slots)
        t = self.watermark.get(f.stream)
        we = WindowEvents(self.compiled[key], self._buffer(f.stream))
        return we.fold(slots, (t + 1 - f.window_us) if t is not None else 0)

    def feature_stats(self, keys: list[str]) -> dict[str, dict]:
        """Mergeable statistics (:func:`rayfs.engine.featurestats.partial_stats`) of the online values."""
        with self.lock:
            self._await_backfills(keys)
            return {k: partial_stats(self._online_all(k)) for k in keys if k in self.features}

    def sample_keys(self, stream: str, entity: str, n: int, seed: int = 0) -> list:
        """Up to ``n`` entity keys of ``entity`` seen on ``stream`` by this shard, sampled without replacement."""
        with self.lock:
            ki = self.keys.get((stream, entity))
            if not ki:
                return []
            keys = ki.keys()
            pick = np.random.default_rng(seed).choice(len(keys), size=min(n, len(keys)), replace=False)
            return [keys[i] for i in sorted(pick.tolist())]

    def audit(self, entity: str, keys: np.ndarray, names: list[str]) -> dict:
        """Online values and a fresh replay from the on-disk log at the same instant, for ``keys``.

        Returns ``{"online": {name: values}, "replay": {name: values}, "at": {name: replay time}}``.
        """
        with self.lock:
            self._await_backfills(names)
            online = self.get(entity, keys, names)
            online.pop("__cv__", None)
            fresh = self._read_log()
            replay, at = {}, {}
            indexes: dict[str, EventIndex] = {}
            for n in names:
                f = self.features[n]
                if f.stream not in indexes:
                    parts = fresh.get(f.stream, [])
                    indexes[f.stream] = EventIndex(parts, entity)
                ki = self.keys.get((f.stream, entity))
                slots = ki.lookup(keys, add=False) if ki else np.full(len(keys), -1, dtype=np.int64)
                t = self.watermark.get(f.stream, -(2**62)) + 1
                at[n] = t
                replay[n] = indexes[f.stream].evaluate([self.compiled[n]], slots, np.full(len(keys), t))[0]
            return {"online": online, "replay": replay, "at": at}
