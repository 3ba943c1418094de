"""Peers computing the same point-in-time features: DuckDB (SQL) and pandas (``merge_asof``).

Semantics (rayfs's): an observation ``(k, t)`` sees events of ``k`` with ``ts < t`` (and ``t - w <= ts``
for a window ``w``); times are int64 µs (``round(ts * 1e6)``); equal times are ordered by arrival row
(``rn``, later-ingested wins for ``last``); nulls are skipped; count of nothing is 0, everything else
of nothing is null (NaN / None).

Exactness: scores are whole hundredths (checked by :func:`bench.workload.check_cents`), so sums, means
and the stddev use exact int64 sums of cents (``sum(cents)``, ``sum(cents^2)``) instead of float
cumulative sums whose differences lose digits. Cumulative aggregates are pre-aggregated per
``(entity, ts)`` (ts unique per entity, so an ASOF match is never ambiguous), then ASOF-joined with a
strict ``ts < t`` (the window's lower edge ``t - w <= ts`` is ``cum(ts < t) - cum(ts < t - w)``).
Non-invertible windowed aggregates (min/max, count distinct) run as window functions over one timeline
of events and observations with ``RANGE BETWEEN w PRECEDING AND 1 PRECEDING`` (integer µs: exactly
``t - w <= ts <= t - 1``).
"""

from __future__ import annotations

import time

import duckdb
import numpy as np
import pandas as pd

from bench.workload import DAY_US, to_us

W1, W7, W30 = DAY_US, 7 * DAY_US, 30 * DAY_US
COUNT_COLS = {"user_upvotes", "user_upvotes_7d", "post_upvotes_1d", "user_distinct_subreddits",
              "user_distinct_posts_30d"}


