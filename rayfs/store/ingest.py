"""The ingest path of a driver: validate a batch, make it durable in the WAL, route its rows to shards.

A batch is normalised once on the driver (:mod:`rayfs.columns`), written whole to this process's
write-ahead log (:mod:`rayfs.wal`), then cut by entity key and sent to **every** shard: shards owning
none of its rows get an empty part that still carries the batch's newest event time (``"wm"``), so each
shard knows every stream's newest acknowledged event time (the instant online values are served at) no
matter which driver ingested it. A batch is acknowledged when every shard has logged and folded its part.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import ray

from rayfs import columns as C
from rayfs.definitions import Stream
from rayfs.errors import SchemaError, StoreOpenError
from rayfs.fold import MAX_BATCH_ROWS, TS
from rayfs.routing import shard_of
from rayfs.store.session import Session
from rayfs.wal import WriteAheadLog, recover_orphans


def _owners(wire: dict, keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key; dictionary-encoded keys are hashed once per distinct key."""
    if wire["k"] not in ("s", "k"):
        return shard_of(keys, n_shards)
    uniques = np.empty(len(wire["u"]) + 1, dtype=object)
    uniques[:-1] = wire["u"]
    per_unique = shard_of(uniques, n_shards)  # the trailing None (code -1) maps to -1
    return per_unique[np.frombuffer(wire["c"], dtype=np.int32)]


