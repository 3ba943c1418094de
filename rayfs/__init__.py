"""rayfs: an event-sourced feature store for machine learning, built on Ray.

The public surface is everything in ``rayfs.__all__`` (the store, its definitions, config loading, event
files and every error class), plus the modules :mod:`rayfs.errors` and :mod:`rayfs.testing` (oracles and
fault-injection helpers for tests). Everything under the subpackages (``rayfs.model``,
``rayfs.aggregates``, ``rayfs.engine``, ``rayfs.storage``, ``rayfs.shard``, ``rayfs.store``,
``rayfs.sources``, ``rayfs.serve``) is internal and may change without notice; import the names from ``rayfs``.

``import rayfs`` does not import Ray: :class:`FeatureStore` and :func:`connect` (which need it), and
:func:`iter_batches` and :func:`write_table` (which need pyarrow's file readers), are loaded on first use.

Every error rayfs raises on purpose is a :class:`RayfsError`; its message names the stream, field,
feature, file or option at fault.

>>> import rayfs
>>> rayfs.Feature(name="n", stream="upvotes", entity="user", agg="count").window is None
True
"""

from rayfs.errors import (
    AggregateError,
    ConfigError,
    DefinitionError,
    FileFormatError,
    HttpRequestError,
    LogCorruptionError,
    OnDemandError,
    OptionError,
    RayfsError,
    SchemaError,
    SourceError,
    SqlError,
    StoreClosedError,
    StoreNotFoundError,
    StoreOpenError,
    TimestampError,
    TokenError,
    UnknownFeatureError,
    UnknownStreamError,
    WindowError,
)
from rayfs.model.config import StoreConfig, load_config
from rayfs.model.definitions import Feature, Stream
from rayfs.model.ondemand import OnDemandFeature, on_demand

__version__ = "0.2.0"

# name -> the module that defines it, imported on first access (see the module docstring)
_LAZY = {"FeatureStore": "rayfs.store", "connect": "rayfs.store", "iter_batches": "rayfs.sources.files",
         "write_table": "rayfs.sources.files", "KafkaSource": "rayfs.model.kafka"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rayfs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AggregateError",
    "ConfigError",
    "DefinitionError",
    "Feature",
    "FeatureStore",
    "FileFormatError",
    "HttpRequestError",
    "KafkaSource",
    "LogCorruptionError",
    "OnDemandError",
    "OnDemandFeature",
    "OptionError",
    "RayfsError",
    "SchemaError",
    "SourceError",
    "SqlError",
    "StoreClosedError",
    "StoreConfig",
    "StoreNotFoundError",
    "StoreOpenError",
    "Stream",
    "TimestampError",
    "TokenError",
    "UnknownFeatureError",
    "UnknownStreamError",
    "WindowError",
    "__version__",
    "connect",
    "iter_batches",
    "load_config",
    "on_demand",
    "write_table",
]
