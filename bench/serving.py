"""Online serving benchmark: ``get_features`` latency idle and under ingest, side by side with Feast's SQLite store.

Usage (from a source checkout)::

    python -m bench.serving [--events 1000000] [--shards 2] [--ingest-rate 150000] [--budget 10]
                            [--feast-venv /tmp/feast-venv-serving]

What it does: starts a private local Ray, opens a named store (``--shards`` shards) with five user features
and ingests ``--events`` reddit-like events in one pipelined ``ingest`` call (its events/s is the load rate,
with the online tables maintained). It then measures ``store.get_features("user", keys, 5 features)`` in
this driver, on the shards' node, for 1 key and 1,000 keys (users drawn uniformly from those with events, a
new draw per call), and the actor path for 1 key (this process is given no local tables, so every shard
answers through ``get_online_raw``), each for up to ``--budget`` seconds: once on an idle store and
once while another process ingests ``--ingest-rate`` events/s into the same store (paced batches of 25,000
in pipelined ``ingest`` calls; its achieved rate over each measuring window is recorded).

Feast (0.67, local provider, SQLite online store, in process) runs in its own virtualenv (``--feast-venv``,
made with ``pip install feast==0.67.0`` if missing) as a subprocess of this script: it materializes the
values rayfs computed for every user, times 1-key and 1,000-key ``get_online_features`` calls and answers a
sample of users, which must equal rayfs's answers.

The cost of the online tables on ingest: before any of that, the load ingest runs alone in a fresh private
Ray, alternately with this checkout and with rayfs at ``--baseline-rev`` (a revision whose shards keep no
online table), ``--rounds`` times each; the disk the tables take is ``du`` of ``shards/*/online.lmdb`` over the
number of users.

Output: ``bench/results/serving-<stamp>.json`` and ``.png``, copied to ``serving.json``/``serving.png``; one
line per measurement on stdout. Latencies in milliseconds. Readers, ingesting process, store and Feast share
the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

try:
    from bench import loadgen
except ImportError:  # the load-ingest copy of this file runs alone, beside another revision's rayfs only
    loadgen = None  # type: ignore[assignment]

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
NAME = "benchserving"
FEATURES = ["user_upvotes", "user_upvotes_7d", "user_distinct_subreddits", "user_mean_score_30d",
            "user_last_subreddit"]
FEAST_TYPES = {"user_upvotes": "Int64", "user_upvotes_7d": "Int64", "user_distinct_subreddits": "Int64",
               "user_mean_score_30d": "Float64", "user_last_subreddit": "String"}
FEAST = "feast==0.67.0"
SAMPLE = 500  # users whose values rayfs and Feast must agree on


def _features():
    from rayfs.model.definitions import Feature

    def f(name, agg, column=None, window=None):
        return Feature(name=name, stream="upvotes", entity="user", agg=agg, column=column, window=window)

    return [f("user_upvotes", "count"), f("user_upvotes_7d", "count", window="7d"),
            f("user_distinct_subreddits", "count_distinct", "subreddit"),
            f("user_mean_score_30d", "mean", "score", window="30d"), f("user_last_subreddit", "last", "subreddit")]


def stats(times_s: list[float]) -> dict:
    """p50/p99/max (ms) and the number of calls."""
    a = np.asarray(times_s) * 1e3
    return {"calls": len(a), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3), "max_ms": round(float(a.max()), 3)}


def timed(call, pool: np.ndarray, k: int, calls: int, budget_s: float, seed: int) -> dict:
    """Latency of ``call(keys)`` with ``k`` keys drawn from ``pool`` per call: up to ``calls`` or ``budget_s``."""
    rng = np.random.default_rng(seed)
    for _ in range(5):  # warm-up (connections, caches), not counted
        call(list(pool[rng.integers(0, len(pool), k)]))
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < calls and time.perf_counter() < deadline:
        keys = list(pool[rng.integers(0, len(pool), k)])
        t = time.perf_counter()
        call(keys)
        times.append(time.perf_counter() - t)
    return {"keys": k, **stats(times)}


# ------------------------------------------------------------------------------------------ Feast (own venv)
def feast_worker(values_parquet: str, workdir: str, sample_json: str, out_json: str, budget_s: float) -> None:
    """Run in Feast's virtualenv: materialize ``values_parquet`` into SQLite, time reads, answer the sample."""
    from datetime import UTC, datetime, timedelta

    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig, ValueType
    from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig
    from feast.types import Float64, Int64, String

    warnings.filterwarnings("ignore")
    types = {"Int64": Int64, "Float64": Float64, "String": String}
    cfg = RepoConfig(project="bench", registry=os.path.join(workdir, "registry.db"), provider="local",
                     online_store=SqliteOnlineStoreConfig(path=os.path.join(workdir, "online.db")),
                     entity_key_serialization_version=3)
    store = FeatureStore(config=cfg)
    user = Entity(name="user", join_keys=["user"], value_type=ValueType.STRING)
    source = FileSource(path=values_parquet, timestamp_field="event_timestamp")
    fv = FeatureView(name="user_stats", entities=[user], ttl=timedelta(days=3650), online=True, source=source,
                     schema=[Field(name=n, dtype=types[t]) for n, t in FEAST_TYPES.items()])
    store.apply([user, fv])
    df = pd.read_parquet(values_parquet)
    ts = df["event_timestamp"]
    t = time.perf_counter()
    store.materialize(ts.min().to_pydatetime() - timedelta(seconds=1),
                      max(ts.max().to_pydatetime() + timedelta(seconds=1), datetime.now(UTC)))
    materialize_s = time.perf_counter() - t
    refs = [f"user_stats:{n}" for n in FEAST_TYPES]
    pool = df["user"].to_numpy()

    def call(keys):
        return store.get_online_features(features=refs, entity_rows=[{"user": u} for u in keys]).to_df()

    out = {"version": __import__("feast").__version__, "users": len(df), "materialize_s": round(materialize_s, 2),
           "runs": [timed(call, pool, 1, 3000, budget_s, 5), timed(call, pool, 1000, 300, budget_s, 6)]}
    sample = json.loads(Path(sample_json).read_text())
    ans = call(sample)
    out["sample"] = {n: [None if pd.isna(v) else (v.item() if hasattr(v, "item") else v) for v in ans[n]]
                     for n in FEAST_TYPES}
    Path(out_json).write_text(json.dumps(out))


