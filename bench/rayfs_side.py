"""rayfs measurements: ingest (sync / none), training_set, get_features latency, recovery, peak memory."""

from __future__ import annotations

import glob
import os
import shutil
import time

import numpy as np
import pandas as pd

from bench.rss import PeakSampler
from rayfs.model.definitions import Feature
from rayfs.store import FeatureStore

BATCH = 100_000


def open_store(path: str, shards: int, durability: str, features: list[Feature]) -> FeatureStore:
    store = FeatureStore.open(path, shards=shards, durability=durability)
    store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
    for f in features:
        store.register_feature(f)
    return store


def ingest(store: FeatureStore, events: pd.DataFrame, pipelined: bool = True) -> float:
    """Seconds to ingest ``events`` in 100k-row DataFrame batches, acknowledged (durable and folded).

    ``pipelined``: hand all batches to one ``ingest`` call (an iterator, as ``rayfs ingest`` does with a
    file), so the driver prepares batch k+1 while the shards fold batch k; else one call per batch.
    """
    batches = (events.iloc[lo:lo + BATCH] for lo in range(0, len(events), BATCH))
    t0 = time.perf_counter()
    if pipelined:
        store.ingest("upvotes", batches)
    else:
        for b in batches:
            store.ingest("upvotes", b)
    store.flush()
    return time.perf_counter() - t0


def raw_bytes(events: pd.DataFrame) -> int:
    """Bytes of the raw event columns as Arrow holds them (numbers 8 bytes, strings their UTF-8 plus offsets)."""
    import pyarrow as pa

    return int(pa.Table.from_pandas(events, preserve_index=False).nbytes)


