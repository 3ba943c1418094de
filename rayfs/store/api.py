"""FeatureStore: the public entry point, a driver's handle on a store's coordinator and shard actors.

The class reads as the product's table of contents: lifecycle, definitions, ingest, reads, observations,
monitoring, Kafka subscriptions. Each method checks the store is open and delegates: lifecycle to
:mod:`rayfs.store.lifecycle`, definitions to :mod:`rayfs.store.definitions`, ingest to
:mod:`rayfs.store.ingest` (and :mod:`rayfs.store.dataio` for Ray Data), reads to :mod:`rayfs.store.ondemand`
over :mod:`rayfs.store.reads`, observation streams to :mod:`rayfs.storage.observations`, monitoring to
:mod:`rayfs.store.monitor`, subscriptions to :mod:`rayfs.store.subscriptions`.

Embedded by default: :meth:`FeatureStore.open` starts a private local Ray (``address="local"``) unless
Ray is already initialised in this process, ``address`` is given or ``RAY_ADDRESS`` names a cluster, and
shuts down only a Ray it started itself. A store opened with a ``name`` is a set of detached actors that
outlives its driver; :func:`connect` reaches it by name from any other driver.
"""

from __future__ import annotations

import functools
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import pandas as pd
import ray

from rayfs.engine.parts import is_batches
from rayfs.errors import DefinitionError, OptionError, StoreClosedError
from rayfs.model.definitions import Feature, Stream
from rayfs.model.ondemand import OnDemandFeature
from rayfs.storage.catalog import Catalog
from rayfs.storage.observations import ObservationStreams
from rayfs.store import cluster, dataio, definitions, lifecycle, monitor
from rayfs.store.ingest import Ingestor
from rayfs.store.ondemand import OnDemandReads
from rayfs.store.reads import Reader

__all__ = ["FeatureStore", "connect"]


def _actors(method):
    """A facade method that calls the store's actors: refused once closed, and an actor that died because
    someone stopped the store (another driver, ``rayfs stop``) is reported as the StoreClosedError it is."""
    from ray.exceptions import RayActorError

    @functools.wraps(method)
    def wrapper(self: FeatureStore, *args, **kwargs):
        self._check_open()
        try:
            return method(self, *args, **kwargs)
        except RayActorError as exc:
            if lifecycle.alive(self._session.settings):
                raise
            err = StoreClosedError(f"store {self.name or self.path!r} was stopped (by another driver or "
                                   f"`rayfs stop`) during {method.__name__}")
            for note in getattr(exc, "__notes__", ()):
                err.add_note(note)
            raise err from exc

    return wrapper


