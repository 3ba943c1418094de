"""One shard's state machine: log, fold, snapshot, definitions, online reads and replay (no Ray here).

A shard owns the entity keys whose stable hash falls in its range (:mod:`rayfs.engine.routing`). For each
ingested batch it (1) decodes and validates the rows routed to it, (2) appends the batch to its
segmented log (durable before the call returns), (3) folds it into the lifetime states and the window
buffers, and (4) now and then snapshots all state with the log offset it covers into LMDB.

:class:`ShardCore` is composed of parts that each own their state, all guarded by the core's one lock:

* :class:`~rayfs.shard.windows.WindowBuffers`: the window buffers, the newest event time per stream and
  the windowed online reads;
* :class:`~rayfs.shard.replay_cache.ReplayCache`: the decoded events and sorted indexes of replay;
* :class:`~rayfs.shard.backfill.Backfill`: folding newly registered features from the log, and its progress;
* :class:`~rayfs.shard.inspect.Inspection`: stats, feature statistics, key samples and the audit;
* :class:`~rayfs.shard.online.OnlineView`: the online table (LMDB) that readers on the node read without
  calling the shard, brought up to date with every batch before it is acknowledged.

The core itself owns the log, the snapshot store, the definitions and their compiled forms, the key indexes,
the lifetime state tables, the watermarks and the exactly-once batch ids. Online folding, backfill and
recovery share one fold path (:func:`rayfs.engine.fold.feature_rows` and the aggregates' update/merge);
replay answers with each aggregate's ``range_query`` (see :mod:`rayfs.engine.fold`).

Invariants:

* state = snapshot ⊕ fold(log[snapshot offset:]); the log alone always suffices to rebuild.
* A batch id is applied at most once (ids of recent batches are remembered, see ``REMEMBER_IDS``).
* Every event's ``seq`` is ``offset << 24 | row``: ingest order on this shard, the tie-break for equal ts.
* A batch is planned (decoded, kinds checked, every fold prepared) before it is logged, and folded only
  after: a batch that fails leaves neither the log nor the state changed.
* The window buffer of a stream holds every event with ``ts >= local max ts - longest window``, which
  includes every event any windowed online read can see.
* Every batch is sent to every shard, rows or not, with ``wm``: the newest event time of the whole batch.
  ``watermark[stream]`` (the max of the ``wm`` of every logged batch) is therefore the stream's newest
  acknowledged event time store-wide, the instant online values are served at.
* Only keys this shard owns get slots. A batch may carry ``own`` (per entity field, a packed bit per row:
  the driver's routing says the key is this shard's); then only those rows are looked up, else (batches of
  older drivers) unknown keys are hashed here. Both give the same slots; the log keeps what was sent.
* A lifetime feature being backfilled is folded in chunks, the lock released between them (ingest goes on
  and folds new batches into it as usual); it is never snapshotted until done, and reads of it wait.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from rayfs.engine.columns import (
    TS,
    Batch,
    decode,
    decode_batch,
    encode,
    kind_of,
    record_times,
    wire_codes,
    wire_nulls,
)
from rayfs.engine.fold import (
    SEQ,
    SEQ_ROW_BITS,
    CompiledFeature,
    StateTable,
    compile_feature,
    feature_rows,
    slot_column,
    value_kind,
)
from rayfs.engine.keyindex import KeyIndex
from rayfs.engine.parts import Part
from rayfs.engine.routing import shard_of
from rayfs.errors import StoreOpenError, UnknownFeatureError
from rayfs.model.config import DURABILITY
from rayfs.model.definitions import Feature, Stream
from rayfs.model.timeutil import NEVER
from rayfs.shard.backfill import Backfill
from rayfs.shard.inspect import Inspection
from rayfs.shard.online import OnlineView
from rayfs.shard.replay_cache import ReplayCache
from rayfs.shard.windows import WindowBuffers
from rayfs.storage.catalog import Catalog
from rayfs.storage.groupcommit import GroupCommit
from rayfs.storage.locks import wait_lock
from rayfs.storage.log import SegmentedLog
from rayfs.storage.snapshot import SnapshotStore

__all__ = ["REMEMBER_IDS", "ShardCore"]

REMEMBER_IDS = 100_000  # batch ids remembered for exactly-once retries (also recoverable from the log)


def _batch_key(record: dict) -> str:
    """Batch ids are per stream: the same id on two streams names two batches."""
    return f"{record['stream']}\x1f{record['batch_id']}"


def _locked(method):
    """Run ``method`` holding the shard's lock."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