# ----------------------------------------------------------------------------------------------- DuckDB
class DuckPeer:
    """Holds a DuckDB connection with the events loaded (the analogue of rayfs's ingest)."""

    def __init__(self, events: pd.DataFrame, threads: int | None = None) -> None:
        self.con = duckdb.connect()
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        t0 = time.perf_counter()
        ev = pd.DataFrame({"rn": np.arange(len(events), dtype=np.int64), "user": events["user"],
                           "post": events["post"], "subreddit": events["subreddit"],
                           "score": events["score"], "ts": to_us(events["ts"])})
        self.con.register("ev_df", ev)
        self.con.execute("""
            CREATE TABLE ev AS SELECT rn, "user", post, subreddit,
                CASE WHEN isnan(score) THEN NULL ELSE score END AS score,
                CAST(round(CASE WHEN isnan(score) THEN NULL ELSE score END * 100) AS BIGINT) AS cents,
                ts
            FROM ev_df""")
        self.con.unregister("ev_df")
        self.load_s = time.perf_counter() - t0

    def close(self) -> None:
        self.con.close()

    def _load_obs(self, obs: pd.DataFrame) -> None:
        ob = pd.DataFrame({"oid": np.arange(len(obs), dtype=np.int64), "user": obs["user"],
                           "post": obs["post"],
                           "t": obs["t_us"].to_numpy() if "t_us" in obs else to_us(obs["ts"])})
        self.con.register("ob", ob)

    def basic(self, obs: pd.DataFrame) -> pd.DataFrame:
        self._load_obs(obs)
        sql = f"""
        WITH u AS (
            SELECT "user", ts, count(*) AS n, count(cents) AS ns, sum(cents) AS sc
            FROM ev WHERE "user" IS NOT NULL GROUP BY ALL),
        fd AS (
            SELECT "user", ts, count(*) AS d FROM (
                SELECT "user", min(ts) AS ts FROM ev
                WHERE "user" IS NOT NULL AND subreddit IS NOT NULL GROUP BY "user", subreddit)
            GROUP BY ALL),
        uc AS (
            SELECT u."user", u.ts,
                CAST(sum(n) OVER w AS BIGINT) AS cn, CAST(sum(ns) OVER w AS BIGINT) AS cns,
                CAST(sum(sc) OVER w AS BIGINT) AS csc, CAST(sum(coalesce(d, 0)) OVER w AS BIGINT) AS cd
            FROM u LEFT JOIN fd ON u."user" = fd."user" AND u.ts = fd.ts
            WINDOW w AS (PARTITION BY u."user" ORDER BY u.ts ROWS UNBOUNDED PRECEDING)),
        p AS (
            SELECT post, ts, count(*) AS n, max(score) AS mx FROM ev WHERE post IS NOT NULL GROUP BY ALL),
        pc AS (
            SELECT post, ts, CAST(sum(n) OVER w AS BIGINT) AS cn, max(mx) OVER w AS cmx
            FROM p WINDOW w AS (PARTITION BY post ORDER BY ts ROWS UNBOUNDED PRECEDING)),
        j AS (
            SELECT o.oid,
                coalesce(a.cn, 0) AS user_upvotes,
                coalesce(a.cn, 0) - coalesce(b7.cn, 0) AS user_upvotes_7d,
                coalesce(pa.cn, 0) - coalesce(pb.cn, 0) AS post_upvotes_1d,
                coalesce(a.cd, 0) AS user_distinct_subreddits,
                coalesce(a.cns, 0) - coalesce(b30.cns, 0) AS n30,
                coalesce(a.csc, 0) - coalesce(b30.csc, 0) AS s30,
                pa.cmx AS post_max_score
            FROM ob o
            ASOF LEFT JOIN uc a ON o."user" = a."user" AND o.t > a.ts
            ASOF LEFT JOIN uc b7 ON o."user" = b7."user" AND o.t - {W7} > b7.ts
            ASOF LEFT JOIN uc b30 ON o."user" = b30."user" AND o.t - {W30} > b30.ts
            ASOF LEFT JOIN pc pa ON o.post = pa.post AND o.t > pa.ts
            ASOF LEFT JOIN pc pb ON o.post = pb.post AND o.t - {W1} > pb.ts)
        SELECT oid, user_upvotes, user_upvotes_7d, post_upvotes_1d, user_distinct_subreddits,
            CASE WHEN n30 > 0 THEN (s30 / 100.0) / n30 END AS user_mean_score_30d,
            post_max_score
        FROM j ORDER BY oid"""
        try:
            return _finish(self.con.execute(sql).df())
        finally:
            self.con.unregister("ob")

    def rich(self, obs: pd.DataFrame) -> pd.DataFrame:
        self._load_obs(obs)
        sql = f"""
        WITH u AS (
            SELECT "user", ts, count(cents) AS ns, sum(cents) AS sc, sum(cents * cents) AS sq,
                arg_max(subreddit, rn) FILTER (WHERE subreddit IS NOT NULL) AS ls
            FROM ev WHERE "user" IS NOT NULL GROUP BY ALL),
        uc AS (
            SELECT "user", ts, CAST(sum(ns) OVER w AS BIGINT) AS n, CAST(sum(sc) OVER w AS HUGEINT) AS s,
                CAST(sum(sq) OVER w AS HUGEINT) AS q, last_value(ls IGNORE NULLS) OVER w AS ls
            FROM u WINDOW w AS (PARTITION BY "user" ORDER BY ts ROWS UNBOUNDED PRECEDING)),
        a AS (
            SELECT o.oid,
                CASE WHEN a.n > 1 THEN sqrt(CAST(a.n * a.q - a.s * a.s AS DOUBLE) / (a.n * (a.n - 1)) / 10000.0)
                END AS user_score_stddev,
                a.ls AS user_last_subreddit
            FROM ob o ASOF LEFT JOIN uc a ON o."user" = a."user" AND o.t > a.ts),
        tl AS (
            SELECT "user", ts, score, post, NULL::BIGINT AS oid FROM ev WHERE "user" IS NOT NULL
            UNION ALL SELECT "user", t, NULL, NULL, oid FROM ob),
        wf AS (
            SELECT oid,
                min(score) OVER w7 AS user_min_score_7d,
                max(score) OVER w7 AS user_max_score_7d,
                count(DISTINCT post) OVER w30 AS user_distinct_posts_30d
            FROM tl
            WINDOW w7 AS (PARTITION BY "user" ORDER BY ts RANGE BETWEEN {W7} PRECEDING AND 1 PRECEDING),
                   w30 AS (PARTITION BY "user" ORDER BY ts RANGE BETWEEN {W30} PRECEDING AND 1 PRECEDING)
            QUALIFY oid IS NOT NULL)
        SELECT a.oid, wf.user_min_score_7d, wf.user_max_score_7d,
            CAST(coalesce(wf.user_distinct_posts_30d, 0) AS BIGINT) AS user_distinct_posts_30d,
            a.user_score_stddev, a.user_last_subreddit
        FROM a LEFT JOIN wf ON a.oid = wf.oid ORDER BY a.oid"""
        try:
            return _finish(self.con.execute(sql).df())
        finally:
            self.con.unregister("ob")


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    """Observation order, counts as int64, float NaN for nulls, strings as object with None."""
    df = df.drop(columns="oid").reset_index(drop=True)
    for c in df.columns:
        if c in COUNT_COLS:
            df[c] = df[c].fillna(0).astype(np.int64)
        elif c == "user_last_subreddit":
            df[c] = pd.Series(df[c].astype(object).where(df[c].notna(), None), dtype=object)
        else:
            df[c] = df[c].astype(np.float64)
    return df


