"""The consumer actors of Kafka subscriptions: read partitions, fold micro-batches in, exactly once.

One subscription has ``consumers`` actors (``rayfs:<store id>:kafka:<stream>:<i>``, no CPU, restarted
without limit, detached when the store is named); consumer ``i`` reads the partitions ``p`` with
``p % consumers == i``, using ``assign()`` (no consumer-group rebalancing: the store, not the group, knows
which offsets were applied). Each runs one loop on a thread of its own:

1. poll messages until the micro-batch holds ``max_batch_rows`` or ``max_delay`` passed since its first one;
2. decode the batch as a whole (:mod:`rayfs.sources.decode`); messages that are no events are dead letters;
3. log its *intent* durably (:class:`~rayfs.sources.offsets.OffsetsLog`): batch id, offsets, dead letters;
4. hand it to the store's :class:`~rayfs.store.ingest.Ingestor` (the path of ``ingest(stream, iterable)``:
   the driver-side WAL, routing to every shard, at most two batches in flight);
5. once every shard acknowledged it, log its *commit*.

On start (a new subscription, a reopened store, an actor restarted after its process died) every intent
without a commit is re-read from Kafka for exactly its offsets and re-sent under its batch id (shards apply
a batch id once), then reading resumes at the end of the last intent. Rows of a batch are in (partition,
offset) order, so a re-read batch is the batch that was sent.

A subscription of an *observation stream* (labels for training sets) runs the same loop, except that step 4
appends the batch to the consumer's own observation log (:mod:`rayfs.storage.observations`), one fsynced
record tagged with the batch id: a batch whose id is in that log already is not appended again, so an
intent without a commit is completed exactly once here too. Its messages must carry the subscription's
key columns and timestamp. A column holds one kind of value (number or string) for good, as with
:meth:`~rayfs.FeatureStore.append_observation`: the kind the stream's records hold, else (the first batch
that gives the column values) the kind most of its values have; values of the other kind are dead letters.

While the store cannot take a batch (a shard restarting, the store's folder unwritable), the consumer
retries it under the same id with a growing delay; its state reads ``retrying``, with the reason in
``error``, from the first failure or once the batch waited :data:`STALL` seconds for an acknowledgement.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import ray

from rayfs.errors import RayfsError, SchemaError, SourceError, StoreClosedError
from rayfs.model.config import StoreSettings
from rayfs.model.definitions import Stream
from rayfs.model.kafka import KafkaSource
from rayfs.sources.decode import Decoded, decode, locate_bad, parse
from rayfs.sources.fetch import CatchUp, usable
from rayfs.sources.messages import Messages
from rayfs.sources.offsets import OffsetsLog, consumer_dir
from rayfs.storage.locks import wait_lock
from rayfs.storage.observations import ObservationStreams
from rayfs.storage.wal import WriteAheadLog

__all__ = ["KafkaConsumerActor", "KafkaConsumerCore", "actor_name", "my_partitions"]

IDLE = 0.02  # seconds without a message after which an idle loop finishes the batches in flight
POLL = 0.002  # seconds per poll while a batch has no message yet
PROBE = 2.0  # seconds to wait for one message when checking that a stored offset still exists
# librdkafka fetching for throughput (a user's consumer_config overrides these). The prefetch queue must
# not stall a partition: by default librdkafka stops fetching a partition once 100k messages of it wait in
# its queue and then waits fetch.queue.backoff.ms (1 s) before fetching it again, which caps a catch-up at
# about 200k messages/s per consumer; with the queue bounded by bytes only and no backoff a consumer read
# 300k-650k messages/s from the test broker here.
FETCH_CONFIG = {"fetch.wait.max.ms": 10, "queued.max.messages.kbytes": 262144, "queued.min.messages": 10_000_000,
                "fetch.queue.backoff.ms": 0, "fetch.max.bytes": 64 << 20, "max.partition.fetch.bytes": 16 << 20}
STALL = 5.0  # seconds a batch may wait for the store's acknowledgement before the state says "retrying"


def actor_name(store_id: str, stream: str, i: int) -> str:
    return f"rayfs:{store_id}:kafka:{stream}:{i}"


def my_partitions(partitions: int, consumers: int, i: int) -> list[int]:
    return [p for p in range(partitions) if p % consumers == i]


class _Metrics:
    """The consumer's figures through ``ray.util.metrics`` (exported by Ray's Prometheus endpoint)."""

    def __init__(self, stream: str, topic: str) -> None:
        from ray.util import metrics

        self.tags = {"stream": stream, "topic": topic}
        keys = ("stream", "topic")
        self.lag = metrics.Gauge("rayfs_kafka_lag", "messages behind the high watermark, per partition",
                                 tag_keys=(*keys, "partition"))
        self.rate = metrics.Gauge("rayfs_kafka_messages_per_second", "messages folded per second (last batch)",
                                  tag_keys=keys)
        self.messages = metrics.Counter("rayfs_kafka_messages", "messages consumed and acknowledged",
                                        tag_keys=keys)
        self.dead = metrics.Counter("rayfs_kafka_dead_letters", "messages that were not events", tag_keys=keys)
        self.fresh = metrics.Histogram(
            "rayfs_kafka_freshness_seconds", "fold time minus the Kafka message timestamp",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], tag_keys=keys)


class _Unreachable(SourceError):
    """The brokers did not answer (retried: they may come back)."""


class _Batch:
    """A micro-batch on its way: its id, offsets, decoded rows, and the Kafka timestamps (milliseconds) of
    a sample of its good messages (for the freshness histogram)."""

    __slots__ = ("id", "ranges", "decoded", "ts_ms", "n")

    def __init__(self, bid: str, ranges: list[tuple[int, int, int]], decoded: Decoded, ts_ms: np.ndarray,
                 n: int) -> None:
        self.id, self.ranges, self.decoded, self.ts_ms, self.n = bid, ranges, decoded, ts_ms, n


class KafkaConsumerCore:
    """One consumer of one subscription (wrapped as a Ray actor by :data:`KafkaConsumerActor`).

    Args:
        settings: the store's settings (the consumer connects to the store like a Ray Data worker).
        stream: the subscribed stream.
        index: this consumer's number, ``0 <= index < source.consumers``.
        sub: the subscription record (``source``, ``start`` offsets, ``partitions``, and for an observation
            stream ``observations``: its ``keys`` and ``timestamp`` columns).
    """

    def __init__(self, settings: StoreSettings, stream: str, index: int, sub: dict) -> None:
        from rayfs.store.ingest import Ingestor
        from rayfs.store.session import _reconnect

        self.stream, self.index = stream, index
        self.src = KafkaSource.from_dict(sub["source"])
        self.parts = my_partitions(sub["partitions"], self.src.consumers, index)
        start = {int(p): int(o) for p, o in sub["start"].items() if int(p) in self.parts}
        self.dir = consumer_dir(settings.path, stream, index)
        os.makedirs(self.dir, exist_ok=True)
        self._lock_fh = wait_lock(os.path.join(self.dir, "LOCK"), 30.0)
        if self._lock_fh is None:
            raise SourceError(f"stream {stream!r}: consumer {index} of topic {self.src.topic!r} runs elsewhere "
                              f"(its folder {self.dir} is locked)")
        self.offsets = OffsetsLog(self.dir, start)
        self.session = _reconnect(settings)
        obs = sub.get("observations")
        # An observation stream: what a message must carry, as a Stream (the decoder's checks take one).
        self.obs_spec = Stream(name=stream, entities=tuple(obs["keys"]), timestamp=obs["timestamp"]) if obs else None
        # Appends are fsynced whatever the store's durability: a record is the proof that its batch was applied.
        self.obs = ObservationStreams(settings.path, "sync", writer=f"kafka-{index}") if obs else None
        self.ingestor = Ingestor(self.session)
        # This process's write-ahead log need not be fsynced: a batch is durable in Kafka and its intent
        # (offsets, batch id) is fsynced before it is sent, so a batch a power failure takes from the WAL is
        # re-read and re-sent. (It survives this process's crash in the OS's buffers.)
        self.ingestor._wal = WriteAheadLog(settings.path, "none")
        self.state = "starting"
        self.error: str | None = None
        self.hw: dict[int, int] = {}
        self.metrics = _Metrics(stream, self.src.topic)
        self._stop = threading.Event()
        self._mu = threading.Lock()  # the offsets log and the state, between the loop and status calls
        self._consumer = None
        self._catchup: CatchUp | None = None
        self._last_commit = time.time()
        # Seconds spent per stage of the loop (what a catch-up's time goes to): polling Kafka, reading the
        # messages' fields, decoding, logging intents, and the whole loop (the rest is the store's ingest);
        # the messages read, and how many of them a catch-up read (rayfs.sources.fetch).
        self._timings = dict.fromkeys(("poll", "fields", "decode", "intent", "loop"), 0.0)
        self._timings["messages"] = self._timings["catch_up_messages"] = 0
        self._thread = threading.Thread(target=self._run, name=f"kafka-{stream}-{index}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ the calls
    def pid(self) -> int:
        return os.getpid()

    def status(self) -> list[dict]:
        """One row per partition: offsets, counts, state (see :func:`rayfs.store.subscriptions.subscriptions`)."""
        with self._mu:
            off = self.offsets
            state, error = self.state, self.error
            if state == "running" and off.pending:
                # A batch handed to the store waits for a shard's acknowledgement (a shard restarting waits
                # for its process, the call is retried by Ray): say so once that lasts.
                rec = next(iter(off.pending.values()))
                waited = time.time() - max(rec.get("at", 0.0), self._last_commit)
                if waited > STALL:
                    state = "retrying"
                    error = (f"batch {rec['id']} not acknowledged by the store for {waited:.0f}s (a shard down "
                             "or restarting?); retrying it under its batch id")
            return [{"stream": self.stream, "topic": self.src.topic, "partition": p, "consumer": self.index,
                     "next_offset": off.acked(p), "read_offset": off.next[p], "high_watermark": self.hw.get(p),
                     "events": off.events.get(p, 0), "dead_letters": off.dead_count.get(p, 0),
                     "state": state, "pid": os.getpid(), "error": error,
                     "resets": [r for r in off.resets if r["p"] == p]} for p in self.parts]

    def timings(self) -> dict:
        """Seconds spent per stage of the loop so far, and the messages read (see ``__init__``)."""
        with self._mu:
            return dict(self._timings)

    def dead_letters(self) -> list[dict]:
        with self._mu:
            return list(self.offsets.dead)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batches in flight, record them, and stop reading."""
        self._stop.set()
        self._thread.join(timeout)
        with self._mu:
            if self.state not in ("failed",):
                self.state = "stopped"
            self.offsets.close()
        self.ingestor.close()
        if self.obs is not None:
            self.obs.close()
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

    # ------------------------------------------------------------------------------------ the loop
    def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                self._start_and_consume()
                return
            except _Unreachable as exc:  # the brokers may come back: retry, with the reason shown meanwhile
                with self._mu:
                    self.state, self.error = "retrying", str(exc)
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
            except StoreClosedError as exc:
                with self._mu:
                    self.state, self.error = "stopped", str(exc)
                return
            except Exception as exc:  # noqa: BLE001 - shown by subscriptions() and wait_caught_up
                with self._mu:
                    self.state = "failed"
                    self.error = f"{type(exc).__name__}: {exc}"
                return
            finally:
                if self._catchup is not None:
                    self._catchup.close()
                    self._catchup = None
                if self._consumer is not None:
                    self._consumer.close()
                    self._consumer = None

    def _start_and_consume(self) -> None:
        if self.obs is None:
            self.ingestor.recover()  # batches a dead consumer (or driver) left in its write-ahead log
        self._consumer = self._client()
        self._check_offsets(self.parts)
        with self._mu:
            pending = list(self.offsets.pending.values())
        for rec in pending:
            known = {(d["partition"], d["offset"]) for d in rec.get("d", ())}
            self._complete(rec["id"], [tuple(r) for r in rec["r"]], None, known)
        self._catchup = self._open_catch_up()
        if self._catchup is None:
            self._assign()
        with self._mu:
            self.state, self.error = "running", None
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self._pump()
            self._timings["loop"] += time.perf_counter() - t0

    def _client(self):
        from confluent_kafka import Consumer

        return Consumer({**FETCH_CONFIG, **self.src.client_config()})

    def _assign(self) -> None:
        from confluent_kafka import TopicPartition

        with self._mu:
            tps = [TopicPartition(self.src.topic, p, self.offsets.next[p]) for p in self.parts]
        self._consumer.assign(tps)

    def _open_catch_up(self) -> CatchUp | None:
        """A catch-up read up to the current high watermarks when this consumer is at least
        ``source.catch_up`` messages behind them (see :mod:`rayfs.sources.fetch`), else ``None``."""
        src = self.src
        with self._mu:
            start = {p: self.offsets.next[p] for p in self.parts}
        bound = {p: self.hw.get(p, 0) for p in self.parts}  # (read by _check_offsets just now)
        behind = sum(max(0, bound[p] - start[p]) for p in self.parts)
        if not src.catch_up or behind < src.catch_up or not usable(src.client_config()):
            return None
        try:
            md = self._consumer.list_topics(src.topic, timeout=10)
            leaders = {}
            for p in self.parts:
                b = md.brokers[md.topics[src.topic].partitions[p].leader]
                leaders[p] = (b.host, b.port)
        except Exception:  # noqa: BLE001 - no leader known: librdkafka reads everything
            return None
        fmt = src.format
        return CatchUp(src.topic, leaders, start, bound, batch_rows=src.max_batch_rows,
                       prepare=lambda m: parse(m.values, fmt))

    def _end_catch_up(self) -> None:
        """Hand the partitions to librdkafka at the offsets where the catch-up stopped."""
        from confluent_kafka import TopicPartition

        pos = self._catchup.positions()
        self._catchup.close()
        self._catchup = None
        self._consumer.assign([TopicPartition(self.src.topic, p, pos[p]) for p in self.parts])

    def _watermarks(self, p: int) -> tuple[int, int]:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            return self._consumer.get_watermark_offsets(TopicPartition(self.src.topic, p), timeout=10)
        except KafkaException as exc:
            raise _Unreachable(f"topic {self.src.topic!r} partition {p}: cannot read its offsets from "
                               f"{self.src.bootstrap_servers} ({exc})") from None

    def _exists(self, p: int, offset: int) -> bool:
        """Whether message ``offset`` of partition ``p`` can be read (a broker may under-report its
        high watermark, so an offset past it is probed before it is declared gone)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer(self.src.client_config())
        try:
            c.assign([TopicPartition(self.src.topic, p, offset)])
            deadline = time.monotonic() + PROBE
            while time.monotonic() < deadline:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    return m.offset() <= offset
            return False
        finally:
            c.close()

    def _check_offsets(self, parts: list[int]) -> None:
        """Stop (or jump, per ``on_offset_reset``) where the next offset to read is gone from Kafka."""
        for p in parts:
            with self._mu:
                nxt = self.offsets.next[p]
                firsts = [first for rec in self.offsets.pending.values() for q, first, _ in rec["r"] if q == p]
            need = min([nxt, *firsts])
            low, high = self._watermarks(p)
            self.hw[p] = high
            gone = need < low or (nxt > high and not self._exists(p, nxt - 1))
            if not gone:
                continue
            why = (f"topic {self.src.topic!r} partition {p}: offsets from {need} on are gone (the partition "
                   f"holds [{low}, {high}): retention passed them, or the topic was recreated)")
            if self.src.on_offset_reset is None or firsts:
                raise SourceError(f"{why}; nothing was skipped. Set on_offset_reset='earliest' or 'latest' on "
                                  "the KafkaSource to skip ahead" + (
                                      " (and the batch in flight from those offsets cannot be re-read)"
                                      if firsts else ""))
            to = low if self.src.on_offset_reset == "earliest" else high
            with self._mu:
                self.offsets.reset(p, nxt, to, why)

    def _pump(self) -> None:
        """Consume until idle: one pipelined ingest over the micro-batches, each committed once acked."""
        prefix = f"kafka/{self.src.topic}/{self.index}/{uuid.uuid4().hex[:16]}"
        sent: list[_Batch] = []  # yielded to the ingestor, not yet committed
        first = self._next_batch(prefix, 0)
        if first is None:
            return
        if self.obs is not None:  # one fsynced append per batch: nothing to pipeline
            b: _Batch | None = first
            k = 0
            while b is not None:
                self._complete(b.id, b.ranges, b)
                k += 1
                b = None if self._stop.is_set() else self._next_batch(prefix, k)
            return

        def batches() -> Iterator[pd.DataFrame]:
            # The ingestor names the k-th batch it is handed f"{prefix}/{k}": k counts what is yielded, and
            # each batch's intent records that very id (see _intent).
            b: _Batch | None = first
            k = 0
            while b is not None:
                if b.decoded.frame.empty:  # only dead letters: nothing for the shards
                    self._commit(b)
                else:
                    sent.append(b)
                    yield b.decoded.frame
                    k += 1
                    # Asked for the next batch: the ingestor has every batch but the last one acknowledged.
                    while len(sent) > 1:
                        self._commit(sent.pop(0))
                b = None if self._stop.is_set() else self._next_batch(prefix, k)

        try:
            self.ingestor.ingest_many(self.stream, batches(), batch_id=prefix)
            acked = True
        except StoreClosedError:
            raise
        except Exception:  # noqa: BLE001 - completed one by one below (ids make re-sends no-ops)
            acked = False
        for b in sent:
            if acked:
                self._commit(b)
            else:
                self._complete(b.id, b.ranges, b)

    def _next_batch(self, prefix: str, k: int) -> _Batch | None:
        """Poll the next micro-batch, decode it and log its intent; ``None`` when idle or stopping."""
        src = self.src
        while self._catchup is not None and not self._stop.is_set():
            t0 = time.perf_counter()
            got = self._catchup.poll()
            self._timings["poll"] += time.perf_counter() - t0
            for p, high in self._catchup.high().items():
                self.hw[p] = max(self.hw.get(p, 0), high)
            if got is None:
                self._end_catch_up()
                break
            chunk, parsed = got
            self._timings["catch_up_messages"] += len(chunk)
            b = self._intent(prefix, k, chunk, parsed)
            if b is not None:
                return b
        got: list = []
        deadline = None
        idle_until = time.monotonic() + IDLE
        while len(got) < src.max_batch_rows and not self._stop.is_set():
            now = time.monotonic()
            wait = (deadline if deadline is not None else idle_until) - now
            if wait <= 0:
                break
            # consume() blocks for its whole timeout unless the count is reached: short waits until the
            # first message, so that the batch's window starts when it arrives.
            t0 = time.perf_counter()
            msgs = self._consumer.consume(min(src.max_batch_rows - len(got), 100_000),
                                          wait if got else min(wait, POLL))
            self._timings["poll"] += time.perf_counter() - t0
            for m in msgs:
                err = m.error()
                if err is None:
                    got.append(m)
                elif err.fatal() or err.code() in _GONE:
                    self._check_offsets([m.partition()] if m.partition() is not None and m.partition() >= 0
                                        else self.parts)
                    self._assign()
            if got and deadline is None:
                deadline = time.monotonic() + src.max_delay
        if not got:
            return None
        t0 = time.perf_counter()
        msgs = Messages.of(src.topic, got)
        self._timings["fields"] += time.perf_counter() - t0
        return self._intent(prefix, k, msgs)

    def _intent(self, prefix: str, k: int, msgs: Messages, parsed: tuple | None = None) -> _Batch | None:
        """Decode a micro-batch and log its intent. Its id is ``f"{prefix}/{k}"``, the id the ingestor
        gives the ``k``-th batch it is handed, unless nothing of it goes to the shards (only dead letters).
        ``parsed``: the values parsed already (:func:`~rayfs.sources.decode.parse`), if they were."""
        n = len(msgs)
        parts, offs = msgs.parts, msgs.offs
        self._timings["messages"] += n
        with self._mu:
            nxt = dict(self.offsets.next)
        floor = np.zeros(max(nxt) + 1 if nxt else 1, dtype=np.int64)
        floor[list(nxt)] = list(nxt.values())
        keep = offs >= floor[np.minimum(parts, len(floor) - 1)]  # (never fold an offset twice)
        order = np.flatnonzero(keep)
        order = order[np.argsort(parts[order], kind="stable")]  # by partition; offsets ascend within one
        if not len(order):
            return None
        if len(order) != n or (np.diff(parts) < 0).any():
            msgs = msgs.take(order)
            parts, offs = msgs.parts, msgs.offs
            parsed = None  # (of other messages)
        ends = np.flatnonzero(np.diff(parts)).tolist() + [len(parts) - 1]
        ranges = [(int(parts[e]), nxt[int(parts[e])], int(offs[e]) + 1) for e in ends]
        t0 = time.perf_counter()
        decoded, ts_ms = self._decode(msgs, parsed)
        t1 = time.perf_counter()
        self._timings["decode"] += t1 - t0
        bid = f"{prefix}/{k}" if len(decoded.frame) else f"{prefix}/{k}/dead-{int(offs[0])}-{ranges[0][0]}"
        events: dict[int, int] = {}
        for p, k in zip(*np.unique(parts[decoded.rows], return_counts=True), strict=True):
            events[int(p)] = int(k)
        dead = [msgs.dead(i, why) for i, why in decoded.dead]
        with self._mu:
            self.offsets.intent(bid, ranges, events, dead)
        self._timings["intent"] += time.perf_counter() - t1
        if dead:
            self.metrics.dead.inc(len(dead), tags=self.metrics.tags)
        return _Batch(bid, ranges, decoded, ts_ms, len(msgs))

    def _decode(self, msgs: Messages, parsed: tuple | None = None) -> tuple[Decoded, np.ndarray]:
        """The decoded batch, and the Kafka timestamps of a sample of its good messages."""
        kafka_ts = msgs.timestamps() if self.src.timestamp == "kafka" else None
        values = msgs.values
        if self.obs_spec is not None:
            # The kinds the stream's columns hold (entity keys may mix numbers and strings); a column without
            # one yet takes the kind most of the batch's values have, and the append records it.
            keys = self._obs_keys()
            kinds = {c: k for c, k in self.obs.kinds(self.stream).items() if k in ("num", "str") and c not in keys}
            decoded = decode(values, self.src.format, self.obs_spec, kinds, kafka_ts=kafka_ts, mixed=keys,
                             parsed=parsed)
            _epoch_seconds(decoded.frame, self.obs_spec.timestamp)
        else:
            s = self.session.fresh(lambda cat: cat.stream(self.stream))
            cat = self.session.catalog
            decoded = decode(values, self.src.format, s, cat.schema.get(self.stream, {}), kafka_ts=kafka_ts,
                             required=list(cat.required_columns(self.stream)), parsed=parsed)
        # Freshness needs a few timestamps, not one per message (a Python call each).
        good = decoded.rows
        sample = good[:: max(1, len(good) // 50)]
        ts_ms = kafka_ts[sample] if kafka_ts is not None else msgs.timestamps(sample)
        return decoded, ts_ms

    def _send(self, bid: str, frame: pd.DataFrame) -> None:
        """Hand a batch to the store under its id: to the shards, or to this consumer's observation log."""
        if self.obs is None:
            self.ingestor.ingest(self.stream, frame, batch_id=bid)
        else:
            self.obs.append(self.stream, self._obs_times(frame), timestamp=self.obs_spec.timestamp,
                            keys=self._obs_keys(), batch_id=bid)

    def _acceptable(self, frame: pd.DataFrame) -> bool:
        """Whether the store takes these rows (the checks of :meth:`_send`, nothing written)."""
        try:
            if self.obs is None:
                s = self.session.fresh(lambda cat: cat.stream(self.stream))
                self.ingestor.normalise(s, frame)
            else:
                self.obs.check(self.stream, self._obs_times(frame), timestamp=self.obs_spec.timestamp,
                               keys=self._obs_keys())
            return True
        except RayfsError:
            return False

    def _obs_times(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Observation times as the kind the stream holds: datetimes if its earlier records hold datetimes,
        else epoch seconds (what a decoded batch has)."""
        ts = self.obs_spec.timestamp
        if ts not in frame.columns or self.obs.kind(self.stream, ts) != "timestamp":
            return frame
        us = np.round(frame[ts].to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        return frame.assign(**{ts: us.astype("datetime64[us]")})

    def _obs_keys(self) -> set[str]:
        """Columns an observation's checks treat as entity keys (as ``append_observation`` does)."""
        return set(self.obs_spec.entities) | {e for s in self.session.catalog.streams.values() for e in s.entities}

    def _commit(self, b: _Batch, dead: list[dict] = (), refused: dict[int, int] | None = None) -> None:
        with self._mu:
            self.offsets.commit(b.id, list(dead), refused)
        now = time.time()
        m = self.metrics
        m.messages.inc(max(b.n, 1), tags=m.tags)
        since, self._last_commit = now - self._last_commit, now
        if since > 0:
            m.rate.set(b.n / since, tags=m.tags)
        if len(b.ts_ms):
            sample = b.ts_ms
            for ms in sample[sample > 0]:  # (a message without a timestamp has -1)
                m.fresh.observe(max(0.0, now - ms / 1000.0), tags=m.tags)
        for p, _first, end in b.ranges:
            hw = -1
            if self._consumer is not None:
                try:  # the high watermark of the last fetch (no call to the brokers)
                    hw = self._consumer.get_watermark_offsets(_tp(self.src.topic, p), cached=True)[1]
                except Exception:  # noqa: BLE001 - not fetched yet: the lag gauge waits for the next batch
                    hw = -1
            if hw is not None and hw >= 0:
                self.hw[p] = max(self.hw.get(p, 0), hw)
            m.lag.set(max(0, self.hw.get(p, end) - end), tags={**m.tags, "partition": str(p)})

    def _complete(self, bid: str, ranges: list[tuple[int, int, int]], b: _Batch | None,
                  known_dead: set[tuple[int, int]] = frozenset()) -> None:
        """Send an intent's batch under its id until every shard acknowledged it, then commit it.

        ``b``: the batch as decoded when it was first sent, else it is re-read from Kafka and decoded again
        (``known_dead``: the (partition, offset) of the dead letters its intent recorded). Rows the shards
        refuse (a kind the decoder's checks did not foresee) become dead letters, found by bisection.
        """
        dead: list[dict] = []
        refused: dict[int, int] = {}
        if b is None:
            msgs = self._reread(ranges)
            decoded, ts_ms = self._decode(msgs)
            b = _Batch(bid, ranges, decoded, ts_ms, len(msgs))
            src_msgs = msgs
            # A column's kind fixed since the intent (by another writer) may decode the batch otherwise now:
            # the messages its intent made dead letters stay out, those dead now are dead letters of this
            # commit (no longer counted as events).
            for i, why in decoded.dead:
                p = int(msgs.parts[i])
                if (p, int(msgs.offs[i])) not in known_dead:
                    dead.append(msgs.dead(i, why))
                    refused[p] = refused.get(p, 0) + 1
            if known_dead:
                keep = np.array([(int(msgs.parts[i]), int(msgs.offs[i])) not in known_dead
                                 for i in decoded.rows.tolist()], dtype=bool)
                if not keep.all():
                    decoded = Decoded(frame=decoded.frame[keep].reset_index(drop=True), rows=decoded.rows[keep],
                                      dead=decoded.dead)
                    b.decoded = decoded
        else:
            src_msgs = None
        frame = b.decoded.frame
        delay = 0.1
        while len(frame):
            try:
                self._send(bid, frame)
                break
            except SchemaError:
                bad = locate_bad(len(frame), lambda idx, frame=frame: self._acceptable(
                    frame.iloc[idx].reset_index(drop=True)))
                if src_msgs is None:
                    src_msgs = self._reread(ranges)
                for i in bad:
                    j = int(b.decoded.rows[i])
                    p = int(src_msgs.parts[j])
                    dead.append(src_msgs.dead(j, "refused by the store's checks"))
                    refused[p] = refused.get(p, 0) + 1
                frame = frame.drop(index=frame.index[bad]).reset_index(drop=True)
            except StoreClosedError:
                raise
            except Exception as exc:  # noqa: BLE001 - shards restarting: retry (the batch id makes it idempotent)
                if self._stop.is_set():
                    raise
                with self._mu:
                    self.state = "retrying"
                    self.error = f"batch {bid} not taken by the store, retrying: {type(exc).__name__}: {exc}"[:500]
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        with self._mu:
            if self.state == "retrying":
                self.state, self.error = "running", None
        self._commit(b, dead, refused)

    def _reread(self, ranges: list[tuple[int, int, int]]) -> Messages:
        """The messages of ``ranges`` ``[(partition, first, end)]``, in (partition, offset) order."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**FETCH_CONFIG, **self.src.client_config()})
        out = []
        try:
            for p, first, end in ranges:
                c.assign([TopicPartition(self.src.topic, p, first)])
                got: list = []
                deadline = time.monotonic() + 30
                while (not got or got[-1].offset() < end - 1) and time.monotonic() < deadline:
                    for m in c.consume(10_000, 0.5):
                        if m.error() is None and first <= m.offset() < end:
                            got.append(m)
                if not got or got[-1].offset() != end - 1:
                    raise SourceError(f"topic {self.src.topic!r} partition {p}: cannot re-read offsets "
                                      f"[{first}, {end}) of a batch in flight (gone from Kafka?)")
                out += got
        finally:
            c.close()
        return Messages.of(self.src.topic, out)


_GONE: tuple = ()
try:  # error codes that mean "this offset is not in the partition any more"
    from confluent_kafka import KafkaError as _KE

    _GONE = (_KE.OFFSET_OUT_OF_RANGE, _KE._AUTO_OFFSET_RESET)
except ImportError:  # pragma: no cover - confluent-kafka is needed to consume at all
    pass


def _epoch_seconds(frame: pd.DataFrame, ts: str) -> None:
    """The timestamp column of decoded observations as epoch seconds (ISO times and Kafka timestamps too),
    so that every batch holds one kind of value in it."""
    col = frame.get(ts)
    if col is not None and pd.api.types.is_datetime64_any_dtype(col.dtype):
        us = col.to_numpy().astype("datetime64[us]").astype(np.int64)
        frame[ts] = pd.Series(us / 1e6, index=frame.index)


def _tp(topic: str, p: int):
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, p)


KafkaConsumerActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(KafkaConsumerCore)
