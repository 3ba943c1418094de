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
  backfilled. When it changes (a feature registered, dropped, finished backfilling), a feature is
  recompiled (a column's kind first seen) or a value type changes (the group's row codec, see
  :class:`~rayfs.storage.online.RowCodec`), the whole group is rewritten in that same transaction. A group
  without features has no rows.
* A batch's rows are computed in slot order and written in the order of their LMDB keys (see
  :meth:`OnlineView._in_key_order`); the order changes only the speed of the write.
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
from rayfs.storage.online import FORMAT, OnlineTable, RowCodec, rows_to_values

__all__ = ["OnlineView"]

_RANKS = np.zeros(0, dtype=np.int64)

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


class _Keys:
    """The entity keys at ``slots``, looked up only when asked (only keys stored under a digest are)."""

    def __init__(self, known: list, slots: np.ndarray) -> None:
        self._known, self._slots = known, slots

    def __len__(self) -> int:
        return len(self._slots)

    def __getitem__(self, i: int) -> Any:
        return self._known[int(self._slots[i])]


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
        self._codecs: dict[tuple[str, str], list[str]] = {}  # group -> codec kinds written
        # group -> (LMDB key per slot, slots stored under a digest): slots are dense and never reused
        self._encoded: dict[tuple[str, str], tuple[np.ndarray, set[int]]] = {}
        self._rank: dict[tuple[str, str], np.ndarray] = {}  # group -> rank of each slot's LMDB key, see _in_key_order
        self.closed = False

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

    def _columns(self, layout: list[str], slots: np.ndarray) -> list[np.ndarray]:
        return [self._shard.online(k, slots) for k in layout]

    def _in_key_order(self, group: tuple[str, str], slots: np.ndarray,
                      columns: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """``slots`` and their values ordered by their LMDB keys, near enough: LMDB inserts sorted keys in
        about half the time of keys in random order (neighbouring keys share pages). The values are computed
        in slot order (reads of ascending slots are cache friendly) and permuted here. The keys of the slots
        ranked so far are ordered exactly, newer slots after them in slot order; the ranks are recomputed
        when the unranked slots grow to half the ranked ones (a sort of all keys, amortised over the batches
        that added them)."""
        if not len(slots):
            return slots, columns
        db_keys = self._encoded[group][0]
        rank = self._rank.get(group, _RANKS)
        if len(db_keys) - len(rank) > max(len(rank) // 2, 1024):
            rank = np.empty(len(db_keys), dtype=np.int64)
            # As fixed-width bytes: a C sort (an order that ignores trailing NUL bytes only costs speed)
            rank[np.argsort(db_keys.astype(bytes))] = np.arange(len(db_keys))
            self._rank[group] = rank
        at = np.where(slots < len(rank), rank[np.minimum(slots, len(rank) - 1)], slots) if len(rank) else slots
        order = np.argsort(at, kind="stable")
        return slots[order], [c[order] for c in columns]

    def _known(self, group: tuple[str, str]) -> list:
        """The keys of ``group`` in slot order, each key's LMDB key encoded (once: slots are never reused)."""
        s = self._shard
        known = s.keys[group].keys() if group in s.keys else []
        db_keys, hashed = self._encoded.setdefault(group, (np.empty(0, dtype=object), set()))
        if len(db_keys) < len(known):
            new = self.table.encode_keys(*group, known[len(db_keys):])
            hashed.update(len(db_keys) + i for i, (_, h) in enumerate(new) if h)
            more = np.empty(len(new), dtype=object)
            more[:] = [k for k, _ in new]
            self._encoded[group] = (np.concatenate([db_keys, more]), hashed)
        return known

    def _group(self, stream: str, entity: str, layout: list[str], slots: np.ndarray,
               columns: list[np.ndarray] | None = None) -> tuple:
        """One group's rows for :meth:`OnlineTable.write`: ``columns`` of ``slots`` (computed here, the slots
        put in key order first, when not given)."""
        group = (stream, entity)
        known = self._known(group) if len(slots) else []
        db_keys, hashed = self._encoded.get(group, (np.empty(0, dtype=object), set()))
        if columns is None:
            slots, columns = self._in_key_order(group, slots, self._columns(layout, slots))
        self._codecs[group] = RowCodec.of(columns).kinds
        at = [i for i, slot in enumerate(slots.tolist()) if slot in hashed] if hashed else []
        return stream, entity, layout, _Keys(known, slots), columns, (db_keys[slots].tolist(), at)

    def open(self) -> None:
        """After recovery: keep the table if it reflects the recovered state, else rebuild it."""
        meta, _ = self.table.read([])
        layouts = {f"{s}\x1f{e}": self._layout(s, e)[0] for s, e in self._groups()}
        if (meta.get("format") == FORMAT and meta.get("offset") == self._shard.log_offset()
                and meta.get("cv") == self._shard.catalog_version
                and meta.get("lineage") == self._shard.lineage
                and meta.get("watermark") == self._shard.watermark
                and {k: v for k, v in meta.get("layouts", {}).items() if k in layouts} == layouts):
            self._written = {(s, e): self._layout(s, e) for s, e in self._groups()}
            self._codecs = {(s, e): meta.get("codecs", {}).get(f"{s}\x1f{e}") for s, e in self._groups()}
            if meta.get("closed"):  # readers answer from it again
                self.table.write([], self._meta())
            return
        self.rebuild()

    def rebuild(self) -> None:
        """Rewrite every row (one transaction replacing the whole table)."""
        groups = []
        for stream, entity in self._groups():
            layout = self._layout(stream, entity)
            n = len(self._shard.keys.get((stream, entity)) or ()) if layout[0] else 0  # no features: no rows
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
        """Per entity field of ``stream``, the slots (with repeats) whose windowed values lose events when its
        watermark moves from ``old`` to ``new``. Asked before the batch is folded: folding it may drop those events
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
            group = (g_stream, entity)
            n = len(s.keys.get(group) or ())
            if self._written.get(group) != layout:
                # a new layout: the whole group (none of it when it has no features: it has no rows)
                slots = np.arange(n if layout[0] else 0, dtype=np.int64)
                groups.append(self._group(g_stream, entity, layout[0], slots))
                self._written[group] = layout
                continue
            if g_stream != stream or not layout[0]:
                continue
            touched = np.zeros(n, dtype=bool)  # unique slots without a sort
            if entity in expiring:
                touched[expiring[entity]] = True
            if cols is not None:
                col = cols[slot_column(entity)]
                touched[col[col >= 0]] = True
            slots = np.flatnonzero(touched)
            if not len(slots):
                continue
            columns = self._columns(layout[0], slots)
            if RowCodec.of(columns).kinds != self._codecs.get(group):  # a value type changed: the whole group
                groups.append(self._group(g_stream, entity, layout[0], np.arange(n, dtype=np.int64)))
                continue
            self._known(group)
            groups.append(self._group(g_stream, entity, layout[0], *self._in_key_order(group, slots, columns)))
        return self.table.write(groups, self._meta())

    def read(self, entity: str, keys: list, names: list[str]) -> dict[str, Any] | None:
        """Values of feature keys ``names`` (all on field ``entity``) for ``keys`` from the table, as the shard
        answers :meth:`ShardCore.get`; ``None`` when a feature is not in the table (being backfilled, unknown)
        or the table is closed."""
        if self.closed:
            return None
        s = self._shard
        streams = {}
        for n in names:
            f = s.features.get(n)
            if f is None or f.entity != entity:
                return None
            streams.setdefault(f.stream, []).append(n)
        meta, rows = self.table.read_raw([(stream, entity, keys) for stream in streams])
        return rows_to_values(meta, streams, entity, rows)

    def close(self, *, stopped: bool = False) -> None:
        """Close the table. ``stopped``: the shard stops serving (its store is closed or stopped); the meta
        entry then says ``"closed"``, so readers in other processes stop answering from a table no shard
        keeps current any more (:func:`~rayfs.storage.online.rows_to_values`) and ask the shard, which tells
        them the store is gone. A crashed shard's table is not marked: its restart brings it up to date."""
        if stopped:
            self.table.write([], dict(self._meta(), closed=True))
        self.closed = True
        self.table.close()
