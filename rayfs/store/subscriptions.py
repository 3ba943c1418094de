"""A driver's side of Kafka subscriptions: subscribe, resume, stop, and report lag and dead letters.

The subscriptions of a store are a file in its folder (:mod:`rayfs.sources.offsets`); each runs as
consumer actors (:mod:`rayfs.sources.consumer`) that any driver finds by name. Opening or connecting to a
store starts the consumers of every subscription that is not running (:func:`resume`), so subscriptions
restart where they stopped with the store.

High watermarks come from the brokers (ListOffsets) and from the consumers' last fetches, whichever is
higher: some Kafka-compatible brokers under-report the former (Tansu 0.6 reports the base offset of the
last record batch plus one), and a consumer that fetched past it knows better.
"""

from __future__ import annotations

import shutil
import time

import pandas as pd
import ray

from rayfs.errors import DefinitionError, SourceError
from rayfs.model.definitions import Stream
from rayfs.model.kafka import KafkaSource
from rayfs.sources.consumer import KafkaConsumerActor, actor_name, my_partitions
from rayfs.sources.offsets import load_subscriptions, save_subscriptions, stream_dir
from rayfs.store.lifecycle import check_timeout
from rayfs.store.session import Session

__all__ = ["dead_letters", "resume", "stop", "subscribe", "subscriptions", "unsubscribe", "wait_caught_up"]

CALL_TIMEOUT = 30.0
STATUS_COLUMNS = ["stream", "topic", "partition", "next_offset", "high_watermark", "lag", "events",
                  "dead_letters", "state", "pid", "consumer", "error", "skipped"]
DEAD_COLUMNS = ["topic", "partition", "offset", "key", "value", "reason", "timestamp_ms"]
# The consumer handles this driver created: an actor that is not detached (an embedded store's) lives as
# long as a handle of its creator does.
_HANDLES: dict[tuple[str, str], list] = {}  # (store id, stream) -> every handle obtained


def _client(src: KafkaSource):
    try:
        from confluent_kafka import Consumer
    except ImportError:
        raise SourceError("Kafka subscriptions need the confluent-kafka package (pip install confluent-kafka)"
                          ) from None
    return Consumer(src.client_config())


def _partitions(c, src: KafkaSource) -> int:
    from confluent_kafka import KafkaException

    try:
        md = c.list_topics(src.topic, timeout=10)
    except KafkaException as exc:
        raise SourceError(f"topic {src.topic!r}: cannot reach the brokers {src.bootstrap_servers} ({exc})") from None
    t = md.topics.get(src.topic)
    if t is None or t.error is not None or not t.partitions:
        why = t.error if t is not None and t.error is not None else "no such topic"
        raise SourceError(f"topic {src.topic!r} on {src.bootstrap_servers}: {why}")
    return len(t.partitions)


def _watermarks(c, src: KafkaSource, p: int) -> tuple[int, int]:
    from confluent_kafka import KafkaException, TopicPartition

    try:
        return c.get_watermark_offsets(TopicPartition(src.topic, p), timeout=10)
    except KafkaException as exc:
        raise SourceError(f"topic {src.topic!r} partition {p}: cannot read its offsets ({exc})") from None


def _record(stream: str, src: KafkaSource) -> dict:
    """A new subscription: the partitions and, per partition, the first offset (fixed now)."""
    c = _client(src)
    try:
        n = _partitions(c, src)
        marks = [_watermarks(c, src, p) for p in range(n)]
    finally:
        c.close()
    start = {str(p): (lo if src.start == "earliest" else hi) for p, (lo, hi) in enumerate(marks)}
    return {"source": src.to_dict(), "partitions": n, "start": start, "created": time.time()}


def _actors(session: Session, stream: str, sub: dict) -> list:
    """The consumer actors of a subscription (created if not running)."""
    st = session.settings
    src = KafkaSource.from_dict(sub["source"])
    out = []
    for i in range(src.consumers):
        if not my_partitions(sub["partitions"], src.consumers, i):
            continue
        out.append(KafkaConsumerActor.options(
            name=actor_name(st.store_id, stream, i), namespace=st.namespace,
            lifetime="detached" if st.name else None, get_if_exists=True,
        ).remote(st, stream, i, sub))
    ray.get([a.pid.remote() for a in out], timeout=CALL_TIMEOUT)  # constructed: offsets recovered, loop started
    _HANDLES.setdefault((st.store_id, stream), []).extend(out)  # the creator's handle must stay
    return out