class FeatureStore:
    """An event-sourced feature store whose shards are Ray actors.

    Use :meth:`open` (or :func:`rayfs.connect` for a named store); see the README for a tour.

    Attributes:
        path: the store's data folder.
        name: the store's name, ``None`` for an embedded store.
    """

    def __init__(self, conn: lifecycle.Connection) -> None:
        self._conn = conn
        self._session = conn.session
        self.path: str = conn.session.path
        self.name: str | None = conn.session.settings.name
        self._owns = conn.owns_actors
        self._closed = False
        self._ingestor = Ingestor(conn.session)
        self._obs = ObservationStreams(self.path, conn.session.settings.durability)
        self._reader = Reader(conn.session, self._obs)
        self._on_demand = OnDemandReads(self._reader)
        self._resume_subscriptions()

    # ------------------------------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, shards: int | None = None, *, name: str | None = None,
             address: str | None = None, namespace: str = cluster.NAMESPACE, durability: str = "sync",
             segment_bytes: int = 64 << 20, snapshot_every: int = 200, online_table: bool = False) -> FeatureStore:
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
            online_table: shards keep an online table that reads use without ever waiting for an ingest
                (see the README's "Online serving"); it costs ingest throughput (a quarter at 1M events,
                more as the store's keys grow). Without it reads go through the shards' state and wait for
                the batch being folded. Applies to the shards this call starts (a running store keeps its own).
        """
        return cls(lifecycle.open_store(path, shards, name=name, address=address, namespace=namespace,
                                        durability=durability, segment_bytes=segment_bytes,
                                        snapshot_every=snapshot_every, online_table=online_table))

    @classmethod
    def connect(cls, name: str, *, address: str | None = "auto", namespace: str = cluster.NAMESPACE) -> FeatureStore:
        """Attach to the running store called ``name`` (see :func:`rayfs.connect`)."""
        return cls(lifecycle.connect(name, address=address, namespace=namespace))

    def close(self) -> None:
        """Detach from the store; stop its actors (after a snapshot) if this driver owns them.

        An embedded store (opened without a name), or any store in a Ray this call shuts down, is
        stopped; a named store in a shared cluster keeps running for other drivers (see :meth:`stop`).
        """
        if self._closed:
            return
        self._closed = True
        if self._owns:  # consumers go before the shards (they would retry against stopped shards)
            self._stop_subscriptions()
        lifecycle.close(self._conn, stop=self._owns,
                        local=(self._ingestor.close, self._obs.close, self._reader.close))

    def stop(self) -> None:
        """Snapshot every shard and stop all of the store's actors (for every driver), then close."""
        self._check_open()
        self._owns = True
        self.close()

    def alive(self) -> bool:
        """Whether the store's coordinator still runs (False once someone has stopped the store)."""
        return lifecycle.alive(self._session.settings)

    @_actors
    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Block until every shard answers (e.g. after a node loss, while shards restart elsewhere)."""
        lifecycle.wait_until_ready(self._session, timeout)

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
        """Every registered stream, by name."""
        return dict(self._catalog.streams)

    @property
    def features(self) -> dict[str, Feature]:
        """The latest version of every feature, by name (older live versions: :meth:`list_features`)."""
        return dict(self._reader.resolve(None, None))

    @_actors
    def register_stream(self, name: str, entities: Sequence[str] | str, timestamp: str) -> Stream:
        """Declare a stream of events keyed by ``entities`` with event time in column ``timestamp``.

        Registering an identical stream again is a no-op; a different one with the same name is an error.
        """
        return definitions.register_stream(self._session, name, entities, timestamp)

    @_actors
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
        return definitions.register_feature(self._session, feature, progress)

    @_actors
    def register_sql(self, sql: str, window=None, description: str = "", **metadata) -> list[Feature]:
        """Register the features of ``SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream>
        [WHERE ...] GROUP BY <entity>``, optionally over a trailing ``window``; returns them.

        Args:
            sql: the statement.
            window: a window for every feature of the statement (e.g. ``"7d"``).
            description: the features' description.
            **metadata: other fields set on every feature (e.g. ``owner``, ``tags``).
        """
        return definitions.register_sql(self._session, sql, window, description, metadata)

    @_actors
    def register_on_demand(self, feature: OnDemandFeature | str, function: Callable | None = None, *,
                           inputs: Sequence[str] | str = (), request: Sequence[str] | str = (),
                           description: str = "", owner: str = "", tags: Sequence[str] | str = ()) -> OnDemandFeature:
        """Register an on-demand feature: a vectorised function of stored features and request fields,
        computed when read, the same way by :meth:`get_features` and :meth:`training_set`.

        Either ``register_on_demand(name, function, inputs=..., request=..., ...)`` or
        ``register_on_demand(feature)`` with an :class:`~rayfs.OnDemandFeature` (e.g. made by
        :func:`rayfs.on_demand`). ``function(frame)`` gets a DataFrame with one column per input and request
        field (named as given, one row per key or observation) and returns one value per row.

        The definition is kept in the store's catalog (the function as a cloudpickle and its source text), so
        it survives a restart and every driver connected to the store applies it. Versions work as for stored
        features: the same definition again is a no-op, other metadata updates it, another function or other
        inputs make a new version (``name@2``). :meth:`drop_feature` drops a version; names are shared with
        stored features.

        Args:
            feature: the name, or a whole :class:`~rayfs.OnDemandFeature` (then give nothing else).
            function: ``f(frame) -> values``.
            inputs: stored features it reads (``name`` for the latest version, or ``name@version``), all of
                one entity.
            request: request fields it reads: given to :meth:`get_features` with ``request=``, observation
                columns in a training set.
            description: free text for humans.
            owner: who answers for the feature.
            tags: labels for discovery.

        Returns:
            The registered feature (with its ``version`` and ``created`` time).

        Raises:
            OnDemandError: an input is unknown, on-demand, or of another entity than the other inputs; the
                function cannot be serialised. Nothing is registered then.
            DefinitionError: a bad name, a name a stored feature has, no input and no request field.
        """
        if isinstance(feature, OnDemandFeature):
            if function is not None or inputs or request or description or owner or tags:
                raise DefinitionError(f"register_on_demand({feature.name!r}): give an OnDemandFeature alone, or a "
                                      "name with its function and fields")
        else:
            feature = OnDemandFeature(name=feature, function=function, inputs=inputs, request=request,
                                      description=description, owner=owner, tags=tags)
        return definitions.register_on_demand(self._session, feature)

    @_actors
    def drop_feature(self, name: str, version: int | None = None) -> Feature | OnDemandFeature:
        """Drop one version of a feature, stored or on-demand (the latest if ``version`` is None); its state
        is freed. A stored version an on-demand feature reads cannot be dropped before it (DefinitionError)."""
        return definitions.drop_feature(self._session, name, version)

    @_actors
    def apply(self, config) -> dict:
        """Register the streams and features of a config (a path or a :class:`rayfs.model.config.StoreConfig`).

        Returns ``{"streams": [...], "features": [...], "on_demand": [...], "subscriptions": [...]}`` with
        what was registered (no-ops included); a stream with a ``[streams.kafka]`` table is subscribed to its
        topic, and so is each ``[[observations]]`` stream. Each ``[[on_demand]]`` function is imported here
        and kept by value in the store, so processes without its module apply it too.
        """
        cfg = definitions.as_config(config)
        streams = [self.register_stream(s.name, s.entities, s.timestamp) for s in cfg.streams]
        features = [self.register_feature(f) for f in cfg.features]
        on_demand = [self.register_on_demand(od.feature()) for od in cfg.on_demand]
        for stream, source in cfg.kafka:
            self.subscribe(stream, source)
        for o in cfg.observations:
            self.subscribe(o.name, o.source, observation_keys=list(o.keys), timestamp=o.timestamp)
        return {"streams": streams, "features": features, "on_demand": on_demand,
                "subscriptions": [s for s, _ in cfg.kafka] + [o.name for o in cfg.observations]}

    # ------------------------------------------------------------------------------------- ingest
    @_actors
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
        if dataio.is_dataset(data):
            return dataio.ingest_dataset(self._session, stream, data, batch_id=batch_id)
        if is_batches(data):
            return self._ingestor.ingest_many(stream, data, batch_id)
        return self._ingestor.ingest(stream, data, batch_id)

    @_actors
    def flush(self) -> None:
        """Return when every ingested event is durable and folded on every shard."""
        ray.get([h.flush.remote() for h in self._handles])

    @_actors
    def snapshot(self) -> None:
        """Snapshot every shard's state into LMDB now."""
        ray.get([h.snapshot.remote() for h in self._handles])

    # ------------------------------------------------------------------------------------- reads
    @_actors
    def get_features(self, entity: str, keys: Sequence, features: Iterable[str] | str | None = None, *,
                     request: Mapping[str, object] | pd.DataFrame | None = None) -> pd.DataFrame:
        """Online feature values for ``keys`` of ``entity``, one row per key in the order given.

        Values are as of just after the newest event ingested on each feature's stream; keys never seen
        get the empty value (0 for counts, null otherwise). ``features`` are names (latest version) or
        ``name@version``; each becomes a column named as given.

        On-demand features (:meth:`register_on_demand`) are computed from the stored values read and
        ``request``: a dict mapping each request field to one value (the same for every key) or to a
        sequence of one value per key, or a DataFrame with one row per key. ``features=None`` includes the
        on-demand features of ``entity`` whose request fields are all given.

        Raises:
            OnDemandError: a request field an on-demand feature needs is missing or of the wrong length, an
                input is not of ``entity``, or the function raised or returned the wrong number of values.
        """
        return self._on_demand.get_features(entity, keys, features, request)

    @_actors
    def training_set(self, observations: pd.DataFrame | str, features: Iterable[str] | str | None = None,
                     timestamp: str = "ts", *, output: str = "pandas"):
        """Point-in-time correct feature values for each observation row.

        Args:
            observations: a DataFrame (or pyarrow Table) with the features' entity columns and ``timestamp``,
                or the name of an observation stream filled by :meth:`append_observation`.
            features: feature names (default: every feature whose entity column is in the observations,
                and every on-demand feature whose inputs' entity and request fields are);
                ``name@version`` picks an older version. An on-demand feature's request fields are
                observation columns and its inputs their point-in-time values.
            timestamp: the observation time column; a row at time ``t`` sees events with ``ts < t``
                (and ``t - window <= ts`` for windowed features).
            output: ``"pandas"`` (a DataFrame), ``"arrow"`` (a pyarrow Table) or ``"ray"`` (a Ray Dataset,
                ready for Ray Train).

        Returns:
            The observation columns plus one column per feature: same rows, same order.
        """
        return self._on_demand.training_set(observations, features, timestamp, output)

    # ------------------------------------------------------------------------------------- observations
    def append_observation(self, name: str, rows, *, timestamp: str = "ts") -> int:
        """Durably append one observation (a dict) or many (DataFrame, list of dicts) to stream ``name``.

        Every append carries the ``timestamp`` column with a valid time in each row; other columns may be
        absent from an append (null there). Columns named like an entity field of the store's streams are
        checked as entity keys. Nothing is written if any check fails.

        Returns the number of rows appended.
        """
        self._check_open()
        if name in self._catalog.streams:
            raise DefinitionError(f"{name!r} is an event stream; observation streams need their own name")
        keys = {e for s in self._catalog.streams.values() for e in s.entities}
        return self._obs.append(name, rows, timestamp=timestamp, keys=keys)

    def observations(self, name: str) -> pd.DataFrame:
        """Every observation appended to stream ``name``, in append order."""
        self._check_open()
        return self._obs.read(name)

    # ------------------------------------------------------------------------------------- monitoring
    @_actors
    def info(self) -> list[dict]:
        """Per-shard figures: log offset and bytes, events since the last snapshot, newest event times."""
        return monitor.info(self._session)

    @_actors
    def stats(self) -> pd.DataFrame:
        """One row per shard: events/bytes/batches ingested, duplicates, errors, log segments and bytes,
        snapshot age, events since the snapshot, replay observations and events/s, node id (the same
        figures Ray's Prometheus endpoint exports as ``rayfs_*`` metrics)."""
        return monitor.shard_stats(self._session)

    @_actors
    def feature_stats(self, features: Iterable[str] | str | None = None,
                      training_set: pd.DataFrame | None = None) -> pd.DataFrame:
        """Statistics per feature: count, nulls, null rate, mean, min, max, distinct estimate (HLL).

        Of the online values over every entity the store knows, or, given ``training_set``, of its
        feature columns (``features`` default: every feature column it has).
        """
        if training_set is not None:
            return monitor.frame_feature_stats(training_set, features, self.features)
        return monitor.feature_stats(self._session, self._reader.resolve(features, None))

    @_actors
    def list_features(self) -> pd.DataFrame:
        """Every live feature version with its definition and metadata, one row each."""
        self._session.refresh()
        return monitor.list_features(self._session)

    @_actors
    def describe(self, name: str) -> dict:
        """Definition (also as SQL), version history, metadata and live statistics of feature ``name``."""
        self._session.refresh()
        return monitor.describe(self._session, name)

    @_actors
    def audit(self, n: int = 1000, *, features: Iterable[str] | str | None = None, seed: int = 0) -> pd.DataFrame:
        """Check online values against a fresh replay of the on-disk log at the same instant.

        Samples up to ``n`` entity keys per entity field and compares, for each feature, the served online
        value with the point-in-time value at (newest event + 1µs) recomputed from the shards' logs read
        back from disk. Expected: zero mismatches.

        Returns:
            One row per feature: ``feature, entity, checked, mismatches, examples``.

        Raises:
            OptionError: ``n`` is not a positive integer or ``seed`` not an integer.
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise OptionError(f"audit: n must be a positive integer, not {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise OptionError(f"audit: seed must be an integer, not {seed!r}")
        return monitor.audit(self._session, self._reader.resolve(features, None), n, seed)

    # ------------------------------------------------------------------------------------- Kafka subscriptions
    def subscribe(self, stream: str, source, *, observation_keys: Sequence[str] | str | None = None,
                  timestamp: str | None = None) -> None:
        """Feed ``stream`` from a Kafka topic, exactly once; returns once the subscription is recorded and
        its consumers run.

        The subscription is kept in the store's folder and restarts whenever the store is opened (or a
        consumer's process dies): reading resumes at the first offset not acknowledged by every shard, so
        no message is lost and none is folded twice. Subscribing again with the same source is a no-op.

        Args:
            stream: a registered event stream, or (with ``observation_keys``) an observation stream.
            source: a :class:`rayfs.KafkaSource`; each message value is one event (one observation).
            observation_keys: makes ``stream`` an observation stream (labels for
                ``training_set(stream, ...)``, as :meth:`append_observation` fills): the entity key columns
                every message must carry.
            timestamp: an observation stream's time column (default ``"ts"``).

        Raises:
            SourceError: the topic cannot be reached, or the stream is subscribed to another source.
            UnknownStreamError: ``stream`` is not registered (and is no observation stream).
        """
        from rayfs.store import subscriptions

        self._check_open()
        subscriptions.subscribe(self._session, stream, source, observation_keys, timestamp)

    def unsubscribe(self, stream: str) -> None:
        """Stop feeding ``stream`` from Kafka (batches in flight are finished first) and forget its offsets."""
        from rayfs.store import subscriptions

        self._check_open()
        subscriptions.unsubscribe(self._session, stream)

    def subscriptions(self) -> pd.DataFrame:
        """One row per subscribed partition: ``stream, topic, partition, next_offset`` (the first offset not
        acknowledged), ``high_watermark, lag, events, dead_letters, state`` (``starting``, ``running``,
        ``retrying`` (brokers unreachable, or a batch not taken by the store: ``error`` says which),
        ``restarting``, ``failed``, ``stopped``, ``not running``), ``pid`` (the consumer's process),
        ``consumer, error``, and ``skipped``: the ``(from, to)`` offset jumps made where offsets vanished
        (``on_offset_reset``)."""
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
