"""Feature lifecycle on a real store: versions, cold start / backfill, monitoring, consistency audit.

Every value is checked against the brute-force oracle of :mod:`rayfs.testing` (never against rayfs
itself): versions queried by ``name@v`` from two drivers, features registered after their events exist
(online, point in time, after a reopen, with a concurrent ingest during a long backfill), per-shard
stats against the routing of every row, feature statistics against pandas, and the audit both clean
(shuffled small batches, restart from snapshot + tail, a killed shard) and catching a state that
disagrees with the log.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import threading
import time
import urllib.request
import uuid

import numpy as np
import pandas as pd
import pytest
import ray

import rayfs
from rayfs.engine.columns import encode_batch, key_column, value_column
from rayfs.engine.featurestats import LG_K, frame_stats
from rayfs.engine.fold import TS, fold_into
from rayfs.engine.routing import shard_of
from rayfs.testing import (
    assert_features_equal,
    kill_shard,
    log_segments,
    oracle_online,
    oracle_training_set,
    shard_dir,
)

T0 = 1_704_067_200  # 2024-01-01 00:00 UTC, epoch seconds
STREAM = rayfs.Stream(name="ev", entities=("user", "item"), timestamp="ts")
STREAMS = {"ev": STREAM}
USERS = [f"u{i}" for i in range(12)] + ["never", 7]
ITEMS = [0, 1, 2, 3, 4, 99, "0"]
HLL_RSE = 1.04 / math.sqrt(2**LG_K)


def F(name, agg, column=None, *, window=None, where=None, entity="user", stream="ev", **kw) -> rayfs.Feature:
    return rayfs.Feature(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window,
                         where=where, **kw)


# Exact aggregates only (the oracle is exact), lifetime and windowed, where, strings, lists, two entities.
FEATS = [F("n", "count"), F("sx_pos", "sum", "x", where="x > 0"), F("mx_6h", "max", "x", window="6h"),
         F("last_s", "last", "s"), F("cd_s_1d", "count_distinct", "s", window="1d"),
         F("lk_x", "last_k", "x", k=2), F("var_x", "variance", "x"),
         F("i_mean", "mean", "x", entity="item"), F("i_n_3h", "count", window="3h", entity="item"),
         F("i_first_s", "first", "s", entity="item", where="s <> 'p'")]


def events(seed: int, n: int, *, n_users: int = 12, t0: int = T0, hours: int = 72) -> pd.DataFrame:
    """Events on a 15-minute grid (ties and exact window edges), null keys and null values."""
    rng = np.random.default_rng(seed)
    user = np.array([f"u{i}" for i in rng.integers(0, n_users, n)], dtype=object)
    user[rng.random(n) < 0.04] = None
    item = np.empty(n, dtype=object)
    item[:] = rng.integers(0, 5, n).tolist()
    item[rng.random(n) < 0.04] = None
    x = rng.integers(-3, 9, n).astype(float)
    x[rng.random(n) < 0.1] = np.nan
    s = np.array(["p", "q", "r", "s"], dtype=object)[rng.integers(0, 4, n)]
    s[rng.random(n) < 0.1] = None
    return pd.DataFrame({"user": pd.Series(user, dtype=object), "item": pd.Series(item, dtype=object),
                         "ts": t0 + rng.integers(0, hours * 4, n).astype(np.int64) * 900,
                         "x": x, "s": pd.Series(s, dtype=object)})


def observations(seed: int, df: pd.DataFrame, n: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.concatenate([df["ts"].to_numpy()[rng.integers(0, len(df), n // 2)],  # exactly at event times
                        int(df["ts"].min()) - 3600 + rng.integers(0, 80 * 3600, n - n // 2)])
    return pd.DataFrame({"user": pd.Series([USERS[i] for i in rng.integers(0, len(USERS), n)], dtype=object),
                         "item": pd.Series([ITEMS[i] for i in rng.integers(0, len(ITEMS), n)], dtype=object),
                         "ts": t.astype(np.int64)})


def open_store(path, shards: int | None = 3, **kw) -> rayfs.FeatureStore:
    kw.setdefault("durability", "none")
    return rayfs.FeatureStore.open(path, shards=shards, **kw)


def reopen(path, **kw) -> rayfs.FeatureStore:
    return open_store(path, shards=None, **kw)


def ingest_in_batches(store, df: pd.DataFrame, sizes, stream: str = "ev") -> int:
    i = k = 0
    while i < len(df):
        size = sizes[k % len(sizes)]
        store.ingest(stream, df.iloc[i:i + size])
        i += size
        k += 1
    return k


def check_oracle(store, df: pd.DataFrame, feats, *, obs: pd.DataFrame | None = None, refs=None,
                 context: str = "") -> None:
    """Online values (both entities) and a training set equal the oracle; ``refs`` maps names to refs."""
    refs = refs or {f.name: f.name for f in feats}
    for entity, keys in (("user", USERS), ("item", ITEMS)):
        ef = [f for f in feats if f.entity == entity]
        if not ef:
            continue
        got = store.get_features(entity, keys, [refs[f.name] for f in ef])
        got.columns = [entity, *[f.name for f in ef]]
        want = oracle_online({"ev": df}, STREAMS, ef, entity, keys)
        assert_features_equal(got, want, [f.name for f in ef], context=f"{context} online {entity}")
    if obs is not None:
        got = store.training_set(obs, [refs[f.name] for f in feats], timestamp="ts")
        got = got.rename(columns={refs[f.name]: f.name for f in feats})
        want = oracle_training_set({"ev": df}, STREAMS, feats, obs, timestamp="ts")
        assert_features_equal(got, want, [f.name for f in feats], context=f"{context} training set")


def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


# ========================================================================================= versions
def test_versions_from_two_drivers_match_the_oracle_and_persist(tmp_path):
    name = unique_name()
    a = open_store(tmp_path / "s", shards=2, name=name)
    try:
        a.register_stream("ev", entities=["user", "item"], timestamp="ts")
        b = rayfs.connect(name, address=None)
        df1, df2 = events(1, 300), events(2, 200)
        ingest_in_batches(a, df1, [37, 5, 90])
        v1 = F("f", "sum", "x")
        v2 = F("f", "sum", "x", where="x > 0", window="1d")
        v3 = F("f", "max", "x", window="6h")
        assert a.register_feature(v1).key == "f"
        got2 = b.register_feature(v2)  # the other driver makes version 2: backfilled right away
        assert (got2.version, got2.key) == (2, "f@2") and got2.created
        [got3] = a.register_sql("SELECT user, MAX(x) AS f FROM ev GROUP BY user", window="6h")
        assert (got3.version, got3.key) == (3, "f@3")
        ingest_in_batches(b, df2, [64])
        df = pd.concat([df1, df2], ignore_index=True)
        obs = observations(3, df)
        versions = [F("f1", v1.agg, v1.column), F("f2", v2.agg, v2.column, where=v2.where, window=v2.window),
                    F("f3", v3.agg, v3.column, window=v3.window)]
        refs = {"f1": "f@1", "f2": "f@2", "f3": "f"}  # the bare name is the latest
        for driver, who in ((a, "a"), (b, "b")):
            check_oracle(driver, df, versions, obs=obs, refs=refs, context=f"driver {who}")
        both = a.get_features("user", USERS, ["f", "f@3"])
        assert_features_equal(both, both.rename(columns={"f@3": "f", "f": "f@3"}), ["f", "f@3"], rtol=0)

        # Re-registering the latest definition, from either driver and spelled differently: a no-op.
        cv = [i["catalog_version"] for i in a.info()]
        same = rayfs.Feature(name="f", stream="ev", entity="user", agg="MAX", column="x",
                             window=dt.timedelta(hours=6))
        assert b.register_feature(same).version == 3
        assert [i["catalog_version"] for i in a.info()] == cv
        assert a.list_features()["key"].tolist() == ["f", "f@2", "f@3"]
        # Metadata only: updated in place, seen by the other driver, values untouched.
        meta = b.register_feature(rayfs.Feature(name="f", stream="ev", entity="user", agg="max", column="x",
                                                window="6h", owner="ana", description="peak", tags=["risk", "b"]))
        assert (meta.version, meta.owner, meta.tags) == (3, "ana", ("b", "risk"))
        d = a.describe("f")
        assert (d["version"], d["owner"], d["description"], d["tags"]) == (3, "ana", "peak", ["b", "risk"])
        assert d["created"] == got3.created  # a metadata change is not a new version
        check_oracle(a, df, versions[2:], refs={"f3": "f"}, context="after metadata")

        # Dropping version 1 through b: a sees it gone (after its catalog refresh), others unaffected.
        assert b.drop_feature("f", 1).version == 1
        assert a.list_features()["key"].tolist() == ["f@2", "f@3"]
        with pytest.raises(rayfs.UnknownFeatureError, match="f@1"):
            a.get_features("user", ["u1"], ["f@1"])
        with pytest.raises(rayfs.UnknownFeatureError, match="f@1"):
            b.training_set(obs, ["f@1"], timestamp="ts")
        check_oracle(b, df, versions[1:], obs=obs, refs=refs, context="after drop")
        b.close()  # detaching one driver leaves the store to the other
        check_oracle(a, df, versions[1:], refs=refs, context="after b closed")
    finally:
        a.stop()
    with reopen(tmp_path / "s") as store:  # versions persist, now as an embedded store
        assert store.list_features()[["key", "version", "latest"]].values.tolist() == \
            [["f@2", 2, False], ["f@3", 3, True]]
        assert store.describe("f")["owner"] == "ana"
        check_oracle(store, df, versions[1:], obs=obs, refs=refs, context="reopened")
        assert store.register_feature(F("f", "count")).version == 4  # numbers are never reused


def test_list_features_and_describe(tmp_path):
    with open_store(tmp_path / "s", shards=2) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        df = events(4, 400)
        store.ingest("ev", df)
        store.register_feature(F("n", "count", description="events per user", owner="ml", tags=["core"]))
        store.register_feature(F("sx", "sum", "x", window="1d", where="x > 0 AND s IS NOT NULL"))
        store.register_feature(F("top_s", "top_k", "s", k=2, entity="item"))
        store.register_feature(F("sx", "sum", "x", window="2d"))
        lf = store.list_features()
        for c in ("name", "version", "key", "latest", "stream", "entity", "agg", "column", "window", "where",
                  "owner", "description", "tags", "created"):
            assert c in lf.columns, c
        assert lf["key"].tolist() == ["n", "sx", "sx@2", "top_s"]
        assert lf["latest"].tolist() == [True, False, True, True]
        assert lf.set_index("key").loc["top_s", "k"] == 2
        assert lf.set_index("key").loc["sx", "where"] == F("w", "count", where="x > 0 AND s IS NOT NULL").where
        assert lf.set_index("key").loc["n", "tags"] == ["core"]

        d = store.describe("sx")
        assert (d["name"], d["version"], d["key"], d["stream"], d["entity"], d["window"]) == \
            ("sx", 2, "sx@2", "ev", "user", "2d")
        assert d["definition"] == store.features["sx"].to_dict()
        assert d["sql"] == "SELECT user, SUM(x) AS sx FROM ev GROUP BY user"
        assert [v["version"] for v in d["versions"]] == [1, 2]
        assert [v["window"] for v in d["versions"]] == ["1d", "2d"]
        assert "WHERE" in d["versions"][0]["sql"] and "WHERE" not in d["versions"][1]["sql"]
        created = dt.datetime.fromisoformat(d["created"])
        assert created.tzinfo is not None and abs(created - dt.datetime.now(dt.UTC)) < dt.timedelta(hours=1)
        d1 = store.describe("sx@1")
        assert (d1["version"], d1["window"]) == (1, "1d") and d1["versions"] == d["versions"]
        dn = store.describe("n")
        assert (dn["owner"], dn["description"], dn["tags"]) == ("ml", "events per user", ["core"])
        # The SQL form registers the very same definition again (a no-op, no new version).
        from rayfs.model.sql import features_from_sql

        for ref in ("n", "sx@1", "sx", "top_s"):
            dd = store.describe(ref)
            [parsed] = features_from_sql(dd["sql"], window=dd["window"], streams=store.streams)
            assert parsed.same_definition(store._catalog.feature(ref)), ref
            if ref != "sx@1":  # the latest: registering it again is a no-op
                assert store.register_sql(dd["sql"], window=dd["window"])[0].version == dd["version"], ref
        assert store.list_features()["key"].tolist() == ["n", "sx", "sx@2", "top_s"]
        # Live statistics are those of the online values over every known entity.
        users = sorted({u for u in df["user"] if u is not None})
        want = oracle_online({"ev": df}, STREAMS, [F("n", "count")], "user", users)["n"]
        st = dn["stats"]
        assert (st["count"], st["nulls"]) == (len(users), 0)
        assert st["mean"] == pytest.approx(want.mean()) and (st["min"], st["max"]) == (want.min(), want.max())
        with pytest.raises(rayfs.UnknownFeatureError, match="nope"):
            store.describe("nope")


def test_describe_sql_quotes_keyword_identifiers():
    from rayfs.model.sql import features_from_sql
    from rayfs.store.monitor import feature_sql

    streams = {"transfers": rayfs.Stream(name="transfers", entities=("from", "to"), timestamp="ts")}
    f = F("sent", "sum", "amount", stream="transfers", entity="from")
    [g] = features_from_sql(feature_sql(f), streams=streams)
    assert g.same_definition(f)


# ========================================================================================= cold start
def test_cold_start_backfill_matches_the_oracle_online_offline_and_after_reopen(tmp_path):
    path = tmp_path / "s"
    df1 = events(5, 500).sample(frac=1.0, random_state=1).reset_index(drop=True)  # out of order
    df2 = events(6, 150, t0=T0 + 3600)
    with open_store(path, snapshot_every=3) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        store.register_feature(FEATS[0])
        ingest_in_batches(store, df1, [1, 33, 7, 120])
        for f in FEATS[1:6]:  # registered after the events: backfilled before register returns
            store.register_feature(f)
        check_oracle(store, df1, FEATS[:6], obs=observations(7, df1), context="cold start")
        ingest_in_batches(store, df2, [50])  # later events fold into the backfilled features
        df = pd.concat([df1, df2], ignore_index=True)
        check_oracle(store, df, FEATS[:6], obs=observations(8, df), context="after more events")
    with reopen(path) as store:  # snapshot path: backfill reads the log, not the event cache
        for f in FEATS[6:]:
            store.register_feature(f)
        check_oracle(store, df, FEATS, obs=observations(9, df), context="backfill after reopen")
        more = events(10, 80, t0=T0 + 7200)
        store.ingest("ev", more)
        df = pd.concat([df, more], ignore_index=True)
        check_oracle(store, df, FEATS, obs=observations(11, df), context="after reopen + more")


# A long backfill: a slow-to-fold aggregate over many logged batches (the shard releases its lock between
# batches), while another thread ingests. Skewed on purpose: shard 0 owns every big user, shard 1 only a
# few events (its backfill is over at once). Run once; the tests below read its findings.
N_BATCHES, BATCH = 100, 5000
_CANDIDATES = np.array([f"u{k}" for k in range(1200)], dtype=object)
BIG_USERS = _CANDIDATES[shard_of(_CANDIDATES, 2) == 0][:400]
SMALL_USER = _CANDIDATES[shard_of(_CANDIDATES, 2) == 1][0]


def big_batch(i: int) -> pd.DataFrame:
    rng = np.random.default_rng(1000 + i)
    return pd.DataFrame({"user": BIG_USERS[rng.integers(0, len(BIG_USERS), BATCH)],
                         "ts": T0 + rng.integers(0, 10**6, BATCH).astype(np.int64),
                         "x": rng.normal(size=BATCH)})


@pytest.fixture(scope="module")
def backfill_run(tmp_path_factory):
    stream = rayfs.Stream(name="big", entities=("user",), timestamp="ts")
    out: dict = {"streams": {"big": stream}}
    store = open_store(tmp_path_factory.mktemp("big") / "s", shards=2)
    try:
        store.register_stream("big", entities=["user"], timestamp="ts")
        first = big_batch(0).iloc[:10].assign(user=SMALL_USER)
        store.ingest("big", first)
        store.register_feature(F("warm", "count", stream="big"))  # the first registration has fixed costs
        small: list = []
        store.register_feature(F("tiny", "count", stream="big"), progress=lambda d, t: small.append((d, t)))
        out["tiny_calls"] = small
        frames = [first]
        for i in range(N_BATCHES):
            b = big_batch(i)
            store.ingest("big", b)
            frames.append(b)
        out["before"] = sum(len(f) for f in frames)

        stop = threading.Event()
        overlap, late, errors = [], [], []

        def ingest_meanwhile():
            k = 0
            while not stop.is_set():
                # Newest events of their users: visible in last_k, so a lost or doubled one would show.
                b = pd.DataFrame({"user": [BIG_USERS[(k * 7 + j) % len(BIG_USERS)] for j in range(5)],
                                  "ts": T0 + 2 * 10**6 + k * 10 + np.arange(5), "x": [float(k)] * 5})
                try:
                    store.ingest("big", b)
                except Exception as exc:  # noqa: BLE001 - reported by the test
                    errors.append(repr(exc))
                    return
                late.append(b)
                running = ray.get([h.backfill_progress.remote() for h in store._handles])
                if any(d < t for st in running for d, t in st.values()):
                    overlap.append(k)  # acknowledged while a backfill was still running
                k += 1

        calls: list = []
        worker = threading.Thread(target=ingest_meanwhile)
        worker.start()
        try:
            lk = store.register_feature(F("lk", "last_k", "x", k=3, stream="big"),
                                        progress=lambda d, t: calls.append((d, t)))
        finally:
            stop.set()
            worker.join()
        out.update(calls=calls, overlap=overlap, errors=errors, late=len(late), lk=lk)
        events_all = pd.concat(frames + late, ignore_index=True)
        users = [*BIG_USERS[::3], SMALL_USER, "none"]
        got = store.get_features("user", users, ["lk", "tiny"])
        want = oracle_online({"big": events_all}, out["streams"],
                             [F("lk", "last_k", "x", k=3, stream="big"), F("tiny", "count", stream="big")],
                             "user", users)
        out["online"] = (got, want)
        rng = np.random.default_rng(3)
        obs = pd.DataFrame({"user": BIG_USERS[rng.integers(0, len(BIG_USERS), 200)],
                            "ts": T0 + rng.integers(0, 2 * 10**6 + 10**4, 200)})
        out["training"] = (store.training_set(obs, ["lk"], timestamp="ts"),
                           oracle_training_set({"big": events_all}, out["streams"],
                                               [F("lk", "last_k", "x", k=3, stream="big")], obs, timestamp="ts"))
    finally:
        store.close()
    return out


def test_long_backfill_does_not_block_ingest_and_counts_every_event_once(backfill_run):
    r = backfill_run
    assert r["errors"] == []
    assert r["late"] > 0 and r["overlap"], "no ingest was acknowledged while the backfill ran"
    got, want = r["online"]
    assert_features_equal(got, want, ["lk", "tiny"], context="online after concurrent backfill")
    got, want = r["training"]
    assert_features_equal(got, want, ["lk"], context="training set after concurrent backfill")


def test_backfill_progress_is_called_and_ends_done(backfill_run):
    calls = backfill_run["calls"]
    assert calls, "progress was never called during a multi-second backfill"
    assert all(0 <= d <= t for d, t in calls), calls
    assert calls[-1][0] == calls[-1][1], calls


def test_backfill_progress_total_is_every_event_and_done_never_decreases(backfill_run):
    calls = backfill_run["calls"]
    before = backfill_run["before"]
    assert calls
    totals = {t for _, t in calls}
    assert len(totals) == 1 and min(totals) >= before, calls  # every logged event, from the first call
    assert [d for d, _ in calls] == sorted(d for d, _ in calls), calls
    assert calls[-1] == (calls[-1][1], calls[-1][1])


def test_short_backfill_still_reports_completion(backfill_run):
    calls = backfill_run["tiny_calls"]
    assert calls and calls[-1] == (10, 10), calls


# ========================================================================================= monitoring
def rows_per_shard(df: pd.DataFrame, entities, n: int) -> np.ndarray:
    """Events each shard logs: a row goes to the shard of each of its non-null keys (shard 0 if none)."""
    owners = [shard_of(key_column(df[e].astype(object), what=e), n) for e in entities]
    out = np.zeros(n, dtype=np.int64)
    for i in range(len(df)):
        shards = {int(o[i]) for o in owners if o[i] >= 0} or {0}
        for s in shards:
            out[s] += 1
    return out


def obs_per_shard(obs: pd.DataFrame, entity: str, n: int) -> np.ndarray:
    o = shard_of(key_column(obs[entity].astype(object), what=entity), n)
    return np.bincount(o[o >= 0], minlength=n)


def scrape_rayfs_metrics(store_path: str) -> dict[tuple[str, str], float] | None:
    """``{(metric, shard): value}`` of this store from the node's Prometheus endpoint (summed over
    workers), or None if there is no endpoint."""
    try:
        port = ray._private.worker._global_node.metrics_export_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except Exception:  # noqa: BLE001 - no metrics agent in this Ray
        return None
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"^(?:ray_)?(rayfs_\w+)\{(.*)\} (\S+)$", line)
        if not m or f'store="{store_path}"' not in m.group(2):
            continue
        shard = re.search(r'shard="(\d+)"', m.group(2)).group(1)
        key = (m.group(1), shard)
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory):
    """A 3-shard store with known traffic, kept open until the end of this module (so that Ray's metrics
    export, pushed every few seconds, has caught up by the time the last test looks at it)."""
    path = tmp_path_factory.mktemp("stats") / "s"
    n = 3
    df = events(12, 600)
    df.loc[5, ["user", "item"]] = None  # a row with no key at all: logged on shard 0
    batches = [df.iloc[i:i + 100] for i in range(0, len(df), 100)]
    store = open_store(path, shards=n, segment_bytes=4096, snapshot_every=10**6)
    r = {"path": path, "n": n, "df": df, "batches": batches, "store": store}
    try:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        store.register_feature(FEATS[1])
        store.register_feature(FEATS[7])
        for i, b in enumerate(batches):
            store.ingest("ev", b, batch_id=f"b{i}")
        r["after_ingest"] = store.stats()
        r["segments"] = [log_segments(path, i) for i in range(n)]
        r["segment_bytes"] = [sum(os.path.getsize(f) for f in segs) for segs in r["segments"]]
        # A retried batch id is a duplicate on every shard, and changes nothing.
        store.ingest("ev", batches[2], batch_id="b2")
        # A batch a shard refuses (x as strings for sum(x)) counts as an error there, and nothing else.
        bad = {"stream": "ev", "batch_id": "bad", "wm": int(df["ts"].max()) * 10**6,
               "cols": encode_batch({TS: np.array([T0 * 10**6], dtype=np.int64),
                                     "user": key_column(pd.Series(["u1"], dtype=object), what="user"),
                                     "item": key_column(pd.Series([1], dtype=object), what="item"),
                                     "x": value_column(pd.Series(["oops"], dtype=object), what="x")})}
        with pytest.raises(Exception, match="x"):
            ray.get(store._handles[1].ingest.remote(bad))
        r["after_retry_and_refusal"] = store.stats()
        # Replay counters: each observation is answered by the shard of its key, once per entity field.
        r["obs"] = obs = observations(13, df)
        store.training_set(obs, ["sx_pos", "i_mean"], timestamp="ts")
        r["after_replay"] = store.stats()
        store.snapshot()
        r["after_snapshot"] = store.stats()
        yield r
    finally:
        store.close()


def test_stats_per_shard_counters_and_gauges(stats_run):
    r = stats_run
    n, df, batches = r["n"], r["df"], r["batches"]
    st = r["after_ingest"]
    assert len(st) == n and st["shard"].tolist() == list(range(n))
    want = rows_per_shard(df, ["user", "item"], n)
    assert st["events_ingested"].tolist() == want.tolist()
    assert st["events"].tolist() == want.tolist()
    assert st["events_ingested"].sum() > len(df)  # rows with two keys on two shards count twice
    assert (st["batches_ingested"] == len(batches)).all()  # every batch reaches every shard
    assert (st["log_batches"] == len(batches)).all()
    assert st["log_segments"].tolist() == [len(segs) for segs in r["segments"]]
    assert all(len(segs) > 1 for segs in r["segments"])
    assert st["log_bytes"].tolist() == r["segment_bytes"]
    assert (st["bytes_ingested"] == st["log_bytes"]).all()
    assert (st["duplicates"] == 0).all() and (st["errors"] == 0).all()
    assert (st["events_since_snapshot"] == want).all() and (st["snapshot_age_s"] >= 0).all()
    users = {u for u in df["user"] if u is not None}
    items = {i for i in df["item"] if i is not None}
    assert sum(e["ev.user"] for e in st["entities"]) == len(users)
    assert sum(e["ev.item"] for e in st["entities"]) == len(items)
    assert all(isinstance(x, str) and x for x in st["node_id"])

    st2 = r["after_retry_and_refusal"]
    assert (st2["duplicates"] == 1).all()
    assert st2["errors"].tolist() == [0, 1, 0]
    assert st2["events_ingested"].tolist() == want.tolist()
    assert (st2["log_batches"] == len(batches)).all()

    st3 = r["after_replay"]
    per = obs_per_shard(r["obs"], "user", n) + obs_per_shard(r["obs"], "item", n)
    assert st3["replay_observations"].tolist() == per.tolist()
    assert ((st3["replay_events"] > 0) == (per > 0)).all()
    assert all(v is None or v > 0 for v in st3["replay_events_per_s"])

    st4 = r["after_snapshot"]
    assert (st4["events_since_snapshot"] == 0).all() and (st4["batches_since_snapshot"] == 0).all()
    assert st4["events"].tolist() == want.tolist()


def test_feature_stats_online_and_of_a_training_set(tmp_path):
    with open_store(tmp_path / "s") as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        feats = [FEATS[0], FEATS[1], FEATS[2], FEATS[3], FEATS[5], FEATS[7],
                 F("hll", "approx_count_distinct", "x")]
        for f in feats:
            store.register_feature(f)
        df = events(14, 2000, n_users=300)
        ingest_in_batches(store, df, [400])
        fs = store.feature_stats()
        assert fs["feature"].tolist() == [f.name for f in feats]
        fs = fs.set_index("feature")
        known = {"user": sorted({u for u in df["user"] if u is not None}),
                 "item": sorted({i for i in df["item"] if i is not None})}
        for f in feats[:-1]:
            keys = known[f.entity]
            vals = oracle_online({"ev": df}, STREAMS, [f], f.entity, keys)[f.name]
            null = vals.map(lambda v: v is None or (isinstance(v, float) and math.isnan(v))
                            or (isinstance(v, list) and not v))
            row = fs.loc[f.name]
            assert (row["count"], row["nulls"]) == (len(keys), null.sum()), f.name
            assert row["null_rate"] == pytest.approx(null.mean()), f.name
            present = vals[~null]
            if f.agg in ("last", "last_k"):  # strings and lists: no mean/min/max
                assert pd.isna(row["mean"]) and pd.isna(row["min"]), f.name
                distinct = len({repr(v) for v in present})
            else:
                num = present.astype(float)
                assert row["mean"] == pytest.approx(num.mean()), f.name
                assert (row["min"], row["max"]) == (num.min(), num.max()), f.name
                distinct = num.nunique()
            assert abs(row["distinct"] - distinct) <= 3 * HLL_RSE * distinct + 1e-6, (f.name, row["distinct"])
        one = store.feature_stats(["n", "sx_pos"])
        assert one["feature"].tolist() == ["n", "sx_pos"]
        pd.testing.assert_frame_equal(one.set_index("feature"), fs.loc[["n", "sx_pos"]], check_names=False)

        obs = observations(15, df, n=400)
        ts = store.training_set(obs, timestamp="ts")
        tstats = store.feature_stats(training_set=ts)
        assert tstats["feature"].tolist() == [f.name for f in feats]  # feature columns only, not keys/ts
        pd.testing.assert_frame_equal(tstats, frame_stats(ts, [f.name for f in feats]))
        t = tstats.set_index("feature")
        assert t.loc["sx_pos", "nulls"] == ts["sx_pos"].isna().sum()
        assert t.loc["sx_pos", "mean"] == pytest.approx(ts["sx_pos"].mean())
        assert t.loc["n", "count"] == len(obs) and t.loc["n", "max"] == ts["n"].max()
        sub = store.feature_stats("n", training_set=ts)
        assert sub["feature"].tolist() == ["n"]


# ========================================================================================= audit
def assert_audit_clean(store, feats, context: str, min_checked: int = 1) -> pd.DataFrame:
    a = store.audit(10_000)
    assert set(a["feature"]) == {f.name for f in feats}, context
    bad = a[a["mismatches"] != 0]
    assert bad.empty, f"{context}: {bad.to_dict('records')}"
    assert (a["checked"] >= min_checked).all(), f"{context}: {a[['feature', 'checked']].values.tolist()}"
    return a


def test_audit_is_clean_after_shuffled_ingest_restart_and_reopen(tmp_path):
    path = tmp_path / "s"
    df = events(16, 700).sample(frac=1.0, random_state=4).reset_index(drop=True)
    sizes = np.random.default_rng(2).integers(1, 30, 200).tolist()
    with open_store(path, snapshot_every=7) as store:
        store.register_stream("ev", entities=["user", "item"], timestamp="ts")
        for f in FEATS:
            store.register_feature(f)
        k = ingest_in_batches(store, df.iloc[:500], sizes)
        assert k > 30
        a = assert_audit_clean(store, FEATS, "live")
        n_users = len({u for u in df["user"].iloc[:500] if u is not None})
        assert a.set_index("feature").loc["n", "checked"] == n_users  # every key when n is large
        # Kill a shard mid-life: it restarts from its last snapshot plus the log tail after it.
        assert kill_shard(store, 1) is not None
        store.wait_until_ready()
        assert_audit_clean(store, FEATS, "after kill")
        check_oracle(store, df.iloc[:500], FEATS, context="after kill")
        ingest_in_batches(store, df.iloc[500:], sizes[::-1])
        assert_audit_clean(store, FEATS, "after kill + more")
    with reopen(path) as store:
        assert_audit_clean(store, FEATS, "reopened")
        check_oracle(store, df, FEATS, obs=observations(17, df), context="reopened")
        sub = store.audit(4, features=["n", "i_mean"], seed=3)
        assert sub["feature"].tolist() == ["n", "i_mean"] and (sub["mismatches"] == 0).all()
        assert (sub["checked"] <= 4).all() and (sub["checked"] >= 1).all()


def test_audit_detects_online_state_that_disagrees_with_the_log(tmp_path):
    """Two stores with the same keys, times and batch layout but different values; swapping their
    snapshots makes one serve state its log does not support: the audit must say so."""
    base = events(18, 300)
    other = base.assign(x=base["x"] + 1.0)  # same keys, same times, other values
    feats = [FEATS[0], FEATS[1], FEATS[2], FEATS[7]]
    for name, frame in (("good", base), ("other", other)):
        with open_store(tmp_path / name, shards=1, snapshot_every=10**6) as store:
            store.register_stream("ev", entities=["user", "item"], timestamp="ts")
            for f in feats:
                store.register_feature(f)
            ingest_in_batches(store, frame, [100])
    for i in range(1):  # the closing snapshots cover the whole (equally long) logs
        dst = os.path.join(shard_dir(tmp_path / "good", i), "snapshot.lmdb")
        shutil.rmtree(dst)
        shutil.copytree(os.path.join(shard_dir(tmp_path / "other", i), "snapshot.lmdb"), dst)
    with reopen(tmp_path / "good") as store:
        a = store.audit(10_000).set_index("feature")
        assert a.loc["n", "mismatches"] == 0  # counts do not depend on x
        for name in ("sx_pos", "mx_6h", "i_mean"):
            assert a.loc[name, "mismatches"] > 0, name
            ex = a.loc[name, "examples"][0]
            assert {"key", "online", "replay"} <= set(ex)
        # The online values are the other store's (the snapshot's), the replay is this log's.
        users = sorted({u for u in base["user"] if u is not None})
        on = store.get_features("user", users, ["sx_pos"])
        want = oracle_online({"ev": other}, STREAMS, [feats[1]], "user", users)
        assert_features_equal(on, want, ["sx_pos"], context="served from the swapped snapshot")


def test_shardcore_audit_sees_perturbed_state(tmp_path):
    """Without Ray: fold events into a shard's state that are not in its log; audit shows online != replay."""
    from rayfs.shard.core import ShardCore

    stream = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
    feats = [F("n", "count"), F("sx", "sum", "x"), F("mx_1h", "max", "x", window="1h")]

    def record(df, bid):
        cols = {TS: df["ts"].to_numpy(dtype=np.int64) * 1_000_000,
                "user": key_column(df["user"], what="user"), "x": value_column(df["x"], what="x")}
        return {"stream": "ev", "batch_id": bid, "cols": encode_batch(cols)}

    core = ShardCore(str(tmp_path), 0, 1, [stream.to_dict()], [f.to_dict() for f in feats], durability="none")
    try:
        df = pd.DataFrame({"user": ["a", "b", "a", "c"], "ts": [T0, T0 + 60, T0 + 120, T0 + 180],
                           "x": [1.0, 2.0, 3.0, 4.0]})
        core.ingest(record(df.iloc[:2], "b0"))
        core.ingest(record(df.iloc[2:], "b1"))
        keys = key_column(pd.Series(["a", "b", "c", "zz"], dtype=object), what="keys")
        names = [f.name for f in feats]

        def differing(res):
            out = {}
            for n in names:
                on, re_ = pd.Series(res["online"][n], dtype=object), pd.Series(res["replay"][n], dtype=object)
                same = [(pd.isna(x) and pd.isna(y)) or x == y for x, y in zip(on, re_, strict=True)]
                out[n] = [k for k, ok in zip(["a", "b", "c", "zz"], same, strict=True) if not ok]
            return out

        assert differing(core.audit("user", keys, names)) == {"n": [], "sx": [], "mx_1h": []}
        # An event for "b" that was never logged: folded into the lifetime states and the window buffer.
        ghost = core._decode(record(pd.DataFrame({"user": ["b"], "ts": [T0 + 170], "x": [50.0]}), "ghost"),
                             core.log.next_offset)
        with core.lock:
            for n in ("n", "sx"):
                fold_into(core.tables[n], core.compiled[n], ghost)
            core.windows.append("ev", ghost)
        assert differing(core.audit("user", keys, names)) == {"n": ["b"], "sx": ["b"], "mx_1h": ["b"]}
    finally:
        core.close()


