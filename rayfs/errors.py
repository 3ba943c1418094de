"""Errors raised by rayfs.

Every bad input raises one subclass of :class:`RayfsError` whose message names the culprit (stream,
field, feature, file) and the operation leaves nothing half-applied.
"""

from __future__ import annotations

__all__ = ["AggregateError", "ConfigError", "DefinitionError", "FileFormatError", "HttpRequestError",
           "LogCorruptionError", "OnDemandError", "OptionError", "RayfsError", "SchemaError", "SourceError", "SqlError",
           "StoreClosedError", "StoreNotFoundError", "StoreOpenError", "TimestampError", "TokenError",
           "UnknownFeatureError", "UnknownStreamError", "WindowError"]


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


class OnDemandError(RayfsError):
    """An on-demand feature cannot be registered or computed: its function cannot be serialised or loaded,
    raised, or returned the wrong number of values; an input is unknown or of another entity; a request
    field is missing. The message names the on-demand feature."""


class StoreClosedError(RayfsError):
    """An operation on a store that was closed."""


class StoreOpenError(RayfsError):
    """The store is already open (its shard actors exist) in this Ray cluster."""


class StoreNotFoundError(RayfsError):
    """A folder that holds no store, given to a command that only reads one (it creates nothing)."""


class OptionError(RayfsError):
    """An argument or command-line option has a value rayfs cannot use; the message names the option."""


class ConfigError(DefinitionError):
    """A store config is invalid; the message starts with ``<file>:<line>: <key path>:``.

    Attributes:
        source: the config's file name (or ``"<string>"``).
        line: the 1-based line the problem is on, ``None`` if unknown.
        key: the key path, e.g. ``"features[2].agg"`` (``""`` for the document or a TOML syntax error).
        reason: the message without the location prefix.
    """

    def __init__(self, source: str, line: int | None, key: str, reason: str) -> None:
        self.source, self.line, self.key, self.reason = source, line, key, reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")

    def __reduce__(self):
        return type(self), (self.source, self.line, self.key, self.reason)


class FileFormatError(SchemaError):
    """An event file is missing, of an unknown format, or unreadable; names the file (and line or row).

    Attributes:
        path: the file.
        line: the 1-based line of the problem, if known (CSV: the header is line 1).
        row: the 0-based data row of the problem, if known and no line is.
        reason: the message without the location prefix.
    """

    def __init__(self, path: str, reason: str, *, line: int | None = None, row: int | None = None) -> None:
        self.path, self.reason, self.line, self.row = path, reason, line, row
        where = f"{path}:{line}" if line is not None else f"{path}: row {row}" if row is not None else path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return _rebuild_file_error, (type(self), self.path, self.reason, self.line, self.row)


def _rebuild_file_error(cls: type, path: str, reason: str, line: int | None, row: int | None) -> FileFormatError:
    # keyword-only arguments cannot travel through __reduce__'s positional tuple
    return cls(path, reason, line=line, row=row)


class HttpRequestError(RayfsError):
    """A request the HTTP feature server refuses; ``status`` is the HTTP status code to answer with.

    >>> HttpRequestError(400, "features: expected an array").status
    400
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self):
        return type(self), (self.status, self.message)


class TokenError(RayfsError):
    """The configured bearer token cannot be found (an unset environment variable) or is empty."""


class SourceError(RayfsError):
    """An event source (a Kafka subscription) is misconfigured, unreachable, or lost offsets it needs."""
