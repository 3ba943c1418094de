"""A store's life as seen from one process: opening, attaching, connecting, readiness, closing, stopping.

Embedded by default: :func:`open_store` starts a private local Ray (``address="local"``) unless Ray is
already initialised in this process, ``address`` is given or ``RAY_ADDRESS`` names a cluster, and
:func:`close` shuts down only a Ray this process started itself. A store opened with a ``name`` is a set
of detached actors that outlives its driver; :func:`connect` reaches it by name from any other driver.

Every way in gives a :class:`Connection` whose session has recovered the write-ahead logs of dead writers
(their batches re-sent): opening a store creates its actors (which recover their own state from the
store's folder) or attaches to the named store already running there.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import ray

from rayfs.errors import DefinitionError, OptionError, StoreOpenError
from rayfs.model.config import DURABILITY, StoreSettings
from rayfs.model.definitions import check_name
from rayfs.storage.catalog import Catalog
from rayfs.store import cluster
from rayfs.store.ingest import Ingestor
from rayfs.store.session import Session

__all__ = ["Connection", "alive", "close", "connect", "open_store", "stop_actors", "wait_until_ready"]


class Connection(NamedTuple):
    """A process's way into a running store."""

    session: Session  # the coordinator, the shard handles and the cached catalog
    started_ray: bool  # this process started the Ray it uses (closing the store shuts it down)
    owns_actors: bool  # an embedded store: closing it stops its actors


def open_store(path: str | os.PathLike, shards: int | None, *, name: str | None, address: str | None,
               namespace: str, durability: str, segment_bytes: int, snapshot_every: int,
               online_table: bool = False) -> Connection:
    """Open (or create) the store at ``path``; see :meth:`rayfs.FeatureStore.open` for the arguments.

    A failed open leaves no actor behind and shuts down a Ray it started.
    """
    if not isinstance(path, str | os.PathLike):
        raise OptionError(f"path must be a folder (a str or path), not {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    _check_namespace(namespace)
    # The shards apply these; checked here so that a bad value is an error, not a shard that cannot start.
    if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, numbers.Integral) or segment_bytes <= 0:
        raise OptionError(f"segment_bytes must be a positive integer, not {segment_bytes!r}")
    if isinstance(snapshot_every, bool) or not isinstance(snapshot_every, numbers.Integral):
        raise OptionError(f"snapshot_every must be an integer (batches between snapshots), not {snapshot_every!r}")
    segment_bytes, snapshot_every = int(segment_bytes), int(snapshot_every)
    if os.path.exists(path) and not os.path.isdir(path):
        raise StoreOpenError(f"store path {path} is a file; a store is a folder (new or holding a store)")
    if durability not in DURABILITY:
        raise DefinitionError(f"durability must be one of {DURABILITY}, not {durability!r}")
    for option, value in (("segment_bytes", segment_bytes), ("snapshot_every", snapshot_every)):
        # checked before any actor starts: a shard refusing it in its constructor would die, not say why
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise OptionError(f"{option} must be a positive integer, not {value!r}")
    segment_bytes, snapshot_every = int(segment_bytes), int(snapshot_every)
    if name is not None:
        check_name(name, "store")
    settings = StoreSettings(path=path, name=name, shards=shards, durability=durability, namespace=namespace,
                             segment_bytes=segment_bytes, snapshot_every=snapshot_every,
                             online_table=bool(online_table))
    return _in_ray(address, namespace, lambda started: _open(settings, started))


def connect(name: str, *, address: str | None, namespace: str) -> Connection:
    """Attach to the running store called ``name`` (see :func:`rayfs.connect`)."""
    _check_namespace(namespace)

    def attach(started: bool) -> Connection:
        coord = cluster.lookup(cluster.coordinator_name(name), namespace)
        if coord is None:
            raise StoreOpenError(f"no store named {name!r} in Ray namespace {namespace!r}; start one with "
                                 f"FeatureStore.open(path, name={name!r}) or `rayfs serve`")
        return _attach(coord, None, started)

    return _in_ray(address, namespace, attach)


def check_timeout(timeout: object, call: str) -> None:
    """Refuse a ``timeout`` that is not a number of seconds (a bool is not one)."""
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise OptionError(f"{call}: timeout must be a number of seconds, not {timeout!r}")


def _check_namespace(namespace: object) -> None:
    if namespace is not None and not isinstance(namespace, str):
        raise OptionError(f"namespace must be a Ray namespace (a str), not {namespace!r}")


def _in_ray(address: str | None, namespace: str, fn: Callable[[bool], Connection]) -> Connection:
    """``fn(started)`` after starting or joining Ray; a Ray started here is shut down if ``fn`` fails."""
    started = cluster.ensure_ray(address, namespace)
    try:
        return fn(started)
    except BaseException:
        if started:
            ray.shutdown()
        raise


