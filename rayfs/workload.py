"""Seeded, vectorised data generators shared by ``rayfs demo``, the tests and the benchmarks.

Every generator is a pure function of its arguments: the same seed gives the same DataFrame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayfs.errors import OptionError

__all__ = ["observations_for", "random_events", "reddit_upvotes"]

_DAY = 86400.0
_SUBREDDIT_WORDS = ("python", "datascience", "machinelearning", "askscience", "worldnews", "gaming", "music",
                    "movies", "books", "cooking", "fitness", "travel", "photography", "history", "space",
                    "programming", "linux", "rust", "math", "physics")


def _zipf_ranks(rng: np.random.Generator, n_items: int, size: int, exponent: float) -> np.ndarray:
    """``size`` draws of ranks ``0..n_items-1`` with P(rank r) proportional to ``1 / (r + 1) ** exponent``."""
    weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)


def reddit_upvotes(n_events: int, *, seed: int = 0, n_users: int | None = None,
                   n_posts: int | None = None, n_subreddits: int = 50, days: float = 180.0,
                   start: float = 1_700_000_000.0) -> pd.DataFrame:
    """Votes on reddit-like posts, in arrival order.

    Columns: ``user`` (str like ``"u123"``), ``post`` (int64 id), ``subreddit`` (str ``"r/..."``, a
    function of the post), ``score`` (float64, ~2% NaN), ``ts`` (float epoch seconds with millisecond
    resolution, spread over ``days`` from ``start``). Users and posts are Zipf-skewed. Rows are in
    arrival order, which is not time order: ~5% of events arrive late by up to an hour, and ~1% share
    their timestamp exactly with another event.

    >>> df = reddit_upvotes(1000, seed=1)
    >>> list(df.columns), len(df)
    (['user', 'post', 'subreddit', 'score', 'ts'], 1000)
    >>> df.equals(reddit_upvotes(1000, seed=1))
    True
    """
    rng = np.random.default_rng(seed)
    n = int(n_events)
    n_users = max(1, n // 20) if n_users is None else int(n_users)
    n_posts = max(1, n // 5) if n_posts is None else int(n_posts)
    n_subreddits = max(1, int(n_subreddits))

    # Popularity rank -> id through a random permutation, so ids are not sorted by popularity.
    user_ids = rng.permutation(n_users)[_zipf_ranks(rng, n_users, n, 1.0)]
    post_perm = rng.permutation(n_posts).astype(np.int64) + 1000  # post ids 1000..
    post_rank = _zipf_ranks(rng, n_posts, n, 1.1)
    post_ids = post_perm[post_rank]
    post_sub = _zipf_ranks(rng, n_subreddits, n_posts, 1.0)  # each post lives in one subreddit
    sub_names = np.array([f"r/{_SUBREDDIT_WORDS[i % len(_SUBREDDIT_WORDS)]}"
                          + ("" if i < len(_SUBREDDIT_WORDS) else str(i // len(_SUBREDDIT_WORDS)))
                          for i in range(n_subreddits)], dtype=object)
    user_names = np.array([f"u{i}" for i in range(n_users)], dtype=object)

    score = np.round(rng.normal(1.0, 3.0, n), 2)
    score[rng.random(n) < 0.02] = np.nan

    # Event times in time order, on a millisecond grid; ~1% duplicate the previous event's time exactly.
    ts = np.sort(np.round(start + rng.random(n) * days * _DAY, 3))
    if n > 1:
        dup = np.flatnonzero(rng.random(n - 1) < 0.01) + 1
        ts[dup] = ts[dup - 1]  # ascending dup indices: a run copies the same value forward
    # Arrival order: ~5% arrive late by up to an hour.
    arrival = ts + np.where(rng.random(n) < 0.05, rng.random(n) * 3600.0, 0.0)
    order = np.argsort(arrival, kind="stable")

    return pd.DataFrame({
        "user": user_names[user_ids[order]],
        "post": post_ids[order],
        "subreddit": sub_names[post_sub[post_rank[order]]],
        "score": score[order],
        "ts": ts[order],
    })


def observations_for(events: pd.DataFrame, n: int, *, seed: int = 0, entity: str = "user",
                     ts: str = "ts") -> pd.DataFrame:
    """``n`` labelled observations near the events, in random order.

    Keys are drawn from the events' rows (so popular keys are observed more), ~2% are keys that never
    occur in the events. Times: ~10% exactly an event's time, the rest an event's time plus or minus a
    log-uniform offset from a second to five days. Columns: ``[entity, ts, "label"]`` (label int64 0/1).

    >>> obs = observations_for(reddit_upvotes(500, seed=2), 50, seed=3)
    >>> list(obs.columns), len(obs)
    (['user', 'ts', 'label'], 50)
    """
    rng = np.random.default_rng(seed)
    n = int(n)
    key_col = events[entity]
    has_key = key_col.notna().to_numpy()
    rows = np.flatnonzero(has_key)
    if len(rows) == 0:
        rows = np.arange(len(events))
    if len(rows) == 0:
        raise OptionError("observations_for: events is empty; it needs at least one event")
    pick = rows[rng.integers(0, len(rows), n)]

    keys = key_col.to_numpy(dtype=object)[pick].copy()
    unseen = (rng.random(n) < 0.02) | ~has_key[pick]
    if unseen.any():
        known = key_col.dropna().tolist()
        dtype = key_col.dtype
        numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
        base = (int(max(known)) + 1) if (numeric and known) else 0
        fresh = [base + i if numeric else f"{entity}_unseen{i}" for i in range(int(unseen.sum()))]
        keys[np.flatnonzero(unseen)] = np.array(fresh, dtype=object)

    t = events[ts].iloc[pick].reset_index(drop=True)
    exact = rng.random(n) < 0.10
    offset = np.exp(rng.uniform(0.0, np.log(5 * _DAY), n)) * rng.choice([-1.0, 1.0], n)
    offset = np.where(exact, 0.0, np.round(offset, 3))
    if pd.api.types.is_datetime64_any_dtype(t.dtype):
        t = t + pd.to_timedelta(np.round(offset * 1e6).astype(np.int64), unit="us")
    else:
        t = t.astype(np.float64) + offset

    try:
        key_series = pd.Series(keys, dtype=key_col.dtype)
    except (TypeError, ValueError):
        key_series = pd.Series(keys, dtype=object)
    return pd.DataFrame({entity: key_series, ts: t.to_numpy(),
                         "label": (rng.random(n) < 0.3).astype(np.int64)})


def random_events(seed: int, n: int, *, key_kind: str = "str") -> pd.DataFrame:
    """Small adversarial events for differential tests, in random arrival order.

    Columns: ``user`` and ``item`` (entity keys: a few strings, or ints (nullable ``Int64``) if
    ``key_kind="int"``, or an object column mixing ints and their string forms like ``1`` and ``"1"``
    if ``key_kind="mixed"``; ~5% null), ``ts`` (float epoch seconds on a 6-hour grid over ~4 days
    starting at a day boundary: many ties and events exactly at window boundaries), ``x`` (float64
    small integers, ~15% NaN), ``s`` (str, ~15% null).

    >>> df = random_events(0, 30, key_kind="int")
    >>> list(df.columns), str(df["user"].dtype)
    (['user', 'item', 'ts', 'x', 's'], 'Int64')
    """
    if key_kind not in ("str", "int", "mixed"):
        raise OptionError(f"random_events: key_kind must be 'str', 'int' or 'mixed', not {key_kind!r}")
    rng = np.random.default_rng(seed)
    n = int(n)
    day0 = 19676 * _DAY  # 2023-11-15T00:00Z, a day boundary

    def keys(n_keys: int) -> pd.Series:
        k = rng.integers(0, n_keys, n)
        null = rng.random(n) < 0.05
        if key_kind == "int":
            return pd.Series(pd.array(np.where(null, 0, k), dtype="Int64")).mask(null)
        if key_kind == "str":
            vals = np.array([chr(ord("a") + i) for i in range(n_keys)], dtype=object)[k]
            vals[null] = None
            return pd.Series(vals)  # pandas' default string dtype
        as_str = rng.random(n) < 0.5
        pairs = zip(k.tolist(), as_str.tolist(), strict=True)
        vals = np.array([str(v) if s else int(v) for v, s in pairs], dtype=object)
        vals[null] = None
        return pd.Series(vals, dtype=object)

    user = keys(4)
    item = keys(3)
    ts = day0 + rng.integers(0, 17, n) * 6 * 3600.0
    x = rng.integers(-2, 6, n).astype(np.float64)
    x[rng.random(n) < 0.15] = np.nan
    s = np.array(["p", "q", "r", "pq"], dtype=object)[rng.integers(0, 4, n)]
    s[rng.random(n) < 0.15] = None
    return pd.DataFrame({"user": user, "item": item, "ts": ts, "x": x, "s": pd.Series(s)})
