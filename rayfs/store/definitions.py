"""Registering and dropping definitions from a driver: streams, features (with their backfill), SQL, configs.

Every change goes through the store's coordinator (:mod:`rayfs.store.coordinator`), the one writer of the
catalog; the driver validates early against its cached catalog (clear errors before any actor call) and
replaces its copy with the catalog the coordinator answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import ray

from rayfs.errors import DefinitionError, OptionError, RayfsError
from rayfs.model.config import StoreConfig, load_config
from rayfs.model.definitions import Feature, Stream
from rayfs.model.ondemand import OnDemandFeature
from rayfs.store.session import Session

__all__ = ["as_config", "drop_feature", "register_feature", "register_on_demand", "register_sql",
           "register_stream"]

Progress = Callable[[int, int], None]


def register_stream(session: Session, name: str, entities: Sequence[str] | str, timestamp: str) -> Stream:
    """See :meth:`rayfs.FeatureStore.register_stream`."""
    s = Stream(name=name, entities=entities, timestamp=timestamp)  # it checks and normalises entities
    session.refresh(ray.get(session.coordinator.register_stream.remote(s.to_dict())))
    return session.catalog.streams[name]


def register_feature(session: Session, feature: Feature, progress: Progress | None = None) -> Feature:
    """See :meth:`rayfs.FeatureStore.register_feature`."""
    if not isinstance(feature, Feature):
        hint = "; use register_on_demand" if isinstance(feature, OnDemandFeature) else ""
        raise DefinitionError(f"register_feature takes a rayfs.Feature, not {type(feature).__name__}{hint}")
    if progress is not None and not callable(progress):
        raise OptionError(f"register_feature({feature.name!r}): progress must be a function of (done, total), "
                          f"not {type(progress).__name__}")
    session.fresh(lambda cat: cat.check_feature(feature))  # early, clear errors
    ref = session.coordinator.register_feature.remote(feature.to_dict())
    if progress is not None:
        _watch_backfill(session, ref, feature.name, set(session.catalog.features), progress)
    d, _change, catalog, events = ray.get(ref)
    session.refresh(catalog)
    if progress is not None:
        progress(events, events)
    return Feature.from_dict(d)


def _watch_backfill(session: Session, ref, name: str, known: set[str], progress: Progress) -> None:
    """Poll the shards until ``ref`` is ready; report (done, total) of the new version of ``name``
    summed over every shard, once all of them have started (a shard's total is fixed at its start)."""
    last = None
    while not ray.wait([ref], timeout=0.2)[0]:
        states = ray.get([h.backfill_progress.remote() for h in session.handles])
        keys = {k for st in states for k in st if k.partition("@")[0] == name and k not in known}
        if not keys:
            continue
        key = max(keys, key=lambda k: int(k.partition("@")[2] or 1))
        if all(key in st for st in states):
            now = (sum(st[key][0] for st in states), sum(st[key][1] for st in states))
            if now != last:
                progress(*now)
                last = now


def register_sql(session: Session, sql: str, window, description: str, metadata: dict) -> list[Feature]:
    """See :meth:`rayfs.FeatureStore.register_sql`."""
    from rayfs.model.sql import features_from_sql

    unknown = sorted(set(metadata) - {f.name for f in dataclasses.fields(Feature)})
    if unknown:
        raise DefinitionError(f"register_sql: no feature field {', '.join(map(repr, unknown))}; metadata are "
                              f"fields such as owner and tags")
    feats = features_from_sql(sql, window=window, streams=session.catalog.streams, description=description)
    feats = [f if not metadata else Feature.from_dict({**f.to_dict(), **metadata}) for f in feats]
    for f in feats:  # validate all before registering any
        session.catalog.check_feature(f)
    return [register_feature(session, f) for f in feats]


def _answer(ref):
    """``ray.get(ref)`` of a coordinator call; its refusal is raised as the rayfs error it is (not wrapped in
    Ray's task error with the remote traceback in its message)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, RayfsError):
            raise exc.cause from None
        raise


def register_on_demand(session: Session, feature: OnDemandFeature) -> OnDemandFeature:
    """See :meth:`rayfs.FeatureStore.register_on_demand`."""
    if not isinstance(feature, OnDemandFeature):
        raise DefinitionError(f"register_on_demand takes a rayfs.OnDemandFeature, not {type(feature).__name__}")
    # The coordinator validates against the current catalog and changes nothing if the definition is refused.
    d, _change, catalog = _answer(session.coordinator.register_on_demand.remote(feature.to_dict()))
    session.refresh(catalog)
    # The registering process keeps the live function (the catalog's copy is unpickled only on first use).
    return dataclasses.replace(OnDemandFeature.from_dict(d), function=feature.function)


def drop_feature(session: Session, name: str, version: int | None) -> Feature | OnDemandFeature:
    """See :meth:`rayfs.FeatureStore.drop_feature`."""
    ref = name if version is None else f"{name}@{version}"
    f = session.fresh(lambda cat: cat.on_demand_feature(ref) if cat.is_on_demand(ref) else cat.feature(ref))
    d, catalog = _answer(session.coordinator.drop_feature.remote(ref))  # refused while an on-demand one reads it
    session.refresh(catalog)
    return OnDemandFeature.from_dict(d) if isinstance(f, OnDemandFeature) else Feature.from_dict(d)


def as_config(config) -> StoreConfig:
    """``config`` itself if it is a :class:`~rayfs.model.config.StoreConfig`, else the config file at that path."""
    return config if isinstance(config, StoreConfig) else load_config(config)
