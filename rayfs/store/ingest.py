"""The ingest path of a driver: validate a batch, make it durable in the WAL, route its rows to shards.

A batch is normalised once on the driver (:func:`rayfs.engine.parts.normalise`; column kinds seen for the
first time are recorded by the coordinator first), written whole to this process's write-ahead log
(:mod:`rayfs.storage.wal`), then cut by entity key into one part per shard
(:func:`rayfs.engine.parts.make_parts`) and sent to **every** shard: shards owning none of its rows get an
empty part that still carries the batch's newest event time (``"wm"``), so each shard knows every stream's
newest acknowledged event time (the instant online values are served at) no matter which driver ingested
it. A batch is acknowledged when every shard has logged and folded its part. This module holds what needs
Ray and the WAL: logging, pipelining, shard calls, retries and recovery.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Iterator

import ray

from rayfs.engine import columns as C
from rayfs.engine import parts as P
from rayfs.engine.fold import TS
from rayfs.errors import RayfsError, StoreOpenError
from rayfs.model.definitions import Stream
from rayfs.storage.wal import REFUSED, WriteAheadLog, recover_orphans, set_aside
from rayfs.store.session import Session

__all__ = ["Ingestor"]


def _get_all(refs: list) -> list:
    """Every shard's answer; the first error is raised only once all are in, so that no other shard's
    error goes unretrieved (Ray would print it as an "unhandled error" later)."""
    ray.wait(list(refs), num_returns=len(refs))
    out, first = [], None
    for ref in refs:
        try:
            out.append(ray.get(ref))
        except Exception as exc:  # noqa: BLE001 - the first one is raised below
            first = first or exc
    if first is not None:
        raise first
    return out


def _at_position(exc: BaseException, k: int) -> BaseException:
    """``exc`` of batch ``k`` of a pipelined ingest, its message naming that position."""
    where = (f"batch {k} of the batches (counting from 0): batches 0..{k - 1} were ingested and acknowledged, "
             f"nothing of batch {k} or after it was written" if k else
             "batch 0 of the batches: nothing was written")
    if isinstance(exc, RayfsError) and type(exc).__init__ is Exception.__init__:
        out = type(exc)(f"{exc} ({where})")
        out.__traceback__ = exc.__traceback__
        return out
    exc.add_note(f"rayfs: {where}")
    return exc


class _Incomplete(Exception):
    """A pipelined batch not yet sent to every shard."""


class _Flight:
    """One logged record of a pipelined ingest: its parts (in Ray's object store) and the shards' acks."""

    __slots__ = ("record", "parts", "refs", "done")

    def __init__(self, record: dict) -> None:
        self.record = record
        self.parts: list = []
        self.refs: list = []
        self.done = False


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
                self._wal = WriteAheadLog(self.session.path, self.session.settings.durability)
            except OSError as exc:
                raise StoreOpenError(f"store {self.session.settings.store_id!r}: cannot write its WAL under "
                                     f"{self.session.path} ({exc}); a process that ingests needs the store's "
                                     "folder (put it on a shared filesystem in a cluster)") from None
        return self._wal

    def recover(self) -> int:
        """Re-send the batches of WALs left by dead writers (see :func:`rayfs.storage.wal.recover_orphans`)."""
        return recover_orphans(self.session.path, self.send_record,
                               skip=self._wal.dir if self._wal is not None else None)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None

    def ingest(self, stream: str, data, batch_id: str | None = None, *, content_id: str | None = None) -> dict:
        """See :meth:`rayfs.FeatureStore.ingest`.

        ``content_id``: a prefix; the batch id becomes ``f"{content_id}/{digest}"`` with ``digest`` a hash of
        the normalised batch, so that re-running the same work (a Ray Data task retried after its worker
        died) re-sends the same id and is applied once.
        """
        s = self.session.fresh(lambda cat: cat.stream(stream))
        cols, kinds = self.normalise(s, data)
        n = len(cols[TS])
        if content_id is not None:
            batch_id = f"{content_id}/{P.content_digest(cols)}"
        bid = batch_id or uuid.uuid4().hex
        self._complete_failed()
        for record, part in self._records(s, cols, bid):
            try:
                self.send_record(record, part)
            except BaseException as exc:
                self._finish(record, False, exc)
                if not isinstance(exc, REFUSED):  # kept in the WAL (see _finish): say so, and how to retry
                    exc.add_note(f"rayfs: batch {bid!r} is in this process's write-ahead log and WILL be applied, "
                                 "once, by its next ingest or when the store is next opened; to retry it yourself "
                                 f"pass batch_id={bid!r} (without it its events would count twice)")
                raise
            self._finish(record, True)
        return {"rows": n, "batch_id": bid}

    def ingest_many(self, stream: str, batches: Iterable, batch_id: str | None = None) -> dict:
        """Ingest an iterable of batches, pipelined: batch k+1 is normalised, logged and routed on this driver
        while the shards fold batch k (see :meth:`rayfs.FeatureStore.ingest`).

        Each shard receives the batches in order (a shard's part of batch k+1 is sent once that shard acked
        batch k), so ingest order, and with it every tie-break, is that of one ``ingest`` call per batch.
        At most two batches are in flight. Batch k's id is ``f"{batch_id}/{k}"`` if ``batch_id`` is given.
        """
        s = self.session.fresh(lambda cat: cat.stream(stream))
        self._complete_failed()
        rows = k = 0
        prev: _Flight | None = None  # sent to (some) shards, not yet acknowledged by all
        flight: _Flight | None = None
        it = iter(batches)
        try:
            while True:
                try:
                    data = next(it)
                except StopIteration:
                    break
                except Exception as exc:
                    self._drain(prev)
                    prev = None
                    exc.add_note(f"rayfs: raised by the batches iterable at position {k} (counting from 0); "
                                 + (f"batches 0..{k - 1} were ingested and acknowledged" if k else
                                    "nothing was written"))
                    raise
                try:
                    cols, _ = self.normalise(s, data)
                except Exception as exc:
                    self._drain(prev)
                    prev = None
                    raise _at_position(exc, k) from None
                bid = f"{batch_id}/{k}" if batch_id else uuid.uuid4().hex
                for record, part in self._records(s, cols, bid):
                    flight = _Flight(record)
                    try:
                        flight.parts = [ray.put(p) for p in self._parts(record, part)]
                    except BaseException as exc:
                        self._finish_flight(flight, False)  # done: the finally below must not finish it again
                        if isinstance(exc, Exception):  # (an interrupt leaves prev to the WAL, see finally)
                            self._drain(prev)  # batch k - 1 is acknowledged before the error is raised
                            prev = None
                            exc.add_note(f"rayfs: raised handing batch {k} of the batches (counting from 0) to "
                                         f"Ray: batches before it were acknowledged; batch {k} stays in this "
                                         "driver's write-ahead log, completed by the next ingest, a reopen, or "
                                         "a retry with the same batch ids")
                        raise
                    try:
                        self._handoff(prev, flight)
                    except Exception as exc:
                        exc.add_note(f"rayfs: raised while batches {max(k - 1, 0)}..{k} of the batches (counting "
                                     "from 0) were in flight: the batches before were acknowledged; the failed "
                                     "batch and any sent after it stay in this driver's write-ahead log, completed "
                                     "by the next ingest, a reopen, or a retry with the same batch ids")
                        raise
                    prev = None if flight.done else flight
                rows += len(cols[TS])
                k += 1
            self._drain(prev)
            prev = None
        finally:  # interrupted (e.g. KeyboardInterrupt): the WAL keeps what is in flight for the next ingest
            for f in {id(f): f for f in (prev, flight) if f is not None and not f.done}.values():
                self._finish_flight(f, False)
        return {"rows": rows, "batches": k}

    def _records(self, s: Stream, cols: C.Batch, bid: str) -> Iterator[tuple[P.Record, C.Batch]]:
        """The WAL records of one normalised batch (one, or chunks of MAX_BATCH_ROWS, see
        :func:`rayfs.engine.parts.split`), each logged (and counted in flight) just before it is yielded;
        the caller must :meth:`_finish` each."""
        for chunk_id, part in P.split(cols, bid):
            record: P.Record = {"stream": s.name, "batch_id": chunk_id, "cols": C.encode_batch(part)}
            with self._lock:
                self.wal.append(record)
                self._inflight += 1
            yield record, part

    def _finish(self, record: dict, ok: bool, exc: BaseException | None = None) -> None:
        """The end of one logged record's journey: acknowledged (``ok``), or failed with ``exc``."""
        key = (record["stream"], record["batch_id"])
        if not ok and isinstance(exc, REFUSED):
            # Refused by a shard as bad input (e.g. this driver's catalog was stale): re-sending cannot
            # succeed, and would block every later ingest of this process. Keep it aside, whole. (Other
            # errors, a stopped store or an unreachable shard, keep it in the WAL to be completed later.)
            set_aside(self.session.path, record, exc, "by a shard")
            ok = True
        with self._lock:
            self._inflight -= 1
            if ok:
                self.wal.acked(key)
            else:  # keep the WAL: the next ingest, a reopen, or a retry with this batch_id completes it
                self.wal.failed(key, record)
            if not self._inflight:
                self.wal.maybe_reset()

    def _finish_flight(self, f: _Flight, ok: bool, exc: BaseException | None = None) -> None:
        f.done = True
        f.parts = f.refs = []
        self._finish(f.record, ok, exc)

    def _handoff(self, prev: _Flight | None, nxt: _Flight) -> None:
        """Send ``nxt`` to each shard as soon as that shard acknowledged ``prev``; then ``prev`` is done.

        On any failure of ``prev`` everything in flight is awaited and both are completed the way
        :meth:`send_record` would (revive lost shards, re-send; batch ids make re-sends no-ops where applied).
        """
        handles = self.session.handles
        nxt.refs = [None] * len(handles)
        if prev is None:
            nxt.refs = [h.ingest.remote(p) for h, p in zip(handles, nxt.parts, strict=True)]
            return
        pending = {ref: j for j, ref in enumerate(prev.refs)}
        acks = []
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    j = pending.pop(ref)
                    acks.append(ray.get(ref))
                    nxt.refs[j] = handles[j].ingest.remote(nxt.parts[j])
        except Exception:  # noqa: BLE001 - completed (or raised) by _recover
            self._recover([prev, nxt])
            return
        self._finish_flight(prev, True)
        self._seen(acks)

    def _drain(self, flight: _Flight | None) -> None:
        """Wait until ``flight`` is acknowledged by every shard (completing it as :meth:`_handoff` does)."""
        if flight is None or flight.done:
            return
        try:
            acks = _get_all(flight.refs)
        except Exception:  # noqa: BLE001 - completed (or raised) by _recover
            self._recover([flight])
            return
        self._finish_flight(flight, True)
        self._seen(acks)

    def _recover(self, flights: list[_Flight]) -> None:
        """Complete ``flights`` (in order) after a failure: wait for whatever was sent, then re-send each
        batch not acknowledged by every shard with :meth:`send_record` (which revives lost shards). The first
        error that persists marks that batch and the later ones failed (kept in the WAL) and is raised."""
        sent = [r for f in flights for r in f.refs if r is not None]
        if sent:
            ray.wait(sent, num_returns=len(sent))
        error: BaseException | None = None
        for f in flights:
            if f.done:
                continue
            own: BaseException | None = None  # this flight's own error (later ones only wait behind it)
            if error is None:
                try:
                    if any(r is None for r in f.refs):
                        raise _Incomplete
                    self._seen(_get_all(f.refs))
                except Exception:  # noqa: BLE001 - re-sent below; a persisting error is raised
                    try:
                        self.send_record(f.record)
                    except Exception as exc:  # noqa: BLE001 - raised below, after the later flights
                        error = own = exc
            self._finish_flight(f, error is None, own)
        if error is not None:
            raise error

    def _complete_failed(self) -> None:
        """Re-send batches of this WAL that failed to reach every shard before logging a new one, so the
        WAL can be reset again (it must never outgrow what shards remember of batch ids)."""
        with self._lock:
            failed = dict(self._wal.unacked) if self._wal is not None else {}
        for key, record in failed.items():
            if record is None:
                continue
            try:
                self.send_record(record)  # raises while shards are unreachable: nothing new is logged meanwhile
            except REFUSED as exc:  # refused as bad input: kept aside (see _finish), never re-sent again
                set_aside(self.session.path, record, exc, "by a shard on re-send")
            with self._lock:
                self.wal.acked(key)

    def normalise(self, s: Stream, data) -> tuple[C.Batch, dict[str, str | None]]:
        """Validate a batch against the stream and the catalog (:func:`rayfs.engine.parts.normalise`); the
        columns and their kinds.

        Kinds seen for the first time are recorded by the coordinator (which refuses one that conflicts
        with what another driver recorded meanwhile) before anything is written.
        """
        cols, kinds, changed = P.normalise(s, self.session.catalog, data)
        if changed:
            self.session.refresh(ray.get(self.session.coordinator.update_schema.remote(s.name, changed)))
        return cols, kinds

    def send_record(self, record: dict, cols: C.Batch | None = None) -> None:
        """Route the rows of one logged batch to the shards of their entity keys and wait for the acks."""
        parts = self._parts(record, cols)
        self._seen(self.session.call(
            lambda handles: _get_all([h.ingest.remote(p) for h, p in zip(handles, parts, strict=True)])))

    def _seen(self, acks: list[dict]) -> None:
        """Refresh the cached catalog if a shard's ack names a newer version than this driver knows."""
        self.session.seen(max(a.get("cv", 0) for a in acks))

    def _parts(self, record: P.Record, cols: C.Batch | None = None) -> list[P.Part]:
        """One part of a logged batch per shard (:func:`rayfs.engine.parts.make_parts`), carrying the catalog
        version this driver knows (e.g. after recording new column kinds), so that other drivers learn from
        the shards' answers that their copy is stale."""
        catalog = self.session.catalog
        return P.make_parts(record, catalog.stream(record["stream"]).entities, self.session.settings.shards,
                            catalog.version, cols)
