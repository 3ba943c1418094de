"""A micro-batch of Kafka messages, column by column.

A subscription's consumer reads messages two ways (through librdkafka, one ``Message`` object each, or
whole record batches during a catch-up, :mod:`rayfs.sources.fetch`); both hand the rest of its loop a
:class:`Messages`: partitions, offsets and values as arrays and lists, keys and timestamps read only when
needed (dead letters, the freshness sample, ``timestamp="kafka"``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Messages"]


class Messages:
    """Kafka messages of one topic, one entry per message.

    Attributes:
        topic: the topic.
        parts: partition per message (int64).
        offs: offset per message (int64).
        values: value per message (``bytes``, ``None`` for a tombstone).

    Keys and timestamps come from ``keys``/``ts_ms`` when given, else from the librdkafka message objects
    ``msgs`` (read only for the messages asked for).

    >>> m = Messages("t", np.array([0, 1]), np.array([5, 7]), [b"a", None], keys=[b"k", None],
    ...              ts_ms=np.array([1000, 2000]))
    >>> m.take(np.array([1])).dead(0, "empty")["offset"]
    7
    """

    __slots__ = ("topic", "parts", "offs", "values", "_keys", "_ts", "_msgs")

    def __init__(self, topic: str, parts: np.ndarray, offs: np.ndarray, values: list, *,
                 keys: list | None = None, ts_ms: np.ndarray | None = None, msgs: Sequence | None = None) -> None:
        self.topic, self.parts, self.offs, self.values = topic, parts, offs, values
        self._keys, self._ts, self._msgs = keys, ts_ms, msgs

    @classmethod
    def of(cls, topic: str, msgs: Sequence) -> Messages:
        """The messages of librdkafka ``Message`` objects (every one without an error)."""
        n = len(msgs)
        parts = np.fromiter((m.partition() for m in msgs), dtype=np.int64, count=n)
        offs = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=n)
        return cls(topic, parts, offs, [m.value() for m in msgs], msgs=list(msgs))

    def __len__(self) -> int:
        return len(self.offs)

    def take(self, idx: np.ndarray) -> Messages:
        """The messages at positions ``idx``, in that order."""
        pick = idx.tolist()
        return Messages(self.topic, self.parts[idx], self.offs[idx], [self.values[i] for i in pick],
                        keys=None if self._keys is None else [self._keys[i] for i in pick],
                        ts_ms=None if self._ts is None else self._ts[idx],
                        msgs=None if self._msgs is None else [self._msgs[i] for i in pick])

    def timestamps(self, idx: np.ndarray | None = None) -> np.ndarray:
        """Kafka timestamps (milliseconds; -1 where a message has none) of the messages at ``idx`` (all)."""
        if self._ts is not None:
            return self._ts if idx is None else self._ts[idx]
        pick = range(len(self)) if idx is None else idx.tolist()
        return np.fromiter((self._msgs[i].timestamp()[1] for i in pick), dtype=np.int64, count=len(pick))

    def key(self, i: int) -> bytes | None:
        return self._keys[i] if self._keys is not None else self._msgs[i].key()

    def dead(self, i: int, why: str) -> dict:
        """The dead letter of message ``i``."""
        return {"topic": self.topic, "partition": int(self.parts[i]), "offset": int(self.offs[i]),
                "key": self.key(i), "value": self.values[i], "reason": why,
                "timestamp_ms": int(self.timestamps(np.array([i]))[0])}

    @staticmethod
    def concat(chunks: Sequence[Messages]) -> Messages:
        """Messages of ``chunks`` one after the other (each read with keys and timestamps)."""
        if len(chunks) == 1:
            return chunks[0]
        return Messages(chunks[0].topic, np.concatenate([c.parts for c in chunks]),
                        np.concatenate([c.offs for c in chunks]), [v for c in chunks for v in c.values],
                        keys=[k for c in chunks for k in c._keys],
                        ts_ms=np.concatenate([c._ts for c in chunks]))
