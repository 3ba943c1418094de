"""The read path: online values (:meth:`Reader.get_features`) and point-in-time training sets
(:meth:`Reader.training_set`), from feature names to the returned frame.

A read resolves the requested names against the driver's cached catalog, pre-fills every output with the
feature's empty value (0 for counts, NaN or None otherwise), and fans the keys out to the shards that own
them (:func:`fan_out`). Each shard answers its observations with :meth:`rayfs.shard.core.ShardCore.replay`:
its logged events, ordered by (entity, event time, ingest order), evaluated point in time for every
observation at once (:mod:`rayfs.engine.pit`); online reads (``method="get"``) take the same route. Shards
work in parallel; the driver only routes and scatters the answers back into the input order; a null key
gets the empty value without a shard call.

Stale catalogs: every shard answer carries the catalog version the shard knows. If it is newer than the
driver's (a feature or column kind was added by another driver), or a shard no longer knows a feature
version the driver asked for (dropped elsewhere), the driver refreshes its catalog and reads again
(:meth:`Reader._fresh`), at most twice; the last answer is used as it is.
"""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

import lmdb
import numpy as np
import pandas as pd
import ray

from rayfs.engine import columns as C
from rayfs.engine.fold import compile_feature, value_kind
from rayfs.engine.routing import shard_of
from rayfs.errors import DefinitionError, OptionError, SchemaError, UnknownFeatureError
from rayfs.model.definitions import Feature
from rayfs.model.timeutil import to_micros
from rayfs.storage.observations import ObservationStreams
from rayfs.storage.online import OnlineReader, meta_of, rows_to_values
from rayfs.store.session import Session

__all__ = ["OUTPUTS", "REMOTE_TABLE", "Reader", "Request", "check_collisions", "fan_out", "feature_refs"]

OUTPUTS = ("pandas", "arrow", "ray")
"""The output formats of a training set."""

REMOTE_TABLE = "remote table"
"""In :func:`fan_out`'s ``tables``: the shard keeps an online table that this process cannot open."""

_T = TypeVar("_T")
_ATTEMPTS = 3  # one read and at most two more after refreshing a stale catalog

Resolved = list[tuple[str, Feature]]  # (requested name, feature version)
Group = tuple[Resolved, str, np.ndarray, list]  # (features, entity field, keys, per-key extra arrays)


class Request(NamedTuple):
    """One entity field's share of a read: its keys, per-key arrays, and the outputs to fill."""

    entity: str
    keys: np.ndarray  # normalised entity keys (see rayfs.engine.columns.key_column)
    extra: Sequence[np.ndarray]  # per-key arrays passed along, sliced like keys (replay: [times])
    defaults: dict[str, np.ndarray]  # feature key -> output pre-filled with its empty value; filled in place


