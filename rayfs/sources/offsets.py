"""What a store keeps of its Kafka subscriptions: the subscriptions themselves, and each consumer's offsets.

Layout under the store's folder::

    kafka/subscriptions.json            stream -> {source, start offsets, partitions}; written atomically
    kafka/<stream>/consumer-<i>/LOCK    held by the one process consuming for consumer i
    kafka/<stream>/consumer-<i>/gen-<g>/  a SegmentedLog (fsync per record) of the consumer's offsets

The offsets log is the truth about what reached the store (Kafka's consumer-group offsets are never read).
Its records:

* ``intent``: written (durably) *before* a micro-batch is sent to the shards: its batch id, per partition
  the ``[first, end)`` offsets it covers, its events per partition and its dead letters;
* ``commit``: written after every shard acknowledged that batch id (maybe with more dead letters); not
  fsynced unless it carries dead letters (a lost commit only makes its intent be re-sent, a no-op);
* ``reset``: a partition's offsets vanished and the subscription jumped (the skipped range);
* ``checkpoint``: the whole state, first record of a new generation (written when the log grows long).

Invariants: intents are logged in consumption order and their ranges are contiguous per partition, so the
next offset to read is the end of the last intent. An intent without a commit is re-read from Kafka for
exactly its offsets and re-sent under its batch id (shards apply a batch id once); a commit is only ever
written for a batch every shard acknowledged. Hence, after any crash: no message lost, none applied twice.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from rayfs.errors import SourceError
from rayfs.storage.log import SegmentedLog, _fsync_dir

__all__ = ["OffsetsLog", "consumer_dir", "load_subscriptions", "save_subscriptions", "stream_dir", "subscriptions_path"]

KAFKA_DIR = "kafka"
SUBSCRIPTIONS = "subscriptions.json"
COMPACT_RECORDS = 20_000  # records after which the log is rewritten as one checkpoint
DEAD_KEEP = 10_000  # dead letters kept per consumer (the newest); all are counted


# ------------------------------------------------------------------------------------------- subscriptions
def subscriptions_path(store_path: str) -> str:
    return os.path.join(store_path, KAFKA_DIR, SUBSCRIPTIONS)


def load_subscriptions(store_path: str) -> dict[str, dict]:
    """stream -> subscription record (empty if the store has none)."""
    try:
        with open(subscriptions_path(store_path)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def save_subscriptions(store_path: str, subs: dict[str, dict]) -> None:
    """Replace the subscriptions file atomically and durably (readable by the owner only: a source's
    ``consumer_config`` may hold credentials)."""
    path = subscriptions_path(store_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(subs, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def consumer_dir(store_path: str, stream: str, i: int) -> str:
    return os.path.join(store_path, KAFKA_DIR, stream, f"consumer-{i}")


def stream_dir(store_path: str, stream: str) -> str:
    return os.path.join(store_path, KAFKA_DIR, stream)


# ------------------------------------------------------------------------------------------- offsets log
class OffsetsLog:
    """One consumer's offsets: what was sent (intents), what was acknowledged (commits), dead letters.

    Args:
        directory: the consumer's folder (``kafka/<stream>/consumer-<i>``); the caller holds its lock.
        start: per partition, the first offset to read if the log knows nothing of that partition.
        durability: ``"sync"`` (fsync every record) or ``"none"`` (tests of the logic only).
    """

    def __init__(self, directory: str, start: dict[int, int], *, durability: str = "sync") -> None:
        self.dir = directory
        self._durability = durability
        os.makedirs(directory, exist_ok=True)
        self.next: dict[int, int] = {int(p): int(o) for p, o in start.items()}  # end of the last intent
        self.events: dict[int, int] = {}  # events committed per partition
        self.dead_count: dict[int, int] = {}  # dead letters per partition (of intents, committed or not)
        self.dead: list[dict] = []  # the newest DEAD_KEEP dead letters
        self.resets: list[dict] = []
        self.pending: OrderedDict[str, dict] = OrderedDict()  # batch id -> intent record
        gens = sorted((int(n.split("-", 1)[1]) for n in os.listdir(directory) if n.startswith("gen-")),
                      reverse=True)
        self.gen = 0
        self.log: SegmentedLog | None = None
        for g in gens:  # the newest generation whose checkpoint (or first record) made it to disk
            log = SegmentedLog(self._gen_dir(g), durability="none")
            if log.next_offset > 0 or g == 0:
                self.gen, self.log = g, log
                break
            log.close()
            shutil.rmtree(self._gen_dir(g), ignore_errors=True)
        if self.log is None:
            self.log = SegmentedLog(self._gen_dir(0), durability="none")
            if durability == "sync":  # the new folders survive a power failure
                _fsync_dir(self.dir)
                _fsync_dir(os.path.dirname(self.dir))
        for g in gens:
            if g < self.gen:
                shutil.rmtree(self._gen_dir(g), ignore_errors=True)
        for _, rec in self.log.read():
            self._apply(rec)

    def _gen_dir(self, g: int) -> str:
        return os.path.join(self.dir, f"gen-{g}")

    # --------------------------------------------------------------------------------------- state
    def _apply(self, rec: dict) -> None:
        t = rec["t"]
        if t == "intent":
            for p, _first, end in rec["r"]:
                self.next[p] = max(self.next.get(p, end), end)
            self.pending[rec["id"]] = rec
            self._add_dead(rec.get("d", ()))
        elif t == "commit":
            intent = self.pending.pop(rec["id"], None)
            if intent is not None:
                for p, n in intent.get("n", []):
                    self.events[p] = self.events.get(p, 0) + n
            self._add_dead(rec.get("d", ()))
            for p, n in rec.get("n", []):  # events refused by the shards after all (see ConsumerLoop)
                self.events[p] = self.events.get(p, 0) - n
        elif t == "reset":
            p = rec["p"]
            self.next[p] = rec["to"]
            self.resets.append(rec)
        elif t == "checkpoint":
            self.next = {int(p): o for p, o in rec["next"]}
            self.events = {int(p): n for p, n in rec["events"]}
            self.dead_count = {int(p): n for p, n in rec["dead_count"]}
            self.dead = list(rec["dead"])
            self.resets = list(rec["resets"])
            self.pending = OrderedDict((r["id"], r) for r in rec["pending"])
        else:
            raise SourceError(f"{self.dir}: unknown offsets record type {t!r} (written by a newer rayfs?)")

    def acked(self, p: int) -> int:
        """The first offset of partition ``p`` not yet acknowledged by every shard."""
        firsts = [first for rec in self.pending.values() for q, first, _ in rec["r"] if q == p]
        return min(firsts) if firsts else self.next[p]

    def _add_dead(self, dead: Iterable[dict]) -> None:
        for d in dead:
            self.dead_count[d["partition"]] = self.dead_count.get(d["partition"], 0) + 1
            self.dead.append(d)
        if len(self.dead) > DEAD_KEEP:
            del self.dead[:-DEAD_KEEP]

    def _write(self, rec: dict, *, sync: bool = True) -> None:
        assert self.log is not None
        self.log.append(rec)
        if sync and self._durability == "sync":
            self.log.sync()
        self._apply(rec)
        if self.log.next_offset >= COMPACT_RECORDS:
            self.compact()

    # --------------------------------------------------------------------------------------- records
    def intent(self, batch_id: str, ranges: list[tuple[int, int, int]], events: dict[int, int],
               dead: list[dict]) -> None:
        """Record, durably, that ``batch_id`` covering ``ranges`` ``[(partition, first, end)]`` is about to
        be sent, with its good ``events`` per partition and its ``dead`` letters."""
        for p, first, _end in ranges:
            if first != self.next.get(p, first):
                raise AssertionError(f"{self.dir}: partition {p}: batch starts at {first}, "
                                     f"expected {self.next[p]}")
        self._write({"t": "intent", "id": batch_id, "r": [list(r) for r in ranges],
                     "n": [[p, n] for p, n in events.items()], "d": list(dead), "at": time.time()})

    def commit(self, batch_id: str, dead: list[dict] = (), refused: dict[int, int] | None = None) -> None:
        """Record that every shard acknowledged ``batch_id`` (``dead``: messages the shards refused, now
        dead letters; ``refused``: their count per partition)."""
        rec: dict[str, Any] = {"t": "commit", "id": batch_id}
        if dead:
            rec["d"] = list(dead)
            rec["n"] = [[p, n] for p, n in (refused or {}).items()]
        # No fsync: a commit lost with the OS's buffers leaves its intent, which is re-sent under its batch
        # id (a no-op on the shards). Commits carrying dead letters are synced (they exist nowhere else).
        self._write(rec, sync=bool(dead))

    def reset(self, partition: int, old: int, new: int, why: str) -> None:
        """Record that ``partition`` jumps from offset ``old`` to ``new`` (its offsets vanished)."""
        self._write({"t": "reset", "p": partition, "from": old, "to": new, "why": why, "at": time.time()})

    def compact(self) -> None:
        """Start a new generation holding one checkpoint of the state; drop the old one."""
        assert self.log is not None
        rec = {"t": "checkpoint", "next": [[p, o] for p, o in self.next.items()],
               "events": [[p, n] for p, n in self.events.items()],
               "dead_count": [[p, n] for p, n in self.dead_count.items()],
               "dead": self.dead, "resets": self.resets, "pending": list(self.pending.values())}
        new = SegmentedLog(self._gen_dir(self.gen + 1), durability="none")
        new.append(rec)
        if self._durability == "sync":  # durable before the old generation goes
            new.sync()
            _fsync_dir(self.dir)
        old, self.log, self.gen = self.log, new, self.gen + 1
        old.close()
        shutil.rmtree(self._gen_dir(self.gen - 1), ignore_errors=True)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
