"""One shard's state machine: log, fold, snapshot, online reads and replay (no Ray here).

A shard owns the entity keys whose stable hash falls in its range (:mod:`rayfs.engine.routing`). For each
ingested batch it (1) decodes and validates the rows routed to it, (2) appends the batch to its
segmented log (durable before the call returns), (3) folds it into the lifetime states and the window
buffers, and (4) now and then snapshots all state with the log offset it covers into LMDB.

Invariants:

* state = snapshot ⊕ fold(log[snapshot offset:]); the log alone always suffices to rebuild.
* A batch id is applied at most once (ids of recent batches are remembered, see ``REMEMBER_IDS``).
* Every event's ``seq`` is ``offset << 24 | row``: ingest order on this shard, the tie-break for equal ts.
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
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from rayfs.engine.columns import (
    TS,
    Batch,
    concat,
    decode,
    decode_batch,
    encode,
    encode_batch,
    kind_of,
    record_times,
    take,
    wire_codes,
    wire_nulls,
)
from rayfs.engine.fold import (
    SEQ,
    SEQ_ROW_BITS,
    CompiledFeature,
    StateTable,
    WindowEvents,
    compile_feature,
    feature_rows,
    slot_column,
    value_kind,
)
from rayfs.engine.keyindex import KeyIndex
from rayfs.engine.pit import EventIndex
from rayfs.engine.routing import shard_of
from rayfs.errors import StoreOpenError, UnknownFeatureError
from rayfs.model.definitions import Feature, Stream
from rayfs.shard.backfill import ShardBackfill
from rayfs.shard.inspect import ShardInspection
from rayfs.storage.catalog import Catalog
from rayfs.storage.groupcommit import GroupCommit
from rayfs.storage.locks import wait_lock
from rayfs.storage.log import SegmentedLog
from rayfs.storage.snapshot import SnapshotStore

DURABILITY = ("sync", "group", "none")
REMEMBER_IDS = 100_000  # batch ids remembered for exactly-once retries (also recoverable from the log)
COMPACT_PARTS = 64  # cached batches of a stream beyond which a replay concatenates them into one


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


class ShardCore(ShardInspection, ShardBackfill):
    """The state of one shard. Wrapped as a Ray actor by :mod:`rayfs.shard.actor`."""

    def __init__(self, root: str, shard_id: int, n_shards: int, streams: list[dict], features: list[dict],
                 *, durability: str = "sync", segment_bytes: int = 64 << 20,
                 snapshot_every: int = 200) -> None:
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
        self.features = {f.key: f for f in map(Feature.from_dict, features)}
        self.catalog_version = on_disk.version if on_disk is not None else 0
        self.watermark: dict[str, int] = {}
        self.counts: dict[str, int] = {}  # events logged per stream
        self.backfills: dict[str, list[int]] = {}  # feature key -> [events done, events total] while running
        self.backfilled_keys: OrderedDict[str, tuple[int, int]] = OrderedDict()  # the last finished ones
        self.backfilled = threading.Condition(self.lock)
        self.counters = dict.fromkeys(("events_ingested", "bytes_ingested", "batches_ingested", "duplicates",
                                       "errors", "replay_observations", "replay_events"), 0)
        self.counters["replay_seconds"] = 0.0
        self.events_since_snapshot = 0
        self.snapshot_time = time.time()
        self.keys: dict[tuple[str, str], KeyIndex] = {}
        self.schema: dict[str, dict[str, str]] = {s: {} for s in self.streams}
        self.compiled: dict[str, CompiledFeature] = {}
        self.tables: dict[str, StateTable] = {}
        self.buffers: dict[str, Batch] = {}
        self.buffer_parts: dict[str, list[Batch]] = {}  # chunks appended since the buffer was last merged
        self.buffer_window: dict[str, int] = {}
        self.local_max: dict[str, int] = {}
        self.applied: OrderedDict[str, int] = OrderedDict()
        self.cache: dict[str, list[Batch]] | None = None  # every event, loaded on first replay
        self.indexes: dict[tuple[str, str], EventIndex] = {}  # replay sort per (stream, entity field)
        self.window_events: dict[str, WindowEvents] = {}  # per windowed feature, dropped when its buffer changes
        self.since_snapshot = 0
        self._recover()

    # ------------------------------------------------------------------------------------- recovery
    def _recover(self) -> None:
        snap = self.snap.load()
        start = 0
        restored: set[str] = set()
        if snap is not None and snap["meta"]["offset"] <= self.log.next_offset:
            start = self._restore(snap)
            restored = {n for n in self.tables}
        elif snap is not None:
            warnings.warn(f"shard {self.shard_id}: snapshot is ahead of the log; rebuilding from the log",
                          RuntimeWarning, stacklevel=2)
        for name in self.features:
            self._ensure_compiled(name)
        stale_buffers = {s for s in self.streams if self.buffer_window.get(s, 0) != self._longest_window(s)}
        full = [n for n in self.tables if n not in restored]
        first = 0 if (full or stale_buffers) else start
        for s in stale_buffers:
            self.buffers[s] = {}
            self.buffer_parts.pop(s, None)
            self.buffer_window[s] = self._longest_window(s)
        if first == 0:  # reading every batch anyway: keep them for replay (a new store starts here too)
            self.cache = {}
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
            if self.cache is not None:
                self.cache.setdefault(stream, []).append(cols)
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
        self.local_max = {s: int(v) for s, v in meta["local_max"].items()}
        self.watermark = {s: int(v) for s, v in meta.get("watermark", meta["local_max"]).items()}
        self.counts = {s: int(v) for s, v in meta.get("counts", {}).items()}
        for name, fp in meta["features"].items():
            f = self.features.get(name)
            if f is None or f.fingerprint() != fp["fingerprint"]:
                continue
            cf = compile_feature(f, fp["kind"] if fp["kind"] != "none" else None)
            self.compiled[name] = cf
            st = cf.agg.from_wire(snap[f"state/{name}"])
            self.tables[name] = StateTable(cf.agg, st, fp["size"])
        for stream, w in meta["buffer_window"].items():
            if stream in self.streams:
                self.buffers[stream] = decode_batch(snap[f"buffer/{stream}"])
                self.buffer_window[stream] = w
        for bid, off in snap["ids"]:
            self.applied[bid] = off
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
            if name in self.backfills:
                continue  # half backfilled: a restart redoes it from the log
            entries[f"state/{name}"] = table.agg.to_wire(table.compact())
            cf = self.compiled[name]
            feats[name] = {"fingerprint": cf.feature.fingerprint(), "kind": cf.kind, "size": table.size}
        for stream in set(self.buffers) | set(self.buffer_parts):
            entries[f"buffer/{stream}"] = encode_batch(self._buffer(stream))
        meta = {"offset": self.log.next_offset, "schema": self.schema, "local_max": self.local_max,
                "watermark": self.watermark, "counts": self.counts, "features": feats,
                "buffer_window": self.buffer_window}
        written = self.snap.save(meta, entries)
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

    @_locked
    def drop_feature(self, key: str, version: int | None = None) -> None:
        """Forget a feature version (dropped, or a registration another shard refused)."""
        self.features.pop(key, None)
        self.compiled.pop(key, None)
        self.tables.pop(key, None)
        self.window_events.pop(key, None)
        self._note_cv(version)

    def _events(self, stream: str, since: int | None = None):
        """(offset, decoded batch) of every logged batch of ``stream`` (from the cache when loaded); with
        ``since``, batches whose events are all older are skipped before their keys are decoded."""
        if self.cache is not None:
            yield from ((None, c) for c in self.cache.get(stream, []) if since is None or c[TS].max() >= since)
            return
        for offset, record in self.log.read(0):
            if record["stream"] == stream:
                ts = record_times(record)
                if len(ts) and (since is None or ts.max() >= since):
                    yield offset, self._decode(record, offset)

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

    def _lifetime(self, stream: str) -> list[str]:
        return [n for n, f in self.features.items() if f.stream == stream and f.window is None]

    def _longest_window(self, stream: str) -> int:
        return max((f.window_us for f in self.features.values() if f.stream == stream and f.window),
                   default=0)

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self, record: dict) -> dict:
        """Append one routed batch to the log and fold it; a repeated batch id is a no-op.

        Returns once the batch is durable per the shard's durability mode and folded.
        """
        with self.lock:
            result = self._ingest_locked(record)
            # A duplicate (a retry) waits too: its original may still be waiting for its fsync.
            ticket = self.group.ticket() if self.group is not None else None
        if ticket is not None:
            self.group.wait(ticket)
        return result

    def _ingest_locked(self, record: dict) -> dict:
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
        if n:
            self._fold(stream, cols, self._lifetime(stream), buffer=True, plan=plan)
            if self.cache is not None:
                self.cache.setdefault(stream, []).append(cols)
                self.indexes = {k: v for k, v in self.indexes.items() if k[0] != stream}
        self._note_batch(record, n)
        self.counters["events_ingested"] += n
        self.counters["batches_ingested"] += 1
        self._remember(bid, offset)
        self.since_snapshot += 1
        if self.since_snapshot >= self.snapshot_every:
            self.snapshot()
        return {"offset": offset, "duplicate": False, "cv": self.catalog_version}

    def _note_batch(self, record: dict, n: int) -> None:
        """Count a logged batch's events and raise the stream's watermark to the batch's newest event."""
        stream = record["stream"]
        self.counts[stream] = self.counts.get(stream, 0) + n
        self.events_since_snapshot += n
        wm = record.get("wm")
        if wm is None and n:  # a batch logged before batches carried "wm"
            wm = int(decode(record["cols"][TS]).max())
        if wm is not None:
            self.watermark[stream] = max(self.watermark.get(stream, -(2**62)), int(wm))

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
            self.local_max[stream] = max(self.local_max.get(stream, -(2**62)), int(cols[TS].max()))
        if buffer:
            self._append_buffer(stream, cols)

    def _append_buffer(self, stream: str, cols: Batch) -> None:
        w = self._longest_window(stream)
        self.buffer_window[stream] = w
        if w == 0:
            self.buffers[stream] = {}
            self.buffer_parts.pop(stream, None)
            return
        floor = max(self.local_max.get(stream, -(2**62)), int(cols[TS].max(initial=-(2**62)))) - w
        self._invalidate(stream)
        keep = cols[TS] >= floor
        if keep.any():
            # Appending a chunk is O(batch); chunks are merged (and evicted) lazily by _buffer().
            parts = self.buffer_parts.setdefault(stream, [])
            parts.append(take(cols, keep))
            parts[:] = [p for p in parts if p[TS].max() >= floor]  # whole chunks past every window

    def _buffer(self, stream: str) -> Batch:
        """The window buffer of ``stream``: pending chunks merged in, events no window can see dropped."""
        parts = self.buffer_parts.pop(stream, [])
        buf = self.buffers.get(stream) or {}
        if parts or (buf and stream in self.local_max):
            merged = concat([buf, *parts]) if buf else concat(parts) if parts else buf
            keep = merged[TS] >= self.local_max.get(stream, 0) - self.buffer_window.get(stream, 0)
            buf = merged if keep.all() else take(merged, keep)
            self.buffers[stream] = buf
        return buf

    def _invalidate(self, stream: str) -> None:
        for n in [n for n in self.window_events if self.features[n].stream == stream]:
            del self.window_events[n]

    # ------------------------------------------------------------------------------------- reads
    @_locked
    def get(self, entity: str, keys: np.ndarray, names: list[str]) -> dict:
        """Online values of ``names`` for ``keys`` (all owned by this shard) as of each stream's watermark.

        The answer also carries ``"__cv__"``, the catalog version this shard knows.
        """
        self._check_known(names)
        self._await_backfills(names)
        out: dict[str, Any] = {"__cv__": self.catalog_version}
        slots_of: dict[str, np.ndarray] = {}
        for n in names:
            f = self.features[n]
            self._ensure_compiled(n)
            cf = self.compiled[n]
            slots = slots_of.get(f.stream)
            if slots is None:
                ki = self.keys.get((f.stream, entity))
                slots = ki.lookup(keys, add=False) if ki else np.full(len(keys), -1, dtype=np.int64)
                slots_of[f.stream] = slots
            if f.window is None:
                out[n] = self.tables[n].read(slots)
            else:
                t = self.watermark.get(f.stream)
                lower = (t + 1 - f.window_us) if t is not None else 0
                we = self.window_events.get(n)
                if we is None or we.cf is not cf:
                    we = self.window_events[n] = WindowEvents(cf, self._buffer(f.stream))
                out[n] = we.fold(slots, lower)
        return out

    @_locked
    def replay(self, entity: str, keys: np.ndarray, t: np.ndarray, names: list[str]) -> dict:
        """Point-in-time values of ``names`` for observations ``(keys[i], t[i])`` owned by this shard."""
        self._check_known(names)
        start = time.perf_counter()
        self._load_cache()
        by_stream: dict[str, list[str]] = {}
        for n in names:
            self._ensure_compiled(n)
            by_stream.setdefault(self.features[n].stream, []).append(n)
        out = {}
        for stream, ns in by_stream.items():
            ki = self.keys.get((stream, entity))
            slots = ki.lookup(keys, add=False) if ki else np.full(len(keys), -1, dtype=np.int64)
            index = self._event_index(stream, entity)
            vals = index.evaluate([self.compiled[n] for n in ns], slots, t)
            out.update(zip(ns, vals, strict=True))
            self.counters["replay_events"] += index.n
        self.counters["replay_observations"] += len(keys)
        self.counters["replay_seconds"] += time.perf_counter() - start
        out["__cv__"] = self.catalog_version
        return out

    def _check_known(self, names: list[str]) -> None:
        missing = [n for n in names if n not in self.features]
        if missing:  # e.g. a version another driver dropped: the caller's catalog is stale
            raise UnknownFeatureError(f"unknown feature version(s) {missing} on shard {self.shard_id} "
                                      f"(catalog version {self.catalog_version})")

    def _event_index(self, stream: str, entity: str) -> EventIndex:
        """The sorted index of ``stream``'s events for ``entity``, rebuilt only after new events arrive."""
        parts = self.cache.setdefault(stream, [])
        if len(parts) > COMPACT_PARTS:  # many small batches: one concatenation beats per-batch overhead
            parts[:] = [concat(parts)]
        index = self.indexes.get((stream, entity))
        if index is None:  # columns are concatenated (and sorted) lazily, only those a feature reads
            same = next((ix for (s, _), ix in self.indexes.items() if s == stream), None)
            index = self.indexes[(stream, entity)] = EventIndex(list(parts), entity, same_events=same)
        return index

    def _load_cache(self) -> None:
        if self.cache is None:
            self.cache = {s: [concat(parts)] if len(parts) > 1 else parts
                          for s, parts in self._read_log().items()}

    def _read_log(self) -> dict[str, list[Batch]]:
        """Every logged event, decoded, by stream (read from the files, not the cache)."""
        out: dict[str, list[Batch]] = {}
        for offset, record in self.log.read(0):
            if len(record_times(record)):
                out.setdefault(record["stream"], []).append(self._decode(record, offset))
        return out

    @_locked
    def pid(self) -> int:
        """The id of the process running this shard (for fault-injection tests)."""
        return os.getpid()

    @_locked
    def info(self) -> dict:
        return {"shard": self.shard_id, "next_offset": self.log.next_offset, "local_max": dict(self.local_max),
                "watermark": dict(self.watermark), "catalog_version": self.catalog_version,
                "log_truncated_bytes": self.log.truncated_bytes,
                "log_bytes": self.log.size_bytes(), "since_snapshot": self.since_snapshot,
                "schema": {s: dict(k) for s, k in self.schema.items()}}

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