def _open(wanted: StoreSettings, started: bool) -> Connection:
    path, name, namespace, shards = wanted.path, wanted.name, wanted.namespace, wanted.shards
    coord = cluster.lookup(cluster.coordinator_name(wanted.store_id), namespace)
    if coord is not None:
        if name is None:
            raise StoreOpenError(f"store {path} is already open in this Ray cluster; close it first")
        return _attach(coord, shards, started, path=path)
    catalog = Catalog.load(path)
    if catalog is None:
        n = 4 if shards is None else shards
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise DefinitionError(f"shards must be a positive integer, not {shards!r}")
        catalog = Catalog(path, n)
        catalog.save()
    elif shards is not None and shards != catalog.shards:
        raise DefinitionError(f"store {path} has {catalog.shards} shards; cannot reopen with {shards}")
    settings = dataclasses.replace(wanted, shards=catalog.shards)
    names = cluster.shard_names(settings)
    if name is None and any(cluster.lookup(n, namespace) for n in names):
        raise StoreOpenError(f"store {path} is already open in this Ray cluster; close it first")
    cluster.check_unlocked(path, catalog.shards)  # another store (another name) runs on this folder
    created: list = []
    try:
        # The coordinator and the shards start in parallel (each actor process takes ~1 s to import).
        coord = cluster.create_coordinator(path, settings)
        created.append(coord)
        handles = cluster.create_shards(path, settings, [s.to_dict() for s in catalog.streams.values()],
                                        [f.to_dict() for f in catalog.features.values()])
        created += handles
        settings = ray.get(coord.settings.remote())  # (a named store's may come from a concurrent opener)
        for info in ray.get([h.info.remote() for h in handles]):  # every shard has recovered
            if info["log_truncated_bytes"]:
                # stacklevel 7: the caller of whatever called FeatureStore.open (through open_store,
                # _in_ray and its lambda)
                warnings.warn(f"store {path}: shard {info['shard']} dropped a torn log tail of "
                              f"{info['log_truncated_bytes']} bytes (a batch that was never acknowledged)",
                              RuntimeWarning, stacklevel=7)
        session = Session(coord, settings, handles)
        Ingestor(session).recover()
        return Connection(session, started, name is None)
    except BaseException:  # a failed open leaves no actor behind
        cluster.release(created, [cluster.coordinator_name(settings.store_id), *cluster.shard_names(settings)],
                        namespace)
        raise


def _attach(coord, shards: int | None, started: bool, path: str | None = None) -> Connection:
    settings: StoreSettings = ray.get(coord.settings.remote())
    if path is not None and settings.path != path:
        raise StoreOpenError(f"store {settings.name!r} already runs on {settings.path}, not {path}")
    if shards is not None and shards != settings.shards:
        raise DefinitionError(f"store {settings.name!r} has {settings.shards} shards, not {shards}")
    session = Session(coord, settings, cluster.shard_handles(settings))
    if os.path.isdir(session.path):
        Ingestor(session).recover()
    return Connection(session, started, False)


def alive(settings: StoreSettings) -> bool:
    """Whether the store's coordinator still runs (False once someone has stopped the store)."""
    return cluster.lookup(cluster.coordinator_name(settings.store_id), settings.namespace) is not None


def stop_actors(session: Session) -> None:
    """Snapshot every shard and stop all of the store's actors."""
    settings = session.settings
    try:
        ray.get([h.close.remote() for h in session.handles])
    finally:
        # The coordinator goes first: a driver that then finds a shard gone sees a stopped store,
        # not a lost node (it would re-create the shard).
        cluster.release([session.coordinator], [cluster.coordinator_name(settings.store_id)], settings.namespace)
        cluster.release(session.handles, cluster.shard_names(settings), settings.namespace)


def close(conn: Connection, *, stop: bool, local: Sequence[Callable[[], None]] = ()) -> None:
    """Detach ``conn``: stop the store's actors if ``stop`` or this process started their Ray (and they
    still run), then close this process's ``local`` resources, then shut down a Ray this process started."""
    try:
        if (stop or conn.started_ray) and alive(conn.session.settings):  # (someone may have stopped it already)
            stop_actors(conn.session)
    finally:
        for fn in local:
            fn()
        if conn.started_ray:
            ray.shutdown()


def wait_until_ready(session: Session, timeout: float = 60.0) -> None:
    """Block until every shard answers (e.g. after a node loss, while shards restart elsewhere)."""
    check_timeout(timeout, "wait_until_ready")
    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.get([h.info.remote() for h in session.handles], timeout=max(0.1, deadline - time.monotonic()))
            return
        except Exception:
            if time.monotonic() > deadline or not alive(session.settings):  # stopped: no shard comes back
                raise
            time.sleep(0.2)
