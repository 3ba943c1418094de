"""A shard's decoded events for point-in-time replay, and the sorted indexes built over them.

:class:`ReplayCache` owns the decoded-event cache (every batch the shard logged, decoded, by stream), the
sorted :class:`~rayfs.engine.pit.EventIndex` per (stream, entity field), and reading events from the log
when the cache is not loaded. No Ray here; the shard's lock guards every call.

Invariants:

* The cache is either not loaded (``None``) or holds every logged event with at least one event time,
  decoded with its ``__seq`` and slot columns, in log order per stream: it is loaded whole (on the first
  replay, or filled by a recovery that reads the whole log anyway) and then kept current by :meth:`add`.
* An index is built from the cache as it was when built; adding a batch to a stream drops that stream's
  indexes (the next replay rebuilds them), so a replay always sees every logged event.
* Beyond ``COMPACT_PARTS`` cached batches a stream's batches are concatenated into one before an index is
  built (many small batches cost more per batch than one concatenation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from rayfs.engine.columns import TS, Batch, concat, record_times
from rayfs.engine.fold import CompiledFeature
from rayfs.engine.pit import EventIndex
from rayfs.storage.log import SegmentedLog

__all__ = ["COMPACT_PARTS", "ReplayCache"]

COMPACT_PARTS = 64  # cached batches of a stream beyond which a replay concatenates them into one


class ReplayCache:
    """Decoded events by stream and the replay indexes over them.

    Args:
        log: the shard's log, read when the cache is not loaded.
        decode: ``decode(record, offset)``: the shard's decoding of a logged record into a batch with its
            ``__seq`` and slot columns.
    """

    def __init__(self, log: SegmentedLog, decode: Callable[[dict, int], Batch]) -> None:
        self._log = log
        self._decode = decode
        self._cache: dict[str, list[Batch]] | None = None  # every event, loaded on first replay
        self._indexes: dict[tuple[str, str], EventIndex] = {}  # replay sort per (stream, entity field)

    @property
    def loaded(self) -> bool:
        """Whether the decoded events are in memory."""
        return self._cache is not None

    def start_empty(self) -> None:
        """Load an empty cache, for a caller about to :meth:`add` every logged batch (a full recovery)."""
        if self._cache is None:
            self._cache = {}

    def add(self, stream: str, cols: Batch) -> None:
        """Keep a newly decoded batch of ``stream`` (when loaded); ``stream``'s indexes are rebuilt on use."""
        if self._cache is not None:
            self._cache.setdefault(stream, []).append(cols)
            self._indexes = {k: v for k, v in self._indexes.items() if k[0] != stream}

    def parts(self, stream: str) -> list[Batch] | None:
        """A copy of the list of cached batches of ``stream``, ``None`` when not loaded."""
        return list(self._cache.get(stream, [])) if self._cache is not None else None

    def events(self, stream: str, since: int | None = None) -> Iterator[Batch]:
        """Every logged batch of ``stream``, decoded (from the cache when loaded); with ``since``, batches
        whose events are all older are skipped before their keys are decoded."""
        if self._cache is not None:
            yield from (c for c in self._cache.get(stream, []) if since is None or c[TS].max() >= since)
            return
        for offset, record in self._log.read(0):
            if record["stream"] == stream:
                ts = record_times(record)
                if len(ts) and (since is None or ts.max() >= since):
                    yield self._decode(record, offset)

    def read_log(self) -> dict[str, list[Batch]]:
        """Every logged event, decoded, by stream: read from the files, never from the cache."""
        out: dict[str, list[Batch]] = {}
        for offset, record in self._log.read(0):
            if len(record_times(record)):
                out.setdefault(record["stream"], []).append(self._decode(record, offset))
        return out

    def load(self) -> None:
        """Read the log into the cache, one concatenated batch per stream (no-op when loaded)."""
        if self._cache is None:
            self._cache = {s: [concat(parts)] if len(parts) > 1 else parts
                           for s, parts in self.read_log().items()}

    def index(self, stream: str, entity: str) -> EventIndex:
        """The sorted index of ``stream``'s events for ``entity`` (loads the cache; rebuilt only after new
        events arrive)."""
        self.load()
        parts = self._cache.setdefault(stream, [])
        if len(parts) > COMPACT_PARTS:  # many small batches: one concatenation beats per-batch overhead
            parts[:] = [concat(parts)]
        index = self._indexes.get((stream, entity))
        if index is None:  # columns are concatenated (and sorted) lazily, only those a feature reads
            same = next((ix for (s, _), ix in self._indexes.items() if s == stream), None)
            index = self._indexes[(stream, entity)] = EventIndex(list(parts), entity, same_events=same)
        return index

    def replay(self, stream: str, entity: str, cfs: list[CompiledFeature], slots: np.ndarray,
               t: np.ndarray) -> tuple[list[np.ndarray], int]:
        """Point-in-time values of ``cfs`` (features of ``stream``) for observations ``(slots[i], t[i])``.

        Returns:
            (values per feature, the number of events the index holds).
        """
        index = self.index(stream, entity)
        return index.evaluate(cfs, slots, t), index.n
