"""rayfs: an event-sourced feature store for machine learning, built on Ray.

>>> import rayfs
>>> rayfs.Feature(name="n", stream="upvotes", entity="user", agg="count").window is None
True
"""

from rayfs.errors import (
    AggregateError,
    DefinitionError,
    LogCorruptionError,
    RayfsError,
    SchemaError,
    SourceError,
    SqlError,
    StoreClosedError,
    StoreOpenError,
    TimestampError,
    UnknownFeatureError,
    UnknownStreamError,
    WindowError,
)
from rayfs.model.definitions import Feature, Stream

__version__ = "0.2.0"


def __getattr__(name: str):
    # FeatureStore pulls in Ray; import it lazily so pure modules (and unit tests) stay Ray-free.
    if name in ("FeatureStore", "connect"):
        from rayfs import store

        return getattr(store, name)
    if name == "KafkaSource":  # (Ray-free, but kept out of the import of rayfs)
        from rayfs.sources.kafka import KafkaSource

        return KafkaSource
    raise AttributeError(f"module 'rayfs' has no attribute {name!r}")


__all__ = [
    "AggregateError",
    "DefinitionError",
    "Feature",
    "FeatureStore",
    "KafkaSource",
    "LogCorruptionError",
    "RayfsError",
    "SchemaError",
    "SourceError",
    "SqlError",
    "Stream",
    "StoreClosedError",
    "StoreOpenError",
    "TimestampError",
    "UnknownFeatureError",
    "UnknownStreamError",
    "WindowError",
    "__version__",
    "connect",
]