def ensure_feast(venv: str) -> str | None:
    """The python of ``venv`` with Feast importable, installing it there if needed (``None`` if that fails)."""
    python = os.path.join(venv, "bin", "python")
    check = [python, "-c", "import feast"]
    if os.path.exists(python) and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing {FEAST} into {venv} ...", flush=True)
    try:
        if not os.path.exists(python):
            subprocess.run(["python3", "-m", "venv", venv], check=True, timeout=120)
        subprocess.run([python, "-m", "pip", "install", "-q", FEAST], check=True, timeout=480,
                       capture_output=True)
    except (subprocess.SubprocessError, OSError) as e:
        print(f"could not install {FEAST}: {e}", flush=True)
        return None
    return python if subprocess.run(check, capture_output=True).returncode == 0 else None


def run_feast(python: str, values, tmp: str, sample: list[str], budget_s: float) -> dict:
    """Feast's figures (see :func:`feast_worker`) from a subprocess in its own virtualenv."""
    work = os.path.join(tmp, "feast")
    os.makedirs(work, exist_ok=True)
    pq = os.path.join(work, "values.parquet")
    values.to_parquet(pq, index=False)
    sj, oj = os.path.join(work, "sample.json"), os.path.join(work, "out.json")
    Path(sj).write_text(json.dumps(sample))
    subprocess.run([python, "-m", "bench.serving", "--feast-worker", pq, work, sj, oj, str(budget_s)],
                   cwd=ROOT, check=True, timeout=1800, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(Path(oj).read_text())


def agree(rayfs_df, feast_sample: dict) -> int:
    """Number of differing values between rayfs's answer and Feast's for the sample (0 when they agree)."""
    bad = 0
    for n in FEATURES:
        for x, y in zip(rayfs_df[n].tolist(), feast_sample[n], strict=True):
            xn = x is None or (isinstance(x, float) and np.isnan(x))
            if xn or y is None:
                bad += not (xn and y is None)
            elif isinstance(x, str) or isinstance(y, str):
                bad += x != y
            else:
                bad += abs(float(x) - float(y)) > 1e-9 * max(1.0, abs(float(x)))
    return bad


# ------------------------------------------------------------------------------------------ ingest cost
def load_worker(shards: int, n_events: int, out_json: str) -> None:
    """Pipelined ingest of the workload into a fresh store in a private Ray; events/s into ``out_json``.

    Run with ``PYTHONPATH`` naming the rayfs to measure (this file imports nothing from the checkout).
    """
    import ray

    import rayfs
    from rayfs.workload import reddit_upvotes

    warnings.filterwarnings("ignore")
    events = reddit_upvotes(n_events, seed=42)
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="rayfs-bench-load-")
    try:
        import inspect

        # Online tables on where this rayfs has the setting (the baseline revision keeps none).
        params = inspect.signature(rayfs.FeatureStore.open).parameters
        table = {"online_table": True} if "online_table" in params else {}
        store = rayfs.FeatureStore.open(os.path.join(tmp, "store"), shards=shards, **table)
        store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
        for f in _features():
            store.register_feature(f)
        t = time.perf_counter()
        store.ingest("upvotes", (events.iloc[lo:lo + 100_000] for lo in range(0, len(events), 100_000)))
        secs = time.perf_counter() - t
        store.stop()
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    Path(out_json).write_text(json.dumps({"events": n_events, "seconds": secs, "eps": n_events / secs}))


