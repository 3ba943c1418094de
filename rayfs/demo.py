"""``rayfs demo``: a seeded Reddit-like upvote stream through an embedded store, end to end.

Generates upvotes (Zipf-skewed users and posts, subreddits, scores, late arrivals), ingests them in
batches into a temporary store, registers features in Python and SQL, prints online features for the
most active users and a point-in-time training set summary, then reopens the store from disk and
checks that nothing changed.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from rayfs.errors import OptionError
from rayfs.model.definitions import Feature
from rayfs.workload import observations_for, reddit_upvotes

__all__ = ["SQL_FEATURES", "check_count", "run"]

SQL_FEATURES = [
    ("SELECT user, COUNT(DISTINCT post) AS user_distinct_posts, AVG(score) AS user_mean_score "
     "FROM upvotes GROUP BY user", None),
    ("SELECT user, COUNT(DISTINCT subreddit) AS user_distinct_subreddits_30d FROM upvotes GROUP BY user", "30d"),
    ("SELECT post, COUNT(*) AS post_upvotes_1d, AVG(score) AS post_mean_score_1d "
     "FROM upvotes WHERE score > 0 GROUP BY post", "1d"),
    ("SELECT post, MAX(score) AS post_max_score, LAST(user) AS post_last_voter FROM upvotes GROUP BY post", None),
]


def run(events: int = 300_000, observations: int = 50_000, shards: int = 4, seed: int = 7,
        path: str | None = None, batch: int = 50_000, out=print) -> dict:
    """Run the demo; returns the figures it printed (for tests and scripts).

    Args:
        events: upvotes to generate and ingest (>= 1).
        observations: rows of the point-in-time training set (>= 1).
        shards: shard actors of the store (>= 1).
        seed: seed of the generated data (>= 0).
        path: keep the store in this folder; by default a temporary one, deleted afterwards.
        batch: events per ingest call (>= 1).
        out: where the report's lines go.

    Raises:
        OptionError: a count out of its range, named as the ``rayfs demo`` option it comes from.
    """
    for option, value, least in (("events", events, 1), ("observations", observations, 1), ("shards", shards, 1),
                                 ("seed", seed, 0), ("batch", batch, 1)):
        check_count(option, value, least)
    from rayfs.store import FeatureStore

    own_dir = path is None
    path = path or tempfile.mkdtemp(prefix="rayfs-demo-")
    figures: dict = {}
    try:
        t0 = time.perf_counter()
        df = reddit_upvotes(events, seed=seed)
        out(f"generated {len(df):,} upvotes: {df['user'].nunique():,} users, {df['post'].nunique():,} posts, "
            f"{df['subreddit'].nunique()} subreddits ({time.perf_counter() - t0:.1f}s)")
        t0 = time.perf_counter()
        store = FeatureStore.open(f"{path}/reddit", shards=shards)
        out(f"opened an embedded store with {shards} shards at {path}/reddit ({time.perf_counter() - t0:.1f}s)")
        try:
            store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
            store.register_feature(Feature(name="user_upvotes_7d", stream="upvotes", entity="user", agg="count",
                                           window="7d"))
            store.register_feature(Feature(name="user_upvotes", stream="upvotes", entity="user", agg="count"))
            for sql, window in SQL_FEATURES:
                store.register_sql(sql, window=window)
            t0 = time.perf_counter()
            for lo in range(0, len(df), batch):
                store.ingest("upvotes", df.iloc[lo:lo + batch])
            store.flush()
            dt = time.perf_counter() - t0
            figures["ingest_events_per_s"] = len(df) / dt
            out(f"ingested in {dt:.1f}s ({len(df) / dt:,.0f} events/s, durable: fsync per batch)")

            top = df["user"].value_counts().index[:5].tolist()
            names = ["user_upvotes", "user_upvotes_7d", "user_distinct_posts", "user_mean_score",
                     "user_distinct_subreddits_30d"]
            online = store.get_features("user", top + ["nobody"], features=names)
            out("\nonline features of the five most active users (and one never seen):")
            out(online.to_string(index=False))
            post = int(df["post"].value_counts().index[0])
            out("\nonline features of the most upvoted post:")
            out(store.get_features("post", [post]).to_string(index=False))

            obs = observations_for(df, observations, seed=seed, entity="user")
            obs["post"] = df["post"].to_numpy()[np.random.default_rng(seed).integers(0, len(df), len(obs))]
            t0 = time.perf_counter()
            train = store.training_set(obs, timestamp="ts")
            dt = time.perf_counter() - t0
            figures["training_rows_per_s"] = len(obs) / dt
            feats = [c for c in train.columns if c not in obs.columns]
            out(f"\npoint-in-time training set: {len(train):,} observations x {len(feats)} features "
                f"in {dt:.1f}s ({len(obs) / dt:,.0f} rows/s); each row sees only events strictly before its time")
            summary = pd.DataFrame({"non_null": train[feats].notna().mean().round(3),
                                    "mean": train[feats].apply(pd.to_numeric, errors="coerce").mean().round(3)})
            out(summary.to_string())
        finally:
            store.close()
        t0 = time.perf_counter()
        with FeatureStore.open(f"{path}/reddit") as again:
            online2 = again.get_features("user", top + ["nobody"], features=names)
        same = online.equals(online2)
        figures["reopen_identical"] = same
        out(f"\nreopened from disk in {time.perf_counter() - t0:.1f}s: online features identical: {same}")
        if not same:
            raise RuntimeError("reopened store disagrees with the live one")
        return figures
    finally:
        if own_dir:
            shutil.rmtree(path, ignore_errors=True)


def check_count(option: str, value, least: int) -> int:
    """``value`` if it is an integer >= ``least``, else an :class:`~rayfs.errors.OptionError` naming ``option``.

    >>> check_count("events", 5, 1)
    5
    >>> check_count("events", -5, 1)
    Traceback (most recent call last):
    ...
    rayfs.errors.OptionError: --events must be an integer >= 1, not -5
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise OptionError(f"--{option} must be an integer >= {least}, not {value!r}")
    return int(value)