def _running(session: Session, stream: str, sub: dict) -> list:
    """The consumer actors of a subscription that exist (by name)."""
    st = session.settings
    src = KafkaSource.from_dict(sub["source"])
    out = []
    for i in range(src.consumers):
        try:
            out.append(ray.get_actor(actor_name(st.store_id, stream, i), namespace=st.namespace))
        except ValueError:
            pass
    return out


def _observations(session: Session, stream: str, keys, timestamp: str | None) -> dict | None:
    """The observation part of a subscription record (``None`` for an event stream), checked."""
    if keys is None:
        if timestamp is not None:
            raise SourceError(f"subscribe({stream!r}, ...): timestamp= is for observation streams (with "
                              "observation_keys=); an event stream's timestamp is its definition's")
        session.fresh(lambda cat: cat.stream(stream))
        return None
    keys = [keys] if isinstance(keys, str) else list(keys)
    if stream in session.catalog.streams:
        raise DefinitionError(f"{stream!r} is an event stream; observation streams need their own name")
    try:
        spec = Stream(name=stream, entities=tuple(keys), timestamp="ts" if timestamp is None else timestamp)
    except DefinitionError as exc:
        raise SourceError(f"subscribe({stream!r}, ...) of an observation stream: {exc}") from None
    return {"keys": list(spec.entities), "timestamp": spec.timestamp}


def subscribe(session: Session, stream: str, source: KafkaSource, observation_keys=None,
              timestamp: str | None = None) -> None:
    """See :meth:`rayfs.FeatureStore.subscribe`."""
    if not isinstance(source, KafkaSource):
        raise SourceError(f"subscribe({stream!r}, ...) takes a rayfs.KafkaSource, not {type(source).__name__}")
    obs = _observations(session, stream, observation_keys, timestamp)
    subs = load_subscriptions(session.path)
    sub = subs.get(stream)
    if sub is not None:
        if KafkaSource.from_dict(sub["source"]) != source or sub.get("observations") != obs:
            raise SourceError(f"stream {stream!r} is subscribed to topic {sub['source']['topic']!r} with other "
                              "settings; unsubscribe it first")
    else:
        sub = _record(stream, source)
        if obs is not None:
            sub["observations"] = obs
        subs[stream] = sub
        save_subscriptions(session.path, subs)
    _actors(session, stream, sub)


def resume(session: Session) -> None:
    """Start the consumers of every subscription of the store that are not running."""
    for stream, sub in load_subscriptions(session.path).items():
        if stream in session.catalog.streams or sub.get("observations"):
            _actors(session, stream, sub)


def stop(session: Session, stream: str | None = None) -> None:
    """Stop the consumers (of ``stream``, or of every subscription), their batches in flight recorded."""
    subs = load_subscriptions(session.path)
    actors = [a for s, sub in subs.items() if stream in (None, s) for a in _running(session, s, sub)]
    refs = [a.stop.remote() for a in actors]
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=CALL_TIMEOUT)
    for a in actors:
        ray.kill(a, no_restart=True)
    st = session.settings
    for s in list(subs):
        if stream in (None, s):
            _HANDLES.pop((st.store_id, s), None)
    names = [actor_name(st.store_id, s, i) for s, sub in subs.items() if stream in (None, s)
             for i in range(sub["source"]["consumers"])]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_exists(n, st.namespace) for n in names):
        time.sleep(0.02)


