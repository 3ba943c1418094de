"""Stream and feature definitions: declared, validated, persisted; never executed here.

A :class:`Stream` names the entity fields and the timestamp column of a stream of events. A
:class:`Feature` aggregates one column (or rows) of one stream per value of one entity field,
optionally over a trailing window and filtered by a SQL predicate.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field

from rayfs.errors import AggregateError, DefinitionError
from rayfs.timeutil import format_window, parse_window

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is a non-empty identifier-like string, else raise DefinitionError."""
    if not isinstance(name, str) or not name or not set(name) <= _NAME_OK or name[0].isdigit():
        raise DefinitionError(f"{what} name {name!r} must be a non-empty identifier (letters, digits, _)")
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
        name: the feature's name (unique in the store).
        stream: the stream it aggregates.
        entity: the entity field of the stream it groups by.
        agg: the aggregate: ``count``, ``sum``, ``mean``, ``min``, ``max``, ``count_distinct``,
            ``stddev``, ``variance``, ``first``, ``last``.
        column: the aggregated column; ``None`` only for ``count`` (counts rows).
        window: ``None`` (lifetime) or a trailing window like ``"7d"`` or a ``timedelta``; an
            observation at ``t`` sees events with ``t - window <= ts < t``.
        where: an optional SQL predicate over the event's columns, e.g. ``"score > 0"``.
        description: free text for humans.
    """

    name: str
    stream: str
    entity: str
    agg: str
    column: str | None = None
    window: str | _dt.timedelta | None = None
    where: str | None = None
    description: str = field(default="", compare=False)

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
        # Normalise the window to its canonical string so equal definitions compare equal.
        object.__setattr__(self, "window", format_window(parse_window(self.window, feature=self.name)))
        if self.where is not None:
            if not isinstance(self.where, str) or not self.where.strip():
                raise DefinitionError(f"feature {self.name!r}: where must be a non-empty SQL predicate")
            from rayfs.predicate import Predicate

            object.__setattr__(self, "where", Predicate.parse(self.where, feature=self.name).sql)

    @property
    def window_us(self) -> int | None:
        """The window in microseconds, ``None`` for lifetime."""
        return parse_window(self.window, feature=self.name)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Feature:
        return cls(**d)

    def fingerprint(self) -> str:
        """A digest of everything that determines the feature's values (not its name or description)."""
        d = self.to_dict()
        for k in ("name", "description"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
