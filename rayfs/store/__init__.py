"""The driver side of rayfs: :class:`FeatureStore` and :func:`connect` (the modules here touch Ray).

* :mod:`rayfs.store.api`: the public ``FeatureStore`` facade, one short delegating method per operation.
* :mod:`rayfs.store.lifecycle`: opening, attaching, connecting, closing and stopping a store; readiness.
* :mod:`rayfs.store.cluster`: starting/joining Ray, naming, creating, finding and reviving a store's actors.
* :mod:`rayfs.store.coordinator`: the actor that owns the catalog.
* :mod:`rayfs.store.session`: one process's connection (settings, handles, cached catalog).
* :mod:`rayfs.store.definitions`: registering and dropping streams and features through the coordinator.
* :mod:`rayfs.store.ingest`: the ingest path (WAL, pipelining, shard calls, retries) over the pure
  :mod:`rayfs.engine.parts`.
* :mod:`rayfs.store.dataio`: Ray Data in.
* :mod:`rayfs.store.reads`: online reads and training sets (resolving, fan-out to shards, assembly, the
  one stale-catalog retry).
* :mod:`rayfs.store.ondemand`: on-demand features applied on top of the reads.
* :mod:`rayfs.store.subscriptions`: Kafka subscriptions (their consumers, status, catch-up).
* :mod:`rayfs.store.monitor`: stats, feature statistics, describe, audit.

This package is internal and may change: :class:`rayfs.FeatureStore` and :func:`rayfs.connect` are the
public names.
"""

from rayfs.store.api import FeatureStore, connect

__all__ = ["FeatureStore", "connect"]
