"""Cold start: registering a feature on a shard backfills it from the events already logged.

A mixin of :class:`rayfs.shard.core.ShardCore` (no Ray here). A windowed feature whose window is longer than
any before rebuilds the stream's window buffer from the batches that can still be in a window. A lifetime
feature is folded from every batch logged before its registration (``boundary``) in chunks of about a
million events, the shard lock released between chunks: ingest goes on meanwhile and folds its new batches
(offsets from ``boundary`` on) into the feature as usual, so every event counts exactly once. Until the
backfill is done the feature is left out of snapshots (a restart redoes it from the log) and reads of it
wait. Progress per feature is reported by :meth:`ShardBackfill.backfill_progress`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from rayfs.engine.columns import TS, Batch, record_times, take
from rayfs.engine.fold import SEQ, SEQ_ROW_BITS, fold_into
from rayfs.model.definitions import Feature

CHUNK_ROWS = 1 << 20
KEEP_FINISHED = 1000


class ShardBackfill:
    """Backfill of newly registered features (mixed into ShardCore; uses its state and lock)."""

    def add_feature(self, feature: dict, version: int | None = None) -> int:
        """Register a feature version and backfill it from the log (cold start); returns when done.

        A lifetime feature is folded in chunks with the lock released in between, so ingest goes on.

        Returns:
            The number of logged events the backfill covered.
        """
        f = Feature.from_dict(feature)
        with self.lock:
            self._note_cv(version)
            old = self.features.get(f.key)
            self.features[f.key] = f
            if old is not None and old.same_definition(f):
                return 0  # a metadata update (or a retried call)
            self._ensure_compiled(f.key)
            if f.window is not None:
                if self.buffer_window.get(f.stream, 0) != self._longest_window(f.stream):
                    self.buffers[f.stream] = {}
                    self.buffer_parts.pop(f.stream, None)
                    self.buffer_window[f.stream] = self._longest_window(f.stream)
                    floor = self.local_max.get(f.stream, 0) - self.buffer_window[f.stream]
                    for _offset, cols in self._events(f.stream, since=floor):
                        self._append_buffer(f.stream, cols)
                return self._finished(f.key, self.counts.get(f.stream, 0))
            boundary = self.log.next_offset  # batches from here on fold through ingest
            parts = list(self.cache.get(f.stream, [])) if self.cache is not None else None
            self.backfills[f.key] = progress = [0, self.counts.get(f.stream, 0)]
        try:
            for cols in self._backfill_chunks(f.stream, boundary, parts):
                with self.lock:
                    if self.features.get(f.key) is not f:
                        return progress[0]  # dropped meanwhile
                    fold_into(self.tables[f.key], self.compiled[f.key], cols)
                    progress[0] += len(cols[TS])
            with self.lock:
                return self._finished(f.key, progress[0])
        finally:
            with self.lock:
                self.backfills.pop(f.key, None)
                self.backfilled.notify_all()

    def _backfill_chunks(self, stream: str, boundary: int, parts: list[Batch] | None,
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
        for offset, record in self.log.read(0, boundary):
            if record["stream"] == stream and len(record_times(record)):
                with self.lock:
                    cols = self._decode(record, offset)
                yield cols

    def _finished(self, key: str, events: int) -> int:
        self.backfilled_keys[key] = (events, events)
        while len(self.backfilled_keys) > KEEP_FINISHED:
            self.backfilled_keys.popitem(last=False)
        return events

    def backfill_progress(self) -> dict[str, tuple[int, int]]:
        """Feature key -> (events folded, events to fold) of backfills running or recently finished here."""
        with self.lock:
            return {**self.backfilled_keys, **{k: (p[0], p[1]) for k, p in self.backfills.items()}}

    def _await_backfills(self, names: list[str]) -> None:
        while any(n in self.backfills for n in names):
            self.backfilled.wait()

