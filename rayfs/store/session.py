"""One process's connection to a store: the coordinator, the shard handles and a cached catalog."""

from __future__ import annotations

import ray

from rayfs.model.config import StoreSettings
from rayfs.storage.catalog import Catalog

__all__ = ["Session"]


class Session:
    """What a driver (or a Ray Data worker) needs to talk to a store.

    The catalog is a cached copy of the coordinator's; shards report the catalog version they know with
    every answer, and :meth:`seen` refreshes the copy when it is behind.
    """

    def __init__(self, coordinator, settings: StoreSettings, handles: list) -> None:
        self.coordinator = coordinator
        self.settings = settings
        self.handles = handles
        self.path: str = settings.path
        self.catalog = Catalog.from_dict(self.path, ray.get(coordinator.get_catalog.remote()))

    def refresh(self, catalog: dict | None = None) -> None:
        """Replace the cached catalog (by ``catalog`` as returned by the coordinator, else fetch it)."""
        d = catalog if catalog is not None else ray.get(self.coordinator.get_catalog.remote())
        if d.get("version", 0) >= self.catalog.version:
            self.catalog = Catalog.from_dict(self.path, d)

    def fresh(self, fn):
        """``fn(catalog)``; if it names something the cached catalog lacks, refresh it and try once more."""
        from rayfs.errors import UnknownFeatureError, UnknownStreamError

        try:
            return fn(self.catalog)
        except (UnknownStreamError, UnknownFeatureError):
            self.refresh()
            return fn(self.catalog)

    def seen(self, version: int | None) -> bool:
        """Note a catalog version reported by a shard; True if the cached copy was stale (now refreshed)."""
        if version is not None and version > self.catalog.version:
            self.refresh()
            return True
        return False

    def call(self, fn):
        """``fn(handles)``; if a shard is lost with its node, re-create it elsewhere and call once more.

        ``fn`` must be safe to repeat (ingests carry batch ids; reads are reads).
        """
        from ray.exceptions import ActorUnschedulableError, RayActorError

        from rayfs.store import cluster

        try:
            return fn(self.handles)
        except (ActorUnschedulableError, RayActorError):
            self.handles = cluster.revive(self.settings, self.handles)
            return fn(self.handles)

    def __reduce__(self):  # a Session travels to Ray Data workers as its settings; they reconnect
        return (_reconnect, (self.settings,))


def _reconnect(settings: StoreSettings) -> Session:
    from rayfs.store import cluster

    coord = cluster.lookup(cluster.coordinator_name(settings.store_id), settings.namespace)
    return Session(coord, settings, cluster.shard_handles(settings))
