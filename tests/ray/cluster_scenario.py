"""A multi-node scenario run in its own process by test_cluster.py (it needs its own Ray cluster).

Starts a local Ray cluster of three node processes (``ray.cluster_utils.Cluster``: a head and two
workers on 127.0.0.1), opens a named store with three shards, checks the shards landed on different
nodes, has a second driver process connect by name, read and ingest, kills a worker node holding a
shard, keeps ingesting (retrying with the same batch ids), and checks that every acknowledged event is
there, online and point in time, against the brute-force oracle. Prints one JSON line of findings.

Usage: ``python cluster_scenario.py STORE_PATH``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")

N_USERS = 40
T0 = pd.Timestamp("2024-01-01").value // 1000  # µs


def batch(rng: np.random.Generator, i: int, n: int = 500) -> pd.DataFrame:
    return pd.DataFrame({"user": rng.integers(0, N_USERS, n).astype(object) if i % 2 else
                         np.array([f"u{k}" for k in rng.integers(0, N_USERS, n)], dtype=object),
                         "ts": pd.to_datetime(T0 + rng.integers(0, 10 * 86_400 * 10**6, n), unit="us"),
                         "x": rng.normal(size=n)})


def ingest_retrying(store, df: pd.DataFrame, bid: str, deadline: float) -> int:
    """Ingest until acknowledged (a shard may be restarting on another node); the same batch id each try."""
    attempts = 0
    while True:
        attempts += 1
        try:
            store.ingest("ev", df, batch_id=bid)
            return attempts
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def main(path: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    import rayfs
    from rayfs.testing import oracle_online, oracle_training_set

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    out: dict = {}
    try:
        ray.init(address=cluster.address, namespace="rayfs", logging_level="ERROR", log_to_driver=False)
        store = rayfs.FeatureStore.open(path, shards=3, name="clu")
        store.register_stream("ev", ["user"], "ts")
        feats = [rayfs.Feature(name="n", stream="ev", entity="user", agg="count"),
                 rayfs.Feature(name="sx_2d", stream="ev", entity="user", agg="sum", column="x", window="2d"),
                 rayfs.Feature(name="last_x", stream="ev", entity="user", agg="last", column="x")]
        for f in feats:
            store.register_feature(f)
        nodes = [i["node_id"] for i in store.info()]
        out["shard_nodes"] = len(set(nodes))
        rng = np.random.default_rng(11)
        acked = []
        for i in range(6):
            df = batch(rng, i)
            store.ingest("ev", df, batch_id=f"b{i}")
            acked.append(df)

        # A second driver process finds the store by name, reads what this one wrote, and ingests.
        second = batch(rng, 99)
        second.to_pickle(f"{path}.second.pkl")
        code = (
            "import warnings, json; warnings.filterwarnings('ignore')\n"
            "import pandas as pd, rayfs\n"
            f"st = rayfs.connect('clu', address={cluster.address!r})\n"
            "got = st.get_features('user', ['u1', 1, 'nope'], ['n'])['n'].tolist()\n"
            f"st.ingest('ev', pd.read_pickle({path + '.second.pkl'!r}), batch_id='second')\n"
            "st.close()\n"
            "print(json.dumps(got))\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        out["second_driver_rc"] = proc.returncode
        out["second_driver_err"] = proc.stderr[-2000:] if proc.returncode else ""
        expect = oracle_online({"ev": pd.concat(acked)}, store.streams, feats[:1], "user", ["u1", 1, "nope"])
        out["second_driver_read_ok"] = (proc.returncode == 0 and json.loads(proc.stdout.strip().splitlines()[-1])
                                        == expect["n"].tolist())
        if proc.returncode == 0:
            acked.append(second)

        # Kill a worker node that holds a shard; shards come back elsewhere (same folder: same machine).
        victim = next((w for w in workers if w.node_id in nodes), workers[0])
        out["killed_shards"] = sum(n == victim.node_id for n in nodes)
        cluster.remove_node(victim, allow_graceful=False)
        deadline = time.monotonic() + 180
        while any(n["NodeID"] == victim.node_id and n["Alive"] for n in ray.nodes()):
            if time.monotonic() > deadline:
                raise TimeoutError("the killed node is still alive for Ray")
            time.sleep(0.2)
        attempts = []
        for i in range(6, 10):
            df = batch(rng, i)
            attempts.append(ingest_retrying(store, df, f"b{i}", deadline))
            acked.append(df)
        out["ingest_attempts_after_kill"] = attempts
        store.wait_until_ready(timeout=120)
        alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        after = [i["node_id"] for i in store.info()]
        out["shards_on_live_nodes"] = all(n in alive for n in after)
        out["victim_gone"] = victim.node_id not in after

        events = pd.concat(acked, ignore_index=True)
        keys = [f"u{k}" for k in range(N_USERS)] + list(range(N_USERS)) + ["never"]
        online = store.get_features("user", keys)
        want = oracle_online({"ev": events}, store.streams, feats, "user", keys)
        out["online_equal"] = _equal(online, want, [f.name for f in feats])
        obs = pd.DataFrame({"user": pd.Series(keys * 3, dtype=object),
                            "ts": pd.to_datetime(T0 + rng.integers(0, 11 * 86_400 * 10**6, 3 * len(keys)), unit="us")})
        got = store.training_set(obs, timestamp="ts")
        want = oracle_training_set({"ev": events}, store.streams, feats, obs, timestamp="ts")
        out["training_equal"] = _equal(got, want, [f.name for f in feats])
        out["audit_mismatches"] = int(store.audit(100)["mismatches"].sum())
        out["events"] = len(events)
        store.stop()
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(out))


def _equal(a: pd.DataFrame, b: pd.DataFrame, cols: list[str]) -> bool:
    for c in cols:
        x, y = a[c].to_numpy(dtype=float), b[c].to_numpy(dtype=float)
        if not np.allclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True):
            return False
    return True


if __name__ == "__main__":
    main(sys.argv[1])
