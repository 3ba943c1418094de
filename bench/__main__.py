"""``python -m bench``: rayfs versus DuckDB and pandas on seeded Reddit upvotes.

For each size: generate events and observations, measure rayfs (ingest sync/none, training_set cold and
warm, get_features latency, recovery, peak memory), compute the same training sets with DuckDB and
pandas, check that every answer agrees (a disagreement is a hard error printing the first differing
rows), and only then report times and ratios (JSON, Markdown, PNG in ``--out``).

``--cold-start`` instead measures the time to first value of a NEW feature over N logged events
(:mod:`bench.coldstart`; writes ``coldstart.{json,md,png}``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

from bench import coldstart, compare, peers, rayfs_side
from bench.report import markdown, plot
from bench.workload import MIXES, check_cents, make


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--events", default="1000000,2000000", help="comma-separated event counts")
    ap.add_argument("--observations-ratio", type=float, default=0.25, help="observations = ratio x events")
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    ap.add_argument("--mix", choices=("basic", "rich", "both"), default="both")
    ap.add_argument("--calls", type=int, default=200, help="get_features calls per latency figure")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--peer-repeats", type=int, default=2, help="runs of each peer query (best is reported)")
    ap.add_argument("--cold-start", action="store_true",
                    help="measure time to first value of new features over N logged events instead "
                         "(writes coldstart.{json,md,png})")
    a = ap.parse_args(argv)
    a.sizes = [20_000, 50_000] if a.quick else [int(float(s)) for s in str(a.events).split(",") if s.strip()]
    if a.calls < 200:
        ap.error("--calls must be at least 200")
    return a


def _timed(fn, *args, repeats: int = 1):
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn(*args)
        times.append(time.perf_counter() - t0)
    return res, times


def run_size(n: int, args, mixes: dict, tmp_root: str, log=print) -> dict:
    load0 = os.getloadavg()[0]  # other work on the machine (the figures are noisy when it is busy)
    t0 = time.perf_counter()
    events, obs = make(n, args.observations_ratio, seed=args.seed)
    if not check_cents(events):
        raise SystemExit("scores are not whole hundredths; the peers' exact cent sums do not apply")
    log(f"[{n:,} events, {len(obs):,} observations] generated in {time.perf_counter() - t0:.1f}s")
    tmp = tempfile.mkdtemp(prefix=f"bench-{n}-", dir=tmp_root)
    try:
        fig, rf_res, rf_online = rayfs_side.run(tmp, events, obs, args.shards, mixes, args.calls, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res: dict = {"events": n, "observations": len(obs), "rayfs": fig, "duckdb": {"training": {}},
                 "pandas": {"training": {}}, "loadavg_1m_start": load0,
                 "loadavg_1m_after_rayfs": os.getloadavg()[0]}
    duck = peers.DuckPeer(events)
    res["duckdb"]["load_s"] = duck.load_s
    duck_res = {}
    for mix in mixes:
        duck_res[mix], ts = _timed(getattr(duck, mix), obs, repeats=args.peer_repeats)
        res["duckdb"]["training"][mix] = {"first_s": ts[0], "best_s": min(ts)}
        log(f"  duckdb training[{mix}]: first {ts[0]:.2f}s best {min(ts):.2f}s")
    # online check: get_features at T + 1us equals the point-in-time value at T + 1us
    t_end = int(np.round(events["ts"].to_numpy().max() * 1e6)) + 1
    probe = rf_online[next(iter(mixes))]["user"]
    pobs = pd.DataFrame({"user": probe.to_numpy(dtype=object), "post": events["post"].iloc[0],
                         "t_us": np.full(len(probe), t_end, dtype=np.int64)})
    duck_online = {mix: getattr(duck, mix)(pobs) for mix in mixes}
    duck.close()

    pd_peer = peers.PandasPeer(events)
    res["pandas"]["load_s"] = pd_peer.load_s
    pd_res = {}
    for mix in mixes:
        pd_res[mix], ts = _timed(getattr(pd_peer, mix), obs, repeats=args.peer_repeats)
        res["pandas"]["training"][mix] = {"first_s": ts[0], "best_s": min(ts),
                                          "skipped": list(peers.PandasPeer.RICH_SKIPPED) if mix == "rich" else []}
        log(f"  pandas training[{mix}]: first {ts[0]:.2f}s best {min(ts):.2f}s")
    del pd_peer

    # ---- agreement, before any time is reported
    t0 = time.perf_counter()
    obs_show = obs.assign(t_us=np.round(obs["ts"].to_numpy() * 1e6).astype(np.int64))
    for mix, fs in mixes.items():
        names = [f.name for f in fs]
        compare.check(rf_res[mix], duck_res[mix], names, f"{n} events {mix}: rayfs vs duckdb", obs_show)
        pnames = [c for c in names if c in pd_res[mix].columns]
        compare.check(rf_res[mix], pd_res[mix], pnames, f"{n} events {mix}: rayfs vs pandas", obs_show)
        unames = [f.name for f in fs if f.entity == "user"]
        compare.check(rf_online[mix], duck_online[mix], unames,
                      f"{n} events {mix}: rayfs get_features vs duckdb at T+1us", pobs)
    res["agreement"] = {"checked": True, "seconds": time.perf_counter() - t0,
                        "pairs": ["rayfs~duckdb training", "rayfs~pandas training",
                                  "rayfs get_features~duckdb at T+1us"]}
    log(f"  all answers agree ({time.perf_counter() - t0:.1f}s of checks)")

    ratios = {}
    for mix in mixes:
        tr = fig["training"][mix]
        d = res["duckdb"]["training"][mix]["best_s"]
        p = res["pandas"]["training"][mix]["best_s"]
        ratios[mix] = {"rayfs_cold/duckdb": tr["cold_s"] / d, "rayfs_warm/duckdb": tr["warm_s"] / d,
                       "rayfs_cold/pandas": tr["cold_s"] / p, "rayfs_warm/pandas": tr["warm_s"] / p}
    res["ratios"] = ratios
    return res


def code_info() -> dict:
    """Which rayfs this run measures: the driver's and a Ray worker's import path, and the git commit."""
    import ray

    import rayfs

    @ray.remote(num_cpus=0)
    def where() -> str:
        import rayfs as r

        return r.__file__

    root = os.path.dirname(os.path.dirname(os.path.abspath(rayfs.__file__)))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "rayfs"], capture_output=True,
                               text=True, check=True).stdout.strip() != ""
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"driver_rayfs": rayfs.__file__, "worker_rayfs": ray.get(where.remote()), "git_commit": commit,
            "rayfs_dirty": dirty}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    mixes = MIXES if args.mix == "both" else {args.mix: MIXES[args.mix]}
    import ray

    started = time.perf_counter()
    ray.init(address="local", namespace="rayfs", include_dashboard=False, logging_level="ERROR",
             configure_logging=True, log_to_driver=False)
    ray_init_s = time.perf_counter() - started
    code = code_info()
    print(f"ray.init {ray_init_s:.1f}s; sizes {args.sizes}; mix {args.mix}; shards {args.shards}; rayfs "
          f"{code['driver_rayfs']} (worker {code['worker_rayfs']}, commit {code['git_commit']}"
          f"{', modified' if code['rayfs_dirty'] else ''})", flush=True)
    tmp_root = tempfile.mkdtemp(prefix="rayfs-bench-")
    runs = []
    try:
        for n in args.sizes:
            if args.cold_start:
                runs.append(coldstart.run_size(n, args, tmp_root, log=lambda s: print(s, flush=True)))
            else:
                runs.append(run_size(n, args, mixes, tmp_root, log=lambda s: print(s, flush=True)))
    except compare.Disagreement as exc:
        print(f"\nFAILED: answers disagree; no times reported.\n{exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        ray.shutdown()
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"timestamp": stamp, "argv": sys.argv[1:] if argv is None else argv,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "platform": platform.platform()},
           "config": {"sizes": args.sizes, "observations_ratio": args.observations_ratio, "shards": args.shards,
                      "mix": args.mix, "calls": args.calls, "seed": args.seed, "batch_rows": rayfs_side.BATCH,
                      "peer_repeats": args.peer_repeats},
           "code": code, "ray_init_s": ray_init_s, "wall_s": time.perf_counter() - started, "runs": runs}
    if args.cold_start:
        return _write_cold_start(doc, args.out, stamp)
    for name in (f"bench-{stamp}.json", "latest.json"):
        with open(os.path.join(args.out, name), "w") as f:
            json.dump(doc, f, indent=1, default=float)
    md = markdown(doc)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    plot(doc, os.path.join(args.out, "latest.png"))
    print()
    print(md)
    print(f"wrote {args.out}/bench-{stamp}.json, latest.json, latest.md, latest.png "
          f"({doc['wall_s']:.0f}s wall)")
    return 0


def _write_cold_start(doc: dict, out: str, stamp: str) -> int:
    doc["config"] = {k: doc["config"][k] for k in ("sizes", "shards", "seed", "batch_rows", "peer_repeats")}
    doc["config"]["durability"] = "none"
    for name in (f"coldstart-{stamp}.json", "coldstart.json"):
        with open(os.path.join(out, name), "w") as f:
            json.dump(doc, f, indent=1, default=float)
    md = coldstart.markdown(doc)
    with open(os.path.join(out, "coldstart.md"), "w") as f:
        f.write(md)
    coldstart.plot(doc, os.path.join(out, "coldstart.png"))
    print()
    print(md)
    print(f"wrote {out}/coldstart-{stamp}.json, coldstart.json, coldstart.md, coldstart.png "
          f"({doc['wall_s']:.0f}s wall)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