# ----------------------------------------------------------------------------------------------- pandas
def _asof(left: pd.DataFrame, right: pd.DataFrame, on: str, by: str, cols: list[str]) -> pd.DataFrame:
    """Backward merge_asof with strict ``right.ts < left[on]``; ``left`` sorted by ``on``."""
    r = right[[by, "ts", *cols]]
    m = pd.merge_asof(left[[on, by, "oid"]], r, left_on=on, right_on="ts", by=by,
                      allow_exact_matches=False, direction="backward")
    return m.set_index("oid")[cols]


class PandasPeer:
    """pandas equivalents; the count-distinct over a 30-day window has no practical pandas form and is
    left to DuckDB (``rich`` omits ``user_distinct_posts_30d``)."""

    RICH_SKIPPED = ("user_distinct_posts_30d",)

    def __init__(self, events: pd.DataFrame) -> None:
        t0 = time.perf_counter()
        score = events["score"].to_numpy(dtype=np.float64)
        self.ev = pd.DataFrame({"rn": np.arange(len(events), dtype=np.int64), "user": events["user"],
                                "post": events["post"], "subreddit": events["subreddit"], "score": score,
                                "cents": np.round(score * 100), "ts": to_us(events["ts"])})
        self.load_s = time.perf_counter() - t0

    def _frames(self, obs: pd.DataFrame):
        ev = self.ev
        n_ev = len(ev)
        codes, _ = pd.factorize(pd.concat([ev["user"], obs["user"]], ignore_index=True))
        ev = ev.assign(uid=codes[:n_ev])
        ev = ev[ev["uid"] >= 0]
        ob = pd.DataFrame({"oid": np.arange(len(obs), dtype=np.int64), "uid": codes[n_ev:],
                           "post": obs["post"].to_numpy(), "t": to_us(obs["ts"])})
        ob = ob.sort_values("t", kind="stable")
        return ev, ob

    def basic(self, obs: pd.DataFrame) -> pd.DataFrame:
        ev, ob = self._frames(obs)
        n = len(obs)
        g = ev.groupby(["uid", "ts"], sort=True).agg(n=("rn", "size"), ns=("cents", "count"),
                                                     sc=("cents", "sum"))
        first = ev.dropna(subset=["subreddit"]).groupby(["uid", "subreddit"], sort=False)["ts"].min()
        d = first.reset_index().groupby(["uid", "ts"]).size()
        g["d"] = d.reindex(g.index, fill_value=0).to_numpy()
        c = g.groupby(level=0).cumsum().reset_index().sort_values("ts", kind="stable")
        cols = ["n", "ns", "sc", "d"]
        a = _asof(ob, c, "t", "uid", cols).reindex(range(n)).fillna(0)
        b7 = _asof(ob.assign(t7=ob["t"] - W7), c, "t7", "uid", ["n"]).reindex(range(n)).fillna(0)
        b30 = _asof(ob.assign(t30=ob["t"] - W30), c, "t30", "uid", ["ns", "sc"]).reindex(range(n)).fillna(0)

        p = ev.groupby(["post", "ts"], sort=True).agg(n=("rn", "size"), mx=("score", "max"))
        pc = pd.DataFrame({"n": p["n"].groupby(level=0).cumsum(),
                           "mx": p["mx"].groupby(level=0).cummax()})
        pc["mx"] = pc["mx"].groupby(level=0).ffill()
        pc = pc.reset_index().sort_values("ts", kind="stable")
        pa = _asof(ob, pc, "t", "post", ["n", "mx"]).reindex(range(n))
        pb = _asof(ob.assign(t1=ob["t"] - W1), pc, "t1", "post", ["n"]).reindex(range(n)).fillna(0)

        n30 = a["ns"].to_numpy() - b30["ns"].to_numpy()
        s30 = a["sc"].to_numpy() - b30["sc"].to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n30 > 0, (s30 / 100.0) / n30, np.nan)
        return pd.DataFrame({
            "user_upvotes": a["n"].to_numpy().astype(np.int64),
            "user_upvotes_7d": (a["n"].to_numpy() - b7["n"].to_numpy()).astype(np.int64),
            "post_upvotes_1d": (pa["n"].fillna(0).to_numpy() - pb["n"].to_numpy()).astype(np.int64),
            "user_distinct_subreddits": a["d"].to_numpy().astype(np.int64),
            "user_mean_score_30d": mean,
            "post_max_score": pa["mx"].to_numpy(dtype=np.float64),
        })

    def rich(self, obs: pd.DataFrame) -> pd.DataFrame:
        ev, ob = self._frames(obs)
        n = len(obs)
        # lifetime stddev (exact integer moments of cents) and last subreddit via merge_asof
        e = ev.assign(sq=ev["cents"] * ev["cents"])
        g = e.groupby(["uid", "ts"], sort=True).agg(ns=("cents", "count"), sc=("cents", "sum"), sq=("sq", "sum"))
        c = g.groupby(level=0).cumsum()
        last = (ev.dropna(subset=["subreddit"]).sort_values("rn").groupby(["uid", "ts"])["subreddit"].last())
        c["ls"] = last.reindex(c.index).to_numpy(dtype=object)
        c["ls"] = c["ls"].groupby(level=0).ffill()
        c = c.reset_index().sort_values("ts", kind="stable")
        a = _asof(ob, c, "t", "uid", ["ns", "sc", "sq", "ls"]).reindex(range(n))
        k = a["ns"].fillna(0).to_numpy().astype(np.int64)
        s = a["sc"].fillna(0).to_numpy().astype(np.int64)
        q = a["sq"].fillna(0).to_numpy().astype(np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            num = (k * q - s * s).astype(np.float64)  # exact in int64 at these sizes
            sd = np.where(k > 1, np.sqrt(num / (k * (k - 1)) / 10000.0), np.nan)
        # windowed min/max: one timeline of events and observations, rolling [t - 7d, t)
        tl = pd.concat([pd.DataFrame({"uid": ev["uid"].to_numpy(), "ts": ev["ts"].to_numpy(),
                                      "score": ev["score"].to_numpy(), "oid": -1}),
                        pd.DataFrame({"uid": ob["uid"].to_numpy(), "ts": ob["t"].to_numpy(),
                                      "score": np.nan, "oid": ob["oid"].to_numpy()})], ignore_index=True)
        tl = tl[tl["uid"] >= 0].sort_values(["uid", "ts"], kind="stable")
        tl["dt"] = tl["ts"].to_numpy().astype("datetime64[us]")
        r = tl.groupby("uid", sort=False).rolling(pd.Timedelta(microseconds=W7), on="dt", closed="left")["score"]
        mn = r.min().to_numpy()
        mx = r.max().to_numpy()
        is_obs = tl["oid"].to_numpy() >= 0
        # groupby-rolling returns rows grouped by uid in first-appearance order = tl's (sorted) order
        oid = tl["oid"].to_numpy()[is_obs]
        out_mn = np.full(n, np.nan)
        out_mx = np.full(n, np.nan)
        out_mn[oid] = mn[is_obs]
        out_mx[oid] = mx[is_obs]
        ls = a["ls"].to_numpy(dtype=object)
        ls = np.array([v if isinstance(v, str) else None for v in ls], dtype=object)
        return pd.DataFrame({"user_min_score_7d": out_mn, "user_max_score_7d": out_mx,
                             "user_score_stddev": sd, "user_last_subreddit": ls})