def fan_out(handles: Sequence, method: str, requests: Sequence[Request], tail: tuple = (),
            tables: Sequence | None = None, streams: dict[str, str] | None = None) -> int:
    """Call ``method`` on every shard owning some keys of each request and scatter the answers back.

    Every call of every request is submitted before any answer is awaited, so the shards work while the
    driver routes the next entity field's keys, and each shard runs its calls back to back.

    Online reads (``"get"``) are answered from the shards' online tables: read here directly for a shard
    whose table this process can open (``tables[s]``, a shard on this node), else by the shard's actor,
    which sends the encoded rows of its table without waiting for its ingests or taking its lock
    (:meth:`~rayfs.shard.actor.ShardService.get_online_raw`), decoded here; a feature not in a table yet
    (being backfilled) or a shard without a table is read the exact way, :meth:`rayfs.shard.core.ShardCore.get`.

    Args:
        handles: shard actor handles, index = shard id.
        method: ``"replay"`` (extra = [times]) or ``"get"`` (extra = []).
        requests: one per entity field; ``defaults`` are filled in place (and may be widened to object).
        tail: extra positional arguments appended to each call.
        tables: per shard, an :class:`~rayfs.storage.online.OnlineReader` of its online table (read here),
            :data:`REMOTE_TABLE` (a table this process cannot open: the shard's actor reads it) or ``None``
            (no table: the shard's state answers).
        streams: feature key -> its stream (for reads from online tables).

    Returns:
        The newest catalog version the shards reported (so the caller can tell its catalog is stale).
    """
    calls, where, local, remote = [], [], [], []
    for req in requests:
        names = list(req.defaults)
        owner = shard_of(req.keys, len(handles))
        by_stream: dict[str, list[str]] = {}
        if method == "get" and streams is not None:
            for n in names:
                by_stream.setdefault(streams[n], []).append(n)
        for s in np.unique(owner[owner >= 0]).tolist():
            pos = np.flatnonzero(owner == s)
            table = tables[s] if tables is not None and by_stream else None
            if isinstance(table, OnlineReader):
                local.append((req, pos, s, names, by_stream))
                continue
            if table is REMOTE_TABLE:  # another node's shard: its table's encoded rows, decoded here
                ask = [(st, req.entity, req.keys[pos].tolist()) for st in by_stream]
                remote.append((handles[s].get_online_raw.remote(pickle.dumps(ask, protocol=pickle.HIGHEST_PROTOCOL)),
                               req, pos, s, names, by_stream))
                continue
            args = [req.entity, req.keys[pos], *[e[pos] for e in req.extra], names, *tail]
            if method == "get":  # small: one buffer each way (see rayfs.shard.actor.ShardService.get_online_packed)
                calls.append(handles[s].get_online_packed.remote(
                    pickle.dumps(tuple(args), protocol=pickle.HIGHEST_PROTOCOL)))
            else:
                calls.append(getattr(handles[s], method).remote(*args))
            where.append((req, pos))
    cv = 0
    answers: list = [None] * len(local)  # while the remote calls run
    for i, (req, pos, s, _, by_stream) in enumerate(local):
        meta, rows = tables[s].read_raw([(st, req.entity, req.keys[pos].tolist()) for st in by_stream])
        answers[i] = rows_to_values(meta, by_stream, req.entity, rows)
    for (_, req, pos, s, names, by_stream), ans in zip(remote, ray.get([r[0] for r in remote]) if remote else [],
                                                       strict=True):
        res = None
        if ans is not None:
            meta, rows = pickle.loads(ans)
            res = rows_to_values(meta_of(meta), by_stream, req.entity, rows)
        local.append((req, pos, s, names, by_stream))
        answers.append(res)
    for (req, pos, s, names, _), res in zip(local, answers, strict=True):
        if res is None:  # a feature not in the table: the shard answers (waiting for its backfill)
            args = (req.entity, req.keys[pos], names)
            calls.append(handles[s].get_online_packed.remote(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)))
            where.append((req, pos))
            continue
        cv = max(cv, res["cv"])
        _scatter(req.defaults, res["values"], pos)
    for (req, pos), res in zip(where, ray.get(calls) if calls else [], strict=True):
        if isinstance(res, bytes):  # a small answer packed into one buffer
            res = pickle.loads(res)
        cv = max(cv, res["cv"])
        _scatter(req.defaults, res["values"], pos)
    return cv


def _scatter(defaults: dict[str, np.ndarray], res: dict, pos: np.ndarray) -> None:
    for n in list(defaults):
        col = defaults[n]
        vals, at = res[n], pos
        if isinstance(vals, tuple):  # from an online table: (present, values of the present keys)
            present, vals = vals
            if not len(vals):
                continue
            at = pos[present]
        if col.dtype == object and vals.dtype.kind == "f":
            # A shard that never saw a non-null value of a string column answers NaN: make it None.
            vals = np.where(np.isnan(vals), None, vals.astype(object))
        elif col.dtype != object and vals.dtype == object:
            wide = col.astype(object)  # a kind this driver had not seen yet (strings): empty is None
            if col.dtype.kind == "f":
                wide[np.isnan(col)] = None
            col = defaults[n] = wide
        elif col.dtype != vals.dtype and col.dtype != object:
            vals = vals.astype(col.dtype)
        col[at] = vals


def _has_entity(catalog, entity) -> bool:
    return any(entity in s.entities for s in catalog.streams.values())


