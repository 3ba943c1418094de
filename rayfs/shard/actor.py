"""The shard as a Ray actor: :class:`~rayfs.shard.core.ShardCore` on Ray, plus its Prometheus metrics.

Shards ask for no CPU (``num_cpus=0``) so that any number of them can be placed on a small machine (an
actor asking for a CPU waits forever once the CPUs are taken). A shard that dies is restarted by Ray and
rebuilds its state from its snapshot and log in ``__init__``; a retried ingest is idempotent because
batches carry ids.

Metrics (``ray.util.metrics``, exported by Ray's Prometheus endpoint; tags ``store`` and ``shard``):
``rayfs_events_ingested``, ``rayfs_bytes_ingested``, ``rayfs_errors`` and ``rayfs_replay_observations``
(counters); ``rayfs_log_segments``, ``rayfs_log_bytes``, ``rayfs_snapshot_age_seconds``,
``rayfs_events_since_snapshot`` and ``rayfs_replay_events_per_second`` (gauges, refreshed after every
ingest and replay).

Every call runs on one of the actor's thread pools (Ray concurrency groups). Calls that take the shard's lock
(ingests, replays, definitions, snapshots, inspection) share the default pool of :data:`MAX_CONCURRENCY`
threads, so once that many wait for the lock every further call in the pool waits for a free thread. Reads
therefore have pools of their own: :data:`READS` for :meth:`ShardService.get_online_raw`, which never takes
the lock (a read from another node never waits behind an ingest), and :data:`STATE_READS` for
:meth:`ShardService.get_online_packed` and :meth:`ShardService.get_packed`, which may wait for the lock (a
shard without an online table, a feature being backfilled) and so must not hold the threads of the lock-free
reads, nor those ingests need while they wait for a backfill.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time

import ray
from ray.util import metrics

from rayfs.engine.parts import Part
from rayfs.shard.core import ShardCore

__all__ = ["CONCURRENCY_GROUPS", "GAUGE_REFRESH_S", "MAX_CONCURRENCY", "READS", "STATE_READS", "SWITCH_INTERVAL_S",
           "ShardActor", "ShardService", "actor_name"]

GAUGE_REFRESH_S = 10.0
SWITCH_INTERVAL_S = 0.0005  # the shard process's GIL switch interval (see ShardService.__init__)
MAX_CONCURRENCY = 8  # threads of the default group: calls that take the shard's lock
READS = "reads"
"""The concurrency group of reads that never take the shard's lock (:meth:`ShardService.get_online_raw`)."""
STATE_READS = "state_reads"
"""The concurrency group of online reads that may wait for the shard's lock (:meth:`ShardService.get_online_packed`,
:meth:`ShardService.get_packed`)."""
CONCURRENCY_GROUPS = {READS: 8, STATE_READS: 8}
"""Threads per read group (each thread serves one call at a time)."""
_COUNTERS = {"events_ingested": "events appended to the shard's log",
             "bytes_ingested": "bytes appended to the shard's log",
             "errors": "batches the shard refused",
             "replay_observations": "observations answered point in time"}
_GAUGES = {"log_segments": "segment files of the shard's log", "log_bytes": "bytes in the shard's log",
           "snapshot_age_seconds": "seconds since the last snapshot",
           "events_since_snapshot": "events not yet covered by a snapshot",
           "replay_events_per_second": "events scanned per second by point-in-time replay"}


