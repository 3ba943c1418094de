"""The store's coordinator: the one writer of the catalog, as a small Ray actor beside the shards.

Every driver connected to a store (by path or by name) registers streams and features, and records the
column kinds it sees first, through this actor, so definitions are decided once and in order even with
many drivers. It saves ``catalog.json`` (which a restarting shard reads) *before* any shard hears of a
change, then pushes the change to every shard. Each change bumps the catalog version; shards echo the
version they know in their answers so a driver can tell its cached copy is stale.

The coordinator holds no data: if it dies, Ray restarts it and it reloads the catalog from disk.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import threading

import ray

from rayfs.errors import DefinitionError, SchemaError
from rayfs.model.config import StoreSettings
from rayfs.model.definitions import Feature, Stream
from rayfs.model.ondemand import OnDemandFeature
from rayfs.shard.actor import actor_name
from rayfs.storage.catalog import Catalog

__all__ = ["Coordinator", "shard_names"]


def shard_names(settings: StoreSettings) -> list[str]:
    """The Ray actor names of the store's shards, index = shard id."""
    return [actor_name(settings.store_id, i) for i in range(settings.shards)]


class Coordinator:
    """Catalog owner of one store. See the module docstring.

    Args:
        path: the store's folder (holds ``catalog.json``).
        settings: the store's settings as decided by the driver that created the store (with its shard
            count).
    """

    def __init__(self, path: str, settings: StoreSettings) -> None:
        self.path = path
        self._settings = dataclasses.replace(settings, path=path)
        self._lock = threading.Lock()
        catalog = Catalog.load(path)
        if catalog is None:  # the creating driver saves it first; this is only a safety net
            catalog = Catalog(path, settings.shards)
            catalog.save()
        self.catalog = catalog
        self._handles: list | None = None

    def settings(self) -> StoreSettings:
        """The store's settings (the same for every driver that opens or connects to it)."""
        return self._settings

    def ping(self) -> bool:
        return True

    def handles(self) -> list:
        """The shard actors, looked up by name (they may live on any node)."""
        if self._handles is None:
            ns = self._settings.namespace
            self._handles = [ray.get_actor(n, namespace=ns) for n in shard_names(self._settings)]
        return self._handles

    def get_catalog(self) -> dict:
        with self._lock:
            return self.catalog.to_dict()

    # ------------------------------------------------------------------------------------- changes
    def register_stream(self, stream: dict) -> dict:
        s = Stream.from_dict(stream)
        with self._lock:
            old = self.catalog.streams.get(s.name)
            if old is not None:
                if old != s:
                    raise DefinitionError(f"stream {s.name!r} is already registered as {old.to_dict()}")
                return self.catalog.to_dict()
            self.catalog.streams[s.name] = s
            self.catalog.schema.setdefault(s.name, {})
            self.catalog.save()
            version = self.catalog.version
        ray.get([h.add_stream.remote(s.to_dict(), version) for h in self.handles()])
        return self.get_catalog()

    def register_feature(self, feature: dict) -> tuple[dict, str, dict, int]:
        """Register a feature version; its backfill on the shards is done when this returns.

        Returns:
            ``(registered feature, change, catalog, events backfilled)`` with change ``"new"``,
            ``"metadata"`` or ``"same"``.
        """
        f = Feature.from_dict(feature)
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            new, change = self.catalog.add_feature(f, created)
            if change != "same":
                self.catalog.save()
            version = self.catalog.version
        if change == "same":
            return new.to_dict(), change, self.get_catalog(), 0
        try:
            # Outside the lock: a long backfill blocks neither other registrations nor ingest.
            done = sum(ray.get([h.add_feature.remote(new.to_dict(), version) for h in self.handles()]))
        except BaseException:
            if change == "new":  # a shard refused it: roll back everywhere
                with self._lock:
                    self.catalog.features.pop(new.key, None)
                    self.catalog.next_version[new.name] = new.version  # nothing was ever served from it
                    self.catalog.save()
                    version = self.catalog.version
                ray.get([h.drop_feature.remote(new.key, version) for h in self.handles()])
            raise
        return new.to_dict(), change, self.get_catalog(), done

    def register_on_demand(self, feature: dict) -> tuple[dict, str, dict]:
        """Register an on-demand feature version (the catalog only: shards never compute it).

        Returns:
            ``(registered feature, change, catalog)``, change as for :meth:`register_feature`.
        """
        f = OnDemandFeature.from_dict(feature)
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        with self._lock:
            new, change = self.catalog.add_on_demand(f, created)
            if change != "same":
                self.catalog.save()
            version = self.catalog.version
        if change != "same":
            self._announce(version)
        return new.to_dict(), change, self.get_catalog()

    def _announce(self, version: int) -> None:
        """Tell the shards the catalog version of a change they hold nothing of (an on-demand feature), so
        they echo it in their answers and drivers with an older copy refresh it (see
        :meth:`rayfs.store.session.Session.seen`). Re-adding a known stream changes nothing else on a shard."""
        if not self.catalog.streams:
            return
        s = next(iter(self.catalog.streams.values()))
        try:
            ray.get([h.add_stream.remote(s.to_dict(), version) for h in self.handles()])
        except ray.exceptions.RayError:
            pass  # a shard that is down reads the saved catalog, with this version, when it restarts

    def drop_feature(self, ref: str) -> tuple[dict, dict]:
        """Drop one feature version (``name@v``, or the latest for a bare name), stored or on-demand."""
        if self.catalog.is_on_demand(ref):
            with self._lock:
                od = self.catalog.drop_on_demand(ref)
                self.catalog.save()
                version = self.catalog.version
            self._announce(version)
            return od.to_dict(), self.get_catalog()
        with self._lock:
            f = self.catalog.drop_feature(ref)
            self.catalog.save()
            version = self.catalog.version
        ray.get([h.drop_feature.remote(f.key, version) for h in self.handles()])
        return f.to_dict(), self.get_catalog()

    def update_schema(self, stream: str, kinds: dict[str, str | None]) -> dict:
        """Record column kinds first seen by some driver; refuse a kind that conflicts with an earlier one.

        A kind ``None`` is a column seen with nulls only: it is recorded as existing, kind still unknown.
        """
        with self._lock:
            schema = self.catalog.schema.setdefault(stream, {})
            entities = self.catalog.streams[stream].entities
            nulls = sorted(c for c, k in kinds.items() if k is None and c not in schema
                           and c not in self.catalog.null_columns.get(stream, ()))
            kinds = {c: k for c, k in kinds.items() if k is not None}
            changed = {}
            for c, k in kinds.items():
                old = schema.get(c)
                if old is None or old == k:
                    if old is None:
                        changed[c] = k
                elif c in entities:
                    if old != "mixed":
                        changed[c] = "mixed"  # entity keys may mix ints and strings across batches
                else:
                    raise SchemaError(f"stream {stream!r} column {c!r}: holds {k} values but earlier "
                                      f"batches held {old} values")
            if changed:
                merged = {**schema, **changed}
                for f in self.catalog.features.values():
                    if f.stream == stream:
                        self.catalog.check_types(f, merged, error=SchemaError)
                schema.update(changed)
            if nulls:
                self.catalog.null_columns.setdefault(stream, []).extend(nulls)
            if changed or nulls:
                self.catalog.save()
            return self.catalog.to_dict()
