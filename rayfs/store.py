"""FeatureStore: the public entry point. Wires the catalog, the shard actors and the replay driver.

Embedded by default: :meth:`FeatureStore.open` starts a private local Ray (``address="local"``) unless
Ray is already initialised in this process or ``RAY_ADDRESS`` names a cluster, and shuts down only a
Ray it started itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import ray

from rayfs import columns as C
from rayfs.aggregates import REGISTRY
from rayfs.catalog import Catalog
from rayfs.definitions import Feature, Stream
from rayfs.errors import (
    DefinitionError,
    RayfsError,
    SchemaError,
    StoreClosedError,
    StoreOpenError,
    UnknownStreamError,
)
from rayfs.fold import MAX_BATCH_ROWS, TS, compile_feature
from rayfs.log import SegmentedLog
from rayfs.replay import fan_out
from rayfs.routing import shard_of
from rayfs.shard import ShardActor, actor_name
from rayfs.shardcore import DURABILITY
from rayfs.timeutil import to_micros

WAL_DIR = "wal"
WAL_MAX_BATCHES = 10_000  # far below the ids a shard remembers, so a WAL replay never double-applies
WAL_MAX_BYTES = 256 << 20


def _ensure_ray() -> bool:
    """Initialise Ray if needed; True if this call started it."""
    if ray.is_initialized():
        return False
    kwargs = dict(namespace="rayfs", include_dashboard=False, logging_level="ERROR",
                  configure_logging=True, log_to_driver=False)
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(address="local", **kwargs)
    return True


def _column(values: np.ndarray, index: pd.Index) -> pd.Series:
    # Keep object columns object: pandas 3 would turn strings into its str dtype, None into NaN.
    return pd.Series(values, index=index, dtype=object if values.dtype == object else None)


def _actor_exists(name: str) -> bool:
    try:
        ray.get_actor(name)
        return True
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - Ray raises others while a dead job's actor is being cleaned up
        return True


def _owners(wire: dict, keys: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard of each key; dictionary-encoded keys are hashed once per distinct key."""
    if wire["k"] not in ("s", "k"):
        return shard_of(keys, n_shards)
    uniques = np.empty(len(wire["u"]) + 1, dtype=object)
    uniques[:-1] = wire["u"]
    per_unique = shard_of(uniques, n_shards)  # the trailing None (code -1) maps to -1
    return per_unique[np.frombuffer(wire["c"], dtype=np.int32)]


def _obs_kind(col: np.ndarray) -> str | None:
    """Timestamps and other values cannot share an observation column (numbers and strings can: keys)."""
    if col.dtype.kind == "M":
        return "timestamp"
    if (col.dtype == object and pd.isna(col).all()) or (col.dtype.kind == "f" and np.isnan(col).all()):
        return None
    return "non-timestamp"


