"""Discovery and monitoring of a store: feature listings, descriptions, statistics, shard stats, the audit.

Functions here take a :class:`rayfs.store.session.Session` and ask the shards; the
:class:`~rayfs.FeatureStore` methods of the same names are thin wrappers.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd
import ray

from rayfs.engine.featurestats import FIELDS, merge_stats
from rayfs.errors import OnDemandError, OptionError
from rayfs.model.definitions import Feature
from rayfs.model.ondemand import KIND, OnDemandFeature
from rayfs.store.reads import feature_refs
from rayfs.store.session import Session

__all__ = ["APPROXIMATE", "audit", "describe", "feature_sql", "feature_stats", "frame_feature_stats", "info",
           "list_features", "online_stats", "shard_stats", "stats_frame"]

_SQL_AGGS = {"count": "COUNT", "sum": "SUM", "mean": "AVG", "min": "MIN", "max": "MAX", "stddev": "STDDEV",
             "variance": "VARIANCE", "first": "FIRST", "last": "LAST", "last_k": "LAST_K", "first_k": "FIRST_K",
             "top_k": "TOP_K", "approx_count_distinct": "APPROX_COUNT_DISTINCT",
             "approx_quantile": "APPROX_QUANTILE"}


def feature_sql(f: Feature) -> str | None:
    """The feature as the SQL :meth:`~rayfs.FeatureStore.register_sql` accepts (window aside), if any.

    >>> feature_sql(Feature(name="n", stream="up", entity="user", agg="count_distinct", column="post",
    ...                     where="score > 0"))
    'SELECT user, COUNT(DISTINCT post) AS n FROM up WHERE score > 0 GROUP BY user'
    """
    if f.agg == "count_distinct":
        call = f"COUNT(DISTINCT {_ident(f.column)})"
    elif f.agg in _SQL_AGGS:
        args = [_ident(f.column) if f.column else "*"] + [repr(p) for p in f.params.values()]
        call = f"{_SQL_AGGS[f.agg]}({', '.join(args)})"
    else:
        return None
    where = f" WHERE {f.where}" if f.where else ""
    e = _ident(f.entity)
    return f"SELECT {e}, {call} AS {_ident(f.name)} FROM {_ident(f.stream)}{where} GROUP BY {e}"


def _ident(name: str) -> str:
    """``name`` as an SQL identifier, double-quoted if it is a keyword (``"from"``) or not a plain word.

    >>> _ident("user"), _ident("from")
    ('user', '"from"')
    """
    from sqlglot.tokens import Tokenizer

    plain = name.isidentifier() and name.upper() not in Tokenizer.KEYWORDS
    return name if plain else '"' + name.replace('"', '""') + '"'



def list_features(session: Session) -> pd.DataFrame:
    """Every live feature version, one row each (newest version of each name flagged ``latest``); ``kind``
    is ``"stored"`` or ``"on_demand"`` (whose ``inputs`` and ``request`` fields are listed)."""
    cat = session.catalog
    rows = []
    for f in sorted(cat.features.values(), key=lambda f: (f.name, f.version)):
        rows.append({"name": f.name, "version": f.version, "key": f.key, "kind": "stored",
                     "latest": cat.latest(f.name) is f, "stream": f.stream, "entity": f.entity, "agg": f.agg,
                     "column": f.column, "window": f.window, "where": f.where, **f.params, "owner": f.owner,
                     "description": f.description, "tags": list(f.tags), "created": f.created})
    for od in cat.on_demand.values():
        rows.append({"name": od.name, "version": od.version, "key": od.key, "kind": KIND,
                     "latest": cat.latest_on_demand(od.name) is od, "entity": _entity(cat, od),
                     "inputs": list(od.inputs), "request": list(od.request), "owner": od.owner,
                     "description": od.description, "tags": list(od.tags), "created": od.created})
    rows.sort(key=lambda r: (r["name"], r["version"]))
    cols = ["name", "version", "key", "kind", "latest", "stream", "entity", "agg", "column", "window", "where",
            "owner", "description", "tags", "created"]
    return pd.DataFrame(rows, columns=cols + sorted({k for r in rows for k in r} - set(cols)))


def online_stats(session: Session, features: list[Feature]) -> dict[str, dict]:
    """Statistics of each feature's online values over every entity, merged over the shards."""
    keys = [f.key for f in features]
    parts = ray.get([h.feature_stats.remote(keys) for h in session.handles])
    return {k: merge_stats([p[k] for p in parts if k in p]) for k in keys}


def _entity(cat, od: OnDemandFeature) -> str | None:
    try:
        return cat.on_demand_entity(od)
    except OnDemandError:  # listing shows what it can
        return None