# ========================================================================================= threads
def test_ingest_from_threads_and_failed_batches_apply_exactly_once(tmp_path, monkeypatch):
    """One driver, many threads, WAL resets every few batches; then batches whose send fails (before
    or after reaching the shards): the next ingest completes them first, each lands once, reopen adds
    nothing."""
    import rayfs.storage.wal

    monkeypatch.setattr(rayfs.storage.wal, "MAX_BATCHES", 4)  # a reset every few batches, like a busy driver's
    path = tmp_path / "s"
    with open_store(path, shards=2) as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count"))
        errors: list = []

        def work(j: int) -> None:
            for k in range(15):
                try:
                    store.ingest("ev", pd.DataFrame({"user": [f"w{j}"], "ts": [T0 + k]}))
                except Exception as exc:  # noqa: BLE001
                    errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(j,)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.get_features("user", [f"w{j}" for j in range(4)])["n"].tolist() == [15] * 4

        real = store._ingestor.send_record
        failures = {"left": 0, "after": False}

        def flaky(record, cols=None):
            if failures["left"]:
                failures["left"] -= 1
                if failures["after"]:
                    real(record, cols)  # reached every shard ...
                raise ConnectionError("shard call failed")  # ... but the driver never heard back
            return real(record, cols)

        monkeypatch.setattr(store._ingestor, "send_record", flaky)
        for after in (False, True):
            failures.update(left=1, after=after)
            with pytest.raises(ConnectionError):
                store.ingest("ev", pd.DataFrame({"user": ["f"], "ts": [T0 + 100 + after]}))
            store.ingest("ev", pd.DataFrame({"user": ["g"], "ts": [T0 + 200 + after]}))  # completes it first
        got = store.get_features("user", ["f", "g"])["n"].tolist()
        assert got == [2, 2]
        assert store._ingestor.wal.unacked == {}
    with reopen(path) as store:  # nothing left in any WAL to apply twice
        assert store.get_features("user", ["f", "g", "w0"])["n"].tolist() == [2, 2, 15]


