"""FeatureStore: the public entry point, a driver's handle on a store's coordinator and shard actors.

Embedded by default: :meth:`FeatureStore.open` starts a private local Ray (``address="local"``) unless
Ray is already initialised in this process, ``address`` is given or ``RAY_ADDRESS`` names a cluster, and
shuts down only a Ray it started itself. A store opened with a ``name`` is a set of detached actors that
outlives its driver; :func:`connect` reaches it by name from any other driver.
"""

from __future__ import annotations

import copy
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import ray

from rayfs.aggregates import REGISTRY
from rayfs.engine import columns as C
from rayfs.engine.fold import compile_feature
from rayfs.errors import DefinitionError, SchemaError, StoreClosedError, StoreOpenError, UnknownFeatureError
from rayfs.model.definitions import Feature, Stream, check_name
from rayfs.model.timeutil import to_micros
from rayfs.shard.core import DURABILITY
from rayfs.storage.catalog import Catalog
from rayfs.storage.observations import ObservationStreams
from rayfs.store import cluster, monitor
from rayfs.store.ingest import Ingestor, is_batches
from rayfs.store.reads import Request, fan_out
from rayfs.store.session import Session

OUTPUTS = ("pandas", "arrow", "ray")


def _column(values: np.ndarray, index: pd.Index) -> pd.Series:
    # Keep object columns object: pandas 3 would turn strings into its str dtype, None into NaN.
    return pd.Series(values, index=index, dtype=object if values.dtype == object else None)


def _repeat(one: np.ndarray, n: int) -> np.ndarray:
    """``n`` copies of a one-element array; list values (``last_k``, ...) are copied, never shared."""
    if one.dtype == object and isinstance(one[0], list):
        out = np.empty(n, dtype=object)
        out[:] = [list(one[0]) for _ in range(n)]
        return out
    return np.repeat(one, n)


