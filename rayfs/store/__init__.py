"""The driver side of rayfs: :class:`FeatureStore` and :func:`connect` (the modules here touch Ray).

* :mod:`rayfs.store.api`: the public ``FeatureStore`` API.
* :mod:`rayfs.store.cluster`: starting/joining Ray, naming, creating and finding a store's actors.
* :mod:`rayfs.store.coordinator`: the actor that owns the catalog.
* :mod:`rayfs.store.session`: one process's connection (handles + cached catalog).
* :mod:`rayfs.store.ingest`: the ingest path (normalise, WAL, route).
* :mod:`rayfs.store.dataio`: Ray Data in and out.
* :mod:`rayfs.store.monitor`: stats, feature statistics, describe, audit.
"""

from rayfs.store.api import FeatureStore, connect

__all__ = ["FeatureStore", "connect"]
