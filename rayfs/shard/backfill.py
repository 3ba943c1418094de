"""Cold start: registering a feature on a shard backfills it from the events already logged.

:class:`Backfill` is a part of :class:`rayfs.shard.core.ShardCore` (no Ray here) that owns the progress of
running and recently finished backfills; it works on the collaborators the core hands it (its lock, the
window buffers, the replay cache, the log, the state tables). A windowed feature whose window is longer than
any before of its stream rebuilds the stream's window buffer from the batches that can still be in a
window. A lifetime feature is folded from every batch logged before its registration (``boundary``) in
chunks of about a million events, the shard lock released between chunks.

Invariants:

* Every event counts once: the boundary is taken in the same critical section that registers the feature,
  so batches logged before it are folded here and batches from it on by ingest (which folds into the
  feature as soon as it is registered).
* A lifetime feature is in :meth:`Backfill.running` from registration until its fold is done (or the
  feature is dropped): the core leaves it out of snapshots (a restart redoes it from the log) and reads of
  it wait (:meth:`Backfill.wait`).
* A feature dropped while being backfilled stops at the next chunk; its partial table is never read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from rayfs.engine.columns import TS, Batch, record_times, take
from rayfs.engine.fold import SEQ, SEQ_ROW_BITS, CompiledFeature, StateTable, fold_into
from rayfs.model.definitions import Feature
from rayfs.shard.replay_cache import ReplayCache
from rayfs.shard.windows import WindowBuffers
from rayfs.storage.log import SegmentedLog

__all__ = ["CHUNK_ROWS", "KEEP_FINISHED", "Backfill"]

CHUNK_ROWS = 1 << 20
KEEP_FINISHED = 1000


class Backfill:
    """Backfill of newly registered features on one shard, and its progress.

    Args:
        lock: the shard's lock; held for every change of shard state, released between chunks.
        define: ``define(feature, version)``, called holding ``lock``: registers (and compiles) the feature
            version on the shard; returns ``False`` when the shard already had that definition (nothing to
            backfill).
        features: the shard's feature definitions by key (read only).
        compiled: the shard's compiled features by key (read only).
        tables: the shard's lifetime state tables by key, looked up for every chunk (ingest replaces the
            table of a feature it recompiles); the backfill folds into them, never adds or removes one.
        counts: events logged per stream (read only; the total a backfill reports progress against).
        windows: the shard's window buffers (rebuilt for a longer window).
        replays: the shard's decoded events (read instead of the log when loaded).
        log: the shard's log.
        decode: ``decode(record, offset)``: the shard's decoding of a logged record (called holding ``lock``).
    """

    def __init__(self, lock: threading.RLock, *, define: Callable[[Feature, int | None], bool],
                 features: Mapping[str, Feature], compiled: Mapping[str, CompiledFeature],
                 tables: Mapping[str, StateTable], counts: Mapping[str, int], windows: WindowBuffers,
                 replays: ReplayCache, log: SegmentedLog, decode: Callable[[dict, int], Batch]) -> None:
        self._lock = lock
        self._done = threading.Condition(lock)  # notified when a backfill ends
        self._define = define
        self._features, self._compiled, self._tables, self._counts = features, compiled, tables, counts
        self._windows, self._replays, self._log, self._decode = windows, replays, log, decode
        self._running: dict[str, list[int]] = {}  # feature key -> [events done, events total]
        self._finished: OrderedDict[str, tuple[int, int]] = OrderedDict()  # the last finished ones

    def add_feature(self, f: Feature, version: int | None = None) -> int:
        """Register a feature version and backfill it from the log (cold start); returns when done.

        A lifetime feature is folded in chunks with the lock released in between, so ingest goes on.

        Returns:
            The number of logged events the backfill covered.
        """
        with self._lock:
            if not self._define(f, version):
                return 0  # a metadata update (or a retried call)
            if f.window is not None:
                if self._windows.is_stale(f.stream):
                    self._windows.reset(f.stream)
                    for cols in self._replays.events(f.stream, since=self._windows.floor(f.stream)):
                        self._windows.append(f.stream, cols)
                return self._finish(f.key, self._counts.get(f.stream, 0))
            boundary = self._log.next_offset  # batches from here on fold through ingest
            parts = self._replays.parts(f.stream)
            self._running[f.key] = progress = [0, self._counts.get(f.stream, 0)]
        try:
            for cols in self._chunks(f.stream, boundary, parts):
                with self._lock:
                    if self._features.get(f.key) is not f:
                        return progress[0]  # dropped meanwhile
                    fold_into(self._tables[f.key], self._compiled[f.key], cols)
                    progress[0] += len(cols[TS])
            with self._lock:
                return self._finish(f.key, progress[0])
        finally:
            with self._lock:
                self._running.pop(f.key, None)
                self._done.notify_all()

    def _chunks(self, stream: str, boundary: int, parts: list[Batch] | None,
                rows: int = CHUNK_ROWS) -> Iterator[Batch]:
        """The events of ``stream`` logged before offset ``boundary``, decoded, in chunks of ``rows``."""
        if parts is not None:
            limit = np.int64(boundary) << np.int64(SEQ_ROW_BITS)
            for cols in parts:
                for lo in range(0, len(cols[TS]), rows):
                    chunk = take(cols, slice(lo, lo + rows))
                    keep = chunk[SEQ] < limit
                    yield chunk if keep.all() else take(chunk, keep)
            return
        for offset, record in self._log.read(0, boundary):
            if record["stream"] == stream and len(record_times(record)):
                with self._lock:
                    cols = self._decode(record, offset)
                yield cols

    def _finish(self, key: str, events: int) -> int:
        self._finished[key] = (events, events)
        while len(self._finished) > KEEP_FINISHED:
            self._finished.popitem(last=False)
        return events

    def running(self, key: str) -> bool:
        """Whether feature ``key`` is being backfilled (its state is incomplete)."""
        return key in self._running

    def progress(self) -> dict[str, tuple[int, int]]:
        """Feature key -> (events folded, events to fold) of backfills running or recently finished."""
        with self._lock:
            return {**self._finished, **{k: (p[0], p[1]) for k, p in self._running.items()}}

    def wait(self, names: list[str]) -> None:
        """Block until none of features ``names`` is being backfilled (the caller holds the lock)."""
        while any(n in self._running for n in names):
            self._done.wait()