class ShardService(ShardCore):
    """ShardCore plus metrics and the node it runs on."""

    def __init__(self, root: str, shard_id: int, *args, **kwargs) -> None:
        # A read runs on another thread than an ingest's fold and needs the GIL for a few short steps; with
        # Python's default 5 ms switch interval each step can wait that long behind the fold.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        super().__init__(root, shard_id, *args, **kwargs)
        tags = {"store": root, "shard": str(shard_id)}
        keys = ("store", "shard")
        self._counters = {k: metrics.Counter(f"rayfs_{k}", description=d, tag_keys=keys) for k, d in _COUNTERS.items()}
        self._gauges = {k: metrics.Gauge(f"rayfs_{k}", description=d, tag_keys=keys) for k, d in _GAUGES.items()}
        for m in (*self._counters.values(), *self._gauges.values()):
            m.set_default_tags(tags)
        self._exported = dict.fromkeys(_COUNTERS, 0)
        # Calls run concurrently (max_concurrency) and the refresher thread exports too: without the lock two
        # exports could both add the same delta to a counter.
        self._export_lock = threading.Lock()
        self._export()
        # Ray drops a gauge from its endpoint ~30 s after its last set: refresh them while idle too.
        threading.Thread(target=self._refresh_gauges, daemon=True, name="rayfs-metrics").start()

    def _refresh_gauges(self) -> None:
        while True:
            time.sleep(GAUGE_REFRESH_S)
            try:
                self._export()
            except Exception:  # noqa: BLE001 - a closed shard: nothing left to export
                return

    def _export(self) -> None:
        with self._export_lock:
            self._export_locked()

    def _export_locked(self) -> None:
        st = self.stats()
        for k, c in self._counters.items():
            delta = st[k] - self._exported[k]
            if delta > 0:
                c.inc(delta)
                self._exported[k] = st[k]
        self._gauges["log_segments"].set(st["log_segments"])
        self._gauges["log_bytes"].set(st["log_bytes"])
        self._gauges["snapshot_age_seconds"].set(st["snapshot_age_s"])
        self._gauges["events_since_snapshot"].set(st["events_since_snapshot"])
        if st["replay_events_per_s"] is not None:
            self._gauges["replay_events_per_second"].set(st["replay_events_per_s"])

    def ingest(self, record: Part) -> dict:
        try:
            return super().ingest(record)
        finally:
            self._export()

    @ray.method(concurrency_group=STATE_READS)
    def get_packed(self, args: bytes) -> bytes:
        """:meth:`ShardCore.get` with its pickled arguments ``(entity, keys, names)`` and answer each in one
        buffer: Ray handles every argument and every numpy array of a reply separately, which for an online
        read of a few keys costs more than the read itself."""
        return pickle.dumps(self.get(*pickle.loads(args)), protocol=pickle.HIGHEST_PROTOCOL)

    @ray.method(concurrency_group=STATE_READS)
    def get_online_packed(self, args: bytes) -> bytes:
        """Online values from the shard's online table, without taking the shard's lock: a read never waits
        for an ingest, a snapshot or a backfill of other features. Arguments and answer as
        :meth:`get_packed`; a feature not in the table (being backfilled) is read by :meth:`ShardCore.get`,
        which waits for it."""
        entity, keys, names = pickle.loads(args)
        out = self.online_view.read(entity, keys.tolist(), names) if self.online_view is not None else None
        if out is None:
            out = self.get(entity, keys, names)
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)

    @ray.method(concurrency_group=READS)
    def get_online_raw(self, args: bytes) -> bytes | None:
        """The encoded rows of pickled ``[(stream, entity, keys)]`` from the shard's online table and its meta
        entry as stored, pickled (``None`` without a table): the least work a read from another node can cost
        a shard, with no lock taken; the caller decodes them (:func:`rayfs.storage.online.rows_to_values`)."""
        if self.online_view is None:
            return None
        return pickle.dumps(self.online_view.table.read_raw(pickle.loads(args), raw_meta=True),
                            protocol=pickle.HIGHEST_PROTOCOL)

    @ray.method(concurrency_group=READS)
    def table_location(self) -> dict:
        """Where the shard's online table is (``online_table``: its path, ``None`` without one) and the
        node it is on: what a reader needs before its first read, without the shard's lock."""
        view = self.online_view
        return {"online_table": view.path if view is not None else None,
                "node_id": ray.get_runtime_context().get_node_id()}

    def replay(self, *args, **kwargs) -> dict:
        out = super().replay(*args, **kwargs)
        self._export()
        return out

    def info(self) -> dict:
        return {**super().info(), "node_id": ray.get_runtime_context().get_node_id()}


# max_concurrency sizes the default group only; the read groups add their own threads (see the module's docstring).
ShardActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=MAX_CONCURRENCY,
                        concurrency_groups=CONCURRENCY_GROUPS)(ShardService)


def actor_name(store_id: str, shard_id: int) -> str:
    """The Ray actor name of one shard of a store."""
    return f"rayfs:{store_id}:shard-{shard_id:03d}"