def describe(session: Session, ref: str) -> dict:
    """Definition, SQL, versions, metadata and live statistics of one feature (no SQL and no statistics for
    an on-demand feature: its values exist only when read)."""
    cat = session.catalog
    if cat.is_on_demand(ref):
        od = cat.on_demand_feature(ref)
        definition = {k: v for k, v in od.to_dict().items() if k != "code"}
        return {"name": od.name, "version": od.version, "key": od.key, "kind": KIND, "definition": definition,
                "sql": None, "entity": _entity(cat, od), "inputs": list(od.inputs), "request": list(od.request),
                "source": od.source, "owner": od.owner, "description": od.description, "tags": list(od.tags),
                "created": od.created,
                "versions": [{"version": v.version, "created": v.created, "fingerprint": v.fingerprint()}
                             for v in sorted((g for g in cat.on_demand.values() if g.name == od.name),
                                             key=lambda g: g.version)],
                "stats": None}
    f = cat.feature(ref)
    versions = session.catalog.versions(f.name)
    return {"name": f.name, "version": f.version, "key": f.key, "kind": "stored", "definition": f.to_dict(),
            "sql": feature_sql(f),
            "window": f.window, "stream": f.stream, "entity": f.entity, "owner": f.owner,
            "description": f.description, "tags": list(f.tags), "created": f.created,
            "versions": [{"version": v.version, "created": v.created, "sql": feature_sql(v), "window": v.window}
                         for v in versions],
            "stats": online_stats(session, [f])[f.key]}


def shard_stats(session: Session) -> pd.DataFrame:
    """One row per shard: counters, log and snapshot gauges, replay throughput, node."""
    rows = ray.get([h.stats.remote() for h in session.handles])
    infos = ray.get([h.info.remote() for h in session.handles])
    for r, i in zip(rows, infos, strict=True):
        r["node_id"] = i.get("node_id")
    return pd.DataFrame(rows)


def info(session: Session) -> list[dict]:
    """Per-shard figures: log offset and bytes, events since the last snapshot, newest event times."""
    return ray.get([h.info.remote() for h in session.handles])


def stats_frame(stats: dict[str, dict]) -> pd.DataFrame:
    """One row per feature of ``stats`` (feature name -> merged statistics)."""
    return pd.DataFrame([{"feature": k, **v} for k, v in stats.items()], columns=["feature", *FIELDS])


def feature_stats(session: Session, features: list[tuple[str, Feature]]) -> pd.DataFrame:
    """Statistics of the online values of ``features`` (requested name, version), one row each."""
    st = online_stats(session, [f for _, f in features])
    return stats_frame({r: st[f.key] for r, f in features})


def frame_feature_stats(frame: pd.DataFrame, features, known: dict[str, Feature]) -> pd.DataFrame:
    """Statistics of the feature columns of a training set ``frame``.

    ``features``: column names, one name, or ``None`` for every column named after a feature of ``known``
    (or naming a version, ``name@v``).
    """
    from rayfs.engine.featurestats import frame_stats

    if not isinstance(frame, pd.DataFrame):
        raise OptionError(f"feature_stats: training_set must be a DataFrame (a training set), not "
                          f"{type(frame).__name__}")
    cols = feature_refs(features)
    if cols is None:
        cols = [c for c in frame.columns if c in known or "@" in c]
    return frame_stats(frame, cols)


APPROXIMATE = frozenset({"approx_quantile"})  # randomised: equal only within the sketch's error


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b, strict=True)))
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        if isinstance(a, str) or isinstance(b, str):
            return False
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def audit(session: Session, features: list[tuple[str, Feature]], n: int, seed: int) -> pd.DataFrame:
    """Compare online values with a fresh replay of each shard's on-disk log at the same instant.

    Samples up to ``n`` entity keys per entity field (spread over the shards) and checks every feature of
    that entity on them. Returns one row per feature: keys checked, mismatches, a few examples, and
    ``exact``: False for ``approx_quantile``, whose KLL sketch is randomised (datasketches seeds it from the
    clock), so two computations agree only within its rank error; there a value and a null disagree.
    """
    for what, v in (("n", n), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise OptionError(f"audit: {what} must be an integer, not {v!r}")
    handles = session.handles
    by_entity: dict[str, list[tuple[str, Feature]]] = {}
    for r, f in features:
        by_entity.setdefault(f.entity, []).append((r, f))
    rows = []
    for entity, group in by_entity.items():
        streams = sorted({f.stream for _, f in group})
        per_shard = max(1, n // len(handles))
        samples = ray.get([h.sample_keys.remote(s, entity, per_shard, seed) for h in handles for s in streams])
        calls = []
        for i, h in enumerate(handles):
            keys = list(dict.fromkeys(k for j, s in enumerate(streams) for k in samples[i * len(streams) + j]))
            if keys:
                arr = np.empty(len(keys), dtype=object)
                arr[:] = keys
                calls.append((arr, h.audit.remote(entity, arr, [f.key for _, f in group])))
        results = [(keys, ray.get(ref)) for keys, ref in calls]
        for r, f in group:
            checked, bad = 0, []
            for keys, res in results:
                on, re_ = res["online"][f.key], res["replay"][f.key]
                exact = f.agg not in APPROXIMATE
                for k, a, b in zip(keys, on, re_, strict=True):
                    checked += 1
                    if not (_same(a, b) if exact else _is_null(a) == _is_null(b)):
                        bad.append({"key": k, "online": a, "replay": b})
            rows.append({"feature": r, "entity": entity, "checked": checked, "mismatches": len(bad),
                         "exact": f.agg not in APPROXIMATE, "examples": bad[:5]})
    return pd.DataFrame(rows, columns=["feature", "entity", "checked", "mismatches", "exact", "examples"])


def _is_null(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))
