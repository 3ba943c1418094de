"""The store's catalog: streams, features and column kinds, persisted as JSON beside the shards.

The catalog is rewritten atomically (temp file, fsync, rename, fsync of the directory) before any
shard sees a definition or a batch that depends on it, so a crash never leaves a shard knowing more
than the catalog.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from rayfs.engine import routing
from rayfs.errors import (
    AggregateError,
    DefinitionError,
    OnDemandError,
    RayfsError,
    SqlError,
    UnknownFeatureError,
    UnknownStreamError,
)
from rayfs.model.definitions import Feature, Stream
from rayfs.model.ondemand import OnDemandFeature

__all__ = ["Catalog", "FILE"]

FILE = "catalog.json"


class Catalog:
    """Definitions of one store (owned by the store's coordinator; drivers and shards hold copies).

    Features are keyed by :attr:`Feature.key` (``name`` for version 1, ``name@v`` after): every version
    stays live on the shards until dropped. ``version`` counts catalog changes, so a copy can tell it is
    stale.

    On-demand features (:attr:`on_demand`, keyed the same way) share the names and version numbers of
    stored features but live only here: shards never compute them, readers apply them.
    """

    def __init__(self, root: str, shards: int) -> None:
        self.root = root
        self.shards = shards
        self.version = 0
        self.streams: dict[str, Stream] = {}
        self.features: dict[str, Feature] = {}
        self.on_demand: dict[str, OnDemandFeature] = {}
        self.schema: dict[str, dict[str, str]] = {}
        # columns a stream's batches carried with nulls only (no kind yet): features may read them
        self.null_columns: dict[str, list[str]] = {}
        self.next_version: dict[str, int] = {}  # a dropped version number is never reused

    @classmethod
    def load(cls, root: str) -> Catalog | None:
        path = os.path.join(root, FILE)
        if not os.path.exists(path):
            return None
        with open(path) as fh:
            d = json.load(fh)
        cat = cls.from_dict(root, d)
        if d.get("routing") != routing.fingerprint():
            raise DefinitionError(f"store {root}: its keys were placed with a different routing hash "
                                  f"({d.get('routing')}, this rayfs uses {routing.fingerprint()})")
        return cat

    @classmethod
    def from_dict(cls, root: str, d: dict) -> Catalog:
        cat = cls(root, d["shards"])
        cat.version = d.get("version", 0)
        cat.streams = {s["name"]: Stream.from_dict(s) for s in d["streams"]}
        cat.features = {f.key: f for f in map(Feature.from_dict, d["features"])}
        cat.on_demand = {f.key: f for f in map(OnDemandFeature.from_dict, d.get("on_demand", []))}
        cat.schema = d["schema"]
        cat.null_columns = {k: list(v) for k, v in d.get("null_columns", {}).items()}
        cat.next_version = dict(d.get("next_version", {}))
        for f in [*cat.features.values(), *cat.on_demand.values()]:
            cat.next_version[f.name] = max(cat.next_version.get(f.name, 1), f.version + 1)
        return cat

    def to_dict(self) -> dict:
        return {"format": 1, "routing": routing.fingerprint(), "shards": self.shards, "version": self.version,
                "streams": [s.to_dict() for s in self.streams.values()],
                "features": [f.to_dict() for f in self.features.values()],
                "on_demand": [f.to_dict() for f in self.on_demand.values()], "schema": self.schema,
                "null_columns": self.null_columns, "next_version": self.next_version}

    def save(self) -> None:
        """Write the catalog atomically, counting one more change."""
        self.version += 1
        d = self.to_dict()
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

    def latest(self, name: str) -> Feature | None:
        """The newest live version of feature ``name``."""
        versions = [f for f in self.features.values() if f.name == name]
        return max(versions, key=lambda f: f.version) if versions else None

    def feature(self, ref: str) -> Feature:
        """The feature ``ref`` names: ``name`` (its latest version) or ``name@version``."""
        name, _, v = ref.partition("@") if isinstance(ref, str) else (ref, "", "")
        if v:
            f = self.features.get(name if v == "1" else f"{name}@{v}") if v.isdigit() else None
        else:
            f = self.latest(name)
        if f is None:
            names = sorted({f.name for f in self.features.values()})
            raise UnknownFeatureError(f"unknown feature {ref!r}; registered: {names}")
        return f

    def versions(self, name: str) -> list[Feature]:
        """Every live version of feature ``name``, oldest first."""
        return sorted((f for f in self.features.values() if f.name == name), key=lambda f: f.version)

    def add_feature(self, f: Feature, created: str) -> tuple[Feature, str]:
        """Validate ``f`` and decide what registering it does (the caller saves).

        Returns:
            ``(feature, change)``: ``change`` is ``"same"`` (identical to the latest version: nothing to do),
            ``"metadata"`` (only description/owner/tags differ: updated in place) or ``"new"`` (a new
            version, numbered after every earlier one, with ``created`` set).
        """
        old = self.latest(f.name)
        if old is not None and old.same_definition(f):
            if (old.description, old.owner, old.tags) == (f.description, f.owner, f.tags):
                return old, "same"
            new = replace(old, description=f.description, owner=f.owner, tags=f.tags)
            self.features[new.key] = new
            return new, "metadata"
        self.check_feature(f)
        v = self.next_version.get(f.name, 1)
        new = replace(f, version=v, created=created)
        self.features[new.key] = new
        self.next_version[f.name] = v + 1
        return new, "new"

    def drop_feature(self, ref: str) -> Feature:
        """Remove one version (``name@v``, or the latest for a bare name); returns it.

        Raises:
            DefinitionError: an on-demand feature reads that version (see :meth:`check_drop`).
        """
        self.check_drop(ref)
        f = self.feature(ref)
        del self.features[f.key]
        return f

    # ------------------------------------------------------------------------------------- on-demand features
    def latest_on_demand(self, name: str) -> OnDemandFeature | None:
        """The newest live version of on-demand feature ``name``."""
        versions = [f for f in self.on_demand.values() if f.name == name]
        return max(versions, key=lambda f: f.version) if versions else None

    def on_demand_feature(self, ref: str) -> OnDemandFeature:
        """The on-demand feature ``ref`` names: ``name`` (its latest version) or ``name@version``."""
        name, _, v = ref.partition("@")
        f = (self.on_demand.get(name if v == "1" else f"{name}@{v}") if v.isdigit() else None) if v \
            else self.latest_on_demand(name)
        if f is None:
            names = sorted({f.name for f in self.on_demand.values()})
            raise UnknownFeatureError(f"unknown on-demand feature {ref!r}; registered: {names}")
        return f

    def is_on_demand(self, ref: str) -> bool:
        """Whether ``ref`` (``name`` or ``name@version``) names an on-demand feature."""
        name = ref.partition("@")[0] if isinstance(ref, str) else ref
        return any(f.name == name for f in self.on_demand.values())

    def on_demand_entity(self, f: OnDemandFeature) -> str | None:
        """The entity of ``f``'s inputs (``None`` for a feature of request fields only).

        Raises:
            OnDemandError: an input is unknown, is itself on-demand, or the inputs group by different entities.
        """
        entity = None
        for i in f.inputs:
            if self.is_on_demand(i):
                raise OnDemandError(f"on-demand feature {f.name!r}: input {i!r} is an on-demand feature; inputs "
                                    "are stored features (compute both in one function)")
            try:
                g = self.feature(i)
            except UnknownFeatureError:
                raise OnDemandError(f"on-demand feature {f.name!r}: unknown input feature {i!r}; stored features: "
                                    f"{sorted({g.name for g in self.features.values()})}") from None
            if entity is not None and g.entity != entity:
                raise OnDemandError(f"on-demand feature {f.name!r}: input {i!r} groups by {g.entity!r}, others by "
                                    f"{entity!r}; all inputs must be of one entity")
            entity = g.entity
        return entity

    def add_on_demand(self, f: OnDemandFeature, created: str) -> tuple[OnDemandFeature, str]:
        """Validate ``f`` and decide what registering it does (the caller saves); see :meth:`add_feature`."""
        if self.latest(f.name) is not None:
            raise DefinitionError(f"on-demand feature {f.name!r}: a stored feature has that name; feature names "
                                  "are shared by stored and on-demand features")
        for s in self.streams.values():
            if f.name in s.entities or f.name == s.timestamp:
                # Reads return the entity and observation columns beside the features: this one would
                # overwrite that column (as check_feature refuses for stored features).
                what = "an entity field" if f.name in s.entities else "the timestamp column"
                raise DefinitionError(f"on-demand feature {f.name!r}: the name is {what} of stream {s.name!r}; "
                                      "choose another name")
        self.on_demand_entity(f)
        old = self.latest_on_demand(f.name)
        if old is not None and old.same_definition(f):
            if (old.description, old.owner, old.tags) == (f.description, f.owner, f.tags):
                return old, "same"
            new = replace(old, description=f.description, owner=f.owner, tags=f.tags)
            self.on_demand[new.key] = new
            return new, "metadata"
        v = self.next_version.get(f.name, 1)
        new = replace(f, version=v, created=created)
        self.on_demand[new.key] = new
        self.next_version[f.name] = v + 1
        return new, "new"

    def drop_on_demand(self, ref: str) -> OnDemandFeature:
        """Remove one on-demand version (``name@v``, or the latest for a bare name); returns it."""
        f = self.on_demand_feature(ref)
        del self.on_demand[f.key]
        return f

    def check_drop(self, ref: str) -> None:
        """Refuse to drop the stored feature version ``ref`` names while an on-demand feature reads it."""
        f = self.feature(ref)
        for od in self.on_demand.values():
            for i in od.inputs:
                try:
                    used = self.feature(i).key == f.key
                except UnknownFeatureError:
                    continue
                if used and (i != f.name or len(self.versions(f.name)) == 1):
                    raise DefinitionError(f"feature {f.key!r} is an input of on-demand feature {od.key!r}; drop "
                                          "that first")

    def required_columns(self, stream: str) -> dict[str, str]:
        """Columns every batch of ``stream`` must carry → the feature that needs it."""
        from rayfs.model.predicate import Predicate

        need: dict[str, str] = {}
        for f in self.features.values():
            if f.stream != stream:
                continue
            if f.column:
                need.setdefault(f.column, f.key)
            if f.where:
                for c in Predicate.parse(f.where, feature=f.name).columns:
                    need.setdefault(c, f.key)
        return need

    def check_feature(self, f: Feature) -> None:
        """Validate ``f`` against the streams and the column kinds seen so far."""
        if self.is_on_demand(f.name):
            raise DefinitionError(f"feature {f.name!r}: an on-demand feature has that name; feature names are "
                                  "shared by stored and on-demand features")
        s = self.stream(f.stream)
        if f.entity not in s.entities:
            raise DefinitionError(f"feature {f.name!r}: {f.entity!r} is not an entity of stream {s.name!r} "
                                  f"(entities: {list(s.entities)})")
        if f.column is not None and f.column == s.timestamp:
            raise DefinitionError(f"feature {f.name!r}: cannot aggregate the timestamp column "
                                  f"{f.column!r} of stream {f.stream!r}")
        if f.name in s.entities or f.name == s.timestamp:
            # Results carry the entity (get_features) and observation columns (training_set) beside the
            # features: a feature of the same name would overwrite that column.
            what = "an entity field" if f.name in s.entities else "the timestamp column"
            raise DefinitionError(f"feature {f.name!r}: the name is {what} of stream {f.stream!r}; "
                                  "choose another name")
        if f.where:
            from rayfs.model.predicate import Predicate

            if s.timestamp in Predicate.parse(f.where, feature=f.name).columns:
                raise DefinitionError(f"feature {f.name!r}: where {f.where!r} uses the timestamp column "
                                      f"{s.timestamp!r} of stream {f.stream!r}; a predicate cannot use event "
                                      "times (use a window to limit them)")
        self.check_types(f, self.schema.get(f.stream, {}))
        self.check_columns_known(f)

    def check_columns_known(self, f: Feature) -> None:
        """Once a stream has data, a feature may only read columns it has."""
        from rayfs.model.predicate import Predicate

        kinds = self.schema.get(f.stream, {})
        if not kinds:
            return
        s = self.streams[f.stream]
        need: set[str] = {f.column} if f.column else set()
        if f.where:
            need |= Predicate.parse(f.where, feature=f.name).columns
        seen = set(self.null_columns.get(f.stream, ()))
        missing = sorted(c for c in need if c not in kinds and c not in seen and c not in s.entities)
        if missing:
            raise DefinitionError(f"feature {f.name!r}: stream {f.stream!r} has no column(s) {missing}; "
                                  f"it has {sorted(kinds)}")

    def check_types(self, f: Feature, kinds: dict[str, str], *, error: type[RayfsError] | None = None) -> None:
        """Check that ``f``'s aggregate and ``where`` suit the column kinds ``kinds`` (unknown kinds pass).

        Raises ``error`` if given (ingest: SchemaError), else AggregateError / SqlError (registration).
        """
        from rayfs.aggregates import REGISTRY
        from rayfs.model.predicate import Predicate

        s = self.stream(f.stream)
        if f.column is not None:
            kind = kinds.get(f.column)
            if f.column in s.entities and REGISTRY[f.agg].mixed_keys:
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
