"""A bounded catch-up read of Kafka partitions, whole record batches at a time.

A consumer far behind its partitions (a long history, ``start="earliest"``) would spend most of its CPU on
librdkafka's one ``Message`` object per message (about 1.5 µs each here). :class:`CatchUp` instead sends
Fetch requests (protocol version 4: Kafka 0.11 to 4.x) straight to each partition's leader and splits the
record batches it gets back with aiokafka's C reader (about 0.3 µs per message), handing the consumer's
loop micro-batches of :class:`~rayfs.sources.messages.Messages`.

Invariants:

* It reads each partition ``p`` from ``start[p]`` up to, not including, ``bound[p]`` (the high watermarks
  when the catch-up began), and never returns an offset twice or out of order within a partition.
* After :meth:`CatchUp.poll` returned ``None``, :meth:`CatchUp.positions` is the next offset of each
  partition that it did not return: the live consumer (librdkafka) goes on from exactly there, so nothing
  is skipped and nothing is read twice, however the catch-up ended.
* It ends early, returning what it read completely, at anything it does not handle: a transactional or
  control batch (the live consumer applies read_committed), a message format before v2, a codec aiokafka
  cannot decompress here, a partition error, a partition that stops making progress, a broken connection.
  Ending early only moves the rest of the history to the live consumer.

It only speaks plaintext: a source with TLS or SASL settings reads everything through librdkafka
(:func:`usable`).
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rayfs.sources.messages import Messages

__all__ = ["CatchUp", "usable"]

_HEAD = struct.Struct(">qi")  # a record batch's base offset and length (bytes after these 12)
_FETCH = 1  # the Fetch API key
_VERSION = 4
_CONTROL_OR_TX = 0x30  # record-batch attribute bits: transactional (0x10), control (0x20)
STALLS = 3  # fetch rounds in a row that may bring nothing before the catch-up ends


def usable(client_config: Mapping) -> bool:
    """Whether a catch-up can read for a source with these librdkafka settings (plaintext, aiokafka here)."""
    proto = str(client_config.get("security.protocol", "plaintext")).lower()
    if proto != "plaintext":
        return False
    try:
        from aiokafka.record.default_records import DefaultRecordBatch  # noqa: F401
    except ImportError:
        return False
    return True


class CatchUp:
    """Reads partitions of ``topic`` from ``start`` up to ``bound``.

    Args:
        topic: the topic.
        leaders: ``(host, port)`` of each partition's leader.
        start: the first offset to read per partition.
        bound: the offset to stop before per partition.
        max_bytes: bytes per Fetch response at most (a response holds several micro-batches).
        partition_bytes: bytes per partition per response at most.
        timeout: seconds a broker may take to answer before the catch-up ends.
        batch_rows: messages per micro-batch :meth:`poll` returns at most.
        prepare: applied to each micro-batch on the reading thread (the consumer parses JSON there).
        ahead: micro-batches made ahead at most. A thread of its own fetches, splits record batches and
            prepares micro-batches while the caller validates and ingests the one :meth:`poll` returned
            (sockets and Arrow's JSON reader release the GIL).
    """

    def __init__(self, topic: str, leaders: Mapping[int, tuple[str, int]], start: Mapping[int, int],
                 bound: Mapping[int, int], *, batch_rows: int = 100_000,
                 prepare: Callable[[Messages], Any] | None = None, ahead: int = 2, max_bytes: int = 32 << 20,
                 partition_bytes: int = 8 << 20, timeout: float = 30.0) -> None:
        from aiokafka.record.default_records import DefaultRecordBatch

        self._batch = DefaultRecordBatch
        self.topic = topic
        self._leaders = dict(leaders)
        self._pos = {int(p): int(o) for p, o in start.items()}
        self._bound = {int(p): int(bound[p]) for p in self._pos}
        self._high: dict[int, int] = {}  # high watermark per partition, as the last response said
        self.ended: str | None = None  # why the catch-up ended before every bound (None: it did not)
        self._rows, self._prepare, self._ahead = batch_rows, prepare, ahead
        self._max_bytes, self._partition_bytes, self._timeout = max_bytes, partition_bytes, timeout
        self._stalls = 0  # rounds in a row that brought nothing
        self._socks: dict[tuple[str, int], socket.socket] = {}
        self._corr = 0
        # Between the reading thread and poll(): messages read and not yet in a batch (``_raw`` of them),
        # batches made and not yet returned, and whether reading ended.
        self._cv = threading.Condition()
        self._buf: deque[Messages] = deque()
        self._raw = 0
        self._ready: deque[tuple[Messages, Any]] = deque()
        self._finished = self._closed = False
        self._thread = threading.Thread(target=self._read_ahead, name=f"catch-up-{topic}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ public
    def positions(self) -> dict[int, int]:
        """The next offset per partition that :meth:`poll` has not returned (once :meth:`poll` returned
        ``None``, or after :meth:`close`)."""
        with self._cv:
            pos = dict(self._pos)
            for m in [b for b, _ in self._ready] + list(self._buf):  # (read ahead, still to be returned)
                for p in np.unique(m.parts).tolist():
                    pos[p] = min(pos[p], int(m.offs[m.parts == p].min()))
        return pos

    def high(self) -> dict[int, int]:
        """The high watermark per partition, as the newest Fetch response gave it."""
        with self._cv:
            return dict(self._high)

    def poll(self) -> tuple[Messages, Any] | None:
        """The next micro-batch: up to ``batch_rows`` messages ordered by partition, offsets ascending
        within each, and what ``prepare`` made of them (``None`` without it, or if it raised); ``None``
        once the catch-up is over."""
        with self._cv:
            while not self._ready and not self._finished:
                self._cv.wait()
            if not self._ready:
                return None
            out = self._ready.popleft()
            self._cv.notify_all()
        return out

    def close(self) -> None:
        """Stop reading (what was read and not returned is dropped) and close the connections."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for s in list(self._socks.values()):
            try:
                s.shutdown(socket.SHUT_RDWR)  # (wakes the reading thread out of a receive)
            except OSError:
                pass
        self._thread.join(self._timeout)
        for s in self._socks.values():
            s.close()
        self._socks.clear()

    # ------------------------------------------------------------------------------------------ reading
    def _read_ahead(self) -> None:
        try:
            while True:
                with self._cv:
                    while len(self._ready) >= self._ahead and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        return
                done = self._done()
                if not done:
                    self._fetch_round()
                    done = self._done()
                while (batch := self._cut(done)) is not None:
                    ready = None
                    if self._prepare is not None:
                        try:
                            ready = self._prepare(batch)
                        except Exception:  # noqa: BLE001 - the caller prepares it again and sees why
                            pass
                    with self._cv:
                        self._ready.append((batch, ready))
                        self._cv.notify_all()
                if done:
                    return
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the live consumer reads on
            self._end(f"{type(exc).__name__}: {exc}")
        finally:
            with self._cv:
                self._finished = True
                self._cv.notify_all()

    def _cut(self, last: bool) -> Messages | None:
        """The next batch of ``batch_rows`` messages read (fewer when ``last``), ordered by partition."""
        with self._cv:
            if not self._raw or (self._raw < self._rows and not last):
                return None
            out, n = [], 0
            while self._buf and n < self._rows:
                m = self._buf.popleft()
                if n + len(m) > self._rows:
                    cut = self._rows - n
                    self._buf.appendleft(m.take(np.arange(cut, len(m))))
                    m = m.take(np.arange(cut))
                out.append(m)
                n += len(m)
            self._raw -= n
            batch = Messages.concat(out)
        # In the order the consumer logs a batch in (by partition), so that what prepare makes of it is
        # what the consumer would have made of the batch it logs.
        if (np.diff(batch.parts) < 0).any():
            batch = batch.take(np.argsort(batch.parts, kind="stable"))
        return batch

    def _done(self) -> bool:
        return self.ended is not None or all(self._pos[p] >= self._bound[p] for p in self._pos)

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why

    def _fetch_round(self) -> None:
        """One Fetch request to each leader for its partitions still short of their bound."""
        by_leader: dict[tuple[str, int], list[int]] = {}
        for p in sorted(self._pos):
            if self._pos[p] < self._bound[p]:
                by_leader.setdefault(self._leaders[p], []).append(p)
        moved = False
        for addr, parts in by_leader.items():
            try:
                resp = self._call(addr, parts)
            except (OSError, EOFError, struct.error) as exc:
                self._end(f"broker {addr[0]}:{addr[1]}: {type(exc).__name__}: {exc}")
                return
            for p, err, high, records in resp:
                if p not in self._pos:
                    continue
                if err:
                    self._end(f"partition {p}: Kafka error code {err}")
                    return
                with self._cv:
                    self._high[p] = high
                before = self._pos[p]
                self._read(p, records)
                if self.ended is not None:
                    return
                moved |= self._pos[p] > before
        # A response full of some partitions may bring others nothing (they come once those are read):
        # only rounds that bring nothing at all count as stalls.
        self._stalls = 0 if moved else self._stalls + 1
        if self._stalls >= STALLS:
            self._end(f"no progress at offsets {self._pos} in {STALLS} fetches")

    def _read(self, p: int, data: memoryview) -> None:
        """Split the record batches of partition ``p`` into messages (whole batches only)."""
        nxt, bound = self._pos[p], self._bound[p]
        offs: list[int] = []
        vals: list = []
        keys: list = []
        ts: list[int] = []
        at, size = 0, len(data)
        while at + 27 <= size and nxt < bound:
            base, length = _HEAD.unpack_from(data, at)
            end = at + 12 + length
            if end > size:
                break  # cut short by the response's size limit: fetched again from its base offset
            magic = data[at + 16]
            if magic != 2:  # (the header below is that of format v2)
                self._end(f"partition {p}: message format v{magic} at offset {base}")
                break
            attributes, last_delta = struct.unpack_from(">hi", data, at + 21)
            last = base + last_delta
            if last < nxt:  # wholly before the position (a fetch starts at the batch holding it)
                at = end
                continue
            if attributes & _CONTROL_OR_TX:
                self._end(f"partition {p}: a transactional batch at offset {base}")
                break
            b_offs: list[int] = []
            b_vals: list = []
            b_keys: list = []
            b_ts: list[int] = []
            try:
                for r in self._batch(data[at:end]):
                    o = r.offset
                    if o < nxt:
                        continue
                    if o >= bound:
                        break
                    b_offs.append(o)
                    b_vals.append(r.value)
                    b_keys.append(r.key)
                    b_ts.append(r.timestamp)
            except Exception as exc:  # noqa: BLE001 - e.g. a codec not installed: the live consumer reads it
                self._end(f"partition {p}: record batch at offset {base}: {type(exc).__name__}: {exc}")
                break
            offs += b_offs
            vals += b_vals
            keys += b_keys
            ts += b_ts
            nxt = min(bound, last + 1)
            at = end
        chunk = None
        if offs:
            n = len(offs)
            chunk = Messages(self.topic, np.full(n, p, dtype=np.int64), np.array(offs, dtype=np.int64), vals,
                             keys=keys, ts_ms=np.array(ts, dtype=np.int64))
        with self._cv:  # (the position moves with the messages that took it there)
            self._pos[p] = nxt
            if chunk is not None:
                self._buf.append(chunk)
                self._raw += len(chunk)

    # ------------------------------------------------------------------------------------------ protocol
    def _call(self, addr: tuple[str, int], parts: list[int]) -> list[tuple[int, int, int, memoryview]]:
        """Send one Fetch (v4) for ``parts`` and return ``(partition, error, high watermark, records)``."""
        sock = self._socks.get(addr)
        if sock is None:
            sock = self._socks[addr] = socket.create_connection(addr, timeout=self._timeout)
        self._corr += 1
        topic = self.topic.encode()
        body = [struct.pack(">hhih", _FETCH, _VERSION, self._corr, 5), b"rayfs",
                # replica -1 (a consumer), wait at most 100 ms for 1 byte, read_uncommitted (transactional
                # batches end the catch-up), one topic
                struct.pack(">iiiibi", -1, 100, 1, self._max_bytes, 0, 1),
                struct.pack(">h", len(topic)), topic, struct.pack(">i", len(parts))]
        body += [struct.pack(">iqi", p, self._pos[p], self._partition_bytes) for p in parts]
        msg = b"".join(body)
        sock.sendall(struct.pack(">i", len(msg)) + msg)
        (n,) = struct.unpack(">i", _recv(sock, 4))
        buf = memoryview(_recv(sock, n))
        corr, _throttle, topics = struct.unpack_from(">iii", buf, 0)
        if corr != self._corr:
            raise EOFError(f"answer {corr} to request {self._corr}")
        at, out = 12, []
        for _ in range(topics):
            (tl,) = struct.unpack_from(">h", buf, at)
            at += 2 + tl
            (count,) = struct.unpack_from(">i", buf, at)
            at += 4
            for _ in range(count):
                p, err, high, _lso, aborted = struct.unpack_from(">ihqqi", buf, at)
                at += 26 + 16 * max(aborted, 0)
                (size,) = struct.unpack_from(">i", buf, at)
                at += 4
                out.append((p, err, high, buf[at:at + max(size, 0)]))
                at += max(size, 0)
        return out


def _recv(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise EOFError("connection closed by the broker")
        got += k
    return buf
