"""Named stores and Ray Data: a store as detached actors that many drivers (threads, processes) share.

Pinned: ``FeatureStore.open(path, name=...)`` creates detached actors that outlive their driver, a second
open attaches (same path only), :func:`rayfs.connect` reaches the store from this process and from a
second process joined to the same Ray, ``close()`` detaches while ``stop()`` stops it for everyone,
catalog changes made by one driver are used by the others without reopening, online windows end at the
newest event store-wide whoever ingested it, and Ray Data in and out (``ingest`` of a Dataset,
``training_set(output="arrow" | "ray")``) give exactly what the pandas paths give. Values are checked
against the brute-force oracle of :mod:`rayfs.testing`.
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import textwrap
import uuid
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray

import rayfs
from rayfs.engine.routing import shard_of
from rayfs.errors import StoreOpenError
from rayfs.store import cluster
from rayfs.testing import assert_features_equal, oracle_online, oracle_training_set

T0 = 1_704_067_200  # 2024-01-01 UTC, epoch seconds
DAY = 86_400
EV = rayfs.Stream(name="ev", entities=("user",), timestamp="ts")
# Users by owning shard of a 2-shard store, to place events on purpose.
_CAND = np.array([f"u{k}" for k in range(64)], dtype=object)
ON0 = [str(u) for u in _CAND[shard_of(_CAND, 2) == 0][:4]]
ON1 = [str(u) for u in _CAND[shard_of(_CAND, 2) == 1][:4]]
USERS = ON0 + ON1 + ["nobody"]


def F(name, agg, column=None, *, window=None, where=None, stream="ev", entity="user", **kw) -> rayfs.Feature:
    return rayfs.Feature(name=name, stream=stream, entity=entity, agg=agg, column=column, window=window,
                         where=where, **kw)


FEATS = [F("n", "count"), F("n_1d", "count", window="1d"), F("sx_1d", "sum", "x", window="1d"),
         F("last_x", "last", "x")]


def renamed(f: rayfs.Feature, name: str) -> SimpleNamespace:
    """``f`` under another name (e.g. ``"sx@1"``) for the oracle, which takes any object with the fields."""
    return SimpleNamespace(**{**f.to_dict(), "name": name})


def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:10]


def batch(seed: int, n: int, users=USERS[:-1], t0: int = T0, span: int = 3 * DAY) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": pd.Series([users[i] for i in rng.integers(0, len(users), n)], dtype=object),
                         "ts": t0 + rng.integers(0, span // 600, n).astype(np.int64) * 600,
                         "x": np.round(rng.normal(size=n), 3)})


def stream_of(name: str) -> dict[str, rayfs.Stream]:
    return {name: rayfs.Stream(name=name, entities=("user",), timestamp="ts")}


def oracle_check(store, df: pd.DataFrame, feats, refs=None, context="", obs=None) -> None:
    """Online values (and a training set for ``obs``) of ``feats`` equal the oracle over ``df``; ``refs``
    maps a feature's name to what to ask the store for (e.g. ``"f@1"``)."""
    refs = refs or {f.name: f.name for f in feats}
    stream = feats[0].stream
    streams = stream_of(stream)
    got = store.get_features("user", USERS, [refs[f.name] for f in feats])
    got.columns = ["user", *[f.name for f in feats]]
    want = oracle_online({stream: df}, streams, feats, "user", USERS)
    assert_features_equal(got, want, [f.name for f in feats], context=f"{context} online")
    if obs is not None:
        got = store.training_set(obs, [refs[f.name] for f in feats], timestamp="ts")
        got = got.rename(columns={refs[f.name]: f.name for f in feats})
        want = oracle_training_set({stream: df}, streams, feats, obs, timestamp="ts")
        assert_features_equal(got, want, [f.name for f in feats], context=f"{context} training set")


