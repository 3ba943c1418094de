"""Kafka topics as sources of streams: :class:`KafkaSource` says what to read and how.

A source is a plain, validated description (no Ray, no client connection here); subscribing a stream to it
(:meth:`rayfs.FeatureStore.subscribe`) starts the consumer actors of :mod:`rayfs.sources.consumer`, and the
subscription is kept in the store's folder (:mod:`rayfs.sources.offsets`) so that it restarts with the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rayfs.errors import SourceError
from rayfs.model.definitions import MAX_BATCH_ROWS

__all__ = ["FORMATS", "KafkaSource", "RESERVED_CONFIG", "RESETS", "STARTS"]

FORMATS = ("json", "msgpack")
STARTS = ("earliest", "latest")
RESETS = (None, "earliest", "latest")
# librdkafka settings the consumer owns: changing them would break its bookkeeping of offsets.
RESERVED_CONFIG = ("bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store",
                   "auto.offset.reset", "enable.partition.eof")


@dataclass(frozen=True)
class KafkaSource:
    """A Kafka topic whose messages are the events of a stream, one message value per event.

    Args:
        topic: the topic; every partition it has when the subscription starts is read.
        bootstrap_servers: ``"host:port[,host:port...]"`` of the brokers.
        format: ``"json"`` (a message value is a JSON object) or ``"msgpack"`` (a msgpack map); its keys
            are the stream's columns.
        start: where a new subscription begins in each partition: ``"earliest"`` (the whole retained
            history) or ``"latest"`` (messages produced from the subscription on). The offsets are fixed
            when the subscription is made, so a restart before the first message loses nothing.
        timestamp: ``None`` (the event time is the stream's timestamp column in the value) or ``"kafka"``
            (the Kafka message timestamp, which then fills the stream's timestamp column).
        consumers: consumer actors for the subscription; partition ``p`` goes to consumer ``p % consumers``.
        max_batch_rows: a micro-batch closes at this many messages...
        max_delay: ...or this many seconds after its first message, whichever comes first.
        on_offset_reset: what to do when the next offset to read is gone from a partition (retention
            passed it, or the topic was recreated): ``None`` stops the subscription with an error naming
            the topic, partition and offsets; ``"earliest"``/``"latest"`` jump to the partition's first/next
            offset and record the skipped range.
        catch_up: when a consumer starts (or restarts) at least this many messages behind its partitions'
            high watermarks, it reads up to those watermarks straight from Kafka's record batches (a
            fraction of librdkafka's CPU per message), then goes on through librdkafka from exactly where
            that read ended; ``0`` reads everything through librdkafka. Only over plaintext connections:
            with ``security.protocol`` set otherwise in ``consumer_config``, librdkafka reads everything.
        consumer_config: further librdkafka settings (e.g. ``security.protocol``, ``sasl.*``). They are
            kept in the store's folder with the subscription.

    Raises:
        SourceError: on a bad value, naming the field.
    """

    topic: str
    bootstrap_servers: str
    format: str = "json"
    start: str = "earliest"
    timestamp: str | None = None
    consumers: int = 1
    max_batch_rows: int = 100_000
    max_delay: float = 0.05
    on_offset_reset: str | None = None
    catch_up: int = 100_000
    consumer_config: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        what = f"KafkaSource(topic={self.topic!r})"
        if not isinstance(self.topic, str) or not self.topic or len(self.topic) > 249 or not all(
                c.isalnum() or c in "._-" for c in self.topic):
            raise SourceError(f"KafkaSource: topic must be a Kafka topic name (letters, digits, '.', '_', '-'; "
                              f"1 to 249 characters), not {self.topic!r}")
        if not isinstance(self.bootstrap_servers, str) or not self.bootstrap_servers.strip():
            raise SourceError(f"{what}: bootstrap_servers must be a non-empty 'host:port[,...]' string, "
                              f"not {self.bootstrap_servers!r}")
        _one_of(what, "format", self.format, FORMATS)
        _one_of(what, "start", self.start, STARTS)
        _one_of(what, "timestamp", self.timestamp, (None, "kafka"))
        _one_of(what, "on_offset_reset", self.on_offset_reset, RESETS)
        for name, lo, hi in (("consumers", 1, 1024), ("max_batch_rows", 1, MAX_BATCH_ROWS), ("catch_up", 0, 2**62)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise SourceError(f"{what}: {name} must be an integer from {lo} to {hi}, not {v!r}")
        d = self.max_delay
        if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0 < d <= 60:
            raise SourceError(f"{what}: max_delay must be a number of seconds in (0, 60], not {d!r}")
        if not isinstance(self.consumer_config, Mapping):
            raise SourceError(f"{what}: consumer_config must be a mapping of librdkafka settings, "
                              f"not {type(self.consumer_config).__name__}")
        for k, v in self.consumer_config.items():
            if not isinstance(k, str):
                raise SourceError(f"{what}: consumer_config keys must be strings, not {k!r}")
            if k in RESERVED_CONFIG:
                raise SourceError(f"{what}: consumer_config may not set {k!r}: the subscription manages it "
                                  f"(reserved: {', '.join(RESERVED_CONFIG)})")
            if not isinstance(v, (str, int, float, bool)):
                raise SourceError(f"{what}: consumer_config[{k!r}] must be a string, number or boolean, "
                                  f"not {type(v).__name__}")
        object.__setattr__(self, "consumer_config", dict(self.consumer_config))
        object.__setattr__(self, "max_delay", float(d))

    def to_dict(self) -> dict[str, Any]:
        """The source as plain values (what the store's folder keeps)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KafkaSource:
        """The source :meth:`to_dict` returned; unknown keys are a :class:`~rayfs.SourceError`."""
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(d) - known)
        if extra:
            raise SourceError(f"KafkaSource: unknown field(s) {', '.join(map(repr, extra))}; "
                              f"fields are {', '.join(sorted(known))}")
        return cls(**d)

    def client_config(self) -> dict[str, Any]:
        """The librdkafka settings of this source's consumers (the user's, plus what the consumer needs)."""
        return {**self.consumer_config, "bootstrap.servers": self.bootstrap_servers,
                "group.id": f"rayfs-{self.topic}", "enable.auto.commit": False,
                "enable.auto.offset.store": False, "auto.offset.reset": "error",
                "enable.partition.eof": False}


def _one_of(what: str, name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed or (value is not None and not isinstance(value, str)):
        raise SourceError(f"{what}: {name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")
