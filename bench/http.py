"""HTTP feature server benchmark: requests/s and latency of ``POST /get-online-features`` under ``wrk``.

Usage (from a source checkout, Debian's ``wrk`` installed: ``apt-get install wrk``)::

    python -m bench.http [--events 1000000] [--shards 2] [--duration 10] [--connections 1,16]
                         [--keys 1,100] [--ingest-rate 150000] [--replicas 1]

What it does: starts a private local Ray, opens a named store (``--shards`` shards) with five user features,
ingests ``--events`` reddit-like events, and starts the HTTP server (:mod:`rayfs.serve.http`, bearer token
on, ``--replicas`` Serve replicas) on a free loopback port. For 1 and 100 keys per request (users drawn
uniformly from those with events, a new draw per request) and for each connection count, ``wrk`` runs
``--duration`` seconds twice: on an idle store, and while another process ingests ``--ingest-rate``
events/s into the same store (paced batches of 25,000 in one pipelined ``ingest`` call per million
events; its achieved rate over the measuring window is recorded). One answer is checked against
``get_features`` first. For scale, the same reads through the Python API (``store.get_features`` in this
driver) are timed in each condition, and a Serve app that answers a constant (:class:`Echo`) gives the
floor Ray Serve's own HTTP path sets on the machine.

Output: ``bench/results/http-<stamp>.json`` and ``.png``, copied to ``http.json``/``http.png``; one line per
run on stdout. Latencies are wrk's (closed loop: each connection sends its next request when the answer
arrives), in milliseconds. wrk, the server and the store share the machine's cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench import loadgen

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "benchhttp"
TOKEN = "bench-token-0123456789"
FEATURES = ["user_upvotes", "user_upvotes_7d", "user_distinct_subreddits", "user_mean_score_30d",
            "user_last_subreddit"]

LUA = r"""
local keys = {%(keys)s}
local k = %(k)d
local feats = '%(feats)s'
math.randomseed(%(seed)d)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  local parts = {}
  for i = 1, k do parts[i] = '"' .. keys[math.random(#keys)] .. '"' end
  local body = '{"features":' .. feats .. ',"entities":{"user":[' .. table.concat(parts, ",") .. ']}}'
  return wrk.format(nil, "/get-online-features", nil, body)
end
"""
DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "non_2xx": %d, "timeouts": %d, ' ..
    '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.status, e.timeout, e.connect + e.read + e.write,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def _features():
    from rayfs.model.definitions import Feature

    def f(name, agg, column=None, window=None):
        return Feature(name=name, stream="upvotes", entity="user", agg=agg, column=column, window=window)

    return [f("user_upvotes", "count"), f("user_upvotes_7d", "count", window="7d"),
            f("user_distinct_subreddits", "count_distinct", "subreddit"),
            f("user_mean_score_30d", "mean", "score", window="30d"), f("user_last_subreddit", "last", "subreddit")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wrk(url: str, script: str, connections: int, duration: int) -> dict:
    """One wrk run; its ``done()`` summary as a dict (latencies in ms)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary: {out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "seconds": round(secs, 2), "rps": round(r["requests"] / secs, 1),
            "p50_ms": r["p50_us"] / 1e3, "p90_ms": r["p90_us"] / 1e3, "p99_ms": r["p99_us"] / 1e3,
            "max_ms": r["max_us"] / 1e3, "mean_ms": round(r["mean_us"] / 1e3, 3), "non_2xx": r["non_2xx"],
            "timeouts": r["timeouts"], "socket_errors": r["socket_errors"]}


# ------------------------------------------------------------------------------------------ driver
class Echo:
    """A Serve deployment that answers a constant: the floor Ray Serve's own HTTP path sets on this machine."""

    async def __call__(self, request):
        from starlette.responses import Response

        await request.body()
        return Response(b'{"ok": true}', media_type="application/json")


def serve_floor(url: str, tmp: str, connections: list[int], duration: int) -> list[dict]:
    """wrk against :class:`Echo` (same proxy, same request body as the 1-key runs) at each connection count."""
    from ray import serve

    dep = serve.deployment(Echo, name="Echo", ray_actor_options={"num_cpus": 0},
                           logging_config={"enable_access_log": False, "log_level": "WARNING"})
    serve.run(dep.bind(), name="bench-echo", route_prefix="/echo", blocking=False)
    script = os.path.join(tmp, "echo.lua")
    Path(script).write_text('wrk.method = "POST"\nwrk.body = \'{"features":["n"],"entities":{"user":["u1"]}}\'\n'
                            + DONE)
    out = []
    for c in connections:
        r = wrk(url + "/echo", script, c, duration)
        r.update(connections=c)
        out.append(r)
        print(f"serve floor (echo)  conns={c:<3} {r['rps']:>8,.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
              f"p99 {r['p99_ms']:.2f} ms", flush=True)
    serve.delete("bench-echo")
    return out


def python_api(store, pool: np.ndarray, k: int, calls: int = 300, seed: int = 3, budget_s: float = 10.0) -> dict:
    """Latency of ``store.get_features`` in this driver (up to ``calls`` calls or ``budget_s`` seconds)."""
    rng = np.random.default_rng(seed)
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < calls and time.perf_counter() < deadline:
        keys = list(pool[rng.integers(0, len(pool), k)])
        t = time.perf_counter()
        store.get_features("user", keys, FEATURES)
        times.append(time.perf_counter() - t)
    a = np.array(times) * 1e3
    return {"keys": k, "calls": len(times), "p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)}


def check_answer(url: str, store, pool: np.ndarray) -> None:
    import urllib.request

    keys = [str(k) for k in pool[:20]]
    body = json.dumps({"features": FEATURES, "entities": {"user": keys}}).encode()
    req = urllib.request.Request(url + "/get-online-features", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    want = store.get_features("user", keys, FEATURES)
    for name, col in zip(FEATURES, doc["results"][1:], strict=True):
        w = [None if isinstance(v, float) and np.isnan(v) else v for v in want[name].tolist()]
        got = col["values"]
        ok = all(g == x or (isinstance(g, float) and isinstance(x, float) and abs(g - x) <= 1e-9 * max(1, abs(x)))
                 for g, x in zip(got, w, strict=True))
        if not ok:
            raise AssertionError(f"HTTP answer for {name} differs from get_features: {got} != {w}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", default="1,16", help="comma-separated wrk connection counts")
    p.add_argument("--keys", default="1,100", help="comma-separated keys per request")
    p.add_argument("--ingest-rate", type=float, default=150_000, help="events/s of the ingesting process")
    p.add_argument("--replicas", default="1", help="Serve replicas (a number or 'auto')")
    p.add_argument("--ingest-worker", nargs=6, metavar=("ADDRESS", "RATE", "SEED", "USERS", "START", "LOG"),
                   help=argparse.SUPPRESS)
    p.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ingest_worker:
        a = args.ingest_worker
        loadgen.ingest_worker(NAME, a[0], float(a[1]), int(a[2]), int(a[3]), float(a[4]), a[5], args.stop_file)
        return 0
    if shutil.which("wrk") is None:
        print("bench.http needs wrk (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore")
    import ray

    import rayfs
    from rayfs.serve.http import serve_http, stop_http
    from rayfs.workload import reddit_upvotes

    ray.init(address="local", namespace="rayfs", include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    tmp = tempfile.mkdtemp(prefix="rayfs-bench-http-")
    out: dict = {"stamp": time.strftime("%Y%m%d-%H%M%S"), "events": args.events, "shards": args.shards,
                 "features": FEATURES, "duration_s": args.duration, "replicas": args.replicas,
                 "ingest_target_eps": args.ingest_rate, "cpus": os.cpu_count(), "load_generator": "wrk 4.1 (-t1)",
                 "runs": []}
    store = None
    try:
        store = rayfs.FeatureStore.open(os.path.join(tmp, "store"), shards=args.shards, name=NAME, online_table=True)
        store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
        for f in _features():
            store.register_feature(f)
        events = reddit_upvotes(args.events, seed=42)
        t = time.perf_counter()
        store.ingest("upvotes", (events.iloc[lo:lo + 100_000] for lo in range(0, len(events), 100_000)))
        out["load_eps"] = round(len(events) / (time.perf_counter() - t))
        pool = events["user"].unique()
        replicas = int(args.replicas) if args.replicas.isdigit() else args.replicas
        url = serve_http(NAME, port=_free_port(), token=TOKEN, num_replicas=replicas)
        check_answer(url, store, pool)
        out["python_api"] = []
        scripts = {}
        for k in map(int, args.keys.split(",")):
            path = os.path.join(tmp, f"k{k}.lua")
            keys = ",".join(f'"{u}"' for u in pool[:20_000])
            Path(path).write_text(DONE + LUA % {"keys": keys, "k": k, "feats": json.dumps(FEATURES), "seed": 7 + k,
                                         "token": TOKEN})
            scripts[k] = path
        wrk(url, scripts[min(scripts)], 4, 2)  # warm-up: connections, replica threads, shard caches

        for condition in ("idle", "ingest"):
            proc = stop = log = None
            if condition == "ingest":
                proc, log, stop = loadgen.start("bench.http", ray.get_runtime_context().gcs_address,
                                                args.ingest_rate, len(pool), float(events["ts"].max()) + 1.0, tmp)
            try:
                for k in scripts:  # the same reads through the Python API, for scale
                    out["python_api"].append({"condition": condition, **python_api(store, pool, k)})
                for k, script in scripts.items():
                    for c in map(int, args.connections.split(",")):
                        t0 = time.time()
                        r = wrk(url, script, c, args.duration)
                        r.update(condition=condition, keys=k, connections=c)
                        if log:
                            r["ingest_eps"] = round(loadgen.rate_between(log, t0, time.time()))
                        out["runs"].append(r)
                        extra = f", ingest {r['ingest_eps']:,} ev/s" if log else ""
                        print(f"{condition:6} keys={k:<4} conns={c:<3} {r['rps']:>8,.0f} req/s  "
                              f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms  max {r['max_ms']:.1f} ms  "
                              f"non-2xx {r['non_2xx']}{extra}",
                              flush=True)
            finally:
                if proc is not None:
                    loadgen.stop_worker(proc, stop)
        out["serve_floor"] = serve_floor(url, tmp, [int(c) for c in args.connections.split(",")], args.duration)
        stop_http(NAME)
    finally:
        if store is not None:
            store.stop()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    base = loadgen.save_results(RESULTS, "http", out, plot)
    print(f"wrote {base}.json and .png")
    return 0


def plot(out: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    labels = sorted({(r["keys"], r["connections"]) for r in runs})
    x = np.arange(len(labels))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, cond in enumerate(("idle", "ingest")):
        by = {(r["keys"], r["connections"]): r for r in runs if r["condition"] == cond}
        rps = [by[lb]["rps"] if lb in by else 0 for lb in labels]
        p50 = [by[lb]["p50_ms"] if lb in by else 0 for lb in labels]
        p99 = [by[lb]["p99_ms"] if lb in by else 0 for lb in labels]
        a1.bar(x + (i - 0.5) * 0.4, rps, 0.4, label=cond)
        a2.bar(x + (i - 0.5) * 0.4, p99, 0.4, label=f"{cond} p99", alpha=0.5)
        a2.bar(x + (i - 0.5) * 0.4, p50, 0.4, label=f"{cond} p50")
    names = [f"{k} key{'s' if k > 1 else ''}\n{c} conn" for k, c in labels]
    for ax, title in ((a1, "requests/s"), (a2, "latency (ms)")):
        ax.set_xticks(x, names)
        ax.set_title(title)
        ax.legend()
    a2.set_yscale("log")
    fig.suptitle(f"rayfs HTTP (Ray Serve, {out['replicas']} replica(s)), {out['events']:,} events, "
                 f"{out['shards']} shards, 5 features; ingest target {out['ingest_target_eps']:,.0f} ev/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
