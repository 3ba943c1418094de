"""The benchmark workload: events, observations and the two feature mixes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayfs.model.definitions import Feature
from rayfs.workload import observations_for, reddit_upvotes

DAY_US = 86_400 * 1_000_000


def _f(name, entity, agg, column=None, window=None) -> Feature:
    return Feature(name=name, stream="upvotes", entity=entity, agg=agg, column=column, window=window)


MIXES: dict[str, list[Feature]] = {
    "basic": [
        _f("user_upvotes", "user", "count"),
        _f("user_upvotes_7d", "user", "count", window="7d"),
        _f("post_upvotes_1d", "post", "count", window="1d"),
        _f("user_distinct_subreddits", "user", "count_distinct", "subreddit"),
        _f("user_mean_score_30d", "user", "mean", "score", window="30d"),
        _f("post_max_score", "post", "max", "score"),
    ],
    "rich": [
        _f("user_min_score_7d", "user", "min", "score", window="7d"),
        _f("user_max_score_7d", "user", "max", "score", window="7d"),
        _f("user_distinct_posts_30d", "user", "count_distinct", "post", window="30d"),
        _f("user_score_stddev", "user", "stddev", "score"),
        _f("user_last_subreddit", "user", "last", "subreddit"),
    ],
}


def to_us(ts: pd.Series | np.ndarray) -> np.ndarray:
    """Float epoch seconds -> int64 µs exactly as rayfs does (round(ts * 1e6))."""
    return np.round(np.asarray(ts, dtype=np.float64) * 1e6).astype(np.int64)


def make(n_events: int, ratio: float, seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Events (arrival order) and observations (entity user plus a ``post`` column from real events).

    ~10% of observations sit exactly at a user event's time (from :func:`observations_for`); another
    ~10% are moved to exactly the time of the event their ``post`` was taken from, so post features
    also see exact-time ties.
    """
    events = reddit_upvotes(n_events, seed=seed)
    n_obs = max(1, int(round(ratio * n_events)))
    obs = observations_for(events, n_obs, seed=seed + 1, entity="user")
    rng = np.random.default_rng(seed + 2)
    rows = rng.integers(0, len(events), n_obs)
    obs["post"] = events["post"].to_numpy()[rows]
    at_post = rng.random(n_obs) < 0.10
    ts = obs["ts"].to_numpy(dtype=np.float64).copy()
    ts[at_post] = events["ts"].to_numpy()[rows[at_post]]
    obs["ts"] = ts
    return events, obs[["user", "post", "ts", "label"]]


def check_cents(events: pd.DataFrame) -> bool:
    """True if every score is a whole number of hundredths (peers then sum exact int64 cents)."""
    s = events["score"].to_numpy(dtype=np.float64)
    s = s[~np.isnan(s)]
    c = np.round(s * 100)
    return bool(np.array_equal(c / 100, s))
