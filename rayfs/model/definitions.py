"""Stream and feature definitions: declared, validated, persisted; never executed here.

A :class:`Stream` names the entity fields and the timestamp column of a stream of events. A
:class:`Feature` aggregates one column (or rows) of one stream per value of one entity field,
optionally over a trailing window and filtered by a SQL predicate.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from rayfs.errors import AggregateError, DefinitionError
from rayfs.model.timeutil import format_window, parse_window

__all__ = ["MAX_BATCH_ROWS", "MAX_NAME_BYTES", "SEQ_ROW_BITS", "Feature", "Stream", "check_name"]

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


MAX_NAME_BYTES = 200
"""The longest name, in UTF-8 bytes. Names become parts of snapshot keys (``state/<feature>@<version>``,
``keys/<stream>/<entity>``) whose limit in LMDB is 511 bytes, and of file names (255 bytes)."""

SEQ_ROW_BITS = 24
"""Bits of an event's sequence number that number its row in its logged batch: ``seq = log offset << 24 | row``
(:mod:`rayfs.engine.fold`)."""
MAX_BATCH_ROWS = 1 << SEQ_ROW_BITS
"""The most rows one logged batch holds: a longer ingested batch is cut into chunks of this many rows, and a
Kafka source's micro-batches are at most this long."""


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a non-empty identifier-like string of at most :data:`MAX_NAME_BYTES`
    bytes, else raise DefinitionError."""
    if not isinstance(name, str) or not name or not set(name) <= _NAME_OK or name[0].isdigit():
        raise DefinitionError(f"{what} name {name!r} must be a non-empty identifier (letters, digits, _)")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise DefinitionError(f"{what} name {name[:40]!r}... is {len(name.encode())} bytes long; names are limited "
                              f"to {MAX_NAME_BYTES} bytes")
    return name


@dataclass(frozen=True, kw_only=True)
class Stream:
    """A named stream of events.

    Args:
        name: the stream's name.
        entities: the entity fields (columns holding entity keys) that features can group by.
        timestamp: the column holding each event's time.
    """

    name: str
    entities: tuple[str, ...]
    timestamp: str

    def __post_init__(self) -> None:
        check_name(self.name, "stream")
        if not isinstance(self.entities, str | Iterable):
            raise DefinitionError(f"stream {self.name!r}: entities must be a field name or a list of them, not "
                                  f"{type(self.entities).__name__}")
        ents = (self.entities,) if isinstance(self.entities, str) else tuple(self.entities)
        if not ents:
            raise DefinitionError(f"stream {self.name!r}: needs at least one entity field")
        for e in ents:
            check_name(e, f"stream {self.name!r} entity")
        if len(set(ents)) != len(ents):
            raise DefinitionError(f"stream {self.name!r}: duplicate entity fields {ents}")
        check_name(self.timestamp, f"stream {self.name!r} timestamp")
        if self.timestamp in ents:
            raise DefinitionError(f"stream {self.name!r}: timestamp {self.timestamp!r} cannot be an entity")
        object.__setattr__(self, "entities", ents)

    def to_dict(self) -> dict:
        return {"name": self.name, "entities": list(self.entities), "timestamp": self.timestamp}

    @classmethod
    def from_dict(cls, d: dict) -> Stream:
        return cls(name=d["name"], entities=tuple(d["entities"]), timestamp=d["timestamp"])


@dataclass(frozen=True, kw_only=True)
class Feature:
    """An aggregate of a stream per entity key.

    Args:
        name: the feature's name (unique in the store; at most 200 bytes; not the name of an entity
            field or the timestamp column of its stream, whose result columns it would overwrite).
        stream: the stream it aggregates.
        entity: the entity field of the stream it groups by.
        agg: the aggregate: ``count``, ``sum``, ``mean``, ``min``, ``max``, ``count_distinct``,
            ``stddev``, ``variance``, ``first``, ``last``, ``last_k``, ``first_k``, ``top_k`` (with ``k``),
            ``approx_count_distinct`` (HyperLogLog) or ``approx_quantile`` (KLL, with ``q``).
        column: the aggregated column; ``None`` only for ``count`` (counts rows).
        window: ``None`` (lifetime) or a trailing window like ``"7d"`` or a ``timedelta`` (at most
            1,000,000 days); an observation at ``t`` sees events with ``t - window <= ts < t``.
        where: an optional SQL predicate over the event's columns other than the timestamp, e.g.
            ``"score > 0"``.
        k: the number of values kept by ``last_k``, ``first_k`` and ``top_k``.
        q: the quantile (0..1) of ``approx_quantile``.
        description: free text for humans.
        owner: who answers for the feature (free text).
        tags: labels for discovery.
        version: set by the store: 1 for the first definition of a name, then 2, 3, ...
        created: set by the store: when this version was registered (ISO 8601, UTC).

    ``description``, ``owner`` and ``tags`` are metadata: they do not change values, so re-registering a
    feature with only those changed updates them in place instead of creating a new version.
    """

    name: str
    stream: str
    entity: str
    agg: str
    column: str | None = None
    window: str | _dt.timedelta | None = None
    where: str | None = None
    k: int | None = None
    q: float | None = None
    description: str = field(default="", compare=False)
    owner: str = field(default="", compare=False)
    tags: tuple[str, ...] = field(default=(), compare=False)
    version: int = field(default=1, compare=False)
    created: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        from rayfs.aggregates import REGISTRY  # late: aggregates import nothing from here

        check_name(self.name, "feature")
        check_name(self.stream, f"feature {self.name!r} stream")
        check_name(self.entity, f"feature {self.name!r} entity")
        if not isinstance(self.agg, str) or self.agg.lower() not in REGISTRY:
            raise AggregateError(f"feature {self.name!r}: unknown aggregate {self.agg!r}; "
                                 f"supported: {', '.join(sorted(REGISTRY))}")
        object.__setattr__(self, "agg", self.agg.lower())
        if self.column is None:
            if REGISTRY[self.agg].needs_column:
                raise AggregateError(f"feature {self.name!r}: aggregate {self.agg!r} needs a column")
        else:
            check_name(self.column, f"feature {self.name!r} column")
        self._check_params(REGISTRY[self.agg])
        if not isinstance(self.description, str) or not isinstance(self.owner, str):
            raise DefinitionError(f"feature {self.name!r}: description and owner must be strings")
        if not isinstance(self.tags, str | Iterable):
            raise DefinitionError(f"feature {self.name!r}: tags must be non-empty strings, got {self.tags!r}")
        tags = (self.tags,) if isinstance(self.tags, str) else tuple(self.tags)
        if not all(isinstance(t, str) and t for t in tags):
            raise DefinitionError(f"feature {self.name!r}: tags must be non-empty strings, got {self.tags!r}")
        object.__setattr__(self, "tags", tuple(sorted(set(tags))))
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(f"feature {self.name!r}: version must be a positive integer, not {self.version!r}")
        # Normalise the window to its canonical string so equal definitions compare equal.
        object.__setattr__(self, "window", format_window(parse_window(self.window, feature=self.name)))
        if self.where is not None:
            if not isinstance(self.where, str) or not self.where.strip():
                raise DefinitionError(f"feature {self.name!r}: where must be a non-empty SQL predicate")
            from rayfs.model.predicate import Predicate

            object.__setattr__(self, "where", Predicate.parse(self.where, feature=self.name).sql)

    def _check_params(self, cls) -> None:
        params = getattr(cls, "params", {})
        for p in ("k", "q"):
            v = getattr(self, p)
            if p not in params:
                if v is not None:
                    raise AggregateError(f"feature {self.name!r}: aggregate {self.agg!r} takes no parameter {p}")
                continue
            if v is None:
                raise AggregateError(f"feature {self.name!r}: aggregate {self.agg!r} needs parameter {p}")
            if p == "k":
                if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 1 <= v <= 10_000:
                    raise AggregateError(f"feature {self.name!r}: k must be an integer in 1..10000, not {v!r}")
                object.__setattr__(self, "k", int(v))
            else:
                if isinstance(v, bool) or not isinstance(v, int | float | np.number) or not 0.0 <= v <= 1.0:
                    raise AggregateError(f"feature {self.name!r}: q must be a number in [0, 1], not {v!r}")
                object.__setattr__(self, "q", float(v))

    @property
    def key(self) -> str:
        """The store-wide id of this version: ``name`` for version 1, else ``name@version``."""
        return self.name if self.version == 1 else f"{self.name}@{self.version}"

    @property
    def params(self) -> dict:
        """The aggregate's parameters (``k``, ``q``) that are set."""
        return {p: getattr(self, p) for p in ("k", "q") if getattr(self, p) is not None}

    @property
    def window_us(self) -> int | None:
        """The window in microseconds, ``None`` for lifetime."""
        return parse_window(self.window, feature=self.name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tags"] = list(self.tags)
        for p in ("k", "q"):  # absent parameters stay out, so older catalogs read the same
            if d[p] is None:
                del d[p]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Feature:
        d = dict(d)
        if "tags" in d:
            d["tags"] = tuple(d["tags"])
        return cls(**d)

    def same_definition(self, other: Feature) -> bool:
        """True if ``other`` computes the same values (metadata aside)."""
        return self == other

    def fingerprint(self) -> str:
        """A digest of everything that determines the feature's values (not its name or metadata)."""
        d = self.to_dict()
        for k in ("name", "description", "owner", "tags", "version", "created"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
