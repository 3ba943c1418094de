"""Where a store lives in Ray: starting or joining Ray, naming, creating and finding its actors.

A store is a set of actors in a Ray namespace (default ``"rayfs"``): one coordinator
(``rayfs:<id>:coordinator``, :mod:`rayfs.store.coordinator`) and N shards (``rayfs:<id>:shard-000``, ...).
``<id>`` is the store's name for a named store (detached actors that outlive the driver, reachable from any
driver with :func:`rayfs.connect`) and a digest of its path for an embedded one (actors owned by the driver,
gone with it).

Placement: shards ask for no CPU. When a store starts, shard ``i`` is pinned (hard node affinity) to the
``i``-th alive node, nodes sorted by id, round robin, so N shards spread evenly over the cluster. A shard
whose process dies restarts on its node; a shard whose *node* is gone cannot be restarted there, so the
first driver that finds it unschedulable re-creates it (same name, same folder) with Ray's ``SPREAD``
strategy on a live node (:func:`revive`) and retries its call. (Ray's soft affinity, which would do this
by itself, placed zero-CPU actors off their node in our tests.) The coordinator goes wherever Ray likes. Every actor
restarts without limit (``max_restarts=-1``): a shard rebuilds itself from its folder, so after a node
loss it comes back on another node only if the store's path is on a filesystem that node can reach (a
shared filesystem in a real cluster; with node-local disks, its keys are unavailable until that node
returns, and nothing acknowledged is lost as long as the disk survives).
"""

from __future__ import annotations

import os
import time

import ray

from rayfs.errors import StoreClosedError, StoreOpenError
from rayfs.model.config import DEFAULT_NAMESPACE, StoreSettings
from rayfs.shard.actor import ShardActor
from rayfs.store.coordinator import Coordinator, shard_names

__all__ = ["NAMESPACE", "CoordinatorActor", "check_unlocked", "coordinator_name", "create_coordinator",
           "create_shards", "ensure_ray", "lookup", "release", "revive", "shard_handles", "shard_names",
           "store_id"]

NAMESPACE = DEFAULT_NAMESPACE
CoordinatorActor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3, max_concurrency=16)(Coordinator)


def ensure_ray(address: str | None = None, namespace: str = NAMESPACE) -> bool:
    """Start or join Ray if this process has not; True if this call started a local Ray.

    ``address=None`` starts a private local Ray unless ``RAY_ADDRESS`` names a cluster; ``"auto"`` joins
    the cluster running on this machine; ``"ray://..."`` or ``"host:port"`` joins that one.
    """
    if ray.is_initialized():
        return False
    kwargs = dict(namespace=namespace, include_dashboard=False, logging_level="ERROR", configure_logging=True,
                  log_to_driver=False)
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, **kwargs)
    return address == "local"


def check_unlocked(path: str, shards: int, timeout_s: float = 10.0) -> None:
    """Refuse at once a folder whose shards a live process holds (seen from this machine's filesystem)."""
    from rayfs.storage.locks import wait_lock

    for i in range(shards):
        lock = os.path.join(path, "shards", f"shard-{i:03d}", "LOCK")
        if os.path.exists(lock):
            fh = wait_lock(lock, timeout_s)  # a just-killed shard process may still be exiting
            if fh is None:
                raise StoreOpenError(f"store {path} is in use by another running store (shard {i} is locked); "
                                     "stop it or attach to it by its name")
            fh.close()


def store_id(path: str, name: str | None) -> str:
    """The id in the actor names of the store at ``path`` called ``name`` (see :attr:`StoreSettings.store_id`)."""
    return StoreSettings(path=path, name=name).store_id


def coordinator_name(sid: str) -> str:
    """The Ray actor name of the coordinator of store ``sid``."""
    return f"rayfs:{sid}:coordinator"


def lookup(name: str, namespace: str):
    """The actor called ``name``, or ``None``."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def _alive(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - Ray raises others while a dead job's actor is being cleaned up
        return True


def create_coordinator(path: str, settings: StoreSettings):
    """Create (or, for a named store that appeared meanwhile, get) the coordinator actor."""
    return CoordinatorActor.options(
        name=coordinator_name(settings.store_id), namespace=settings.namespace,
        lifetime="detached" if settings.name else None, get_if_exists=bool(settings.name),
    ).remote(path, settings)


def create_shards(path: str, settings: StoreSettings, streams: list[dict], features: list[dict]) -> list:
    """Create (or get, for a named store) every shard actor, one per node round robin."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
    return [_create_shard(path, settings, i, streams, features,
                          NodeAffinitySchedulingStrategy(nodes[i % len(nodes)], soft=False))
            for i in range(settings.shards)]


def _create_shard(path: str, settings: StoreSettings, i: int, streams: list[dict], features: list[dict], strategy):
    # A shard receives its settings as plain arguments (the shard side knows no StoreSettings).
    return ShardActor.options(
        name=shard_names(settings)[i], namespace=settings.namespace,
        lifetime="detached" if settings.name else None, get_if_exists=True, scheduling_strategy=strategy,
    ).remote(path, i, settings.shards, streams, features, durability=settings.durability,
             segment_bytes=settings.segment_bytes, snapshot_every=settings.snapshot_every,
             online_table=settings.online_table)


def revive(settings: StoreSettings, handles: list, timeout: float = 30.0) -> list:
    """Re-create the shards Ray cannot restart (their node is gone) on live nodes; the current handles.

    A shard that is merely restarting (its process died, its node lives) is waited for, not replaced.
    Safe to call from several drivers at once: names make the re-creation happen once.
    """
    from ray.exceptions import ActorDiedError, ActorUnschedulableError, GetTimeoutError

    ns = settings.namespace
    if lookup(coordinator_name(settings.store_id), ns) is None:
        raise StoreClosedError(f"store {settings.name or settings.path!r} was stopped")
    names = shard_names(settings)
    out = list(handles)
    for i, h in enumerate(handles):
        try:
            ray.get(h.pid.remote(), timeout=timeout)
            continue
        except GetTimeoutError:
            continue
        except (ActorUnschedulableError, ActorDiedError):
            pass
        current = lookup(names[i], ns)
        if current is not None and current._actor_id != h._actor_id:
            out[i] = current  # another driver re-created it already
            continue
        release([h], [names[i]], ns)
        out[i] = _create_shard(settings.path, settings, i, [], [], "SPREAD")  # definitions: catalog.json
    return out


def shard_handles(settings: StoreSettings) -> list:
    """The running store's shard actors, found by name."""
    handles = [lookup(n, settings.namespace) for n in shard_names(settings)]
    if any(h is None for h in handles):
        raise StoreOpenError(f"store {settings.store_id!r}: shard actors are missing; the store is stopping "
                             "or was stopped")
    return handles


def release(handles: list, names: list[str], namespace: str) -> None:
    """Kill actors and wait until their names are free (``ray.kill`` is asynchronous)."""
    for h in handles:
        ray.kill(h, no_restart=True)
    deadline = time.monotonic() + 60
    while any(_alive(n, namespace) for n in names) and time.monotonic() < deadline:
        time.sleep(0.02)
