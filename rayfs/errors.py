"""Errors raised by rayfs.

Every bad input raises one subclass of :class:`RayfsError` whose message names the culprit (stream,
field, feature, file) and the operation leaves nothing half-applied.
"""

from __future__ import annotations


class RayfsError(Exception):
    """Base class of every error rayfs raises on purpose."""


class DefinitionError(RayfsError):
    """A stream or feature definition is invalid or conflicts with an existing one."""


class UnknownStreamError(RayfsError):
    """A stream name that was never registered."""


class UnknownFeatureError(RayfsError):
    """A feature name that was never registered."""


class SchemaError(RayfsError):
    """Input data lacks a required column or has a value of the wrong type."""


class TimestampError(SchemaError):
    """A timestamp is missing, NaN, or of a type rayfs cannot read."""


class WindowError(DefinitionError):
    """A window is not a positive duration like ``"30s"``, ``"15m"``, ``"3h"``, ``"7d"``."""


class AggregateError(DefinitionError):
    """An unknown aggregate, or one that cannot apply to the column's type."""


class SqlError(DefinitionError):
    """SQL that rayfs cannot turn into features; the message says what is supported."""


class LogCorruptionError(RayfsError):
    """A log segment is damaged before its tail; names the file and byte offset."""


class StoreClosedError(RayfsError):
    """An operation on a store that was closed."""


class StoreOpenError(RayfsError):
    """The store is already open (its shard actors exist) in this Ray cluster."""


class SourceError(RayfsError):
    """An event source (a Kafka subscription) is misconfigured, unreachable, or lost offsets it needs."""