def _exists(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


def unsubscribe(session: Session, stream: str) -> None:
    """See :meth:`rayfs.FeatureStore.unsubscribe`."""
    subs = load_subscriptions(session.path)
    if stream not in subs:
        raise SourceError(f"stream {stream!r} is not subscribed to a topic (subscribed: {', '.join(subs) or 'none'})")
    stop(session, stream)
    del subs[stream]
    save_subscriptions(session.path, subs)
    shutil.rmtree(stream_dir(session.path, stream), ignore_errors=True)


def _status(session: Session, stream: str | None) -> list[dict]:
    subs = load_subscriptions(session.path)
    if stream is not None and stream not in subs:
        raise SourceError(f"stream {stream!r} is not subscribed to a topic (subscribed: {', '.join(subs) or 'none'})")
    rows = []
    for s, sub in subs.items():
        if stream not in (None, s):
            continue
        actors = _running(session, s, sub)
        refs = [a.status.remote() for a in actors]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=CALL_TIMEOUT)
        by_part, restarting = {}, False
        for ref in refs:
            try:
                by_part.update((r["partition"], r) for r in ray.get(ref, timeout=0))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                    ray.exceptions.GetTimeoutError):
                restarting = True  # its process died and Ray restarts it (offsets are on disk)
        src = KafkaSource.from_dict(sub["source"])
        for p in range(sub["partitions"]):
            r = by_part.get(p) or {"stream": s, "topic": src.topic, "partition": p, "next_offset": None,
                                   "high_watermark": None, "events": None, "dead_letters": None,
                                   "state": "restarting" if restarting else "not running", "pid": None,
                                   "consumer": p % src.consumers, "error": None}
            r["source"] = src
            rows.append(r)
    return rows


def _with_watermarks(rows: list[dict]) -> list[dict]:
    """Rows with the brokers' high watermarks (the higher of theirs and the consumer's) and the lag."""
    clients: dict = {}
    try:
        for r in rows:
            src = r["source"]
            c = clients.get(src.bootstrap_servers) or clients.setdefault(src.bootstrap_servers, _client(src))
            hi = _watermarks(c, src, r["partition"])[1]
            r["high_watermark"] = max(hi, r["high_watermark"] or 0)  # (the consumer's last fetch may know better)
            r["lag"] = None if r["next_offset"] is None else max(0, r["high_watermark"] - r["next_offset"])
    finally:
        for c in clients.values():
            c.close()
    return rows


def subscriptions(session: Session) -> pd.DataFrame:
    """See :meth:`rayfs.FeatureStore.subscriptions`."""
    rows = _with_watermarks(_status(session, None))
    for r in rows:  # offsets that vanished and were skipped (on_offset_reset): [(from, to), ...]
        r["skipped"] = [(x["from"], x["to"]) for x in r.get("resets") or []]
    return pd.DataFrame([{k: r.get(k) for k in STATUS_COLUMNS} for r in rows], columns=STATUS_COLUMNS)


def wait_caught_up(session: Session, stream: str, timeout: float = 60.0) -> None:
    """See :meth:`rayfs.FeatureStore.wait_caught_up`."""
    check_timeout(timeout, "wait_caught_up")
    deadline = time.monotonic() + timeout
    target = {r["partition"]: r["high_watermark"] for r in _with_watermarks(_status(session, stream))}
    while True:
        rows = _status(session, stream)
        failed = [r for r in rows if r["state"] in ("failed", "not running", "stopped")]
        if failed:
            r = failed[0]
            raise SourceError(f"stream {stream!r}: the consumer of topic {r['topic']!r} partition {r['partition']} "
                              f"is {r['state']}" + (f": {r['error']}" if r.get("error") else ""))
        behind = {r["partition"]: target[r["partition"]] - (r["next_offset"] or 0) for r in rows
                  if r["next_offset"] is None or r["next_offset"] < target[r["partition"]]}
        if not behind and all(r["state"] == "running" for r in rows):  # (offsets checked, in-flight re-sent)
            return
        if time.monotonic() > deadline:
            lag = ", ".join(f"partition {p}: {n}" for p, n in sorted(behind.items()))
            why = next((f"; consumer {r['consumer']} is {r['state']}: {r['error']}" for r in rows
                        if r.get("error")), "")
            raise SourceError(f"stream {stream!r}: not caught up after {timeout}s (messages behind: {lag}){why}")
        time.sleep(0.01)


def dead_letters(session: Session, stream: str) -> pd.DataFrame:
    """See :meth:`rayfs.FeatureStore.dead_letters`."""
    subs = load_subscriptions(session.path)
    if stream not in subs:
        raise SourceError(f"stream {stream!r} is not subscribed to a topic (subscribed: {', '.join(subs) or 'none'})")
    actors = _running(session, stream, subs[stream])
    got = ray.get([a.dead_letters.remote() for a in actors], timeout=CALL_TIMEOUT) if actors else []
    rows = sorted((d for ds in got for d in ds), key=lambda d: (d["partition"], d["offset"]))
    return pd.DataFrame([{k: d.get(k) for k in DEAD_COLUMNS} for d in rows], columns=DEAD_COLUMNS)
