"""A shard's window buffers: the recent events of each stream that windowed online reads fold.

:class:`WindowBuffers` owns, per stream, the merged buffer and the chunks appended since it was last merged,
the window the buffer was built for (``window``), the newest event time this shard logged
(``local_max``), and, per windowed feature, its counted buffered events as a few sorted runs
(:class:`~rayfs.engine.fold.WindowEvents`) that a read folds. No Ray here; the shard's lock guards every call.

Invariants:

* ``window[stream]`` is the longest window of the stream's features when the buffer was (re)built, and the
  buffer holds every event of the stream with ``ts >= local_max[stream] - window[stream]``: every event a
  windowed online read at the stream's watermark can see (the watermark is at least ``local_max``).
  Events older than that may linger in chunks until the next merge; reads never see them (they filter
  by their own window).
* When the longest window of a stream changes, its buffer is :meth:`WindowBuffers.reset` and refilled from
  the log by the caller (recovery, or the backfill of a feature with a longer window): a buffer built for a
  shorter window lacks events the new one needs.
* A feature's runs, once built (on its first read, from the merged buffer), hold exactly its counted
  events among the buffer's: every appended batch adds one run of its kept rows, runs are merged when a run
  is at least half the size of the one before it (so there are O(log n) runs and each event is re-sorted
  O(log n) times), and merging drops events below the floor. A reset of the stream, or a recompiled
  feature, drops them. A read therefore folds exactly the current buffer, without re-sorting it.
* A windowed read of feature ``f`` at watermark ``t`` folds, per key, the buffered events with
  ``t + 1 - window <= ts``: the events an observation at ``t + 1µs`` sees under the point-in-time rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rayfs.engine.columns import TS, Batch, concat, decode_batch, encode_batch, take
from rayfs.engine.fold import CompiledFeature, WindowEvents
from rayfs.model.definitions import Feature
from rayfs.model.timeutil import NEVER

__all__ = ["WindowBuffers"]


class WindowBuffers:
    """The window buffers of one shard's streams and the per-feature events folded by windowed reads.

    Args:
        features: the shard's feature definitions by key; read, never changed, here (the longest window of
            a stream and the stream of a cached feature are looked up in it).
        compiled: the shard's compiled features by key, likewise read only: runs compiled otherwise (a
            column's kind was first seen) are dropped, and rebuilt on the next read.
    """

    def __init__(self, features: Mapping[str, Feature], compiled: Mapping[str, CompiledFeature] | None = None) -> None:
        self._features = features
        self._compiled = compiled if compiled is not None else {}
        self._merged: dict[str, Batch] = {}
        self._parts: dict[str, list[Batch]] = {}  # chunks appended since the buffer was last merged
        self._window: dict[str, int] = {}
        self._local_max: dict[str, int] = {}
        self._runs: dict[str, list[WindowEvents]] = {}  # per windowed feature key, see the module docstring

    # ------------------------------------------------------------------------------------- windows
    def longest_window(self, stream: str) -> int:
        """The longest window (µs) of ``stream``'s features; 0 when none is windowed."""
        return max((f.window_us for f in self._features.values() if f.stream == stream and f.window),
                   default=0)

    def is_stale(self, stream: str) -> bool:
        """Whether ``stream``'s buffer was built for another window than its features' longest."""
        return self._window.get(stream, 0) != self.longest_window(stream)

    def reset(self, stream: str) -> None:
        """Empty ``stream``'s buffer and size it for the current longest window (the caller refills it)."""
        self._merged[stream] = {}
        self._parts.pop(stream, None)
        self._window[stream] = self.longest_window(stream)
        self._drop_runs(stream)

    def floor(self, stream: str) -> int:
        """The oldest event time ``stream``'s buffer must hold (``local_max - window``)."""
        return self._local_max.get(stream, 0) - self._window.get(stream, 0)

    @property
    def local_max(self) -> dict[str, int]:
        """The newest event time (µs) logged per stream on this shard (a copy)."""
        return dict(self._local_max)

    def advance(self, stream: str, max_ts: int) -> None:
        """Raise ``stream``'s newest event time to ``max_ts`` (a batch's newest event was logged)."""
        self._local_max[stream] = max(self._local_max.get(stream, NEVER), max_ts)

    # ------------------------------------------------------------------------------------- contents
    def append(self, stream: str, cols: Batch) -> None:
        """Add a batch's events that some window can still see (O(batch): chunks are merged on read)."""
        w = self.longest_window(stream)
        self._window[stream] = w
        if w == 0:
            self._merged[stream] = {}
            self._parts.pop(stream, None)
            self._drop_runs(stream)
            return
        floor = max(self._local_max.get(stream, NEVER), int(cols[TS].max(initial=NEVER))) - w
        keep = cols[TS] >= floor
        if keep.any():
            chunk = take(cols, keep)
            parts = self._parts.setdefault(stream, [])
            parts.append(chunk)
            parts[:] = [p for p in parts if p[TS].max() >= floor]  # whole chunks past every window
            for key in self._stream_runs(stream):
                runs = self._runs[key]
                if self._compiled.get(key, runs[0].cf) is not runs[0].cf:
                    del self._runs[key]  # recompiled: rebuilt from the buffer on the next read
                    continue
                run = WindowEvents(runs[0].cf, chunk)
                if len(run):
                    runs.append(run)
                while len(runs) > 1 and 2 * len(runs[-1]) >= len(runs[-2]):
                    runs[-2:] = [WindowEvents.merge(runs[-2:], floor)]

    def merged(self, stream: str) -> Batch:
        """The buffer of ``stream``: pending chunks merged in, events no window can see dropped."""
        parts = self._parts.pop(stream, [])
        buf = self._merged.get(stream) or {}
        if parts or (buf and stream in self._local_max):
            merged = concat([buf, *parts]) if buf else concat(parts) if parts else buf
            keep = merged[TS] >= self._local_max.get(stream, 0) - self._window.get(stream, 0)
            buf = merged if keep.all() else take(merged, keep)
            self._merged[stream] = buf
        return buf

    def forget(self, key: str) -> None:
        """Drop the runs of feature ``key`` (dropped or redefined)."""
        self._runs.pop(key, None)

    def _stream_runs(self, stream: str) -> list[str]:
        return [n for n in self._runs if self._features[n].stream == stream]

    def _drop_runs(self, stream: str) -> None:
        for n in self._stream_runs(stream):
            del self._runs[n]

    def _feature_runs(self, key: str, cf: CompiledFeature) -> list[WindowEvents]:
        runs = self._runs.get(key)
        if runs is None or runs[0].cf is not cf:
            runs = self._runs[key] = [WindowEvents(cf, self.merged(cf.feature.stream))]
        return runs

    # ------------------------------------------------------------------------------------- reads
    def read(self, key: str, cf: CompiledFeature, slots: np.ndarray, watermark: int | None) -> np.ndarray:
        """Online values of windowed feature ``key`` (compiled as ``cf``) at ``slots``, as of ``watermark``.

        Folds each key's buffered events with ``ts >= watermark + 1 - window`` (every buffered event when
        the stream has no watermark yet), run by run.
        """
        lower = (watermark + 1 - cf.feature.window_us) if watermark is not None else 0
        state = cf.agg.zero(len(slots))
        for run in self._feature_runs(key, cf):
            run.accumulate(state, slots, lower)
        return cf.agg.finalize(state)

    def expiring(self, key: str, cf: CompiledFeature, old: int | None, new: int | None, *,
                 unique: bool = True) -> np.ndarray:
        """The slots whose value of windowed feature ``key`` changes because events leave its window when the
        watermark moves from ``old`` to ``new`` (unique, or with repeats unless ``unique``; empty when nothing
        moved)."""
        if old is None or new is None or new <= old:
            return np.zeros(0, np.int64)
        w = cf.feature.window_us
        found = [run.slots_between(old + 1 - w, new + 1 - w) for run in self._feature_runs(key, cf)]
        if not found:
            return np.zeros(0, np.int64)
        return np.unique(np.concatenate(found)) if unique else np.concatenate(found)

    # ------------------------------------------------------------------------------------- snapshots
    def to_snapshot(self) -> tuple[dict, dict[str, dict]]:
        """The state to snapshot: ``(meta, entries)``, ``meta`` with ``local_max`` and ``buffer_window``,
        ``entries`` the encoded buffer of each stream under ``buffer/<stream>``."""
        entries = {f"buffer/{stream}": encode_batch(self.merged(stream))
                   for stream in set(self._merged) | set(self._parts)}
        return {"local_max": self._local_max, "buffer_window": self._window}, entries

    def restore(self, meta: Mapping, entries: Mapping[str, dict], streams: Mapping) -> None:
        """Load the state :meth:`to_snapshot` wrote (buffers of streams not in ``streams`` are skipped)."""
        self._local_max = {s: int(v) for s, v in meta["local_max"].items()}
        for stream, w in meta["buffer_window"].items():
            if stream in streams:
                self._merged[stream] = decode_batch(entries[f"buffer/{stream}"])
                self._window[stream] = w
