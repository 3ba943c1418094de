"""The bounded catch-up read (rayfs.sources.fetch.CatchUp) against a real broker, without Ray.

Whatever way a catch-up ends (at its bounds, at a bound inside a record batch, on small response limits,
on a codec or a batch it does not read, on a broker it cannot reach), the messages it returned followed by
what librdkafka reads from its :meth:`~rayfs.sources.fetch.CatchUp.positions` are every message from the
start offsets, each exactly once, in offset order per partition.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest

from rayfs.sources.fetch import CatchUp, usable
from rayfs.sources.messages import Messages

from .conftest import Producer, _free_port, create_topic

PARTS = 3


def produce(bootstrap: str, topic: str, n: int, seed: int, **config) -> dict[int, list[tuple]]:
    """``n`` messages over the partitions, in runs of random length (so record batches of many sizes),
    some with keys, some tombstones; what each partition holds, in offset order: ``(key, value, ts_ms)``."""
    rng = np.random.default_rng(seed)
    prod = Producer(bootstrap, topic)
    if config:
        from confluent_kafka import Producer as P

        prod.p = P({"bootstrap.servers": bootstrap, "linger.ms": 2, "acks": "all", **config})
    held: dict[int, list[tuple]] = {p: [] for p in range(PARTS)}
    i = 0
    while i < n:
        p = int(rng.integers(0, PARTS))
        for _ in range(int(rng.integers(1, 400))):
            if i == n:
                break
            key = f"k{i}".encode() if i % 3 else None
            value = None if i % 97 == 13 else b'{"user":"u%d","ts":%d,"x":%d}' % (i % 7, i, i)
            ts = 1_700_000_000_000 + i
            prod.send(p, value, key=key, timestamp_ms=ts)
            held[p].append((key, value, ts))
            i += 1
        if rng.random() < 0.3:
            prod.p.flush(30)
    prod.finish()
    return held


def leaders(bootstrap: str, topic: str) -> dict[int, tuple[str, int]]:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "catch-up-test"})
    try:
        md = c.list_topics(topic, timeout=10)
        return {p: (md.brokers[m.leader].host, md.brokers[m.leader].port)
                for p, m in md.topics[topic].partitions.items()}
    finally:
        c.close()


def drain(cu: CatchUp, max_rows: int) -> list[Messages]:
    out = []
    while (got := cu.poll()) is not None:
        m, parsed = got
        assert 0 < len(m) <= max_rows
        assert parsed == len(m)  # prepared on the reading thread, for this very batch
        assert (np.diff(m.parts) >= 0).all()  # ordered by partition
        out.append(m)
    cu.close()
    return out


def live_from(bootstrap: str, topic: str, positions: dict[int, int], ends: dict[int, int]) -> list[Messages]:
    """What librdkafka reads from ``positions`` up to ``ends`` (the way the live consumer goes on)."""
    from confluent_kafka import Consumer, TopicPartition

    need = {p: ends[p] for p in positions if positions[p] < ends[p]}
    if not need:
        return []
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "catch-up-live", "enable.auto.commit": False})
    got = []
    try:
        c.assign([TopicPartition(topic, p, positions[p]) for p in need])
        deadline = time.monotonic() + 60
        last = dict.fromkeys(need, -1)
        while any(last[p] < need[p] - 1 for p in need) and time.monotonic() < deadline:
            ms = [m for m in c.consume(10_000, 0.5) if m.error() is None]
            if ms:
                got.append(Messages.of(topic, ms))
                for m in ms:
                    last[m.partition()] = m.offset()
    finally:
        c.close()
    return got


def assert_exact(chunks: list[Messages], held: dict[int, list[tuple]], start: dict[int, int],
                 end: dict[int, int]) -> None:
    for p in start:
        offs = np.concatenate([c.offs[c.parts == p] for c in chunks] + [np.zeros(0, np.int64)])
        assert offs.tolist() == list(range(start[p], end[p])), f"partition {p}"
        rows = [(c.key(i), c.values[i], int(c.timestamps(np.array([i]))[0]))
                for c in chunks for i in np.flatnonzero(c.parts == p).tolist()]
        assert rows == held[p][start[p]:end[p]], f"partition {p}"


@pytest.mark.parametrize("max_rows", [1, 37, 100_000])
def test_reads_exactly_from_start_to_bound(bootstrap, topic, max_rows):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 3000, seed=max_rows)
    ends = {p: len(v) for p, v in held.items()}
    start = {0: 0, 1: 5, 2: ends[2] // 2}
    cu = CatchUp(topic, leaders(bootstrap, topic), start, ends, batch_rows=max_rows, prepare=len)
    chunks = drain(cu, max_rows)
    assert cu.ended is None and cu.positions() == ends
    assert cu.high() == ends  # the broker's watermarks, as the responses gave them
    assert_exact(chunks, held, start, ends)


def test_a_bound_inside_a_record_batch_and_small_responses(bootstrap, topic):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 4000, seed=7)
    ends = {p: len(v) for p, v in held.items()}
    bound = {p: ends[p] * 2 // 3 + 1 for p in ends}  # (most likely inside a batch)
    start = dict.fromkeys(ends, 0)
    # Responses of a few KiB: batches cut short at the end of a response are fetched again, and partitions
    # that a full response left out come later.
    cu = CatchUp(topic, leaders(bootstrap, topic), start, bound, max_bytes=4096, partition_bytes=2048,
                 batch_rows=500, prepare=len)
    chunks = drain(cu, 500)
    assert cu.ended is None and cu.positions() == bound
    assert_exact(chunks, held, start, bound)
    rest = live_from(bootstrap, topic, cu.positions(), ends)
    assert_exact(chunks + rest, held, start, ends)


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "snappy"])
def test_compressed_batches_are_read_or_left_to_the_live_consumer(bootstrap, topic, codec):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 2000, seed=3, **{"compression.type": codec, "linger.ms": 5})
    ends = {p: len(v) for p, v in held.items()}
    start = dict.fromkeys(ends, 0)
    cu = CatchUp(topic, leaders(bootstrap, topic), start, ends, batch_rows=10_000, prepare=len)
    chunks = drain(cu, 10_000)
    if codec == "gzip" or importlib.util.find_spec("cramjam"):  # (aiokafka's codecs beside zlib)
        assert cu.ended is None
    if cu.ended is not None:
        assert "record batch at offset" in cu.ended
    rest = live_from(bootstrap, topic, cu.positions(), ends)
    assert_exact(chunks + rest, held, start, ends)


def test_an_unreachable_broker_ends_the_catch_up_where_it_began(bootstrap, topic):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 500, seed=5)
    ends = {p: len(v) for p, v in held.items()}
    start = {0: 3, 1: 0, 2: 1}
    nobody = dict.fromkeys(ends, ("127.0.0.1", _free_port()))
    cu = CatchUp(topic, nobody, start, ends, timeout=2.0)
    assert cu.poll() is None
    cu.close()
    assert "ConnectionRefusedError" in cu.ended and cu.positions() == start
    rest = live_from(bootstrap, topic, cu.positions(), ends)
    assert_exact(rest, held, start, ends)


def test_closing_mid_read_stops_the_reading_thread(bootstrap, topic):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 3000, seed=9)
    ends = {p: len(v) for p, v in held.items()}
    start = dict.fromkeys(ends, 0)
    # Batches of 10 messages, one made ahead, responses of a few KiB: the thread is mid-read when closed.
    cu = CatchUp(topic, leaders(bootstrap, topic), start, ends, max_bytes=2048, partition_bytes=1024,
                 batch_rows=10, ahead=1)
    first, _ = cu.poll()
    assert len(first) == 10
    cu.close()
    assert not cu._thread.is_alive()
    # What was read ahead and not returned does not count: positions are where poll() stopped.
    pos = cu.positions()
    assert pos == {p: int(first.offs[first.parts == p].max()) + 1 if (first.parts == p).any() else start[p]
                   for p in start}
    assert_exact([first, *live_from(bootstrap, topic, pos, ends)], held, start, ends)


def test_a_failing_prepare_leaves_the_batch_to_the_caller(bootstrap, topic):
    create_topic(bootstrap, topic, PARTS)
    held = produce(bootstrap, topic, 300, seed=2)
    ends = {p: len(v) for p, v in held.items()}
    start = dict.fromkeys(ends, 0)

    def prepare(m: Messages) -> int:
        raise ValueError("cannot")

    cu = CatchUp(topic, leaders(bootstrap, topic), start, ends, batch_rows=64, prepare=prepare)
    got = []
    while (b := cu.poll()) is not None:
        assert b[1] is None
        got.append(b[0])
    cu.close()
    assert cu.ended is None
    assert_exact(got, held, start, ends)


def test_only_plaintext_sources_are_read_by_a_catch_up():
    assert usable({"bootstrap.servers": "b:9092"})
    assert usable({"security.protocol": "PLAINTEXT"})
    assert not usable({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN"})
    assert not usable({"security.protocol": "ssl"})