class Ingestor:
    """Ingests batches into a store for one process (which owns one WAL, created on first use)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._wal: WriteAheadLog | None = None
        self._lock = threading.Lock()  # WAL appends and resets (a driver may ingest from several threads)
        self._inflight = 0  # batches in the WAL not yet acknowledged or failed

    @property
    def wal(self) -> WriteAheadLog:
        if self._wal is None:
            try:
                self._wal = WriteAheadLog(self.session.path, self.session.settings["durability"])
            except OSError as exc:
                raise StoreOpenError(f"store {self.session.settings['store_id']!r}: cannot write its WAL under "
                                     f"{self.session.path} ({exc}); a process that ingests needs the store's "
                                     "folder (put it on a shared filesystem in a cluster)") from None
        return self._wal

    def recover(self) -> int:
        """Re-send the batches of WALs left by dead writers (see :func:`rayfs.wal.recover_orphans`)."""
        return recover_orphans(self.session.path, self.send_record,
                               skip=self._wal.dir if self._wal is not None else None)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def ingest(self, stream: str, data, batch_id: str | None = None) -> dict:
        """See :meth:`rayfs.FeatureStore.ingest`."""
        s = self.session.fresh(lambda cat: cat.stream(stream))
        cols, kinds = self.normalise(s, data)
        n = len(cols[TS])
        bid = batch_id or uuid.uuid4().hex
        self._complete_failed()
        chunks = range(0, n, MAX_BATCH_ROWS)
        for i, lo in enumerate(chunks):
            part = C.take(cols, slice(lo, lo + MAX_BATCH_ROWS)) if len(chunks) > 1 else cols
            record = {"stream": s.name, "batch_id": bid if len(chunks) == 1 else f"{bid}#{i}",
                      "cols": C.encode_batch(part)}
            key = (s.name, record["batch_id"])
            with self._lock:
                self.wal.append(record)
                self._inflight += 1
            ok = False
            try:
                self.send_record(record, part)
                ok = True
            finally:
                with self._lock:
                    self._inflight -= 1
                    if ok:
                        self.wal.acked(key)
                    else:  # keep the WAL: the next ingest, a reopen, or a retry with this batch_id completes it
                        self.wal.failed(key, record)
                    if not self._inflight:
                        self.wal.maybe_reset()
        return {"rows": n, "batch_id": bid}

    def _complete_failed(self) -> None:
        """Re-send batches of this WAL that failed to reach every shard before logging a new one, so the
        WAL can be reset again (it must never outgrow what shards remember of batch ids)."""
        with self._lock:
            failed = dict(self._wal.unacked) if self._wal is not None else {}
        for key, record in failed.items():
            if record is None:
                continue
            self.send_record(record)  # raises while shards are unreachable: nothing new is logged meanwhile
            with self._lock:
                self.wal.acked(key)


    def normalise(self, s: Stream, data) -> tuple[C.Batch, dict[str, str | None]]:
        """Validate a batch against the stream and the catalog; the columns and their kinds.

        Kinds seen for the first time are recorded by the coordinator (which refuses one that conflicts
        with what another driver recorded meanwhile) before anything is written.
        """
        cat = self.session.catalog
        what = f"stream {s.name!r}"
        df = C.to_frame(data, what=what)
        if len(df) == 0:
            raise SchemaError(f"{what}: empty batch")
        if df.columns.duplicated().any():
            raise SchemaError(f"{what}: duplicate column names {list(df.columns[df.columns.duplicated()])}")
        for c in (s.timestamp, *s.entities):
            if c not in df.columns:
                raise SchemaError(f"{what}: batch lacks column {c!r}")
        for c, fname in cat.required_columns(s.name).items():
            if c not in df.columns:
                raise SchemaError(f"{what}: batch lacks column {c!r} used by feature {fname!r}")
        cols: C.Batch = {TS: C.timestamps(df[s.timestamp], what=f"{what} column {s.timestamp!r}")}
        kinds: dict[str, str | None] = {}
        schema = cat.schema.get(s.name, {})
        for c in df.columns:
            if c == s.timestamp:
                continue
            if not isinstance(c, str) or c.startswith("__"):
                raise SchemaError(f"{what}: bad column name {c!r}")
            where = f"{what} column {c!r}"
            if c in s.entities:
                # Keys may mix ints and strings across batches ("mixed"), unless a feature reads the
                # column as a typed value (check_types below refuses "mixed" for those).
                col = C.key_column(df[c], what=where)
                kind = C.key_kind(col)
                old = schema.get(c)
                if kind is not None and old is not None and old != kind:
                    kind = "mixed"
                cols[c] = col
            else:
                col = C.value_column(df[c], what=where)
                kind = C.kind_of(col)
                if kind is not None and schema.get(c, kind) != kind:
                    raise SchemaError(f"{where}: holds {kind} values but earlier batches held {schema[c]} values")
                cols[c] = C.conform(col, schema.get(c, kind))
            kinds[c] = kind
        changed = {c: k for c, k in kinds.items() if k is not None and schema.get(c) != k}
        if changed:  # first sight of a column's type: it must suit every feature that reads it
            merged = {**schema, **changed}
            for f in cat.features.values():
                if f.stream == s.name:
                    cat.check_types(f, merged, error=SchemaError)
            self.session.refresh(ray.get(self.session.coordinator.update_schema.remote(s.name, changed)))
        return cols, kinds

    def send_record(self, record: dict, cols: C.Batch | None = None) -> None:
        """Route the rows of one logged batch to the shards of their entity keys and wait for the acks."""
        s = self.session.catalog.stream(record["stream"])
        cols = C.decode_batch(record["cols"]) if cols is None else cols
        n = len(cols[TS])
        n_shards = self.session.settings["shards"]
        owners = [_owners(record["cols"][e], cols[e], n_shards) for e in s.entities]
        routed = np.zeros((n_shards, n), dtype=bool)
        for o in owners:
            ok = o >= 0
            routed[o[ok], np.flatnonzero(ok)] = True
        routed[0] |= ~routed.any(axis=0)  # rows with only null keys are still logged (on shard 0)
        wm = int(cols[TS].max())
        # Rows are cut from the encoded batch: strings keep the batch's dictionary, no re-encoding.
        # "cv": the catalog version this driver knows (e.g. after recording new column kinds), so that
        # other drivers learn from the shards' answers that their copy is stale.
        parts = [{"stream": s.name, "batch_id": record["batch_id"], "wm": wm, "cv": self.session.catalog.version,
                  "cols": record["cols"] if mask.all() else C.take_wire(record["cols"], mask)} for mask in routed]
        acks = self.session.call(
            lambda handles: ray.get([h.ingest.remote(p) for h, p in zip(handles, parts, strict=True)]))
        self.session.seen(max(a.get("cv", 0) for a in acks))