def ingest_cost(shards: int, n_events: int, baseline_rev: str, rounds: int) -> dict:
    """Load events/s of this checkout and of rayfs at ``baseline_rev`` (each in its own private Ray),
    alternating ``rounds`` times so that both see the same drift in the machine's load."""
    tmp = tempfile.mkdtemp(prefix="rayfs-bench-rev-")
    out: dict = {"baseline_rev": baseline_rev, "current_eps": [], "baseline_eps": []}
    try:
        trees = {"current_eps": str(ROOT)}
        if baseline_rev:
            tree = os.path.join(tmp, "tree")
            os.makedirs(tree)
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline_rev, "rayfs"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
            trees["baseline_eps"] = tree
        # A copy alone in its folder: Ray puts the driver script's folder on its workers' sys.path, and
        # bench/ there would shadow the standard library's http with bench/http.py.
        script = os.path.join(tmp, "alone", "serving_load.py")
        os.makedirs(os.path.dirname(script))
        shutil.copy(__file__, script)
        for i in range(rounds):
            for key, tree in trees.items():
                oj = os.path.join(tmp, f"{key}-{i}.json")
                subprocess.run([sys.executable, script, "--load-worker", str(shards),
                                str(n_events), oj], cwd=tree, check=True, timeout=900,
                               env={**os.environ, "PYTHONPATH": tree})
                out[key].append(round(json.loads(Path(oj).read_text())["eps"]))
                print(f"load ingest ({'this checkout' if key == 'current_eps' else baseline_rev}): "
                      f"{out[key][-1]:,} ev/s", flush=True)
        for key in trees:  # the machine's load swings runs by 2x or more: the median is the figure
            out[key.replace("_eps", "_median_eps")] = round(float(np.median(out[key])))
    except (subprocess.SubprocessError, OSError) as e:
        out["error"] = str(e)
        print(f"ingest cost: {e}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _du(paths: list[Path]) -> int:
    """Bytes allocated on disk (LMDB's map file is sparse: its apparent size says nothing)."""
    return sum(f.stat().st_blocks * 512 for p in paths for f in p.rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------ driver
def measure(store, pool: np.ndarray, condition: str, budget_s: float, log: str | None) -> list[dict]:
    """The three read cases in one condition."""
    from rayfs.store import reads

    def get(keys):
        store.get_features("user", keys, FEATURES)

    out = []
    cases = [("local", 1, 3000), ("local", 1000, 300), ("actor", 1, 3000)]
    original = reads.LocalTables.readers
    for path, k, calls in cases:
        if path == "actor":  # no local tables in this process: every shard answers through its actor
            reads.LocalTables.readers = lambda self, handles: [reads.REMOTE_TABLE] * len(handles)
        try:
            t0 = time.time()
            r = timed(get, pool, k, calls, budget_s, seed=7 + k)
        finally:
            reads.LocalTables.readers = original
        r.update(condition=condition, path=path)
        if log:
            r["ingest_eps"] = round(loadgen.rate_between(log, t0, time.time()))
        out.append(r)
        extra = f"  ingest {r['ingest_eps']:,} ev/s" if log else ""
        print(f"rayfs {condition:6} {path:5} keys={k:<5} p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"max {r['max_ms']:.1f} ms  ({r['calls']} calls){extra}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--budget", type=float, default=10.0, help="seconds per latency measurement (at most)")
    p.add_argument("--ingest-rate", type=float, default=150_000, help="events/s of the ingesting process")
    p.add_argument("--feast-venv", default="/tmp/feast-venv-serving",
                   help="virtualenv with Feast (made with `pip install feast==0.67.0` if missing; '' skips Feast)")
    p.add_argument("--baseline-rev", default="f7ec931",
                   help="git revision of rayfs whose load ingest rate is compared (one without online tables; "
                        "'' skips it)")
    p.add_argument("--rounds", type=int, default=3, help="load ingest runs per revision")
    p.add_argument("--feast-worker", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--load-worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--ingest-worker", nargs=6, metavar=("ADDRESS", "RATE", "SEED", "USERS", "START", "LOG"),
                   help=argparse.SUPPRESS)
    p.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.feast_worker:
        a = args.feast_worker
        feast_worker(a[0], a[1], a[2], a[3], float(a[4]))
        return 0
    if args.load_worker:
        load_worker(int(args.load_worker[0]), int(args.load_worker[1]), args.load_worker[2])
        return 0
    if args.ingest_worker:
        a = args.ingest_worker
        loadgen.ingest_worker(NAME, a[0], float(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5], args.stop_file)
        return 0
    warnings.filterwarnings("ignore")
    cost = ingest_cost(args.shards, args.events, args.baseline_rev, args.rounds) if args.rounds > 0 else {}
    import pandas as pd
    import ray

    import rayfs
    from rayfs.workload import reddit_upvotes

    ray.init(address="local", namespace="rayfs", include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="rayfs-bench-serving-")
    out: dict = {"stamp": time.strftime("%Y%m%d-%H%M%S"), "events": args.events, "shards": args.shards,
                 "features": FEATURES, "budget_s": args.budget, "ingest_target_eps": args.ingest_rate,
                 "cpus": os.cpu_count(), "ingest_cost": cost, "runs": []}
    store = None
    try:
        path = os.path.join(tmp, "store")
        store = rayfs.FeatureStore.open(path, shards=args.shards, name=NAME, online_table=True)
        store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
        for f in _features():
            store.register_feature(f)
        events = reddit_upvotes(args.events, seed=42)
        t = time.perf_counter()
        store.ingest("upvotes", (events.iloc[lo:lo + 100_000] for lo in range(0, len(events), 100_000)))
        out["load_eps"] = round(len(events) / (time.perf_counter() - t))
        pool = events["user"].unique()
        tables = sorted(Path(path, "shards").glob("*/online.lmdb"))
        disk = _du(tables)
        out["online_table"] = {"keys": len(pool), "bytes": disk, "bytes_per_key": round(disk / len(pool), 1),
                               "tables": len(tables)}
        print(f"load: {out['load_eps']:,} ev/s (pipelined, online tables on); online tables {disk / 2**20:.1f} MiB "
              f"on disk for {len(pool):,} users = {disk / len(pool):.0f} B/key", flush=True)

        # Feast materializes the values rayfs computed, as of the newest event (Feast reads its latest row).
        values = store.get_features("user", list(pool), FEATURES)
        values["event_timestamp"] = pd.Timestamp(float(events["ts"].max()), unit="s", tz="UTC")
        sample = [str(u) for u in np.random.default_rng(1).choice(pool, min(SAMPLE, len(pool)), replace=False)]
        python = ensure_feast(args.feast_venv) if args.feast_venv else None
        if python:
            try:
                feast = run_feast(python, values, tmp, sample, args.budget)
                mismatches = agree(store.get_features("user", sample, FEATURES), feast.pop("sample"))
                feast["sample_users"], feast["mismatches"] = len(sample), mismatches
                out["feast"] = feast
                for r in feast["runs"]:
                    print(f"feast  idle   sqlite keys={r['keys']:<5} p50 {r['p50_ms']:.3f} ms  "
                          f"p99 {r['p99_ms']:.3f} ms  max {r['max_ms']:.1f} ms  ({r['calls']} calls)", flush=True)
                print(f"feast vs rayfs on {len(sample)} users x {len(FEATURES)} features: {mismatches} mismatches",
                      flush=True)
            except (subprocess.SubprocessError, OSError) as e:
                out["feast"] = {"error": str(e)}
                print(f"feast failed: {e}", flush=True)
        else:
            out["feast"] = {"error": f"no Feast in {args.feast_venv!r}"}
            print(out["feast"]["error"], flush=True)

        out["runs"] += measure(store, pool, "idle", args.budget, None)

        proc, log, stop = loadgen.start("bench.serving", ray.get_runtime_context().gcs_address,
                                        args.ingest_rate, len(pool), float(events["ts"].max()) + 1.0, tmp)
        try:
            t0 = time.time()
            out["runs"] += measure(store, pool, "ingest", args.budget, log)
            out["ingest_eps_while_reading"] = round(loadgen.rate_between(log, t0, time.time()))
        finally:
            loadgen.stop_worker(proc, stop)
        tables = sorted(Path(path, "shards").glob("*/online.lmdb"))
        out["online_table_after_ingest"] = {"bytes": _du(tables)}
    finally:
        if store is not None:
            store.stop()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    base = loadgen.save_results(RESULTS, "serving", out, plot)
    print(f"wrote {base}.json and .png")
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"rayfs {r['path']}\n{r['keys']} key{'s' if r['keys'] > 1 else ''}\n{r['condition']}", r)
            for r in out["runs"]]
    rows += [(f"Feast SQLite\n{r['keys']} key{'s' if r['keys'] > 1 else ''}\nidle", r)
             for r in out.get("feast", {}).get("runs", [])]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(13, 5))
    for key, alpha, label in (("max_ms", 0.25, "max"), ("p99_ms", 0.5, "p99"), ("p50_ms", 1.0, "p50")):
        ax.bar(x, [r[key] for _, r in rows], 0.6, alpha=alpha, label=label, color="tab:blue")
    ax.set_xticks(x, [lb for lb, _ in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.legend()
    rate = out.get("ingest_eps_while_reading", 0)
    ax.set_title(f"get_features, 5 features: rayfs ({out['events']:,} events, {out['shards']} shards; under "
                 f"ingest {rate:,} ev/s from another process) vs Feast {out.get('feast', {}).get('version', '-')}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