class FeatureStore:
    """An event-sourced feature store whose shards are Ray actors.

    Use :meth:`open` (or :func:`rayfs.connect` for a named store); see the README for a tour.
    """

    def __init__(self, session: Session, *, started_ray: bool, owns_actors: bool) -> None:
        self._session = session
        self.path: str = session.path
        self.name: str | None = session.settings["name"]
        self._started_ray = started_ray
        self._owns = owns_actors
        self._closed = False
        self._empties: dict[tuple, np.ndarray] = {}
        self._ingestor = Ingestor(session)
        self._obs = ObservationStreams(self.path, session.settings["durability"])
        self._resume_subscriptions()

    # ------------------------------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, shards: int | None = None, *, name: str | None = None,
             address: str | None = None, namespace: str = cluster.NAMESPACE, durability: str = "sync",
             segment_bytes: int = 64 << 20, snapshot_every: int = 200) -> FeatureStore:
        """Open (or create) the store at ``path``.

        Args:
            path: the data folder; an existing store there is recovered (definitions, events, state). In a
                cluster, put it on a filesystem every node can reach so shards can restart anywhere.
            shards: number of shard actors for a new store (default 4); an existing store keeps its own
                and an explicit different number is an error.
            name: makes the store a set of detached actors called ``rayfs:<name>:...`` that outlive this
                driver and that :func:`rayfs.connect` finds; if a store of that name runs already (with the
                same path), this attaches to it. Without a name the actors live as long as this driver.
            address: the Ray to use if this process has not started one: ``None`` (``RAY_ADDRESS`` or a
                private local Ray), ``"auto"`` (the cluster on this machine), ``"ray://host:10001"``.
            namespace: the Ray namespace of the store's actors.
            durability: ``"sync"`` (fsync before an ingest returns), ``"group"`` (group commit: one fsync
                every ~2 ms shared by concurrent ingests, acks wait for it) or ``"none"`` (OS buffering:
                survives a process crash, may lose the last seconds on power loss).
            segment_bytes: log segment size at which a new segment file is started.
            snapshot_every: a shard snapshots its state every this many batches (and on close).
        """
        path = os.path.abspath(os.fspath(path))
        if durability not in DURABILITY:
            raise DefinitionError(f"durability must be one of {DURABILITY}, not {durability!r}")
        if name is not None:
            check_name(name, "store")
        started = cluster.ensure_ray(address, namespace)
        try:
            return cls._open(path, shards, name, namespace, started, durability=durability,
                             segment_bytes=segment_bytes, snapshot_every=snapshot_every)
        except BaseException:
            if started:
                ray.shutdown()
            raise

    @classmethod
    def _open(cls, path: str, shards: int | None, name: str | None, namespace: str, started: bool,
              **options) -> FeatureStore:
        sid = cluster.store_id(path, name)
        coord = cluster.lookup(cluster.coordinator_name(sid), namespace)
        if coord is not None:
            if name is None:
                raise StoreOpenError(f"store {path} is already open in this Ray cluster; close it first")
            return cls._attach(coord, shards, started, path=path)
        catalog = Catalog.load(path)
        if catalog is None:
            n = 4 if shards is None else shards
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise DefinitionError(f"shards must be a positive integer, not {shards!r}")
            catalog = Catalog(path, n)
            catalog.save()
        elif shards is not None and shards != catalog.shards:
            raise DefinitionError(f"store {path} has {catalog.shards} shards; cannot reopen with {shards}")
        settings = cluster.settings_for(path, name, namespace, catalog.shards, **options)
        if name is None and any(cluster.lookup(n, namespace) for n in settings["shard_names"]):
            raise StoreOpenError(f"store {path} is already open in this Ray cluster; close it first")
        cluster.check_unlocked(path, catalog.shards)  # another store (another name) runs on this folder
        created: list = []
        try:
            # The coordinator and the shards start in parallel (each actor process takes ~1 s to import).
            coord = cluster.create_coordinator(path, settings)
            created.append(coord)
            handles = cluster.create_shards(path, settings, [s.to_dict() for s in catalog.streams.values()],
                                            [f.to_dict() for f in catalog.features.values()])
            created += handles
            settings = ray.get(coord.settings.remote())  # (a named store's may come from a concurrent opener)
            for info in ray.get([h.info.remote() for h in handles]):  # every shard has recovered
                if info["log_truncated_bytes"]:
                    warnings.warn(f"store {path}: shard {info['shard']} dropped a torn log tail of "
                                  f"{info['log_truncated_bytes']} bytes (a batch that was never acknowledged)",
                                  RuntimeWarning, stacklevel=4)
            store = cls(Session(coord, settings, handles), started_ray=started, owns_actors=name is None)
            store._ingestor.recover()
            return store
        except BaseException:  # a failed open leaves no actor behind
            cluster.release(created, [cluster.coordinator_name(sid), *settings["shard_names"]], namespace)
            raise

    @classmethod
    def _attach(cls, coord, shards: int | None, started: bool, path: str | None = None) -> FeatureStore:
        settings = ray.get(coord.settings.remote())
        if path is not None and settings["path"] != path:
            raise StoreOpenError(f"store {settings['name']!r} already runs on {settings['path']}, not {path}")
        if shards is not None and shards != settings["shards"]:
            raise DefinitionError(f"store {settings['name']!r} has {settings['shards']} shards, not {shards}")
        store = cls(Session(coord, settings, cluster.shard_handles(settings)), started_ray=started,
                    owns_actors=False)
        if os.path.isdir(store.path):
            store._ingestor.recover()
        return store

    @classmethod
    def connect(cls, name: str, *, address: str | None = "auto", namespace: str = cluster.NAMESPACE) -> FeatureStore:
        """Attach to the running store called ``name`` (see :func:`rayfs.connect`)."""
        started = cluster.ensure_ray(address, namespace)
        try:
            coord = cluster.lookup(cluster.coordinator_name(name), namespace)
            if coord is None:
                raise StoreOpenError(f"no store named {name!r} in Ray namespace {namespace!r}; start one with "
                                     f"FeatureStore.open(path, name={name!r}) or `rayfs serve`")
            return cls._attach(coord, None, started)
        except BaseException:
            if started:
                ray.shutdown()
            raise

    def close(self) -> None:
        """Detach from the store; stop its actors (after a snapshot) if this driver owns them.

        An embedded store (opened without a name), or any store in a Ray this call shuts down, is
        stopped; a named store in a shared cluster keeps running for other drivers (see :meth:`stop`).
        """
        if self._closed:
            return
        self._closed = True
        try:
            if (self._owns or self._started_ray) and self.alive():  # (someone may have stopped it already)
                self._stop_actors()
        finally:
            self._ingestor.close()
            self._obs.close()
            if self._started_ray:
                ray.shutdown()

    def stop(self) -> None:
        """Snapshot every shard and stop all of the store's actors (for every driver), then close."""
        self._check_open()
        self._owns = True
        self.close()

    def _stop_actors(self) -> None:
        s = self._session
        ns = s.settings["namespace"]
        self._stop_subscriptions()
        try:
            ray.get([h.close.remote() for h in s.handles])
        finally:
            # The coordinator goes first: a driver that then finds a shard gone sees a stopped store,
            # not a lost node (it would re-create the shard).
            cluster.release([s.coordinator], [cluster.coordinator_name(s.settings["store_id"])], ns)
            cluster.release(s.handles, s.settings["shard_names"], ns)

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")

    @property
    def _handles(self) -> list:
        return self._session.handles

    @property
    def _catalog(self) -> Catalog:
        return self._session.catalog

    # ------------------------------------------------------------------------------------- definitions
    @property
    def streams(self) -> dict[str, Stream]:
        return dict(self._catalog.streams)

    @property
    def features(self) -> dict[str, Feature]:
        """The latest version of every feature, by name (older live versions: :meth:`list_features`)."""
        names = dict.fromkeys(f.name for f in self._catalog.features.values())  # in registration order
        return {n: self._catalog.latest(n) for n in names}

    def register_stream(self, name: str, entities: Sequence[str] | str, timestamp: str) -> Stream:
        """Declare a stream of events keyed by ``entities`` with event time in column ``timestamp``.

        Registering an identical stream again is a no-op; a different one with the same name is an error.
        """
        self._check_open()
        s = Stream(name=name, entities=tuple([entities] if isinstance(entities, str) else entities),
                   timestamp=timestamp)
        self._session.refresh(ray.get(self._session.coordinator.register_stream.remote(s.to_dict())))
        return self._catalog.streams[name]

    def register_feature(self, feature: Feature, *, progress: Callable[[int, int], None] | None = None) -> Feature:
        """Register ``feature``; events already logged are folded into it before this returns (backfill).

        Registering an identical definition again is a no-op; one that differs only in description, owner
        or tags updates those; any other difference creates a new version (``name@2``, ...) while older
        versions stay queryable by ``name@v`` until :meth:`drop_feature`. The bare name means the latest.

        Args:
            feature: the definition.
            progress: called now and then during the backfill with ``(events done, events total)`` over
                all shards. Ingest goes on meanwhile.

        Returns:
            The registered feature (with its ``version`` and ``created`` time).
        """
        self._check_open()
        if not isinstance(feature, Feature):
            raise DefinitionError(f"register_feature takes a rayfs.Feature, not {type(feature).__name__}")
        self._session.fresh(lambda cat: cat.check_feature(feature))  # early, clear errors
        ref = self._session.coordinator.register_feature.remote(feature.to_dict())
        if progress is not None:
            self._watch_backfill(ref, feature.name, set(self._catalog.features), progress)
        d, _change, catalog, events = ray.get(ref)
        self._session.refresh(catalog)
        if progress is not None:
            progress(events, events)
        return Feature.from_dict(d)

    def _watch_backfill(self, ref, name: str, known: set[str], progress: Callable[[int, int], None]) -> None:
        """Poll the shards until ``ref`` is ready; report (done, total) of the new version of ``name``
        summed over every shard, once all of them have started (a shard's total is fixed at its start)."""
        last = None
        while not ray.wait([ref], timeout=0.2)[0]:
            states = ray.get([h.backfill_progress.remote() for h in self._handles])
            keys = {k for st in states for k in st if k.partition("@")[0] == name and k not in known}
            if not keys:
                continue
            key = max(keys, key=lambda k: int(k.partition("@")[2] or 1))
            if all(key in st for st in states):
                now = (sum(st[key][0] for st in states), sum(st[key][1] for st in states))
                if now != last:
                    progress(*now)
                    last = now

    def register_sql(self, sql: str, window=None, description: str = "", **metadata) -> list[Feature]:
        """Register the features of ``SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream>
        [WHERE ...] GROUP BY <entity>``, optionally over a trailing ``window``; returns them."""
        from rayfs.model.sql import features_from_sql

        self._check_open()
        feats = features_from_sql(sql, window=window, streams=self._catalog.streams, description=description)
        feats = [f if not metadata else Feature.from_dict({**f.to_dict(), **metadata}) for f in feats]
        for f in feats:  # validate all before registering any
            self._catalog.check_feature(f)
        return [self.register_feature(f) for f in feats]

    def drop_feature(self, name: str, version: int | None = None) -> Feature:
        """Drop one version of a feature (the latest if ``version`` is None); its state is freed."""
        self._check_open()
        ref = name if version is None else f"{name}@{version}"
        self._session.fresh(lambda cat: cat.feature(ref))
        d, catalog = ray.get(self._session.coordinator.drop_feature.remote(ref))
        self._session.refresh(catalog)
        return Feature.from_dict(d)

    def apply(self, config) -> dict:
        """Register the streams and features of a config (a path or a :class:`rayfs.model.config.StoreConfig`).

        Returns ``{"streams": [...], "features": [...], "subscriptions": [...]}`` with what was registered
        (no-ops included); a stream with a ``[streams.kafka]`` table is subscribed to its topic.
        """
        from rayfs.model.config import StoreConfig, load_config

        cfg = config if isinstance(config, StoreConfig) else load_config(config)
        streams = [self.register_stream(s.name, s.entities, s.timestamp) for s in cfg.streams]
        features = [self.register_feature(f) for f in cfg.features]
        for stream, source in cfg.kafka:
            self.subscribe(stream, source)
        return {"streams": streams, "features": features, "subscriptions": [s for s, _ in cfg.kafka]}

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self, stream: str, data, *, batch_id: str | None = None) -> dict:
        """Append a batch of events to ``stream``; returns when it is durable and folded on every shard.

        Args:
            stream: a registered stream.
            data: a pandas DataFrame, pyarrow Table, list of dicts, dict of arrays, or a ``ray.data.Dataset``
                (ingested in parallel by Ray Data workers, never collected on this driver); or many batches:
                an iterator/generator of batches, or a list/tuple of DataFrames, Tables or dicts of arrays.
                Many batches are pipelined: this driver prepares and logs batch k+1 while the shards fold
                batch k (at most two in flight); each batch is its own batch, acknowledged as above, in order.
            batch_id: an id making retries idempotent (generated if not given). For many batches, batch k
                gets the id ``f"{batch_id}/{k}"``. Not for a dataset (a DefinitionError): its batches get ids
                from their content, so a retried Ray Data task is applied once (see :mod:`rayfs.store.dataio`).

        Returns:
            ``{"rows": n, "batch_id": id}``; ``{"rows": n, "batches": k}`` for a dataset or many batches.

        Raises:
            SchemaError, TimestampError, UnknownStreamError: on bad input; nothing is then written. For many
                batches the message names the bad batch's position: the batches before it are acknowledged,
                nothing of it or after it is written (likewise if the iterator itself raises).
        """
        self._check_open()
        if type(data).__module__.startswith("ray.data"):
            from rayfs.store.dataio import ingest_dataset

            self._catalog.stream(stream)
            if batch_id is not None:
                raise DefinitionError(f"ingest into {stream!r}: batch_id is not supported for a ray.data.Dataset "
                                      "(Ray Data cuts batches differently on every run); a retried Ray Data task "
                                      "is applied once without it")
            return ingest_dataset(self._session, stream, data)
        if is_batches(data):
            return self._ingestor.ingest_many(stream, data, batch_id)
        return self._ingestor.ingest(stream, data, batch_id)

    def flush(self) -> None:
        """Return when every ingested event is durable and folded on every shard."""
        self._check_open()
        ray.get([h.flush.remote() for h in self._handles])

    def snapshot(self) -> None:
        """Snapshot every shard's state into LMDB now."""
        self._check_open()
        ray.get([h.snapshot.remote() for h in self._handles])

    # ------------------------------------------------------------------------------------- reads
    def _resolve(self, features: Iterable[str] | str | None, entity: str | None) -> list[tuple[str, Feature]]:
        """(requested name, feature version) pairs; a name unknown to the cached catalog refreshes it once."""
        if features is None:
            return [(n, f) for n, f in self.features.items() if entity is None or f.entity == entity]
        refs = [features] if isinstance(features, str) else list(features)
        try:
            return [(r, self._catalog.feature(r)) for r in refs]
        except UnknownFeatureError:
            self._session.refresh()
            return [(r, self._catalog.feature(r)) for r in refs]

    def _empty(self, f: Feature, n: int) -> np.ndarray:
        """``n`` copies of the feature's empty value (0 for counts, NaN or None otherwise)."""
        kind = self._catalog.schema.get(f.stream, {}).get(f.column) if f.column else None
        if f.column in self._catalog.streams[f.stream].entities:  # as the shards do (ShardCore._compiled_for)
            kind = "str" if "str" in REGISTRY[f.agg].kinds else "num"
        one = self._empties.get((f, kind))
        if one is None:
            cf = compile_feature(f, kind)
            one = self._empties[(f, kind)] = cf.agg.finalize(cf.agg.zero(1))
        return _repeat(one, n)

    def _fan_out(self, method: str, groups: list[tuple[list[tuple[str, Feature]], str, np.ndarray, list]], n: int,
                 final: bool) -> dict[str, np.ndarray] | None:
        """Ask the shards for every group ``(features, entity, keys, extra)`` at once; requested name ->
        values. ``None`` (unless ``final``) if they know a newer catalog: resolve and ask again."""
        requests = []
        for fs, entity, keys, extra in groups:
            vals: dict[str, np.ndarray] = {}
            for _, f in fs:
                if f.key not in vals:
                    vals[f.key] = self._empty(f, n)
            requests.append(Request(entity, keys, extra, vals))
        if n and any(r.defaults for r in requests):
            try:
                cv = self._session.call(lambda hs: fan_out(hs, method, [r for r in requests if r.defaults]))
            except UnknownFeatureError:  # a version this driver's catalog still has was dropped elsewhere
                self._session.refresh()
                if final:
                    raise
                return None
            if self._session.seen(cv) and not final:  # definitions or column kinds changed: ask again
                return None
        out, used = {}, set()
        for (fs, *_), req in zip(groups, requests, strict=True):
            for r, f in fs:  # two names of one version (``sx`` and ``sx@3``) get separate arrays
                out[r] = copy.deepcopy(req.defaults[f.key]) if f.key in used else req.defaults[f.key]
                used.add(f.key)
        return out

    def get_features(self, entity: str, keys: Sequence, features: Iterable[str] | str | None = None) -> pd.DataFrame:
        """Online feature values for ``keys`` of ``entity``, one row per key in the order given.

        Values are as of just after the newest event ingested on each feature's stream; keys never seen
        get the empty value (0 for counts, null otherwise). ``features`` are names (latest version) or
        ``name@version``; each becomes a column named as given.
        """
        self._check_open()
        k = C.key_column(pd.Series(list(keys), dtype=object), what=f"keys of entity {entity!r}")
        for attempt in range(3):
            fs = self._resolve(features, entity)
            for r, f in fs:
                if f.entity != entity:
                    raise DefinitionError(f"feature {r!r} groups by {f.entity!r}, not {entity!r}")
            out = self._fan_out("get", [(fs, entity, k, [])], len(k), final=attempt == 2)
            if out is not None:
                break
        index = pd.RangeIndex(len(k))
        cols = {entity: pd.Series(list(keys), dtype=object, index=index)}
        # Numeric columns go in as arrays (a Series per column costs more than the shard call's work).
        cols.update((r, _column(out[r], index) if out[r].dtype == object else out[r]) for r, _ in fs)
        return pd.DataFrame(cols, copy=False)

    def training_set(self, observations: pd.DataFrame | str, features: Iterable[str] | str | None = None,
                     timestamp: str = "ts", *, output: str = "pandas"):
        """Point-in-time correct feature values for each observation row.

        Args:
            observations: a DataFrame (or pyarrow Table) with the features' entity columns and ``timestamp``,
                or the name of an observation stream filled by :meth:`append_observation`.
            features: feature names (default: every feature whose entity column is in the observations);
                ``name@version`` picks an older version.
            timestamp: the observation time column; a row at time ``t`` sees events with ``ts < t``
                (and ``t - window <= ts`` for windowed features).
            output: ``"pandas"`` (a DataFrame), ``"arrow"`` (a pyarrow Table) or ``"ray"`` (a Ray Dataset,
                ready for Ray Train).

        Returns:
            The observation columns plus one column per feature: same rows, same order.
        """
        self._check_open()
        if output not in OUTPUTS:
            raise DefinitionError(f"output must be one of {OUTPUTS}, not {output!r}")
        obs = self.observations(observations) if isinstance(observations, str) else observations
        obs = C.to_frame(obs, what="observations")
        if timestamp not in obs.columns:
            raise SchemaError(f"observations lack the timestamp column {timestamp!r}")
        t = to_micros(obs[timestamp], what=f"observations column {timestamp!r}")
        for attempt in range(3):
            fs = self._resolve(features, None)
            if features is None:
                fs = [(r, f) for r, f in fs if f.entity in obs.columns]
            results = self._replay_all(obs, fs, t, final=attempt == 2)
            if results is not None:
                break
        out = obs.copy()
        for r, _ in fs:
            out[r] = _column(results[r], out.index)
        if output == "arrow":
            import pyarrow as pa

            try:
                return pa.Table.from_pandas(out, preserve_index=False)
            except (pa.ArrowTypeError, pa.ArrowInvalid) as exc:
                raise SchemaError(f"training set: a column cannot become Arrow (e.g. entity keys mixing integers "
                                  f"and strings): {exc}; use output='pandas'") from None
        if output == "ray":
            return ray.data.from_pandas(out.reset_index(drop=True))
        return out

    def _replay_all(self, obs: pd.DataFrame, fs: list[tuple[str, Feature]], t: np.ndarray,
                    final: bool) -> dict | None:
        by_entity: dict[str, list[tuple[str, Feature]]] = {}
        for r, f in fs:
            if f.entity not in obs.columns:
                raise SchemaError(f"observations lack column {f.entity!r} needed by feature {r!r}")
            by_entity.setdefault(f.entity, []).append((r, f))
        groups = [(group, entity, C.key_column(obs[entity], what=f"observations column {entity!r}"), [t])
                  for entity, group in by_entity.items()]
        return self._fan_out("replay", groups, len(obs), final)

    # ------------------------------------------------------------------------------------- observations
    def append_observation(self, name: str, rows) -> int:
        """Durably append one observation (a dict) or many (DataFrame, list of dicts) to stream ``name``.

        Returns the number of rows appended.
        """
        self._check_open()
        if name in self._catalog.streams:
            raise DefinitionError(f"{name!r} is an event stream; observation streams need their own name")
        return self._obs.append(name, rows)

    def observations(self, name: str) -> pd.DataFrame:
        """Every observation appended to stream ``name``, in append order."""
        return self._obs.read(name)

    # ------------------------------------------------------------------------------------- monitoring
    def info(self) -> list[dict]:
        """Per-shard figures: log offset and bytes, events since the last snapshot, newest event times."""
        return ray.get([h.info.remote() for h in self._handles])

    def stats(self) -> pd.DataFrame:
        """One row per shard: events/bytes/batches ingested, duplicates, errors, log segments and bytes,
        snapshot age, events since the snapshot, replay observations and events/s, node id (the same
        figures Ray's Prometheus endpoint exports as ``rayfs_*`` metrics)."""
        self._check_open()
        return monitor.shard_stats(self._session)

    def feature_stats(self, features: Iterable[str] | str | None = None,
                      training_set: pd.DataFrame | None = None) -> pd.DataFrame:
        """Statistics per feature: count, nulls, null rate, mean, min, max, distinct estimate (HLL).

        Of the online values over every entity the store knows, or, given ``training_set``, of its
        feature columns (``features`` default: every feature column it has).
        """
        self._check_open()
        if training_set is not None:
            from rayfs.engine.featurestats import frame_stats

            if features is None:
                cols = [c for c in training_set.columns if c in self.features or "@" in c]
            else:
                cols = [features] if isinstance(features, str) else list(features)
            return frame_stats(training_set, cols)
        fs = self._resolve(features, None)
        st = monitor.online_stats(self._session, [f for _, f in fs])
        return monitor.stats_frame({r: st[f.key] for r, f in fs})

    def list_features(self) -> pd.DataFrame:
        """Every live feature version with its definition and metadata, one row each."""
        self._check_open()
        self._session.refresh()
        return monitor.list_features(self._session)

    def describe(self, name: str) -> dict:
        """Definition (also as SQL), version history, metadata and live statistics of feature ``name``."""
        self._check_open()
        self._session.refresh()
        return monitor.describe(self._session, name)

    def audit(self, n: int = 1000, *, features: Iterable[str] | str | None = None, seed: int = 0) -> pd.DataFrame:
        """Check online values against a fresh replay of the on-disk log at the same instant.

        Samples up to ``n`` entity keys per entity field and compares, for each feature, the served online
        value with the point-in-time value at (newest event + 1µs) recomputed from the shards' logs read
        back from disk. Expected: zero mismatches.

        Returns:
            One row per feature: ``feature, entity, checked, mismatches, examples``.
        """
        self._check_open()
        return monitor.audit(self._session, self._resolve(features, None), n, seed)

    def alive(self) -> bool:
        """Whether the store's coordinator still runs (False once someone has stopped the store)."""
        from rayfs.store.cluster import coordinator_name, lookup

        s = self._session.settings
        return lookup(coordinator_name(s["store_id"]), s["namespace"]) is not None

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Block until every shard answers (e.g. after a node loss, while shards restart elsewhere)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                ray.get([h.info.remote() for h in self._handles], timeout=max(0.1, deadline - time.monotonic()))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # ------------------------------------------------------------------------------------- Kafka subscriptions
    def subscribe(self, stream: str, source) -> None:
        """Feed ``stream`` from a Kafka topic, exactly once; returns once the subscription is recorded and
        its consumers run.

        The subscription is kept in the store's folder and restarts whenever the store is opened (or a
        consumer's process dies): reading resumes at the first offset not acknowledged by every shard, so
        no message is lost and none is folded twice. Subscribing again with the same source is a no-op.

        Args:
            stream: a registered event stream.
            source: a :class:`rayfs.KafkaSource`; each message value is one event.

        Raises:
            SourceError: the topic cannot be reached, or the stream is subscribed to another source.
            UnknownStreamError: ``stream`` is not registered.
        """
        from rayfs.store import subscriptions

        self._check_open()
        subscriptions.subscribe(self._session, stream, source)

    def unsubscribe(self, stream: str) -> None:
        """Stop feeding ``stream`` from Kafka (batches in flight are finished first) and forget its offsets."""
        from rayfs.store import subscriptions

        self._check_open()
        subscriptions.unsubscribe(self._session, stream)

    def subscriptions(self) -> pd.DataFrame:
        """One row per subscribed partition: ``stream, topic, partition, next_offset`` (the first offset not
        acknowledged), ``high_watermark, lag, events, dead_letters, state`` (``starting``, ``running``,
        ``retrying`` (brokers unreachable), ``restarting``, ``failed``, ``stopped``, ``not running``),
        ``pid`` (the consumer's process), ``consumer, error``, and ``skipped``: the ``(from, to)`` offset
        jumps made where offsets vanished (``on_offset_reset``)."""
        from rayfs.store import subscriptions

        self._check_open()
        return subscriptions.subscriptions(self._session)

    def wait_caught_up(self, stream: str, timeout: float = 60.0) -> None:
        """Block until every message below each partition's high watermark (as of this call) is folded,
        durable and visible online.

        Raises:
            SourceError: a consumer failed (e.g. its offsets vanished from Kafka), or ``timeout`` passed.
        """
        from rayfs.store import subscriptions

        self._check_open()
        subscriptions.wait_caught_up(self._session, stream, timeout)

    def dead_letters(self, stream: str) -> pd.DataFrame:
        """The messages of ``stream``'s topic that were not events: ``topic, partition, offset, key, value``
        (bytes), ``reason, timestamp_ms``, in (partition, offset) order (the newest 10,000 per consumer)."""
        from rayfs.store import subscriptions

        self._check_open()
        return subscriptions.dead_letters(self._session, stream)

    def _resume_subscriptions(self) -> None:
        """Start the consumers of the store's subscriptions that are not running (on open and connect)."""
        from rayfs.sources.offsets import load_subscriptions

        if not load_subscriptions(self.path):
            return
        from rayfs.store import subscriptions

        try:
            subscriptions.resume(self._session)
        except Exception as exc:  # noqa: BLE001 - the store opens; subscriptions() shows what is not running
            warnings.warn(f"store {self.path}: Kafka subscriptions not resumed: {exc}", RuntimeWarning,
                          stacklevel=3)

    def _stop_subscriptions(self) -> None:
        """Stop the consumers before the shards (a consumer would retry against stopped shards)."""
        from rayfs.sources.offsets import load_subscriptions

        if os.path.isdir(self.path) and load_subscriptions(self.path):
            from rayfs.store import subscriptions

            subscriptions.stop(self._session)


def connect(name: str, *, address: str | None = "auto", namespace: str = cluster.NAMESPACE) -> FeatureStore:
    """Attach to the running store called ``name`` from any driver or process.

    Args:
        name: the store's name (``FeatureStore.open(path, name=...)`` or ``rayfs serve``).
        address: the Ray cluster to join if this process has not joined one (``"auto"``: the one on this
            machine; ``None``: ``RAY_ADDRESS``).
        namespace: the Ray namespace the store was started in.

    Returns:
        A :class:`FeatureStore`; its :meth:`~FeatureStore.close` detaches and leaves the store running.
    """
    return FeatureStore.connect(name, address=address, namespace=namespace)