# ========================================================================================= metrics (keep last)
def test_shard_metrics_reach_rays_prometheus_endpoint(stats_run):
    """The stats_run store's figures through Ray's metrics export (workers push every few seconds; the
    tests in between gave it time)."""
    r = stats_run
    n, st = r["n"], r["after_snapshot"]
    # Ray exports a gauge only for a while after it was last set (an idle shard's gauges vanish, see the
    # report); a retried batch refreshes every shard's gauges and changes no counter but duplicates.
    r["store"].ingest("ev", r["batches"][2], batch_id="b2")
    want = rows_per_shard(r["df"], ["user", "item"], n)
    per = obs_per_shard(r["obs"], "user", n) + obs_per_shard(r["obs"], "item", n)
    expect = {("rayfs_events_ingested_total", str(i)): float(want[i]) for i in range(n)}
    expect.update({("rayfs_errors_total", "1"): 1.0})
    expect.update({("rayfs_log_bytes", str(i)): float(st["log_bytes"][i]) for i in range(n)})
    expect.update({("rayfs_replay_observations_total", str(i)): float(per[i]) for i in range(n) if per[i]})
    deadline, seen = time.monotonic() + 45, None
    while time.monotonic() < deadline:
        seen = scrape_rayfs_metrics(str(r["path"]))
        if seen is None:
            pytest.skip("no Prometheus metrics endpoint in this Ray")
        if all(seen.get(k) == v for k, v in expect.items()):
            break
        time.sleep(1)
    assert seen is not None and {k: seen.get(k) for k in expect} == expect