def _key_array(keys: list, entity: str) -> np.ndarray:
    """The normalised keys of a read (:func:`rayfs.engine.columns.key_column`); strings without pandas."""
    what = f"keys of entity {entity!r}"
    if all(type(k) is str for k in keys):
        arr = np.empty(len(keys), dtype=object)
        arr[:] = keys
        C.check_strings(arr, what=what)
        return arr
    return C.key_column(pd.Series(keys, dtype=object), what=what)


_COLUMNS: dict[tuple, pd.Index] = {}  # column names of recent reads -> their Index


def _frame(cols: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    """A frame of 1-d arrays of length ``n``, object arrays kept object (pandas 3 would turn strings into its
    str dtype, None into NaN). Built from the arrays directly when this pandas allows it: the checks of the
    general constructor cost more than a whole online read of a few keys."""
    index = pd.RangeIndex(n)
    names = tuple(cols)
    columns = _COLUMNS.get(names)
    if columns is None:  # an Index is immutable: frames with the same columns share one
        if len(_COLUMNS) > 256:
            _COLUMNS.clear()
        columns = _COLUMNS[names] = pd.Index(list(names))
    try:
        return pd.DataFrame._from_arrays(list(cols.values()), columns=columns, index=index, verify_integrity=False)
    except (AttributeError, TypeError):  # a pandas without it
        # Numeric columns go in as arrays (a Series per column costs more than the shard call's work).
        return pd.DataFrame({c: _column(v, index) if v.dtype == object else v for c, v in cols.items()}, copy=False)


def feature_refs(features: Iterable[str] | str | None) -> list[str] | None:
    """The ``features`` argument of a read as a list of names (``None``: every feature).

    Raises:
        OptionError: ``features`` is neither a name nor an iterable of names.
    """
    if features is None:
        return None
    if isinstance(features, str):
        return [features]
    if not isinstance(features, Iterable) or isinstance(features, bytes):
        raise OptionError(f"features must be a feature name or a list of them, not {type(features).__name__}")
    return list(features)


def check_collisions(columns: Iterable, names: Iterable[str], every: bool) -> None:
    """Refuse a training set whose features include one named like an observation column.

    The result holds the observation columns beside one column per feature: a feature of an observation
    column's name would silently replace it (a label, a request field). ``every``: the features were not
    named (``features=None``, every feature of the observations' entities).

    Raises:
        SchemaError: naming the column and the feature, and what to rename.
    """
    have = {str(c) for c in columns}
    for r in names:
        if str(r) in have:
            how = ("features=None reads every feature of the observations' entities, and feature "
                   f"{r!r} is one" if every else f"feature {r!r} is requested")
            raise SchemaError(
                f"training set: the observations have a column {str(r)!r} and {how}; its values would replace "
                "that column. Rename the observation column (for an observation stream, read it with "
                "observations(name), rename it and pass the DataFrame) or read other features")


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


# path -> (reader, users): LMDB opens an environment once per process, so sessions share a table's reader;
# the last session to let go closes it (each environment maps as much address space as its writer's map
# size, so a process that opens and closes many stores must not keep them all).
_OPEN: dict[str, tuple[OnlineReader, int]] = {}
_OPEN_LOCK = threading.Lock()


class LocalTables:
    """The online tables of a store's shards that this process can read directly: those of shards running on
    this node (their folders are local here; LMDB must not be shared over a network filesystem).

    Which shard runs where is asked once per shard actor (a re-created shard is a new actor, asked again).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._node: str | None = None
        self._by_actor: dict[object, OnlineReader | str | None] = {}
        self._paths: set[str] = set()  # the tables this session holds a reader of

    def close(self) -> None:
        """Let go of this session's readers (closing those no other session of this process holds)."""
        with _OPEN_LOCK:
            for path in self._paths:
                reader, users = _OPEN[path]
                if users > 1:
                    _OPEN[path] = (reader, users - 1)
                else:
                    del _OPEN[path]
                    reader.close()
            self._paths.clear()
            self._by_actor.clear()

    def readers(self, handles: Sequence) -> list[OnlineReader | str | None]:
        """Per shard: a reader of its online table, :data:`REMOTE_TABLE` (a table on another node, or not
        readable here) or ``None`` (no table)."""
        new = [(i, h) for i, h in enumerate(handles) if h._actor_id not in self._by_actor]
        if new:
            if self._node is None:
                self._node = ray.get_runtime_context().get_node_id()
            infos = ray.get([h.table_location.remote() for _, h in new])
            for (_, h), info in zip(new, infos, strict=True):
                reader: OnlineReader | str | None = None
                if info.get("online_table"):
                    if info.get("node_id") == self._node:
                        reader = self._open(info["online_table"])
                    reader = reader or REMOTE_TABLE
                self._by_actor[h._actor_id] = reader
        return [self._by_actor[h._actor_id] for h in handles]


    def _open(self, path: str) -> OnlineReader | None:
        with _OPEN_LOCK:
            if path in self._paths:
                return _OPEN[path][0]
            reader, users = _OPEN.get(path, (None, 0))
            if reader is None:
                try:
                    reader = OnlineReader(path)
                except lmdb.Error:  # not created yet, or not readable from here: the actor path answers
                    return None
            _OPEN[path] = (reader, users + 1)
            self._paths.add(path)
            return reader


class Reader:
    """The read path of one session: resolving names, empty values, fan-out and result assembly.

    Args:
        session: the driver's connection to the store.
        observations: the store's observation streams (a training set may name one).
    """

    def __init__(self, session: Session, observations: ObservationStreams) -> None:
        self.session = session
        self.observations = observations
        self._empties: dict[tuple, np.ndarray] = {}
        self._tables = LocalTables(session)

    def close(self) -> None:
        """Let go of the online tables this session read directly."""
        self._tables.close()

    def resolve(self, features: Iterable[str] | str | None, entity: str | None) -> Resolved:
        """(requested name, feature version) pairs; a name unknown to the cached catalog refreshes it once.

        ``features=None`` means the latest version of every feature (of ``entity`` if given).
        """
        catalog = self.session.catalog
        if features is None and entity is not None and not _has_entity(catalog, entity):
            self.session.refresh()  # a stream another driver registered
            catalog = self.session.catalog
            if not _has_entity(catalog, entity):
                known = sorted({e for s in catalog.streams.values() for e in s.entities})
                raise DefinitionError(f"entity {entity!r}: no stream has this entity field (entity fields: "
                                      f"{known})")
        if features is None:
            names = dict.fromkeys(f.name for f in catalog.features.values())  # in registration order
            latest = [(n, catalog.latest(n)) for n in names]
            return [(n, f) for n, f in latest if entity is None or f.entity == entity]
        refs = feature_refs(features)
        try:
            return [(r, catalog.feature(r)) for r in refs]
        except UnknownFeatureError:
            self.session.refresh()
            return [(r, self.session.catalog.feature(r)) for r in refs]

    def get_features(self, entity: str, keys: Sequence, features: Iterable[str] | str | None) -> pd.DataFrame:
        """See :meth:`rayfs.FeatureStore.get_features`."""
        keys = list(keys)  # read once: ``keys`` may be a generator
        k = _key_array(keys, entity)

        def attempt(final: bool) -> tuple[Resolved, dict[str, np.ndarray] | None]:
            fs = self.resolve(features, entity)
            for r, f in fs:
                if f.entity != entity:
                    raise DefinitionError(f"feature {r!r} groups by {f.entity!r}, not {entity!r}")
            return fs, self._ask("get", [(fs, entity, k, [])], len(k), final)

        fs, out = self._fresh(attempt)
        given = np.empty(len(keys), dtype=object)
        given[:] = keys
        cols = {entity: given}
        cols.update((r, out[r]) for r, _ in fs)
        return _frame(cols, len(keys))

    def training_set(self, observations: pd.DataFrame | str, features: Iterable[str] | str | None,
                     timestamp: str, output: str):
        """See :meth:`rayfs.FeatureStore.training_set`."""
        if output not in OUTPUTS:
            raise DefinitionError(f"output must be one of {OUTPUTS}, not {output!r}")
        obs = self.observations.read(observations) if isinstance(observations, str) else observations
        obs = C.to_frame(obs, what="observations")
        if timestamp not in obs.columns:
            raise SchemaError(f"observations lack the timestamp column {timestamp!r}")
        t = to_micros(obs[timestamp], what=f"observations column {timestamp!r}")

        def attempt(final: bool) -> tuple[Resolved, dict[str, np.ndarray] | None]:
            fs = self.resolve(features, None)
            if features is None:
                fs = [(r, f) for r, f in fs if f.entity in obs.columns]
            check_collisions(obs.columns, [r for r, _ in fs], features is None)
            return fs, self._replay(obs, fs, t, final)

        fs, results = self._fresh(attempt)
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

    @staticmethod
    def _fresh(attempt: Callable[[bool], tuple[Resolved, _T | None]]) -> tuple[Resolved, _T]:
        """Run ``attempt(final)`` until it answers, at most :data:`_ATTEMPTS` times.

        ``attempt`` resolves the requested features and reads them; it answers ``None`` when the shards know
        a newer catalog than the one it resolved against (which :meth:`_ask` has then refreshed), so names
        are resolved again and the read repeated. The last attempt is ``final``: it answers whatever the
        shards say (or raises their error).
        """
        for _ in range(_ATTEMPTS - 1):
            fs, out = attempt(False)
            if out is not None:
                return fs, out
        return attempt(True)  # type: ignore[return-value]  # a final attempt always answers

    def _replay(self, obs: pd.DataFrame, fs: Resolved, t: np.ndarray, final: bool) -> dict | None:
        """Point-in-time values of ``fs`` for every observation row (one group per entity field)."""
        by_entity: dict[str, Resolved] = {}
        for r, f in fs:
            if f.entity not in obs.columns:
                raise SchemaError(f"observations lack column {f.entity!r} needed by feature {r!r}")
            by_entity.setdefault(f.entity, []).append((r, f))
        groups = [(group, entity, C.key_column(obs[entity], what=f"observations column {entity!r}"), [t])
                  for entity, group in by_entity.items()]
        return self._ask("replay", groups, len(obs), final)

    def _ask(self, method: str, groups: list[Group], n: int, final: bool) -> dict[str, np.ndarray] | None:
        """Ask the shards for every group ``(features, entity, keys, extra)`` at once; requested name ->
        values. ``None`` (unless ``final``) if they know a newer catalog: resolve and ask again."""
        requests = []
        for fs, entity, keys, extra in groups:
            vals: dict[str, np.ndarray] = {}
            for _, f in fs:
                if f.key not in vals:
                    vals[f.key] = self.empty(f, n)
            requests.append(Request(entity, keys, extra, vals))
        if n and any(r.defaults for r in requests):
            try:
                asked = [r for r in requests if r.defaults]
                if method == "get":
                    streams = {f.key: f.stream for fs, *_ in groups for _, f in fs}
                    cv = self.session.call(lambda hs: fan_out(hs, method, asked, tables=self._tables.readers(hs),
                                                              streams=streams))
                else:
                    cv = self.session.call(lambda hs: fan_out(hs, method, asked))
            except UnknownFeatureError:  # a version this driver's catalog still has was dropped elsewhere
                self.session.refresh()
                if final:
                    raise
                return None
            if self.session.seen(cv) and not final:  # definitions or column kinds changed: ask again
                return None
        out, used = {}, set()
        for (fs, *_), req in zip(groups, requests, strict=True):
            for r, f in fs:  # two names of one version (``sx`` and ``sx@3``) get separate arrays
                out[r] = copy.deepcopy(req.defaults[f.key]) if f.key in used else req.defaults[f.key]
                used.add(f.key)
        return out

    def empty(self, f: Feature, n: int) -> np.ndarray:
        """``n`` copies of the feature's empty value (0 for counts, NaN or None otherwise)."""
        catalog = self.session.catalog
        kind = value_kind(f, catalog.streams[f.stream], catalog.schema.get(f.stream, {}))
        one = self._empties.get((f, kind))
        if one is None:
            cf = compile_feature(f, kind)
            one = self._empties[(f, kind)] = cf.agg.finalize(cf.agg.zero(1))
        return _repeat(one, n)
