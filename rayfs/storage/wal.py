"""Drivers' write-ahead logs: a batch reaches the shards only after it is durable whole here.

Every process that ingests (a driver, a Ray Data worker) owns one WAL, a :class:`~rayfs.storage.log.SegmentedLog`
in ``<store>/wal/<writer id>/``, and holds an exclusive ``flock`` on its ``OWNER`` file for as long as it
lives. Invariants:

* A WAL record is ``{"stream", "batch_id", "cols"}``: one whole batch, written before any shard sees it.
* A WAL is reset (deleted) only when every batch in it is acknowledged by every shard it routes to.
* A WAL whose ``OWNER`` lock nobody holds belongs to a writer that died: any writer that opens the store
  re-sends its batches (shards drop batch ids they already applied, so a batch lands whole, once) and
  deletes it. A batch the shards refuse as bad input (one of :data:`REFUSED`) is kept aside in
  ``<store>/wal-rejected/`` with a warning, never lost, and leaves the WAL: on replay, and live (the
  caller of ``ingest`` gets the error; the next ingest is not blocked by re-sending it).
* ``<store>/wal/`` holding segment files directly is the one-writer layout of rayfs 0.1: it is adopted
  as an orphan the same way.

The store must be on a filesystem every writer can reach (local, or shared in a cluster).
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from collections.abc import Callable

from rayfs.errors import DefinitionError, SchemaError
from rayfs.storage.locks import try_lock, wait_lock
from rayfs.storage.log import SegmentedLog

__all__ = ["MAX_BATCHES", "MAX_BYTES", "REFUSED", "REJECTED_DIR", "WAL_DIR", "WriteAheadLog", "recover_orphans",
           "set_aside"]

WAL_DIR = "wal"
REJECTED_DIR = "wal-rejected"
MAX_BATCHES = 10_000  # far below the ids a shard remembers, so a WAL replay never double-applies
MAX_BYTES = 256 << 20
_OWNER = "OWNER"

REFUSED = (SchemaError, DefinitionError)
"""The errors a shard raises for a batch's content before it logs it (a bad column, or a where clause that
cannot read it): re-sending that batch cannot succeed, so it is kept aside instead of blocking the WAL."""


class WriteAheadLog:
    """The WAL of one writer process.

    Args:
        store_path: the store's folder.
        durability: ``"sync"`` (fsync each batch before it is sent) or ``"none"``.
    """

    def __init__(self, store_path: str, durability: str) -> None:
        self.store_path = store_path
        self._durability = "none" if durability == "none" else "sync"
        self.dir = os.path.join(store_path, WAL_DIR, uuid.uuid4().hex)
        os.makedirs(self.dir)
        self._owner = try_lock(os.path.join(self.dir, _OWNER))  # held for the life of this writer
        self.log = SegmentedLog(os.path.join(self.dir, "log"), durability=self._durability)
        self.unacked: dict[tuple[str, str], dict] = {}  # batches that failed to reach every shard

    def append(self, record: dict) -> None:
        self.log.append(record)

    def acked(self, key: tuple[str, str]) -> None:
        self.unacked.pop(key, None)

    def failed(self, key: tuple[str, str], record: dict | None = None) -> None:
        self.unacked[key] = record

    def maybe_reset(self, *, force: bool = False) -> None:
        """Drop the WAL once every batch in it is acknowledged (and it is big, or ``force``)."""
        if self.unacked or not self.log.next_offset:
            return
        if force or self.log.next_offset >= MAX_BATCHES or self.log.size_bytes() >= MAX_BYTES:
            self.log.close()
            old = self.dir + "/log.old"
            os.replace(os.path.join(self.dir, "log"), old)  # atomic: never a WAL missing its first segments
            shutil.rmtree(old, ignore_errors=True)
            self.log = SegmentedLog(os.path.join(self.dir, "log"), durability=self._durability)

    def close(self) -> None:
        """Close; the WAL is deleted if everything in it was acknowledged, else left for recovery."""
        self.maybe_reset(force=True)
        self.log.close()
        if not self.unacked:
            shutil.rmtree(self.dir, ignore_errors=True)
        self._owner.close()


def recover_orphans(store_path: str, send: Callable[[dict], None], *, skip: str | None = None) -> int:
    """Re-send the batches of every WAL whose writer is gone, then delete those WALs.

    Args:
        store_path: the store's folder.
        send: routes one WAL record to its shards and waits for the acks (raises one of REFUSED if refused).
        skip: a WAL directory to leave alone (the caller's own).

    Returns:
        The number of batches re-sent.
    """
    root = os.path.join(store_path, WAL_DIR)
    if not os.path.isdir(root):
        return 0
    sent = 0
    if any(name.endswith(".log") for name in os.listdir(root)):  # rayfs 0.1 layout: one WAL, no owner
        sent += _replay(store_path, root, send, segments_dir=root)
        for name in os.listdir(root):
            if name.endswith(".log"):
                os.remove(os.path.join(root, name))
    for name in sorted(os.listdir(root)):
        d = os.path.join(root, name)
        if d == skip or not os.path.isdir(d) or name.endswith(".old"):
            continue
        owner = try_lock(os.path.join(d, _OWNER))
        if owner is None:
            continue  # a live writer
        try:
            log_dir = os.path.join(d, "log")
            if os.path.isdir(log_dir):
                sent += _replay(store_path, d, send, segments_dir=log_dir)
            shutil.rmtree(d, ignore_errors=True)
        finally:
            owner.close()
    return sent


def set_aside(store_path: str, record: dict, exc: BaseException, when: str) -> None:
    """Keep a batch the shards refused in ``<store>/wal-rejected/`` (whole, never lost) and warn.

    Writers of several processes may set batches aside at once: the rejected log is appended under a lock.
    """
    d = os.path.join(store_path, REJECTED_DIR)
    os.makedirs(d, exist_ok=True)
    guard = wait_lock(os.path.join(d, "LOCK"), timeout_s=60)
    try:
        rejected = SegmentedLog(d)
        rejected.append(record)
        rejected.close()
    finally:
        if guard is not None:
            guard.close()
    warnings.warn(f"store {store_path}: batch {record['batch_id']!r} of stream {record['stream']!r} was refused "
                  f"{when} ({exc}); kept in {REJECTED_DIR}/", RuntimeWarning, stacklevel=3)


def _replay(store_path: str, wal_dir: str, send: Callable[[dict], None], *, segments_dir: str) -> int:
    log = SegmentedLog(segments_dir, durability="none")
    n = 0
    try:
        for _, record in log.read(0):
            try:
                send(record)
            except REFUSED as exc:  # refused as bad input by a shard: keep it aside, never block open
                set_aside(store_path, record, exc, "on replay")
            n += 1
    finally:
        log.close()
    return n