class ShardCore:
    """The state of one shard. Wrapped as a Ray actor by :mod:`rayfs.shard.actor`.

    Args:
        root: the store's directory; the shard keeps its files under ``shards/shard-<id>``.
        shard_id: this shard's number, ``0 <= shard_id < n_shards``.
        n_shards: the number of shards of the store (the key ranges are fixed by it).
        streams: stream definitions (``Stream.to_dict``), used unless the catalog on disk has newer ones.
        features: feature definitions (``Feature.to_dict``), likewise.
        durability: ``"sync"`` (fsync per batch), ``"group"`` (fsyncs shared by concurrent batches) or
            ``"none"``.
        segment_bytes: size at which the log starts a new segment file.
        snapshot_every: batches between snapshots.
        online_table: keep the online table (:mod:`rayfs.shard.online`) current.

    Raises:
        StoreOpenError: another live process holds the shard's directory.
    """

    def __init__(self, root: str, shard_id: int, n_shards: int, streams: list[dict], features: list[dict],
                 *, durability: str = "sync", segment_bytes: int = 64 << 20,
                 snapshot_every: int = 200, online_table: bool = False) -> None:
        self.shard_id, self.n_shards = shard_id, n_shards
        self.dir = os.path.join(root, "shards", f"shard-{shard_id:03d}")
        os.makedirs(self.dir, exist_ok=True)
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {DURABILITY}, not {durability!r}")
        self._dir_lock = _lock_dir(self.dir)  # one live shard per directory, ever
        # A restarted actor gets its original arguments: the catalog on disk has the current definitions.
        on_disk = Catalog.load(root)
        if on_disk is not None:
            streams = [st.to_dict() for st in on_disk.streams.values()]
            features = [f.to_dict() for f in on_disk.features.values()]
        self.durability = durability
        self.log = SegmentedLog(os.path.join(self.dir, "log"), segment_bytes=segment_bytes,
                                durability="sync" if durability == "sync" else "none")
        self.group = GroupCommit(self.log.sync) if durability == "group" else None
        # The actor runs calls on a few threads (so group commit can gather concurrent ingests);
        # every state access holds this lock, only the wait for a group fsync happens outside it.
        self.lock = threading.RLock()
        self.snap = SnapshotStore.open_or_discard(os.path.join(self.dir, "snapshot.lmdb"))
        self.snapshot_every = snapshot_every
        self.streams = {d["name"]: Stream.from_dict(d) for d in streams}
        # The parts below hold these dicts (never rebound, only changed in place).
        self.features = {f.key: f for f in map(Feature.from_dict, features)}
        self.compiled: dict[str, CompiledFeature] = {}
        self.tables: dict[str, StateTable] = {}  # lifetime features' states
        self.counts: dict[str, int] = {}  # events logged per stream
        self.watermark: dict[str, int] = {}
        self.catalog_version = on_disk.version if on_disk is not None else 0
        self.counters = dict.fromkeys(("events_ingested", "bytes_ingested", "batches_ingested", "duplicates",
                                       "errors", "replay_observations", "replay_events"), 0)
        self.counters["replay_seconds"] = 0.0
        self.events_since_snapshot = 0
        self.snapshot_time = time.time()
        self.keys: dict[tuple[str, str], KeyIndex] = {}
        self.schema: dict[str, dict[str, str]] = {s: {} for s in self.streams}
        self.applied: OrderedDict[str, int] = OrderedDict()
        self.since_snapshot = 0
        # Which state the in-memory state descends from: the token of the snapshot it was restored from or
        # last saved to, "log" when folded from the log alone (the online table is kept only if it agrees).
        self.lineage = "log"
        self.windows = WindowBuffers(self.features, self.compiled)
        self.replays = ReplayCache(self.log, self._decode)
        self.backfill = Backfill(self.lock, define=self._define, features=self.features, compiled=self.compiled,
                                 tables=self.tables, counts=self.counts, windows=self.windows,
                                 replays=self.replays, log=self.log, decode=self._decode)
        self.inspection = Inspection(self)
        self.online_view = OnlineView(self.dir, self) if online_table else None
        self._recover()
        if self.online_view is not None:
            self.online_view.open()

    # ------------------------------------------------------------------------------------- recovery
    def _recover(self) -> None:
        snap = self.snap.load()
        start = 0
        restored: set[str] = set()
        if snap is not None and snap["meta"]["offset"] <= self.log.next_offset:
            start = self._restore(snap)
            restored = set(self.tables)
        elif snap is not None:
            warnings.warn(f"shard {self.shard_id}: snapshot is ahead of the log; rebuilding from the log",
                          RuntimeWarning, stacklevel=2)
        for name in self.features:
            self._ensure_compiled(name)
        stale_buffers = {s for s in self.streams if self.windows.is_stale(s)}
        full = [n for n in self.tables if n not in restored]
        first = 0 if (full or stale_buffers) else start
        for s in stale_buffers:
            self.windows.reset(s)
        if first == 0:  # reading every batch anyway: keep them for replay (a new store starts here too)
            self.replays.start_empty()
        for offset, record in self.log.read(first):
            stream = record["stream"]
            tail = offset >= start
            n = len(record_times(record))
            if tail:
                self._note_batch(record, n)
            if not n:
                if tail:
                    self._remember(_batch_key(record), offset)
                continue
            cols = self._decode(record, offset)
            self.replays.add(stream, cols)
            names = [n for n in self._lifetime(stream) if tail or n in full]
            self._fold(stream, cols, names, buffer=tail or stream in stale_buffers)
            if tail:
                self._remember(_batch_key(record), offset)
        self.since_snapshot = self.log.next_offset - start

    def _restore(self, snap: dict) -> int:
        meta = snap["meta"]
        for key, wire in snap.items():
            if key.startswith("keys/"):
                _, stream, entity = key.split("/")
                self.keys[(stream, entity)] = KeyIndex(decode(wire).tolist())
        self.schema.update({s: dict(v) for s, v in meta["schema"].items() if s in self.streams})
        self.windows.restore(meta, snap, self.streams)
        self.watermark.update({s: int(v) for s, v in meta.get("watermark", meta["local_max"]).items()})
        self.counts.update({s: int(v) for s, v in meta.get("counts", {}).items()})
        for name, fp in meta["features"].items():
            f = self.features.get(name)
            if f is None or f.fingerprint() != fp["fingerprint"]:
                continue
            cf = compile_feature(f, fp["kind"] if fp["kind"] != "none" else None)
            self.compiled[name] = cf
            st = cf.agg.from_wire(snap[f"state/{name}"])
            self.tables[name] = StateTable(cf.agg, st, fp["size"])
        for bid, off in snap["ids"]:
            self.applied[bid] = off
        self.lineage = str(meta.get("token") or f"snapshot@{meta['offset']}")
        return int(meta["offset"])

    @_locked
    def snapshot(self) -> dict:
        """Write all state with the log offset it covers into LMDB."""
        self.log.sync()
        entries: dict[str, Any] = {"ids": list(self.applied.items())}
        for (stream, entity), ki in self.keys.items():
            entries[f"keys/{stream}/{entity}"] = encode(_key_array(ki.keys()))
        feats = {}
        for name, table in self.tables.items():
            if self.backfill.running(name):
                continue  # half backfilled: a restart redoes it from the log
            entries[f"state/{name}"] = table.agg.to_wire(table.compact())
            cf = self.compiled[name]
            feats[name] = {"fingerprint": cf.feature.fingerprint(), "kind": cf.kind, "size": table.size}
        windows, buffers = self.windows.to_snapshot()
        entries.update(buffers)
        token = uuid.uuid4().hex
        meta = {"offset": self.log.next_offset, "schema": self.schema, "local_max": windows["local_max"],
                "watermark": self.watermark, "counts": self.counts, "features": feats,
                "buffer_window": windows["buffer_window"], "token": token}
        written = self.snap.save(meta, entries)
        self.lineage = token
        self._refresh_online()  # records the new lineage
        self.since_snapshot = self.events_since_snapshot = 0
        self.snapshot_time = time.time()
        return {"offset": self.log.next_offset, "bytes": written}

    # ------------------------------------------------------------------------------------- definitions
    def _note_cv(self, version: int | None) -> None:
        if version is not None:
            self.catalog_version = max(self.catalog_version, version)

    @_locked
    def add_stream(self, stream: dict, version: int | None = None) -> None:
        s = Stream.from_dict(stream)
        self.streams[s.name] = s
        self.schema.setdefault(s.name, {})
        self._note_cv(version)
        self._refresh_online()

    def add_feature(self, feature: dict, version: int | None = None) -> int:
        """Register a feature version and backfill it from the log (cold start); returns when done.

        See :meth:`rayfs.shard.backfill.Backfill.add_feature`.

        Returns:
            The number of logged events the backfill covered.
        """
        done = self.backfill.add_feature(Feature.from_dict(feature), version)
        with self.lock:
            self._refresh_online()
        return done

    def _define(self, f: Feature, version: int | None) -> bool:
        """Register feature version ``f`` (the caller holds the lock); ``False`` when its definition was
        already registered (a metadata update or a retried call: nothing to backfill)."""
        self._note_cv(version)
        old = self.features.get(f.key)
        self.features[f.key] = f
        if old is not None and old.same_definition(f):
            return False
        self._ensure_compiled(f.key)
        return True

    @_locked
    def drop_feature(self, key: str, version: int | None = None) -> None:
        """Forget a feature version (dropped, or a registration another shard refused)."""
        self.features.pop(key, None)
        self.compiled.pop(key, None)
        self.tables.pop(key, None)
        self.windows.forget(key)
        self._note_cv(version)
        self._refresh_online()

    def backfill_progress(self) -> dict[str, tuple[int, int]]:
        """Feature key -> (events folded, events to fold) of backfills running or recently finished here."""
        return self.backfill.progress()

    def _compiled_for(self, name: str, schema: dict[str, str]) -> CompiledFeature:
        """The compiled form of feature ``name`` given the column kinds ``schema`` (no state change)."""
        f = self.features[name]
        kind = value_kind(f, self.streams[f.stream], schema)
        cf = self.compiled.get(name)
        if cf is not None and (f.column is None or kind is None or cf.kind == kind):
            return cf
        return compile_feature(f, kind)

    def _install(self, name: str, cf: CompiledFeature) -> None:
        if self.compiled.get(name) is cf:
            return
        # First sight of the column's kind: every value so far was null, so a zero state is exact.
        self.compiled[name] = cf
        if cf.feature.window is None:
            self.tables[name] = StateTable(cf.agg)

    def _ensure_compiled(self, name: str) -> None:
        self._install(name, self._compiled_for(name, self.schema.get(self.features[name].stream, {})))

    def compiled_feature(self, key: str) -> CompiledFeature:
        """Feature ``key`` compiled for the column kinds seen so far (compiled now if it was not yet)."""
        with self.lock:
            self._ensure_compiled(key)
            return self.compiled[key]

    def _lifetime(self, stream: str) -> list[str]:
        return [n for n, f in self.features.items() if f.stream == stream and f.window is None]

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self, record: Part) -> dict:
        """Append one routed batch (a :class:`~rayfs.engine.parts.Part`) to the log and fold it; a repeated
        batch id is a no-op.

        Returns once the batch is durable per the shard's durability mode and folded.
        """
        with self.lock:
            result = self._ingest_locked(record)
            # A duplicate (a retry) waits too: its original may still be waiting for its fsync.
            ticket = self.group.ticket() if self.group is not None else None
        if ticket is not None:
            self.group.wait(ticket)
        return result

    def _ingest_locked(self, record: Part) -> dict:
        bid = _batch_key(record)
        if bid in self.applied:
            self.counters["duplicates"] += 1
            return {"offset": self.applied[bid], "duplicate": True, "cv": self.catalog_version}
        offset = self.log.next_offset
        stream = record["stream"]
        n = len(record_times(record))
        self._note_cv(record.get("cv"))
        try:
            if n:
                nulls: dict[str, np.ndarray] = {}
                cols = self._decode(record, offset, nulls)
                plan = self._plan(stream, cols, self._lifetime(stream), nulls)  # errors surface before the log append
            size = self.log.size_bytes()
            self.log.append(record)
        except Exception:
            self.counters["errors"] += 1
            raise
        self.counters["bytes_ingested"] += self.log.size_bytes() - size
        old = self.watermark.get(stream)
        expiring = None if self.online_view is None else self.online_view.expiring(
            stream, old, max(old if old is not None else NEVER, self._batch_watermark(record, n)))
        if n:
            self._fold(stream, cols, self._lifetime(stream), buffer=True, plan=plan)
            self.replays.add(stream, cols)
        self._note_batch(record, n)
        self._refresh_online(stream, cols if n else None, expiring)
        self.counters["events_ingested"] += n
        self.counters["batches_ingested"] += 1
        self._remember(bid, offset)
        self.since_snapshot += 1
        if self.since_snapshot >= self.snapshot_every:
            self.snapshot()
        return {"offset": offset, "duplicate": False, "cv": self.catalog_version}

    def _refresh_online(self, stream: str | None = None, cols: Batch | None = None,
                        expiring: dict[str, np.ndarray] | None = None) -> None:
        """Bring the online table up to date (after a batch of ``stream``, or after definitions changed).

        The batch is logged and folded by now: a failure here must not fail its ingest (a retry would be
        dropped as a duplicate), so it is reported and the table rewritten whole at the next chance.
        """
        if self.online_view is None:
            return
        try:
            self.online_view.after_batch(stream, cols, expiring or {})
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk; the state and the log are intact
            self.online_view.invalidate()
            warnings.warn(f"shard {self.shard_id}: online table not updated ({exc!r}); online reads from it "
                          "lag until the next batch rewrites it", RuntimeWarning, stacklevel=2)

    def backfilling(self, key: str) -> bool:
        """Whether feature ``key`` is being backfilled (its values are not complete yet)."""
        return self.backfill.running(key)

    def log_offset(self) -> int:
        """The offset the next logged batch gets (= the batches logged so far)."""
        return self.log.next_offset

    def windows_expiring(self, key: str, old: int | None, new: int | None) -> np.ndarray:
        """Slots (with repeats) whose windowed feature ``key`` lost events as its stream's watermark moved from
        ``old`` to ``new`` (see :meth:`rayfs.shard.windows.WindowBuffers.expiring`)."""
        return self.windows.expiring(key, self.compiled_feature(key), old, new, unique=False)

    def _note_batch(self, record: dict, n: int) -> None:
        """Count a logged batch's events and raise the stream's watermark to the batch's newest event."""
        stream = record["stream"]
        self.counts[stream] = self.counts.get(stream, 0) + n
        self.events_since_snapshot += n
        wm = self._batch_watermark(record, n)
        if wm != NEVER:
            self.watermark[stream] = max(self.watermark.get(stream, NEVER), wm)

    @staticmethod
    def _batch_watermark(record: dict, n: int) -> int:
        """The newest event time of the whole batch (``wm``), ``NEVER`` for an empty one without it."""
        wm = record.get("wm")
        if wm is None and n:  # a batch logged before batches carried "wm"
            wm = int(decode(record["cols"][TS]).max())
        return NEVER if wm is None else int(wm)

    def _remember(self, bid: str, offset: int) -> None:
        self.applied[bid] = offset
        while len(self.applied) > REMEMBER_IDS:
            self.applied.popitem(last=False)

    def _decode(self, record: dict, offset: int, nulls: dict | None = None) -> Batch:
        """The decoded batch with ``__seq`` and the slot columns; fills ``nulls`` (when given) with the null
        masks of the dictionary-encoded columns (free from their codes)."""
        stream = self.streams[record["stream"]]
        cols = decode_batch(record["cols"])
        n = len(cols[TS])
        cols[SEQ] = (np.int64(offset) << np.int64(SEQ_ROW_BITS)) + np.arange(n, dtype=np.int64)
        own = record.get("own") or {}
        for e in stream.entities:
            ki = self.keys.setdefault((stream.name, e), KeyIndex())
            wire = record["cols"].get(e)
            coded = wire is not None and wire["k"] in ("s", "k")  # dictionary-encoded: no re-factorizing
            if e in own and wire is not None:
                # The driver marked the rows whose key is this shard's: only those are looked up (and added).
                rows = np.flatnonzero(np.unpackbits(np.frombuffer(own[e], dtype=np.uint8), count=n))
                slots = np.full(n, -1, dtype=np.int64)
                slots[rows] = (ki.lookup_encoded(wire["u"], wire_codes(wire)[rows], add=True) if coded
                               else ki.lookup(cols[e][rows], add=True))
                cols[slot_column(e)] = slots
            elif coded:  # records without "own" (older drivers): known keys are ours, new ones are hashed
                cols[slot_column(e)] = ki.lookup_encoded(wire["u"], wire_codes(wire), add=self._owns)
            else:
                cols[slot_column(e)] = ki.lookup(cols[e], add=self._owns)
        if nulls is not None:
            nulls.update(wire_nulls(record["cols"]))
        return cols

    def _owns(self, keys: np.ndarray) -> np.ndarray:
        return shard_of(keys, self.n_shards) == self.shard_id

    def _plan(self, stream: str, cols: Batch, names: list[str], nulls: dict | None = None) -> tuple:
        """Everything folding ``cols`` will do, computed without changing any state (so it may raise
        before the batch is logged): new column kinds, compiled features, and each fold's rows.
        ``nulls``: known null masks of columns of ``cols`` (see :func:`rayfs.engine.fold.feature_rows`)."""
        nulls = {} if nulls is None else nulls
        schema = dict(self.schema.get(stream, {}))
        for name, col in cols.items():
            if not name.startswith("__") and name not in schema:
                k = kind_of(col)
                if k is not None:
                    schema[name] = k
        compiled = {n: self._compiled_for(n, schema) for n, f in self.features.items() if f.stream == stream}
        folds = {}
        for n, cf in compiled.items():
            # Windowed features fold at read time from the buffer; selecting their rows now proves it works.
            idx, vals = feature_rows(cf, cols, nulls=nulls)
            if n in names:
                table = self.tables[n] if self.compiled.get(n) is cf else StateTable(cf.agg)
                slots = cols[slot_column(cf.feature.entity)][idx]
                folds[n] = (table, table.prepare(slots, vals, cols[TS][idx], cols[SEQ][idx]))
        return schema, compiled, folds

    def _fold(self, stream: str, cols: Batch, names: list[str], *, buffer: bool, plan: tuple | None = None) -> None:
        schema, compiled, folds = plan if plan is not None else self._plan(stream, cols, names)
        self.schema[stream] = schema
        for n, cf in compiled.items():
            self._install(n, cf)
        for n, (table, prepared) in folds.items():
            self.tables[n] = table  # the planned table (a recompiled feature starts from zero)
            table.commit(prepared)
        if len(cols[TS]):
            self.windows.advance(stream, int(cols[TS].max()))
        if buffer:
            self.windows.append(stream, cols)

    # ------------------------------------------------------------------------------------- reads
    def slots(self, stream: str, entity: str, keys: np.ndarray) -> np.ndarray:
        """The slots of ``keys`` of field ``entity`` on ``stream`` (-1: a key this shard has no event of)."""
        with self.lock:
            ki = self.keys.get((stream, entity))
            return ki.lookup(keys, add=False) if ki else np.full(len(keys), -1, dtype=np.int64)

    def known_keys(self, stream: str, entity: str) -> list:
        """The keys of field ``entity`` on ``stream`` this shard has slots for, in slot order (not a copy)."""
        with self.lock:
            ki = self.keys.get((stream, entity))
            return ki.keys() if ki else []

    def key_counts(self) -> dict[tuple[str, str], int]:
        """(stream, entity field) -> the number of keys this shard has slots for."""
        with self.lock:
            return {se: len(ki) for se, ki in self.keys.items()}

    def online(self, key: str, slots: np.ndarray) -> np.ndarray:
        """Online values of feature ``key`` at ``slots`` as of its stream's watermark (no backfill wait)."""
        with self.lock:
            f = self.features[key]
            cf = self.compiled_feature(key)
            if f.window is None:
                return self.tables[key].read(slots)
            return self.windows.read(key, cf, slots, self.watermark.get(f.stream))

    @_locked
    def get(self, entity: str, keys: np.ndarray, names: list[str]) -> dict:
        """Online values of ``names`` for ``keys`` (all owned by this shard) as of each stream's watermark.

        Returns:
            ``{"cv": catalog version this shard knows, "values": {name: values}}`` (as every answer that
            depends on definitions, the version lets a driver tell its catalog is stale).
        """
        self._check_known(names)
        self.backfill.wait(names)
        out: dict[str, Any] = {}
        slots_of: dict[str, np.ndarray] = {}
        for n in names:
            stream = self.features[n].stream
            slots = slots_of.get(stream)
            if slots is None:
                slots = slots_of[stream] = self.slots(stream, entity, keys)
            out[n] = self.online(n, slots)
        return {"cv": self.catalog_version, "values": out}

    @_locked
    def replay(self, entity: str, keys: np.ndarray, t: np.ndarray, names: list[str]) -> dict:
        """Point-in-time values of ``names`` for observations ``(keys[i], t[i])`` owned by this shard.

        Returns:
            ``{"cv": catalog version this shard knows, "values": {name: values}}``.
        """
        self._check_known(names)
        start = time.perf_counter()
        self.replays.load()
        by_stream: dict[str, list[str]] = {}
        for n in names:
            self._ensure_compiled(n)
            by_stream.setdefault(self.features[n].stream, []).append(n)
        out = {}
        for stream, ns in by_stream.items():
            slots = self.slots(stream, entity, keys)
            vals, events = self.replays.replay(stream, entity, [self.compiled[n] for n in ns], slots, t)
            out.update(zip(ns, vals, strict=True))
            self.counters["replay_events"] += events
        self.counters["replay_observations"] += len(keys)
        self.counters["replay_seconds"] += time.perf_counter() - start
        return {"cv": self.catalog_version, "values": out}

    def _check_known(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.features]
        if missing:  # e.g. a version another driver dropped: the caller's catalog is stale
            raise UnknownFeatureError(f"unknown feature version(s) {missing} on shard {self.shard_id} "
                                      f"(catalog version {self.catalog_version})")

    # ------------------------------------------------------------------------------------- inspection
    def stats(self) -> dict:
        """Counters and gauges of this shard (see :meth:`rayfs.shard.inspect.Inspection.stats`)."""
        return self.inspection.stats()

    def feature_stats(self, keys: list[str]) -> dict[str, dict]:
        """Mergeable statistics of the online values of features ``keys`` (see :class:`Inspection`)."""
        return self.inspection.feature_stats(keys)

    def sample_keys(self, stream: str, entity: str, n: int, seed: int = 0) -> list:
        """Up to ``n`` entity keys of ``entity`` seen on ``stream`` by this shard, sampled without replacement."""
        return self.inspection.sample_keys(stream, entity, n, seed)

    def audit(self, entity: str, keys: np.ndarray, names: list[str]) -> dict:
        """Online values and a fresh replay from the on-disk log at the same instant, for ``keys`` (see
        :meth:`rayfs.shard.inspect.Inspection.audit`)."""
        return self.inspection.audit(entity, keys, names)

    def await_backfills(self, names: list[str]) -> None:
        """Block until none of features ``names`` is being backfilled (the caller holds the lock)."""
        self.backfill.wait(names)

    @_locked
    def pid(self) -> int:
        """The id of the process running this shard (for fault-injection tests)."""
        return os.getpid()

    @_locked
    def info(self) -> dict:
        return {"shard": self.shard_id, "next_offset": self.log.next_offset, "local_max": self.windows.local_max,
                "watermark": dict(self.watermark), "catalog_version": self.catalog_version,
                "log_truncated_bytes": self.log.truncated_bytes,
                "log_bytes": self.log.size_bytes(), "since_snapshot": self.since_snapshot,
                "schema": {s: dict(k) for s, k in self.schema.items()},
                "online_table": self.online_view.path if self.online_view is not None else None}

    @_locked
    def flush(self) -> dict:
        self.log.sync()
        return self.info()

    @_locked
    def close(self) -> None:
        if self.group is not None:
            self.group.close()
        self.snapshot()
        self.log.close()
        if self.online_view is not None:
            self.online_view.close(stopped=True)
        self._dir_lock.close()  # releases the flock
        self.snap.close()


def _key_array(keys: list) -> np.ndarray:
    arr = np.empty(len(keys), dtype=object)
    arr[:] = keys
    return arr


def _lock_dir(path: str, timeout_s: float = 30.0):
    """Hold ``path``/LOCK for the life of the process; a restarting shard waits for its previous process."""
    fh = wait_lock(os.path.join(path, "LOCK"), timeout_s)
    if fh is None:
        raise StoreOpenError(f"shard directory {path} is locked by another live process")
    return fh