def _release(handles: list, names: list[str]) -> None:
    """Kill shard actors and wait until their names are free (``ray.kill`` is asynchronous)."""
    for h in handles:
        ray.kill(h, no_restart=True)
    deadline = time.monotonic() + 60
    while any(_actor_exists(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.02)


class FeatureStore:
    """An event-sourced feature store whose shards are Ray actors.

    Use :meth:`open`; see the README for a tour.
    """

    def __init__(self, path: str, catalog: Catalog, handles: list, started_ray: bool, durability: str,
                 actor_names: list[str]) -> None:
        self.path = path
        self._actor_names = actor_names
        self._catalog = catalog
        self._handles = handles
        self._started_ray = started_ray
        self._durability = durability
        self._watermark: dict[str, int] = {}
        self._closed = False
        self._obs_logs: dict[str, SegmentedLog] = {}
        self._unacked: set[tuple[str, str]] = set()  # batches in the WAL that failed to reach every shard
        self._empties: dict[tuple, np.ndarray] = {}
        self._obs_kinds: dict[str, dict[str, str]] = {}
        self._wal = self._open_wal(replay=True)
        self._refresh_watermarks()

    # ------------------------------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, path: str | os.PathLike, shards: int | None = None, *, durability: str = "sync",
             segment_bytes: int = 64 << 20, snapshot_every: int = 200) -> FeatureStore:
        """Open (or create) the store at ``path``.

        Args:
            path: the data folder; an existing store there is recovered (definitions, events, state).
            shards: number of shard actors for a new store (default 4); an existing store keeps its own
                and an explicit different number is an error.
            durability: ``"sync"`` (fsync before an ingest returns), ``"group"`` (group commit: one fsync
                every ~2 ms shared by concurrent ingests, acks wait for it) or ``"none"`` (OS buffering:
                survives a process crash, may lose the last seconds on power loss).
            segment_bytes: log segment size at which a new segment file is started.
            snapshot_every: a shard snapshots its state every this many batches (and on close).
        """
        path = os.path.abspath(os.fspath(path))
        if durability not in DURABILITY:
            raise DefinitionError(f"durability must be one of {DURABILITY}, not {durability!r}")
        catalog = Catalog.load(path)
        if catalog is None:
            n = 4 if shards is None else shards
            if not isinstance(n, int) or n < 1:
                raise DefinitionError(f"shards must be a positive integer, not {shards!r}")
            catalog = Catalog(path, n)
            catalog.save()
        elif shards is not None and shards != catalog.shards:
            raise DefinitionError(f"store {path} has {catalog.shards} shards; cannot reopen with {shards}")
        started = _ensure_ray()
        store_id = hashlib.sha1(path.encode()).hexdigest()[:12]
        streams = [s.to_dict() for s in catalog.streams.values()]
        feats = [f.to_dict() for f in catalog.features.values()]
        names = [actor_name(store_id, i) for i in range(catalog.shards)]
        for name in names:
            if _actor_exists(name):
                raise StoreOpenError(f"store {path} is already open in this Ray cluster (actor {name}); "
                                     "close it first")
        handles = [ShardActor.options(name=names[i]).remote(
            path, i, catalog.shards, streams, feats, durability=durability, segment_bytes=segment_bytes,
            snapshot_every=snapshot_every) for i in range(catalog.shards)]
        try:
            infos = ray.get([h.info.remote() for h in handles])  # wait until every shard has recovered
            for info in infos:
                if info["log_truncated_bytes"]:
                    warnings.warn(f"store {path}: shard {info['shard']} dropped a torn log tail of "
                                  f"{info['log_truncated_bytes']} bytes (a batch that was never acknowledged)",
                                  RuntimeWarning, stacklevel=2)
            return cls(path, catalog, handles, started, durability, names)
        except BaseException:
            _release(handles, names)  # a failed open leaves no shard behind
            if started:
                ray.shutdown()
            raise

    def close(self) -> None:
        """Snapshot every shard, stop the actors, and shut Ray down if :meth:`open` started it."""
        if self._closed:
            return
        self._closed = True
        try:
            ray.get([h.close.remote() for h in self._handles])
        finally:
            _release(self._handles, self._actor_names)
            for log in self._obs_logs.values():
                log.close()
            if not self._unacked:
                self._wal = self._reset_wal(self._wal)
            self._wal.close()
            if self._started_ray:
                ray.shutdown()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- ingest WAL
    # A batch reaches the shards only after the whole batch is durable in the driver's write-ahead log.
    # If the driver dies between shards, reopening re-sends every batch in the WAL; shards drop batch ids
    # they already applied, so a batch ends up on all of its shards or (if it never reached the WAL) none.
    def _open_wal(self, *, replay: bool) -> SegmentedLog:
        path = os.path.join(self.path, WAL_DIR)
        shutil.rmtree(path + ".old", ignore_errors=True)  # a reset interrupted by a crash
        wal = SegmentedLog(path, durability="none" if self._durability == "none" else "sync")
        if replay and wal.next_offset:
            for _, record in wal.read(0):
                try:
                    self._send_record(record)
                except RayfsError as exc:  # refused as bad input by a shard: keep it aside, never block open
                    rejected = SegmentedLog(os.path.join(self.path, "wal-rejected"))
                    rejected.append(record)
                    rejected.close()
                    warnings.warn(f"store {self.path}: batch {record['batch_id']!r} of stream {record['stream']!r} "
                                  f"was refused on replay ({exc}); kept in wal-rejected/", RuntimeWarning,
                                  stacklevel=2)
            wal = self._reset_wal(wal)
        return wal

    def _reset_wal(self, wal: SegmentedLog) -> SegmentedLog:
        """Drop the WAL once every batch in it is applied on every shard."""
        path = os.path.join(self.path, WAL_DIR)
        wal.close()
        os.replace(path, path + ".old")  # atomic: never a WAL with its first segments missing
        shutil.rmtree(path + ".old", ignore_errors=True)
        return SegmentedLog(path, durability="none" if self._durability == "none" else "sync")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")

    def _refresh_watermarks(self) -> None:
        for info in ray.get([h.info.remote() for h in self._handles]):
            for s, t in info["local_max"].items():
                self._watermark[s] = max(self._watermark.get(s, t), t)

    # ------------------------------------------------------------------------------------- definitions
    @property
    def streams(self) -> dict[str, Stream]:
        return dict(self._catalog.streams)

    @property
    def features(self) -> dict[str, Feature]:
        return dict(self._catalog.features)

    def register_stream(self, name: str, entities: Sequence[str] | str, timestamp: str) -> Stream:
        """Declare a stream of events keyed by ``entities`` with event time in column ``timestamp``.

        Registering an identical stream again is a no-op; a different one with the same name is an error.
        """
        self._check_open()
        s = Stream(name=name, entities=tuple([entities] if isinstance(entities, str) else entities),
                   timestamp=timestamp)
        old = self._catalog.streams.get(name)
        if old is not None:
            if old == s:
                return old
            raise DefinitionError(f"stream {name!r} is already registered as {old.to_dict()}")
        self._catalog.streams[name] = s
        self._catalog.schema.setdefault(name, {})
        self._catalog.save()
        ray.get([h.add_stream.remote(s.to_dict()) for h in self._handles])
        return s

    def register_feature(self, feature: Feature) -> Feature:
        """Register ``feature``; events already logged are folded into it at once (backfill).

        Registering an identical definition again is a no-op; a conflicting one is an error.
        """
        self._check_open()
        if not isinstance(feature, Feature):
            raise DefinitionError(f"register_feature takes a rayfs.Feature, not {type(feature).__name__}")
        if self._catalog.check_feature(feature):
            self._check_columns_known(feature)
            # The catalog comes first (a restarted shard reads its definitions from it); if a shard
            # refuses the feature, it is rolled back everywhere.
            self._catalog.features[feature.name] = feature
            self._catalog.save()
            try:
                ray.get([h.add_feature.remote(feature.to_dict()) for h in self._handles])
            except BaseException:
                del self._catalog.features[feature.name]
                self._catalog.save()
                ray.get([h.drop_feature.remote(feature.name) for h in self._handles])
                raise
        return self._catalog.features[feature.name]

    def _check_columns_known(self, f: Feature) -> None:
        """Once a stream has data, a feature may only read columns it has."""
        kinds = self._catalog.schema.get(f.stream, {})
        if not kinds:
            return
        s = self._catalog.streams[f.stream]
        need: set[str] = set()
        if f.column:
            need.add(f.column)
        if f.where:
            from rayfs.predicate import Predicate

            need |= Predicate.parse(f.where, feature=f.name).columns
        missing = sorted(c for c in need if c not in kinds and c not in s.entities)
        if missing:
            raise DefinitionError(f"feature {f.name!r}: stream {f.stream!r} has no column(s) {missing}; "
                                  f"it has {sorted(kinds)}")

    def register_sql(self, sql: str, window=None, description: str = "") -> list[Feature]:
        """Register the features of ``SELECT <entity>, <AGG>(...) [AS name], ... FROM <stream>
        [WHERE ...] GROUP BY <entity>``, optionally over a trailing ``window``; returns them."""
        from rayfs.sql import features_from_sql

        self._check_open()
        feats = features_from_sql(sql, window=window, streams=self._catalog.streams, description=description)
        for f in feats:  # validate all before registering any
            self._catalog.check_feature(f)
            self._check_columns_known(f)
        return [self.register_feature(f) for f in feats]

    # ------------------------------------------------------------------------------------- ingest
    def ingest(self, stream: str, data, *, batch_id: str | None = None) -> dict:
        """Append a batch of events to ``stream``; returns when it is durable and folded on every shard.

        Args:
            stream: a registered stream.
            data: a pandas DataFrame, pyarrow Table, list of dicts or dict of arrays.
            batch_id: an id making retries idempotent (generated if not given).

        Returns:
            ``{"rows": n, "batch_id": id}``.

        Raises:
            SchemaError, TimestampError, UnknownStreamError: on bad input; nothing is then written.
        """
        self._check_open()
        s = self._catalog.stream(stream)
        cols, kinds = self._normalise(s, data)
        n = len(cols[TS])
        schema = self._catalog.schema.setdefault(s.name, {})
        changed = {c: k for c, k in kinds.items() if k is not None and schema.get(c) != k}
        if changed:
            schema.update(changed)
            self._catalog.save()
        bid = batch_id or uuid.uuid4().hex
        chunks = range(0, n, MAX_BATCH_ROWS)
        for i, lo in enumerate(chunks):
            part = C.take(cols, slice(lo, lo + MAX_BATCH_ROWS)) if len(chunks) > 1 else cols
            record = {"stream": s.name, "batch_id": bid if len(chunks) == 1 else f"{bid}#{i}",
                      "cols": C.encode_batch(part)}
            self._wal.append(record)
            key = (s.name, record["batch_id"])
            try:
                self._send_record(record, part)
            except BaseException:
                self._unacked.add(key)  # keep the WAL: reopening (or a retry with this batch_id) completes it
                raise
            self._unacked.discard(key)
        if not self._unacked and (self._wal.next_offset >= WAL_MAX_BATCHES
                                  or self._wal.size_bytes() >= WAL_MAX_BYTES):
            self._wal = self._reset_wal(self._wal)
        self._watermark[s.name] = max(self._watermark.get(s.name, -(2**62)), int(cols[TS].max()))
        return {"rows": n, "batch_id": bid}

    def _normalise(self, s: Stream, data) -> tuple[C.Batch, dict[str, str | None]]:
        what = f"stream {s.name!r}"
        df = C.to_frame(data, what=what)
        if len(df) == 0:
            raise SchemaError(f"{what}: empty batch")
        if df.columns.duplicated().any():
            raise SchemaError(f"{what}: duplicate column names {list(df.columns[df.columns.duplicated()])}")
        for c in (s.timestamp, *s.entities):
            if c not in df.columns:
                raise SchemaError(f"{what}: batch lacks column {c!r}")
        for c, fname in self._catalog.required_columns(s.name).items():
            if c not in df.columns:
                raise SchemaError(f"{what}: batch lacks column {c!r} used by feature {fname!r}")
        cols: C.Batch = {TS: C.timestamps(df[s.timestamp], what=f"{what} column {s.timestamp!r}")}
        kinds: dict[str, str | None] = {}
        schema = self._catalog.schema.get(s.name, {})
        for c in df.columns:
            if c == s.timestamp:
                continue
            if not isinstance(c, str) or c.startswith("__"):
                raise SchemaError(f"{what}: bad column name {c!r}")
            where = f"{what} column {c!r}"
            if c in s.entities:
                # Keys may mix ints and strings across batches ("mixed"), unless a feature reads the
                # column as a typed value (check_types below refuses "mixed" for those).
                col = C.key_column(df[c], what=where)
                kind = C.key_kind(col)
                old = schema.get(c)
                if kind is not None and old is not None and old != kind:
                    kind = "mixed"
                cols[c] = col
            else:
                col = C.value_column(df[c], what=where)
                kind = C.kind_of(col)
                if kind is not None and schema.get(c, kind) != kind:
                    raise SchemaError(f"{where}: holds {kind} values but earlier batches held {schema[c]} values")
                cols[c] = C.conform(col, schema.get(c, kind))
            kinds[c] = kind
        changed = {c: k for c, k in kinds.items() if k is not None and schema.get(c) != k}
        if changed:  # first sight of a column's type: it must suit every feature that reads it
            merged = {**schema, **changed}
            for f in self._catalog.features.values():
                if f.stream == s.name:
                    self._catalog.check_types(f, merged, error=SchemaError)
        return cols, kinds

    def _send_record(self, record: dict, cols: C.Batch | None = None) -> None:
        """Route the rows of one logged batch to the shards of their entity keys and wait for the acks."""
        s = self._catalog.stream(record["stream"])
        cols = C.decode_batch(record["cols"]) if cols is None else cols
        bid = record["batch_id"]
        n = len(cols[TS])
        owners = [_owners(record["cols"][e], cols[e], len(self._handles)) for e in s.entities]
        routed = np.zeros((len(self._handles), n), dtype=bool)
        for o in owners:
            ok = o >= 0
            routed[o[ok], np.flatnonzero(ok)] = True
        routed[0] |= ~routed.any(axis=0)  # rows with only null keys are still logged (on shard 0)
        calls = []
        for shard, mask in enumerate(routed):
            if mask.any():
                # Rows are cut from the encoded batch: strings keep the batch's dictionary, no re-encoding.
                part = record["cols"] if mask.all() else C.take_wire(record["cols"], mask)
                calls.append(self._handles[shard].ingest.remote({"stream": s.name, "batch_id": bid, "cols": part}))
        ray.get(calls)

    def flush(self) -> None:
        """Return when every ingested event is durable and folded on every shard."""
        self._check_open()
        ray.get([h.flush.remote() for h in self._handles])

    def snapshot(self) -> None:
        """Snapshot every shard's state into LMDB now."""
        self._check_open()
        ray.get([h.snapshot.remote() for h in self._handles])

    # ------------------------------------------------------------------------------------- reads
    def _feature_list(self, features: Iterable[str] | str | None, entity: str | None) -> list[Feature]:
        if features is None:
            fs = [f for f in self._catalog.features.values() if entity is None or f.entity == entity]
        else:
            fs = [self._catalog.feature(n) for n in ([features] if isinstance(features, str) else features)]
        return fs

    def _empty(self, f: Feature, n: int) -> np.ndarray:
        """``n`` copies of the feature's empty value (0 for counts, NaN or None otherwise)."""
        kind = self._catalog.schema.get(f.stream, {}).get(f.column) if f.column else None
        if f.column in self._catalog.streams[f.stream].entities:  # as the shards do (ShardCore._compiled_for)
            kind = "str" if "str" in REGISTRY[f.agg].kinds else "num"
        one = self._empties.get((f, kind))
        if one is None:
            cf = compile_feature(f, kind)
            one = self._empties[(f, kind)] = cf.agg.finalize(cf.agg.zero(1))
        return np.repeat(one, n)

    def get_features(self, entity: str, keys: Sequence, features: Iterable[str] | str | None = None) -> pd.DataFrame:
        """Online feature values for ``keys`` of ``entity``, one row per key in the order given.

        Values are as of just after the newest event ingested on each feature's stream; keys never seen
        get the empty value (0 for counts, null otherwise).
        """
        self._check_open()
        fs = self._feature_list(features, entity)
        for f in fs:
            if f.entity != entity:
                raise DefinitionError(f"feature {f.name!r} groups by {f.entity!r}, not {entity!r}")
        k = C.key_column(pd.Series(list(keys), dtype=object), what=f"keys of entity {entity!r}")
        out = {f.name: self._empty(f, len(k)) for f in fs}
        if fs and len(k):
            fan_out(self._handles, "get", k, [], [f.name for f in fs], entity, out,
                    tail=(dict(self._watermark),))
        index = pd.RangeIndex(len(k))
        cols = {entity: pd.Series(list(keys), dtype=object, index=index)}
        cols.update((f.name, _column(out[f.name], index)) for f in fs)
        return pd.DataFrame(cols, copy=False)

    def training_set(self, observations: pd.DataFrame | str, features: Iterable[str] | str | None = None,
                     timestamp: str = "ts") -> pd.DataFrame:
        """Point-in-time correct feature values for each observation row.

        Args:
            observations: a DataFrame with the features' entity columns and ``timestamp``, or the name of
                an observation stream filled by :meth:`append_observation`.
            features: feature names (default: every feature whose entity column is in the observations).
            timestamp: the observation time column; a row at time ``t`` sees events with ``ts < t``
                (and ``t - window <= ts`` for windowed features).

        Returns:
            The observation columns plus one column per feature: same rows, same order.
        """
        self._check_open()
        obs = self.observations(observations) if isinstance(observations, str) else observations
        obs = C.to_frame(obs, what="observations")
        if timestamp not in obs.columns:
            raise SchemaError(f"observations lack the timestamp column {timestamp!r}")
        fs = self._feature_list(features, None)
        if features is None:
            fs = [f for f in fs if f.entity in obs.columns]
        t = to_micros(obs[timestamp], what=f"observations column {timestamp!r}")
        out = obs.copy()
        by_entity: dict[str, list[Feature]] = {}
        results: dict[str, np.ndarray] = {}
        for f in fs:
            if f.entity not in obs.columns:
                raise SchemaError(f"observations lack column {f.entity!r} needed by feature {f.name!r}")
            by_entity.setdefault(f.entity, []).append(f)
        for entity, group in by_entity.items():
            keys = C.key_column(obs[entity], what=f"observations column {entity!r}")
            vals = {f.name: self._empty(f, len(obs)) for f in group}
            if len(obs):
                fan_out(self._handles, "replay", keys, [t], [f.name for f in group], entity, vals)
            results.update(vals)
        for f in fs:
            out[f.name] = _column(results[f.name], out.index)
        return out

    # ------------------------------------------------------------------------------------- observations
    def _obs_log(self, name: str) -> SegmentedLog:
        from rayfs.definitions import check_name

        if name not in self._obs_logs:
            check_name(name, "observation stream")
            self._obs_logs[name] = SegmentedLog(os.path.join(self.path, "observations", name),
                                                durability=self._durability)
        return self._obs_logs[name]

    def append_observation(self, name: str, rows) -> int:
        """Durably append one observation (a dict) or many (DataFrame, list of dicts) to stream ``name``.

        Returns the number of rows appended.
        """
        self._check_open()
        if name in self._catalog.streams:
            raise DefinitionError(f"{name!r} is an event stream; observation streams need their own name")
        rows = [rows] if isinstance(rows, dict) else rows
        df = C.to_frame(rows, what=f"observation stream {name!r}")
        if len(df) == 0:
            raise SchemaError(f"observation stream {name!r}: empty batch")
        cols = {}
        for c in df.columns:
            what = f"observation stream {name!r} column {c!r}"
            s = df[c]
            if pd.api.types.is_datetime64_any_dtype(s.dtype) or (
                    s.dtype == object and len(s) and isinstance(s.dropna().iloc[0] if s.notna().any() else None,
                                                                (pd.Timestamp, np.datetime64))):
                cols[c] = to_micros(s, what=what).astype("datetime64[us]")
                continue
            try:
                cols[c] = C.value_column(s, what=what)
            except SchemaError:
                cols[c] = C.key_column(s, what=what)
        kinds = {c: _obs_kind(v) for c, v in cols.items()}
        known = self._obs_kinds.get(name)
        if known is None:
            first = next(iter(self._obs_log(name).read(0, 1)), None)
            known = {} if first is None else {c: _obs_kind(C.decode(v)) for c, v in first[1]["cols"].items()}
        for c, k in kinds.items():
            if k is not None and known.get(c, k) != k:
                raise SchemaError(f"observation stream {name!r} column {c!r}: holds {k} values but earlier "
                                  f"observations held {known[c]} values")
        self._obs_log(name).append({"cols": C.encode_batch(cols)})
        self._obs_kinds[name] = {**known, **{c: k for c, k in kinds.items() if k is not None}}
        return len(df)

    def observations(self, name: str) -> pd.DataFrame:
        """Every observation appended to stream ``name``, in append order."""
        path = os.path.join(self.path, "observations", name)
        if name not in self._obs_logs and not os.path.isdir(path):
            raise UnknownStreamError(f"unknown observation stream {name!r}")
        batches = [C.decode_batch(r["cols"]) for _, r in self._obs_log(name).read(0)]
        frame = pd.DataFrame(C.concat(batches)) if batches else pd.DataFrame()
        return frame

    def info(self) -> list[dict]:
        """Per-shard figures: log offset and bytes, events since the last snapshot, newest event times."""
        return ray.get([h.info.remote() for h in self._handles])