def obs_for(seed: int, n: int = 60, t0: int = T0, span: int = 5 * DAY) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user": pd.Series([USERS[i] for i in rng.integers(0, len(USERS), n)], dtype=object),
                         "ts": t0 + rng.integers(0, span // 300, n).astype(np.int64) * 300})


def actor_names(name: str, shards: int) -> list[str]:
    return [cluster.coordinator_name(name), *[f"rayfs:{name}:shard-{i:03d}" for i in range(shards)]]


def alive(names: list[str]) -> list[bool]:
    return [cluster.lookup(n, cluster.NAMESPACE) is not None for n in names]


def kill_named(names: list[str]) -> None:
    """Free the actors a test created (also those a bug brought back)."""
    handles = [h for h in (cluster.lookup(n, cluster.NAMESPACE) for n in names) if h is not None]
    cluster.release(handles, names, cluster.NAMESPACE)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One named 2-shard store for the tests below (each works on a stream of its own)."""
    name = unique_name()
    store = rayfs.FeatureStore.open(tmp_path_factory.mktemp("shared") / "s", shards=2, name=name,
                                    durability="none")
    yield store
    kill_named(actor_names(name, 2))


class Lane:
    """A fresh stream ``<p>`` of the shared store with features ``<p>_n``, ``<p>_n_1d``, ``<p>_sx_1d``,
    ``<p>_last_x`` (FEATS on that stream): tests sharing the store never see each other's data or names."""

    def __init__(self, store) -> None:
        self.store = store
        self.stream = "s" + uuid.uuid4().hex[:8]
        store.register_stream(self.stream, entities=["user"], timestamp="ts")
        self.feats = [self.feat(f.name, f.agg, f.column, window=f.window) for f in FEATS]
        for f in self.feats:
            store.register_feature(f)

    def name(self, base: str) -> str:
        return f"{self.stream}_{base}"

    def feat(self, base: str, agg: str, column=None, **kw) -> rayfs.Feature:
        return F(self.name(base), agg, column, stream=self.stream, **kw)


@pytest.fixture
def lane(shared) -> Lane:
    return Lane(shared)


# ========================================================================================= open / attach / stop
def test_open_attach_connect_close_and_stop_in_one_process(tmp_path):
    path, name = tmp_path / "s", unique_name()
    names = actor_names(name, 2)
    a = rayfs.FeatureStore.open(path, shards=2, name=name, durability="none")
    try:
        assert a.name == name and alive(names) == [True] * 3
        a.register_stream("ev", entities=["user"], timestamp="ts")
        for f in FEATS:
            a.register_feature(f)
        b = rayfs.FeatureStore.open(path, name=name)  # attaches: same actors, same data
        assert (b.path, b.name) == (a.path, name)
        with pytest.raises(rayfs.DefinitionError, match="2 shards"):
            rayfs.FeatureStore.open(path, shards=3, name=name)
        with pytest.raises(StoreOpenError, match=str(path)):
            rayfs.FeatureStore.open(tmp_path / "elsewhere", name=name)
        assert not (tmp_path / "elsewhere").exists()
        c = rayfs.connect(name)  # Ray is initialised here: the address is not used
        d = rayfs.connect(name, address=None)
        df1, df2 = batch(1, 200), batch(2, 150, t0=T0 + DAY)
        b.ingest("ev", df1)
        c.ingest("ev", df2)
        df = pd.concat([df1, df2], ignore_index=True)
        for s, who in ((a, "creator"), (b, "attached"), (c, "connect"), (d, "connect None")):
            oracle_check(s, df, FEATS, context=who, obs=obs_for(3) if who == "connect" else None)
        c.close()  # detaching leaves the store running for the others
        with pytest.raises(rayfs.StoreClosedError):
            c.get_features("user", ["u1"])
        a.close()  # so does the creator's close: it does not own the detached actors
        assert alive(names) == [True] * 3
        more = batch(4, 50, t0=T0 + 2 * DAY)
        d.ingest("ev", more)
        df = pd.concat([df, more], ignore_index=True)
        oracle_check(b, df, FEATS, context="after two closes")
        b.stop()  # for everyone
        assert alive(names) == [False] * 3
        with pytest.raises(StoreOpenError, match=name):
            rayfs.connect(name)
        with pytest.raises(rayfs.StoreClosedError):
            b.ingest("ev", more)
        d.close()
    finally:
        kill_named(names)
    with rayfs.FeatureStore.open(path, durability="none") as store:  # the folder is free again; data kept
        oracle_check(store, df, FEATS, context="reopened embedded", obs=obs_for(5))


SECOND_DRIVER = textwrap.dedent("""
    import pickle, sys, warnings
    warnings.filterwarnings("ignore")
    import ray
    import rayfs

    gcs, name, path, job = sys.argv[1:5]
    ray.init(address=gcs, namespace="rayfs", logging_level="ERROR", log_to_driver=False)
    with open(job, "rb") as fh:
        job = pickle.load(fh)
    out = {}
    if job["create"]:
        store = rayfs.FeatureStore.open(path, shards=2, name=name, durability="none")
        store.register_stream("ev", entities=["user"], timestamp="ts")
        for f in job["features"]:
            store.register_feature(f)
    else:
        store = rayfs.connect(name)
        out["online"] = store.get_features("user", job["users"], job["refs"])
        out["training"] = store.training_set(job["obs"], job["refs"], timestamp="ts")
        out["catalog"] = store.list_features()["key"].tolist()
    store.ingest("ev", job["events"])
    store.close()  # a named store in a shared Ray keeps running after its driver is gone
    with open(job["out"], "wb") as fh:
        pickle.dump(out, fh)
""")


def run_driver(tmp_path, name: str, job: dict) -> dict:
    job_file, out_file = tmp_path / f"job-{uuid.uuid4().hex}.pkl", tmp_path / f"out-{uuid.uuid4().hex}.pkl"
    job["out"] = str(out_file)
    job_file.write_bytes(pickle.dumps(job))
    script = tmp_path / "driver.py"
    script.write_text(SECOND_DRIVER)
    gcs = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, str(script), gcs, name, str(tmp_path / "s"), str(job_file)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return pickle.loads(out_file.read_bytes())


def test_drivers_in_other_processes_create_connect_ingest_read_and_train(tmp_path):
    name = unique_name()
    try:
        # Process 1 creates the store, ingests and exits: the detached actors outlive it.
        df1 = batch(10, 300)
        run_driver(tmp_path, name, {"create": True, "features": FEATS, "events": df1})
        here = rayfs.connect(name)
        oracle_check(here, df1, FEATS, context="after the creator exited", obs=obs_for(11))
        # This driver adds a version and the newest events (which move every 1d window forward).
        v2 = F("sx_1d", "sum", "x", window="1d", where="x > 0")
        assert here.register_feature(v2).key == "sx_1d@2"
        df2 = batch(12, 20, users=ON0, t0=T0 + 4 * DAY, span=DAY)
        here.ingest("ev", df2)
        df12 = pd.concat([df1, df2], ignore_index=True)
        # Process 2 connects, reads online and point in time (by version), and ingests too.
        obs = obs_for(13, t0=T0 - DAY, span=7 * DAY)
        refs = ["n", "n_1d", "sx_1d", "sx_1d@1", "last_x"]
        df3 = batch(14, 100, t0=T0 + 2 * DAY)  # older events: they do not move the windows
        got = run_driver(tmp_path, name, {"create": False, "users": USERS, "refs": refs, "obs": obs,
                                          "events": df3})
        assert got["catalog"] == ["last_x", "n", "n_1d", "sx_1d", "sx_1d@2"]
        named = [FEATS[0], FEATS[1], v2, renamed(FEATS[2], "sx_1d@1"), FEATS[3]]
        want_on = oracle_online({"ev": df12}, {"ev": EV}, named, "user", USERS)
        assert_features_equal(got["online"], want_on, refs, context="second process online")
        want_ts = oracle_training_set({"ev": df12}, {"ev": EV}, named, obs, timestamp="ts")
        assert_features_equal(got["training"], want_ts, refs, context="second process training set")
        # Its events are here without reopening.
        df = pd.concat([df12, df3], ignore_index=True)
        oracle_check(here, df, [*named[:2], named[3], named[4]], context="after process 2",
                     refs={"n": "n", "n_1d": "n_1d", "sx_1d@1": "sx_1d@1", "last_x": "last_x"})
        oracle_check(here, df, [F("sx_1d", "sum", "x", window="1d", where="x > 0")], context="v2")
        here.stop()
        with pytest.raises(StoreOpenError):
            rayfs.connect(name)
    finally:
        kill_named(actor_names(name, 2))


# ========================================================================================= two drivers, one catalog
def test_catalog_changes_by_one_driver_are_used_by_the_other_without_reopening(lane):
    a, b = lane.store, rayfs.connect(lane.store.name)
    st, nm = lane.stream, lane.name
    df = batch(20, 300)
    a.ingest(st, df)
    # A feature b registers: a finds it by name (unknown to its cached catalog).
    mean_x = lane.feat("mean_x", "mean", "x")
    b.register_feature(mean_x)
    oracle_check(a, df, [mean_x], context="new feature via b")
    # A new version b registers: a's bare name follows it (the shards report a newer catalog).
    b.register_feature(lane.feat("last_x", "max", "x"))
    v1 = renamed(lane.feats[3], "v1")
    oracle_check(a, df, [lane.feat("last_x", "max", "x"), v1], refs={nm("last_x"): nm("last_x"),
                                                                  "v1": nm("last_x") + "@1"},
                 context="new version via b", obs=obs_for(21))
    b.register_sql(f"SELECT user, MIN(x) AS {nm('last_x')} FROM {st} GROUP BY user")
    obs = obs_for(22)
    got = a.training_set(obs, [nm("last_x")], timestamp="ts")  # training sets too
    want = oracle_training_set({st: df}, stream_of(st), [lane.feat("last_x", "min", "x")], obs, timestamp="ts")
    assert_features_equal(got, want, [nm("last_x")], context="v3 via b, training set")
    assert a.describe(nm("last_x"))["version"] == 3
    # A dropped version is gone for a as well.
    b.drop_feature(nm("last_x"), 2)
    keys = a.list_features()["key"].tolist()
    assert nm("last_x") in keys and nm("last_x") + "@3" in keys and nm("last_x") + "@2" not in keys
    with pytest.raises(rayfs.UnknownFeatureError):
        a.get_features("user", USERS, [nm("last_x") + "@2"])
    b.close()


def test_online_windows_end_at_the_newest_event_whoever_ingested_it(lane):
    a, b = lane.store, rayfs.connect(lane.store.name)
    st, feats = lane.stream, lane.feats
    early = batch(30, 120, users=ON0, t0=T0, span=DAY)
    a.ingest(st, early)
    oracle_check(b, early, feats, context="b reads a's events")
    # b ingests one event, for a user of the *other* shard, two days later: every 1d window moves.
    late = pd.DataFrame({"user": [ON1[0]], "ts": [T0 + 3 * DAY], "x": [5.0]})
    b.ingest(st, late)
    df = pd.concat([early, late], ignore_index=True)
    got = a.get_features("user", ON0, [f.name for f in feats[:3]])
    assert (got[lane.name("n_1d")] == 0).all() and (got[lane.name("n")] > 0).all()
    assert got[lane.name("sx_1d")].isna().all()
    oracle_check(a, df, feats, context="a after b's late event")
    # And the other way round: a's newer event moves b's windows, on b's own shard too.
    later = pd.DataFrame({"user": [ON0[1], ON0[1]], "ts": [T0 + 3 * DAY + 3600, T0 + 4 * DAY + 1800],
                          "x": [1.0, 2.0]})
    a.ingest(st, later)
    df = pd.concat([df, later], ignore_index=True)
    oracle_check(b, df, feats, context="b after a's later events")
    assert b.get_features("user", [ON1[0]], [lane.name("n_1d")])[lane.name("n_1d")].tolist() == [0]
    b.close()


def test_stream_registered_by_another_driver_is_usable(shared):
    b = rayfs.connect(shared.name)  # b's catalog is taken now
    lane = Lane(shared)  # then a registers a stream (and features on it)
    try:
        b.ingest(lane.stream, pd.DataFrame({"user": ["u1"], "ts": [T0], "x": [1.0]}))
        b.register_feature(lane.feat("clicks_n", "count"))
        assert b.get_features("user", ["u1"], [lane.name("clicks_n")])[lane.name("clicks_n")].tolist() == [1]
    finally:
        b.close()


def test_reading_after_another_driver_dropped_the_cached_latest_version(lane):
    a, b = lane.store, rayfs.connect(lane.store.name)
    nm = lane.name
    df = batch(40, 100)
    a.ingest(lane.stream, df)
    a.register_feature(lane.feat("last_x", "max", "x"))  # version 2, the latest in a's cache
    b.drop_feature(nm("last_x"), 2)
    b.register_feature(lane.feat("last_x", "min", "x"))  # version 3
    try:
        oracle_check(a, df, [lane.feat("last_x", "min", "x")], context="bare name after drop + new version")
        with pytest.raises(rayfs.UnknownFeatureError):
            a.get_features("user", USERS, [nm("last_x") + "@2"])
    finally:
        b.close()


def test_stop_stops_the_store_for_every_driver(tmp_path):
    name = unique_name()
    names = actor_names(name, 2)
    a = rayfs.FeatureStore.open(tmp_path / "s", shards=2, name=name, durability="none")
    try:
        a.register_stream("ev", entities=["user"], timestamp="ts")
        a.register_feature(FEATS[0])
        a.ingest("ev", batch(50, 20))
        b = rayfs.connect(name)
        b.stop()
        with pytest.raises(rayfs.RayfsError):
            a.get_features("user", USERS, ["n"])
        with pytest.raises(rayfs.RayfsError):
            a.ingest("ev", batch(51, 5))
        assert alive(names) == [False] * 3
    finally:
        kill_named(names)


def test_column_kinds_first_seen_by_another_driver_do_not_break_reads(lane):
    a = lane.store
    last_s = lane.feat("last_s", "last", "s")
    a.register_feature(last_s)
    df = pd.DataFrame({"user": ["u1", "u2"], "ts": [T0, T0 + 1], "x": [1.0, 2.0], "s": ["p", "q"]})
    b = rayfs.connect(a.name)
    b.ingest(lane.stream, df)
    b.close()
    got = a.get_features("user", ["u1", "u2", "nobody"], [last_s.name])
    assert got[last_s.name].tolist() == ["p", "q", None]


def test_arrow_output_with_mixed_int_and_string_keys_is_a_clear_error(lane):
    """Arrow has no column of ints and strings: a SchemaError saying so (was a raw ArrowTypeError)."""
    lane.store.ingest(lane.stream, pd.DataFrame({"user": pd.Series(["1", 1], dtype=object), "ts": [T0, T0 + 1],
                                                 "x": [1.0, 2.0]}))
    obs = pd.DataFrame({"user": pd.Series(["1", 1, "nobody"], dtype=object), "ts": [T0 + 9] * 3})
    with pytest.raises(rayfs.SchemaError, match="Arrow"):
        lane.store.training_set(obs, [lane.name("n")], timestamp="ts", output="arrow")
    ray_out = lane.store.training_set(obs, [lane.name("n")], timestamp="ts", output="ray")
    assert [r[lane.name("n")] for r in ray_out.take_all()] == [1, 1, 0]


# ========================================================================================= Ray Data
def norm(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if isinstance(v, np.generic) else v


@pytest.fixture(scope="module")
def ray_data_run(tmp_path_factory):
    """One embedded store, the same events into stream ``direct`` (pandas) and ``viads`` (a Ray Dataset
    of three blocks); the first read after the Dataset ingest is kept for the test below."""
    rng = np.random.default_rng(60)
    n = 3000
    users = np.array([f"u{k}" for k in range(40)] + list(range(40)), dtype=object)  # str and int keys
    df = pd.DataFrame({
        "user": pd.Series(users[rng.integers(0, len(users), n)], dtype=object),
        "ts": T0 + rng.permutation(n).astype(np.int64) * 37,  # distinct times: arrival order cannot matter
        "x": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
        "s": pd.Series(np.where(rng.random(n) < 0.1, None, np.array(["p", "q", "r"], dtype=object)[
            rng.integers(0, 3, n)]), dtype=object)})
    feats = {"direct": [], "viads": []}
    path = tmp_path_factory.mktemp("raydata") / "s"
    with rayfs.FeatureStore.open(path, shards=3, durability="none") as store:
        for stream in feats:
            store.register_stream(stream, entities=["user"], timestamp="ts")
            for agg, col, w in (("count", None, None), ("sum", "x", "1d"), ("last", "s", None),
                                ("count_distinct", "s", "6h"), ("max", "x", None), ("first_k", "x", None)):
                kw = {"k": 2} if agg == "first_k" else {}
                f = F(f"{stream}_{agg}_{col}", agg, col, window=w, stream=stream, **kw)
                store.register_feature(f)
                feats[stream].append(f)
        store.ingest("direct", df)
        ds = ray.data.from_pandas([df.iloc[:1000], df.iloc[1000:1700], df.iloc[1700:]])  # three blocks
        res = store.ingest("viads", ds)
        try:
            first = store.get_features("user", ["u1", "nobody"], ["viads_last_s", "viads_count_None"])
        except Exception as exc:  # noqa: BLE001 - kept for test_reads_right_after_a_ray_dataset_ingest
            first = exc
        store.list_features()  # would hide a stale catalog from the test below: it uses `first`
        yield {"store": store, "path": path, "df": df, "feats": feats, "users": users, "rng": rng, "res": res,
               "first": first, "ds": ds}


def test_reads_right_after_a_ray_dataset_ingest(ray_data_run):
    first = ray_data_run["first"]
    if isinstance(first, Exception):
        raise first
    df = ray_data_run["df"]
    u1 = df[df["user"] == "u1"]
    assert first["viads_count_None"].tolist() == [len(u1), 0]
    assert first["viads_last_s"].tolist()[1] is None


def test_ray_dataset_ingest_and_arrow_and_ray_outputs_equal_the_pandas_paths(ray_data_run):
    r = ray_data_run
    store, df, feats, users, rng, res, ds = r["store"], r["df"], r["feats"], r["users"], r["rng"], r["res"], r["ds"]
    n = len(df)
    assert res["rows"] == n and res["batches"] >= 1
    keys = [*users.tolist(), "nobody", 999]
    names = {s: [f.name for f in fs] for s, fs in feats.items()}
    plain = [f.name.split("_", 1)[1] for f in feats["direct"]]
    on = {s: store.get_features("user", keys, names[s]).set_axis(["user", *plain], axis=1) for s in feats}
    assert_features_equal(on["viads"], on["direct"], plain, rtol=1e-12, context="online")
    want = oracle_online({"direct": df}, {"direct": rayfs.Stream(name="direct", entities=("user",),
                                                                  timestamp="ts")},
                         feats["direct"], "user", keys)
    assert_features_equal(on["direct"], want.set_axis(["user", *plain], axis=1), plain, context="oracle")
    obs = pd.DataFrame({"user": pd.Series(users[rng.integers(0, len(users), 500)], dtype=object),
                        "ts": T0 + rng.integers(0, n * 37 + 100, 500), "label": rng.integers(0, 2, 500)})
    ts = {s: store.training_set(obs, names[s], timestamp="ts").set_axis(["user", "ts", "label", *plain], axis=1)
          for s in feats}
    assert_features_equal(ts["viads"], ts["direct"], plain, rtol=1e-12, context="training set")
    assert store.stats()["events"].sum() == 2 * n
    with pytest.raises(rayfs.UnknownStreamError):
        store.ingest("nope", ds)

    # output="arrow": a pyarrow Table with the same rows and values (string keys: mixed ones are a SchemaError).
    obs_s = obs[obs["user"].map(lambda u: isinstance(u, str))].reset_index(drop=True)
    pandas_s = store.training_set(obs_s, names["direct"], timestamp="ts")
    arrow_out = store.training_set(obs_s, names["direct"], timestamp="ts", output="arrow")
    assert isinstance(arrow_out, pa.Table)
    assert arrow_out.column_names == list(pandas_s.columns)
    assert arrow_out.num_rows == len(pandas_s) > 100
    for c in pandas_s.columns:
        assert [norm(v) for v in arrow_out.column(c).to_pylist()] == [norm(v) for v in pandas_s[c]], c
    assert pa.types.is_integer(arrow_out.schema.field("direct_count_None").type)
    # output="ray": a Dataset whose rows are the same rows, in order (mixed int/str keys too).
    pandas_out = store.training_set(obs, names["direct"], timestamp="ts")
    ray_out = store.training_set(obs, names["direct"], timestamp="ts", output="ray")
    assert isinstance(ray_out, ray.data.Dataset)
    rows = ray_out.take_all()
    assert len(rows) == len(pandas_out)
    for i, (row, (_, p)) in enumerate(zip(rows, pandas_out.iterrows(), strict=True)):
        assert set(row) == set(pandas_out.columns), i
        for c in pandas_out.columns:
            got, exp = norm(row[c]), norm(p[c])
            if isinstance(got, np.ndarray):
                got = [norm(v) for v in got.tolist()]
            if isinstance(exp, list):
                exp = [norm(v) for v in exp]
            assert got == exp, (i, c, got, exp)
    # Nothing is left in the Ray Data workers' write-ahead logs to replay (this driver's own WAL aside).
    own = store._ingestor.wal.dir
    leftover = [p for p in (r["path"] / "wal").rglob("*.log") if p.stat().st_size and not str(p).startswith(own)]
    assert leftover == []


def test_a_retried_ray_data_task_is_applied_once(tmp_path):
    """A Dataset batch's id is the call's id plus a hash of its content: a Ray Data task re-run after its
    worker died re-sends the same rows under the same ids, which the shards drop, even if another writer
    recorded a column's kind in between (an all-null column normalises differently then)."""
    from rayfs.store.dataio import _Writer

    rng = np.random.default_rng(61)
    n = 2500
    df = pd.DataFrame({"user": pd.Series([f"u{k}" for k in rng.integers(0, 30, n)], dtype=object),
                       "ts": T0 + np.arange(n, dtype=np.int64) * 11,
                       "c": pd.Series([None] * n, dtype=object)})  # no kind yet
    keys = sorted(df["user"].unique())
    want = df["user"].value_counts().reindex(keys).tolist()
    with rayfs.FeatureStore.open(tmp_path / "s", shards=2, durability="none") as store:
        store.register_stream("ev", entities=["user"], timestamp="ts")
        store.register_feature(F("n", "count", stream="ev"))
        store.register_feature(F("last_c", "last", "c", stream="ev"))
        with pytest.raises(rayfs.DefinitionError, match="batch_id is not supported for a ray.data.Dataset"):
            store.ingest("ev", ray.data.from_pandas(df), batch_id="load-1")
        writer = _Writer(store._session, "ev", "call-1")
        assert writer(df.iloc[:1200])["rows"].tolist() == [1200]
        assert writer(df.iloc[1200:])["rows"].tolist() == [n - 1200]
        # another writer records c's kind ("str"); then the first task runs again on a fresh worker
        store.ingest("ev", pd.DataFrame({"user": ["other"], "ts": [T0], "c": ["x"]}))
        retried = _Writer(store._session, "ev", "call-1")
        before = store.stats()["duplicates"].sum()
        retried(df.iloc[:1200])
        assert store.stats()["duplicates"].sum() > before
        assert store.get_features("user", keys, ["n"])["n"].tolist() == want
        assert store.get_features("user", ["other"], ["n", "last_c"]).iloc[0].tolist() == ["other", 1, "x"]
        # a new call (a fresh id) of the same rows: new events
        assert store.ingest("ev", ray.data.from_pandas([df.iloc[:1200], df.iloc[1200:]]))["rows"] == n
        assert store.get_features("user", keys, ["n"])["n"].tolist() == [2 * w for w in want]
