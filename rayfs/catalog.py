"""The store's catalog: streams, features and column kinds, persisted as JSON beside the shards.

The catalog is rewritten atomically (temp file, fsync, rename, fsync of the directory) before any
shard sees a definition or a batch that depends on it, so a crash never leaves a shard knowing more
than the catalog.
"""

from __future__ import annotations

import json
import os

import numpy as np

from rayfs import routing
from rayfs.definitions import Feature, Stream
from rayfs.errors import (
    AggregateError,
    DefinitionError,
    RayfsError,
    SqlError,
    UnknownFeatureError,
    UnknownStreamError,
)

FILE = "catalog.json"


class Catalog:
    """Definitions of one store (held by the driver; each shard gets a copy)."""

    def __init__(self, root: str, shards: int) -> None:
        self.root = root
        self.shards = shards
        self.streams: dict[str, Stream] = {}
        self.features: dict[str, Feature] = {}
        self.schema: dict[str, dict[str, str]] = {}

    @classmethod
    def load(cls, root: str) -> Catalog | None:
        path = os.path.join(root, FILE)
        if not os.path.exists(path):
            return None
        with open(path) as fh:
            d = json.load(fh)
        cat = cls(root, d["shards"])
        cat.streams = {s["name"]: Stream.from_dict(s) for s in d["streams"]}
        cat.features = {f["name"]: Feature.from_dict(f) for f in d["features"]}
        cat.schema = d["schema"]
        if d.get("routing") != routing.fingerprint():
            raise DefinitionError(f"store {root}: its keys were placed with a different routing hash "
                                  f"({d.get('routing')}, this rayfs uses {routing.fingerprint()})")
        return cat

    def save(self) -> None:
        d = {"format": 1, "routing": routing.fingerprint(), "shards": self.shards,
             "streams": [s.to_dict() for s in self.streams.values()],
             "features": [f.to_dict() for f in self.features.values()], "schema": self.schema}
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, FILE + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(d, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.root, FILE))
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def stream(self, name: str) -> Stream:
        try:
            return self.streams[name]
        except KeyError:
            raise UnknownStreamError(f"unknown stream {name!r}; registered: {sorted(self.streams)}") from None

    def feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise UnknownFeatureError(f"unknown feature {name!r}; registered: {sorted(self.features)}") from None

    def required_columns(self, stream: str) -> dict[str, str]:
        """Columns every batch of ``stream`` must carry → the feature that needs it."""
        from rayfs.predicate import Predicate

        need: dict[str, str] = {}
        for f in self.features.values():
            if f.stream != stream:
                continue
            if f.column:
                need.setdefault(f.column, f.name)
            if f.where:
                for c in Predicate.parse(f.where, feature=f.name).columns:
                    need.setdefault(c, f.name)
        return need

    def check_feature(self, f: Feature) -> bool:
        """Validate ``f`` against the catalog; True if it is new, False if already registered identically."""
        s = self.stream(f.stream)
        if f.entity not in s.entities:
            raise DefinitionError(f"feature {f.name!r}: {f.entity!r} is not an entity of stream {s.name!r} "
                                  f"(entities: {list(s.entities)})")
        old = self.features.get(f.name)
        if old is not None:
            if old == f:
                return False
            raise DefinitionError(f"feature {f.name!r} is already registered with a different definition "
                                  f"({old.to_dict()})")
        if f.column is not None and f.column == s.timestamp:
            raise DefinitionError(f"feature {f.name!r}: cannot aggregate the timestamp column "
                                  f"{f.column!r} of stream {f.stream!r}")
        self.check_types(f, self.schema.get(f.stream, {}))
        return True

    def check_types(self, f: Feature, kinds: dict[str, str], *, error: type[RayfsError] | None = None) -> None:
        """Check that ``f``'s aggregate and ``where`` suit the column kinds ``kinds`` (unknown kinds pass).

        Raises ``error`` if given (ingest: SchemaError), else AggregateError / SqlError (registration).
        """
        from rayfs.aggregates import REGISTRY
        from rayfs.predicate import Predicate

        s = self.stream(f.stream)
        if f.column is not None:
            kind = kinds.get(f.column)
            if f.column in s.entities and f.agg in ("count", "count_distinct", "first", "last"):
                kind = None  # keys of any type (even mixed ints and strings) are fine here
            if kind == "mixed":
                raise (error or AggregateError)(
                    f"feature {f.name!r}: aggregate {f.agg!r} needs one type in column {f.column!r} of "
                    f"stream {f.stream!r}, which holds both integer and string keys")
            if kind is not None and kind not in REGISTRY[f.agg].kinds:
                raise (error or AggregateError)(
                    f"feature {f.name!r}: aggregate {f.agg!r} cannot apply to column {f.column!r} of "
                    f"stream {f.stream!r}, which holds {kind} values")
        if f.where:
            pred = Predicate.parse(f.where, feature=f.name)
            mixed = sorted(c for c in pred.columns if kinds.get(c) == "mixed")
            if mixed:
                raise (error or SqlError)(f"feature {f.name!r}: where {f.where!r} compares column(s) {mixed} of "
                                          f"stream {f.stream!r}, which hold both integer and string keys")
            probe = {c: _probe(kinds.get(c)) for c in pred.columns}
            try:
                pred.evaluate(probe, 1)
            except RayfsError as exc:
                raise (error or SqlError)(f"feature {f.name!r}: where {f.where!r} does not fit the columns of stream "
                            f"{f.stream!r}: {exc}") from None


def _probe(kind: str | None) -> np.ndarray:
    """A one-row column of ``kind`` to dry-run a predicate on."""
    if kind == "str":
        return np.array(["a"], dtype=object)
    if kind is None:  # an all-null column has no type yet: it fits any comparison
        return np.array([None], dtype=object)
    return np.array([1.0])