def latency(store: FeatureStore, entity: str, pool: np.ndarray, k: int, calls: int, features: list[str],
            seed: int) -> dict:
    rng = np.random.default_rng(seed)
    times = []
    store.get_features(entity, list(pool[:k]), features=features)  # warm-up
    for _ in range(calls):
        keys = list(pool[rng.integers(0, len(pool), k)])
        t0 = time.perf_counter()
        store.get_features(entity, keys, features=features)
        times.append(time.perf_counter() - t0)
    a = np.array(times) * 1e3
    return {"keys": k, "calls": calls, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def run(tmp: str, events: pd.DataFrame, obs: pd.DataFrame, shards: int, mixes: dict[str, list[Feature]],
        calls: int, log=print) -> tuple[dict, dict[str, pd.DataFrame], dict]:
    """Returns (figures, training sets per mix, online values of 1,000 users per mix)."""
    feats = [f for fs in mixes.values() for f in fs]
    fig: dict = {"events": len(events), "observations": len(obs), "shards": shards,
                 "features_registered": len(feats)}
    # ---- ingest with durability "sync" (fsync per batch) and "group" (one fsync per ~2 ms shared by
    # concurrent ingests); the "sync" store is kept for the recovery figures below
    sync_path = os.path.join(tmp, "sync")
    fig["raw_event_bytes"] = raw_bytes(events)
    for mode in ("sync", "group", "sync_per_call"):
        mode_path = os.path.join(tmp, mode)
        store = open_store(mode_path, shards, mode.removesuffix("_per_call"), feats)
        dt = ingest(store, events, pipelined=not mode.endswith("_per_call"))
        fig[f"ingest_{mode}_s"] = dt
        fig[f"ingest_{mode}_events_per_s"] = len(events) / dt
        log(f"  rayfs ingest {mode}: {dt:.2f}s ({len(events) / dt:,.0f} ev/s)")
        store.close()
        if mode != "sync":
            shutil.rmtree(mode_path, ignore_errors=True)

    # ---- ingest, durability "none"; this store also serves the reads
    path = os.path.join(tmp, "none")
    store = open_store(path, shards, "none", feats)
    dt = ingest(store, events)
    fig["ingest_none_s"] = dt
    fig["ingest_none_events_per_s"] = len(events) / dt
    log(f"  rayfs ingest none: {dt:.2f}s ({len(events) / dt:,.0f} ev/s)")
    fig["log_bytes"] = int(sum(i["log_bytes"] for i in store.info()))

    results: dict[str, pd.DataFrame] = {}
    online: dict[str, pd.DataFrame] = {}
    fig["training"] = {}
    try:
        for mix, fs in mixes.items():
            names = [f.name for f in fs]
            with PeakSampler() as mem:
                t0 = time.perf_counter()
                res = store.training_set(obs, features=names, timestamp="ts")
                cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.training_set(obs, features=names, timestamp="ts")
            warm = time.perf_counter() - t0
            results[mix] = res[names].reset_index(drop=True)
            growth = {k: mem.growth(k) for k in ("rss", "pss", "shard_rss", "driver_rss")}
            fig["training"][mix] = {"cold_s": cold, "warm_s": warm, "rows_per_s_cold": len(obs) / cold,
                                    "rows_per_s_warm": len(obs) / warm, "peak_mem": mem.peak,
                                    "start_mem": mem.start, "growth_mem": growth,
                                    "growth_per_raw": growth["rss"] / fig["raw_event_bytes"],
                                    "shard_peak_per_raw": mem.peak["shard_rss"] / fig["raw_event_bytes"]}
            log(f"  rayfs training_set[{mix}]: cold {cold:.2f}s warm {warm:.2f}s; peak RSS "
                f"{mem.peak['rss'] / 2**20:,.0f} MiB (PSS {mem.peak['pss'] / 2**20:,.0f} MiB) "
                f"over {mem.peak['processes']} processes; growth during the call {growth['rss'] / 2**20:,.0f} "
                f"MiB = {fig['training'][mix]['growth_per_raw']:.2f}x the raw event columns "
                f"({fig['raw_event_bytes'] / 2**20:,.0f} MiB); shards' peak "
                f"{fig['training'][mix]['shard_peak_per_raw']:.2f}x")

        # ---- online reads
        users = events["user"].drop_duplicates().to_numpy(dtype=object)
        posts = events["post"].drop_duplicates().to_numpy()
        user_feats = [f.name for f in feats if f.entity == "user"]
        post_feats = [f.name for f in feats if f.entity == "post"]
        lat = {}
        for k in (1, 1000):
            lat[f"user_{k}"] = latency(store, "user", users, k, calls, user_feats, seed=k)
            if post_feats:
                lat[f"post_{k}"] = latency(store, "post", posts, k, calls, post_feats, seed=k + 1)
        fig["get_features"] = lat
        log("  rayfs get_features: " + "; ".join(
            f"{n} p50 {v['p50_ms']:.2f}ms p99 {v['p99_ms']:.2f}ms" for n, v in lat.items()))
        rng = np.random.default_rng(5)
        probe = list(users[rng.integers(0, len(users), 1000)]) + ["nobody_ever"]
        for mix, fs in mixes.items():
            names = [f.name for f in fs if f.entity == "user"]
            online[mix] = store.get_features("user", probe, features=names)
    finally:
        store.close()

    # ---- recovery: reopen the closed store (snapshot + log tail)
    t0 = time.perf_counter()
    store = FeatureStore.open(path)
    dt = time.perf_counter() - t0
    store.close()
    t0 = time.perf_counter()
    store = FeatureStore.open(sync_path)
    dt_sync = time.perf_counter() - t0
    store.close()
    # ---- recovery from the log alone: every shard's snapshot deleted, the whole log is the tail
    for snap in glob.glob(os.path.join(sync_path, "shards", "*", "snapshot.lmdb")):
        shutil.rmtree(snap)
    t0 = time.perf_counter()
    store = FeatureStore.open(sync_path)
    dt_log = time.perf_counter() - t0
    log_gb = sum(i["log_bytes"] for i in store.info()) / 1e9
    store.close()
    fig["recovery"] = {"open_s": dt, "open_s_per_million_events": dt / (len(events) / 1e6),
                       "open_sync_store_s": dt_sync, "log_only_open_s": dt_log,
                       "log_only_s_per_million_tail_events": dt_log / (len(events) / 1e6),
                       "log_only_s_per_gb": dt_log / log_gb, "log_gb": log_gb}
    log(f"  rayfs reopen with fresh snapshots: {dt:.2f}s; from the log alone: {dt_log:.2f}s "
        f"({dt_log / (len(events) / 1e6):.2f}s per million tail events, {dt_log / log_gb:.1f}s per GB of log)")
    return fig, results, online
