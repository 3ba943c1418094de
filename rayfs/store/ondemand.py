"""Reads with on-demand features: stored inputs read as usual, then each on-demand function applied here.

The shards never see an on-demand feature. A read that names some splits the names: stored ones (those
requested plus the inputs of the on-demand ones) go through :class:`rayfs.store.reads.Reader` unchanged,
then each on-demand feature's function is applied in this process to :func:`rayfs.model.ondemand.input_frame`
of the values read and the request fields. Online the request fields come with the call; in a training set
they are observation columns and the inputs are point-in-time values. Both paths turn the stored values
(the arrays the reader returns) and the request fields (lists of Python values,
:func:`rayfs.model.ondemand.request_columns`) into the frame the same way, so one function sees the same
shape and dtypes in both, and a model trained on a training set meets the same values when served.

A read that names no on-demand feature (as far as the cached catalog knows) is handed to the reader as it
is; if the reader then finds a name unknown, its refreshed catalog is asked again whether it is on-demand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import ray

from rayfs.engine import columns as C
from rayfs.errors import DefinitionError, OnDemandError, SchemaError, UnknownFeatureError
from rayfs.model.ondemand import OnDemandFeature, input_frame, request_columns
from rayfs.store.reads import OUTPUTS, Reader, check_collisions, feature_refs

__all__ = ["OnDemandReads"]

Plan = tuple[list[str], list[tuple[str, OnDemandFeature]], list[str]]  # (stored to read, on-demand, all names)
_T = TypeVar("_T")


def _column(values: np.ndarray, index: pd.Index) -> pd.Series:
    # As the reader builds its columns: object columns stay object.
    return pd.Series(values, index=index, dtype=object if values.dtype == object else None)


class OnDemandReads:
    """The reads of a session that may name on-demand features.

    Args:
        reader: the session's stored-feature reader.
    """

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.session = reader.session

    # ------------------------------------------------------------------------------------- planning
    def _refs(self, features: Iterable[str] | str | None) -> list[str] | None:
        return feature_refs(features)

    def _stored_only(self, refs: list[str] | None) -> bool:
        """Whether the read names no on-demand feature, as far as the cached catalog knows (cheap: it runs
        before every read)."""
        cat = self.session.catalog
        if not cat.on_demand:
            return True
        if refs is None:
            return False
        names = {f.name for f in cat.on_demand.values()}
        return not any(isinstance(r, str) and r.partition("@")[0] in names for r in refs)

    def _plan(self, refs: list[str] | None, entity: str | None, available: set[str],
              entity_ok: Callable[[str | None], bool]) -> Plan:
        """Split the requested names into stored ones to read and on-demand ones to apply.

        ``refs=None`` (every feature): the stored ones the reader would pick, plus every latest on-demand
        feature whose entity passes ``entity_ok`` and whose request fields are all in ``available``.
        """
        cat = self.session.catalog
        if refs is not None:
            names = {r.partition("@")[0] for r in refs if isinstance(r, str)}
            if not names <= {f.name for f in (*cat.features.values(), *cat.on_demand.values())}:
                self.session.refresh()  # registered by another driver since this one took its copy
                cat = self.session.catalog
        if refs is None:
            stored = [r for r, f in self.reader.resolve(None, entity) if entity_ok(f.entity)]
            ods = [(n, cat.latest_on_demand(n)) for n in dict.fromkeys(f.name for f in cat.on_demand.values())]
            ods = [(n, f) for n, f in ods if set(f.request) <= available and entity_ok(cat.on_demand_entity(f))]
            names = stored + [n for n, _ in ods]
        else:
            stored, ods, names = [], [], refs
            for r in refs:
                if isinstance(r, str) and cat.is_on_demand(r):
                    ods.append((r, cat.on_demand_feature(r)))
                else:
                    stored.append(r)
        for _, f in ods:
            cat.on_demand_entity(f)  # inputs still resolve (names the on-demand feature if not)
        read = list(dict.fromkeys([*stored, *(i for _, f in ods for i in f.inputs)]))
        return read, ods, names

    def _planned_read(self, plan: Callable[[], Plan], read: Callable[[Plan], _T]) -> tuple[Plan, _T]:
        """``read(plan())``, planned and read once more if the catalog changed during the read and the new
        plan applies other on-demand features (another driver redefined or dropped one meanwhile).

        The stored features' own stale-catalog retry is the reader's (:meth:`rayfs.store.reads.Reader.get_features`);
        this one keeps the functions applied equal to the definitions the stored values were read for.
        """
        for _ in range(2):
            version = self.session.catalog.version
            planned = plan()
            out = read(planned)
            if self.session.catalog.version == version or plan()[1] == planned[1]:
                break
        return planned, out

    def _check_entity(self, r: str, f: OnDemandFeature, entity: str) -> None:
        cat = self.session.catalog
        for i in f.inputs:
            g = cat.feature(i) if not cat.is_on_demand(i) else None
            if g is None or g.entity != entity:
                got = "is on-demand" if g is None else f"groups by {g.entity!r}"
                raise OnDemandError(f"on-demand feature {r!r}: input {i!r} {got}, not {entity!r}")

    def _check_columns(self, observations, timestamp: str) -> None:
        """Refuse observations that repeat a column a training set reads: its timestamp, an entity field or a
        request field (a repeated name selects several columns, not one value per row)."""
        if isinstance(observations, pd.DataFrame):
            names = list(observations.columns)
        elif isinstance(observations, pa.Table | pa.RecordBatch):
            names = list(observations.column_names)
        else:
            return
        if len(set(names)) == len(names):
            return
        cat = self.session.catalog
        read = {timestamp, *(e for s in cat.streams.values() for e in s.entities),
                *(r for f in cat.on_demand.values() for r in f.request)}
        repeated = sorted({str(c) for c in names if names.count(c) > 1 and c in read})
        if repeated:
            raise SchemaError(f"observations have more than one column named {repeated}; a training set reads "
                              "one column of each name")

    # ------------------------------------------------------------------------------------- online
    def get_features(self, entity: str, keys, features: Iterable[str] | str | None,
                     request: Mapping[str, Any] | pd.DataFrame | None) -> pd.DataFrame:
        """See :meth:`rayfs.FeatureStore.get_features`."""
        refs = self._refs(features)
        if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
            # A string is a sequence too, of characters: it would be read as one key per character.
            raise SchemaError(f"keys of entity {entity!r}: a sequence of keys (for one key, [key]), not "
                              f"{type(keys).__name__}")
        if request is not None and not isinstance(request, Mapping | pd.DataFrame):
            raise OnDemandError(f"request must be a dict of request fields or a DataFrame, not "
                                f"{type(request).__name__}")
        if isinstance(request, Mapping):  # a generator of values: read it once, for every feature that reads it
            request = {k: list(v) if isinstance(v, Iterator) else v for k, v in request.items()}
        if not hasattr(keys, "__len__"):
            keys = list(keys)  # a generator: read it once
        if self._stored_only(refs):
            try:
                return self.reader.get_features(entity, keys, features)
            except UnknownFeatureError:
                if self._stored_only(refs):  # the reader refreshed the catalog: a name unknown everywhere
                    raise
        keys = list(keys)
        n = len(keys)
        if isinstance(request, pd.DataFrame) and len(request) != n:
            raise OnDemandError(f"request: a DataFrame of {len(request)} rows for {n} keys (one row per key)")
        available = set(request.keys()) if request is not None else set()

        def read(plan: Plan) -> tuple[list, pd.DataFrame]:
            for r, f in plan[1]:
                self._check_entity(r, f, entity)
            reqs = [request_columns(f, request, n) for _, f in plan[1]]  # missing fields fail before any read
            return reqs, self.reader.get_features(entity, keys, plan[0])

        (_, ods, names), (reqs, frame) = self._planned_read(
            lambda: self._plan(refs, entity, available, lambda e: e in (None, entity)), read)
        values = {r: f.apply(input_frame(f, {i: frame[i].to_numpy() for i in f.inputs}, req, n))
                  for (r, f), req in zip(ods, reqs, strict=True)}
        out = {entity: frame[entity]}
        for r in names:
            v = values[r] if r in values else frame[r].to_numpy()
            out[r] = _column(v, frame.index) if v.dtype == object else v  # numeric arrays as they are
        return pd.DataFrame(out, copy=False)

    # ------------------------------------------------------------------------------------- training sets
    def training_set(self, observations, features: Iterable[str] | str | None, timestamp: str, output: str):
        """See :meth:`rayfs.FeatureStore.training_set`."""
        refs = self._refs(features)
        self._check_columns(observations, timestamp)
        if self._stored_only(refs):
            try:
                return self.reader.training_set(observations, features, timestamp, output)
            except UnknownFeatureError:
                if self._stored_only(refs):  # the reader refreshed the catalog: a name unknown everywhere
                    raise
        if output not in OUTPUTS:
            raise DefinitionError(f"output must be one of {OUTPUTS}, not {output!r}")
        obs = self.reader.observations.read(observations) if isinstance(observations, str) else observations
        obs = C.to_frame(obs, what="observations")
        n = len(obs)
        available = set(map(str, obs.columns))

        def read(plan: Plan) -> tuple[list, pd.DataFrame]:
            stored, ods, names = plan
            for r, f in ods:
                entity = self.session.catalog.on_demand_entity(f)
                if entity is not None and entity not in obs.columns:
                    raise SchemaError(f"observations lack column {entity!r} needed by on-demand feature {r!r}")
            check_collisions(obs.columns, names, refs is None)
            # Observation columns as lists of Python values, as a request's (see request_columns).
            reqs = [request_columns(f, {c: obs[c].tolist() for c in f.request if c in obs.columns}, n)
                    for _, f in ods]
            # The stored features read from the keys and times alone: an input not asked for may share an
            # observation column's name (it is not returned, and does not replace that column).
            keys = {timestamp, *(e for s in self.session.catalog.streams.values() for e in s.entities)}
            return reqs, (self.reader.training_set(obs[[c for c in obs.columns if c in keys]], stored, timestamp,
                                                   "pandas") if stored else obs)

        (_, ods, names), (reqs, got) = self._planned_read(
            lambda: self._plan(refs, None, available, lambda e: e is None or e in available), read)
        values = {r: f.apply(input_frame(f, {i: got[i].to_numpy() for i in f.inputs}, req, n))
                  for (r, f), req in zip(ods, reqs, strict=True)}
        out = obs.copy()
        for r in names:
            out[r] = _column(values[r] if r in values else got[r].to_numpy(), out.index)
        if output == "arrow":
            try:
                return pa.Table.from_pandas(out, preserve_index=False)
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise SchemaError(f"training set: a column cannot become Arrow: {exc}; use output='pandas'") from None
        if output == "ray":
            return ray.data.from_pandas(out.reset_index(drop=True))
        return out
