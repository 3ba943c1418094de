"""A shard's online table kept current: what :meth:`ShardCore.get` would answer, written after every batch.

:class:`OnlineView` owns the shard's :class:`~rayfs.storage.online.OnlineTable` (``online.lmdb`` in the
shard's folder) and decides which rows each batch changes. Readers on the shard's node open the table
read-only and never call the shard (:class:`~rayfs.storage.online.OnlineReader`); the actor serves other
nodes from it without taking the shard's lock. No Ray here; the shard's lock guards every call.

Invariants:

* After batch k is logged and folded, and before it is acknowledged, one write transaction brings every
  row to what :meth:`ShardCore.online` answers at the new watermark: the rows of the keys the batch
  touched, of the keys whose windowed values lost events as the watermark moved on
  (:meth:`~rayfs.shard.windows.WindowBuffers.expiring`), and the meta entry (watermarks, catalog version,
  log offset). Other rows cannot have changed: a lifetime value changes only with the key's own events, a
  windowed one only with them or with the window's start.
* A group ``(stream, entity field)``'s layout is the sorted keys of its features that are not being
  backfilled. When it changes (a feature registered, dropped, finished backfilling) or a feature is
  recompiled (a column's kind first seen), the whole group is rewritten in that same transaction.
* On open the table is kept only if it reflects exactly the recovered state: same log offset, catalog
  version, layouts and lineage (the snapshot the state was restored from, or "log"; a snapshot written
  later records its token in the table). Otherwise it is rebuilt in one transaction, so readers see the old
  table or the new one, never an empty one.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from rayfs.engine.fold import CompiledFeature, slot_column
from rayfs.engine.keyindex import KeyIndex
from rayfs.model.definitions import Feature, Stream
from rayfs.storage.online import OnlineTable, rows_to_values

__all__ = ["OnlineView"]

_NONE = np.zeros(0, np.int64)


class _Shard(Protocol):
    """What the online view reads of its shard (all public on :class:`~rayfs.shard.core.ShardCore`)."""

    streams: dict[str, Stream]
    features: dict[str, Feature]
    compiled: dict[str, CompiledFeature]
    keys: dict[tuple[str, str], KeyIndex]
    watermark: dict[str, int]
    catalog_version: int
    lineage: str

    def online(self, key: str, slots: np.ndarray) -> np.ndarray: ...

    def compiled_feature(self, key: str) -> CompiledFeature: ...

    def backfilling(self, key: str) -> bool: ...

    def log_offset(self) -> int: ...


class OnlineView:
    """The online table of one shard and the rule of which rows each batch changes.

    Args:
        shard_dir: the shard's folder (the table lives in ``online.lmdb`` there).
        shard: the shard it mirrors.
    """

    def __init__(self, shard_dir: str, shard: _Shard) -> None:
        self.path = os.path.join(shard_dir, "online.lmdb")
        self.table = OnlineTable(self.path)
        self._shard = shard
        self._written: dict[tuple[str, str], tuple[list[str], tuple]] = {}  # group -> (layout, compiled ids)
        self._encoded: dict[tuple[str, str], list[tuple[bytes, bool]]] = {}  # group -> LMDB key per slot

    def _groups(self) -> list[tuple[str, str]]:
        return [(s, e) for s, st in self._shard.streams.items() for e in st.entities]

    def _layout(self, stream: str, entity: str) -> tuple[list[str], tuple]:
        s = self._shard
        keys = sorted(k for k, f in s.features.items()
                      if f.stream == stream and f.entity == entity and not s.backfilling(k))
        return keys, tuple(id(s.compiled_feature(k)) for k in keys)

    def _meta(self) -> dict[str, Any]:
        s = self._shard
        return {"watermark": dict(s.watermark), "cv": s.catalog_version, "offset": s.log_offset(),
                "lineage": s.lineage}

    def _group(self, stream: str, entity: str, layout: list[str], slots: np.ndarray) -> tuple:
        s = self._shard
        known = s.keys[(stream, entity)].keys() if (stream, entity) in s.keys else []
        encoded = self._encoded.setdefault((stream, entity), [])
        if len(encoded) < len(known):  # slots are dense and never reused: encode each key once
            encoded += self.table.encode_keys(stream, entity, known[len(encoded):])
        slot_list = slots.tolist()
        return (stream, entity, layout, [known[i] for i in slot_list],
                [s.online(k, slots).tolist() for k in layout], [encoded[i] for i in slot_list])

    def open(self) -> None:
        """After recovery: keep the table if it reflects the recovered state, else rebuild it."""
        meta, _ = self.table.read([])
        layouts = {f"{s}\x1f{e}": self._layout(s, e)[0] for s, e in self._groups()}
        if (meta.get("offset") == self._shard.log_offset() and meta.get("cv") == self._shard.catalog_version
                and meta.get("lineage") == self._shard.lineage
                and meta.get("watermark") == self._shard.watermark
                and {k: v for k, v in meta.get("layouts", {}).items() if k in layouts} == layouts):
            self._written = {(s, e): self._layout(s, e) for s, e in self._groups()}
            return
        self.rebuild()

    def rebuild(self) -> None:
        """Rewrite every row (one transaction replacing the whole table)."""
        groups = []
        for stream, entity in self._groups():
            layout = self._layout(stream, entity)
            n = len(self._shard.keys.get((stream, entity)) or ())
            groups.append(self._group(stream, entity, layout[0], np.arange(n, dtype=np.int64)))
            self._written[(stream, entity)] = layout
        self.table.write(groups, self._meta(), replace=True)

    def invalidate(self) -> None:
        """Forget what was written: the next write rewrites every group."""
        self._written.clear()

    def refresh(self) -> None:
        """Rewrite the groups whose layout changed (definitions changed, a backfill finished)."""
        self.after_batch(None, None, {})

    def expiring(self, stream: str, old: int | None, new: int | None) -> dict[str, np.ndarray]:
        """Per entity field of ``stream``, the slots whose windowed values lose events when its watermark
        moves from ``old`` to ``new``. Asked before the batch is folded: folding it may drop those events
        from the window buffer."""
        s = self._shard
        out: dict[str, list[np.ndarray]] = {}
        if old is None or new is None or new <= old:
            return {}
        for k, f in list(s.features.items()):
            if f.stream == stream and f.window is not None and not s.backfilling(k):
                out.setdefault(f.entity, []).append(s.windows_expiring(k, old, new))
        return {e: np.concatenate(v) for e, v in out.items()}

    def after_batch(self, stream: str | None, cols: dict | None, expiring: dict[str, np.ndarray]) -> int:
        """Write what a batch of ``stream`` changed (``cols``: its decoded rows on this shard, or None;
        ``expiring``: what :meth:`expiring` said before it was folded). Returns the rows written."""
        s = self._shard
        groups = []
        for g_stream, entity in self._groups():
            layout = self._layout(g_stream, entity)
            n = len(s.keys.get((g_stream, entity)) or ())
            if self._written.get((g_stream, entity)) != layout:
                slots = np.arange(n, dtype=np.int64)  # a new layout: the whole group
            elif g_stream != stream:
                continue
            else:
                found = [expiring[entity]] if entity in expiring else []
                if cols is not None:
                    col = cols[slot_column(entity)]
                    found.append(col[col >= 0])
                slots = np.unique(np.concatenate(found)) if found else _NONE
                if not len(slots):
                    continue
            groups.append(self._group(g_stream, entity, layout[0], slots))
            self._written[(g_stream, entity)] = layout
        return self.table.write(groups, self._meta())

    def read(self, entity: str, keys: list, names: list[str]) -> dict[str, Any] | None:
        """Values of feature keys ``names`` (all on field ``entity``) for ``keys`` from the table, as the shard
        answers :meth:`ShardCore.get`; ``None`` when a feature is not in the table (being backfilled, unknown)."""
        s = self._shard
        streams = {}
        for n in names:
            f = s.features.get(n)
            if f is None or f.entity != entity:
                return None
            streams.setdefault(f.stream, []).append(n)
        meta, rows = self.table.read([(stream, entity, keys) for stream in streams])
        return rows_to_values(meta, streams, entity, rows)

    def close(self) -> None:
        self.table.close()
