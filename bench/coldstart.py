"""``python -m bench --cold-start``: time to first value of a NEW feature over N logged events.

A store holds N logged events of the seeded Reddit workload (ingested in 100k-row batches and flushed,
no feature registered: a pure event log). Then a new windowed feature (``user_pos_upvotes_7d``: count of
a user's upvotes with ``score > 0`` over 7 days) and a new lifetime one (``post_distinct_users``:
distinct users per post) are registered one after the other, and for each we time

* ``register_feature`` (it returns once the backfill is done: values are correct from then on), counting
  the ``progress`` callbacks it makes;
* the first ``get_features`` answer (1,000 random keys), a second one on the same keys (warm), and one
  for every key of the entity (the answer checked against the peers);

in two phases, each on its own freshly ingested store:

* ``memory``: right after the ingest, while the shards still hold every event in memory (a new store
  keeps its ingested batches for replay);
* ``reopen``: the store closed (snapshot) and reopened first, so the backfill reads the log from disk
  (through the OS page cache: the log was just written).

DuckDB and pandas compute the same two features from scratch over the same events (the online value:
events in ``[T + 1µs - 7d, T]``, ``T`` = newest event time; distinct non-null users per post); every
rayfs answer must equal theirs before any time is reported. Ratios are rayfs's time to first value
(register + first get) over the peer's best time (data already loaded into the peer, as it is into
rayfs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd

from bench import compare, peers
from bench.rayfs_side import ingest
from bench.rss import PeakSampler, cpu_seconds
from bench.workload import DAY_US, to_us
from rayfs.model.definitions import Feature
from rayfs.store import FeatureStore
from rayfs.workload import reddit_upvotes

MiB = 2**20
SAMPLE = 1000
W7 = 7 * DAY_US

FEATURES = [
    Feature(name="user_pos_upvotes_7d", stream="upvotes", entity="user", agg="count", window="7d",
            where="score > 0"),
    Feature(name="post_distinct_users", stream="upvotes", entity="post", agg="count_distinct", column="user"),
]
KIND = {"user_pos_upvotes_7d": "windowed 7d count, where score > 0",
        "post_distinct_users": "lifetime count_distinct(user)"}


# ----------------------------------------------------------------------------------------------- peers
def duck_feature(duck: peers.DuckPeer, name: str) -> pd.Series:
    """One feature from scratch in DuckDB (``ev`` holds the events; ts in µs, NaN scores as NULL)."""
    if name == "user_pos_upvotes_7d":
        df = duck.con.execute(f"""
            SELECT "user" AS k, count(*) AS v FROM ev
            WHERE score > 0 AND "user" IS NOT NULL
              AND ts >= (SELECT max(ts) FROM ev) + 1 - {W7} AND ts <= (SELECT max(ts) FROM ev)
            GROUP BY "user" """).df()
    else:
        df = duck.con.execute("""
            SELECT post AS k, count(DISTINCT "user") AS v FROM ev WHERE post IS NOT NULL GROUP BY post""").df()
    return df.set_index("k")["v"]


def pandas_feature(ev: pd.DataFrame, name: str) -> pd.Series:
    """One feature from scratch with pandas (``ev``: user, post, score, ts in µs)."""
    ts = ev["ts"].to_numpy()
    if name == "user_pos_upvotes_7d":
        t_max = ts.max()
        m = (ev["score"].to_numpy() > 0) & (ts >= t_max + 1 - W7) & (ts <= t_max)
        return ev["user"][m].value_counts(dropna=True)
    return ev.groupby("post", sort=False)["user"].nunique(dropna=True)


def _best(fn, repeats: int):
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return res, times


def _expected(peer: dict[str, pd.Series], name: str, keys: np.ndarray) -> pd.Series:
    """The peer's value for each of ``keys`` (0 for keys the peer has no row for: counts of nothing)."""
    s = peer[name]
    return pd.Series(s.reindex(pd.Index(keys, dtype=object if keys.dtype == object else None))
                     .fillna(0).to_numpy().astype(np.int64), name=name)


# ----------------------------------------------------------------------------------------------- rayfs
def _phase(store: FeatureStore, keys: dict[str, np.ndarray], seed: int, log) -> tuple[dict, dict]:
    """Register every feature of :data:`FEATURES` on ``store`` and read it; (figures, full answers)."""
    figs, answers = {}, {}
    for i, f in enumerate(FEATURES):
        calls: list[tuple[float, int, int]] = []
        t0 = time.perf_counter()

        def progress(done: int, total: int, calls=calls, t0=t0) -> None:
            calls.append((time.perf_counter() - t0, int(done), int(total)))

        with PeakSampler() as mem:
            cpu0 = cpu_seconds()
            store.register_feature(f, progress=progress)
            reg = time.perf_counter() - t0
            cpu1 = cpu_seconds()
            pool = keys[f.entity]
            sample = pool[np.random.default_rng(seed + i).integers(0, len(pool), SAMPLE)]
            t1 = time.perf_counter()
            first = store.get_features(f.entity, list(sample), features=[f.name])
            first_s = time.perf_counter() - t1
            cpu2 = cpu_seconds()
            t1 = time.perf_counter()
            store.get_features(f.entity, list(sample), features=[f.name])
            warm_s = time.perf_counter() - t1
            t1 = time.perf_counter()
            full = store.get_features(f.entity, list(pool), features=[f.name])
            all_s = time.perf_counter() - t1
        # the first answer must be the full answer at the sampled keys
        pos = pd.Index(pool).get_indexer(sample)
        compare.check(first[[f.name]].reset_index(drop=True),
                      full[[f.name]].iloc[pos].reset_index(drop=True), [f.name], f"{f.name}: first get vs full get")
        answers[f.name] = full[f.name].reset_index(drop=True)
        figs[f.name] = {
            "register_s": reg, "first_get_s": first_s, "time_to_first_value_s": reg + first_s,
            "warm_get_s": warm_s, "get_all_s": all_s, "all_keys": len(pool), "sample_keys": SAMPLE,
            "progress_calls": len(calls),
            "progress_first": list(calls[0]) if calls else None,
            "progress_last": list(calls[-1]) if calls else None,
            "peak_mem": mem.peak,
            # CPU seconds per process role during register / the first get (less noisy than wall times)
            "register_cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
            "first_get_cpu_s": {k: cpu2[k] - cpu1[k] for k in cpu1},
        }
        cpu = figs[f.name]["register_cpu_s"]
        log(f"    {f.name}: register {reg:.2f}s ({len(calls)} progress calls; CPU s: shards {cpu['shards']:.2f}, "
            f"coordinator {cpu['coordinator']:.2f}), first get ({SAMPLE} keys) {first_s * 1e3:.1f}ms, warm "
            f"{warm_s * 1e3:.1f}ms, all {len(pool):,} keys {all_s:.2f}s; peak RSS {mem.peak['rss'] / MiB:,.0f} MiB")
    return figs, answers


def run_rayfs(tmp: str, events: pd.DataFrame, shards: int, seed: int, log=print) -> tuple[dict, dict]:
    keys = {"user": events["user"].drop_duplicates().to_numpy(dtype=object),
            "post": events["post"].drop_duplicates().to_numpy()}
    fig: dict = {}
    answers: dict = {}

    # ---- phase "memory": right after ingest (the shards hold every event in memory)
    path = os.path.join(tmp, "memory")
    store = FeatureStore.open(path, shards=shards, durability="none")
    store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
    dt = ingest(store, events)
    log(f"  [memory] ingest (no features): {dt:.2f}s ({len(events) / dt:,.0f} ev/s)")
    ph = {"ingest_s": dt, "ingest_events_per_s": len(events) / dt}
    ph["features"], answers["memory"] = _phase(store, keys, seed, log)
    ph["log_bytes"] = int(sum(i["log_bytes"] for i in store.info()))
    t0 = time.perf_counter()
    store.close()
    ph["close_s"] = time.perf_counter() - t0
    fig["memory"] = ph
    shutil.rmtree(path, ignore_errors=True)

    # ---- phase "reopen": ingest, close, reopen; the backfill reads the log from disk
    path = os.path.join(tmp, "reopen")
    store = FeatureStore.open(path, shards=shards, durability="none")
    store.register_stream("upvotes", entities=["user", "post"], timestamp="ts")
    dt = ingest(store, events)
    t0 = time.perf_counter()
    store.close()
    close0 = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = FeatureStore.open(path)
    open_s = time.perf_counter() - t0
    log(f"  [reopen] ingest {dt:.2f}s, close {close0:.2f}s, reopen {open_s:.2f}s")
    ph = {"ingest_s": dt, "ingest_events_per_s": len(events) / dt, "close_before_s": close0, "open_s": open_s}
    ph["features"], answers["reopen"] = _phase(store, keys, seed, log)
    ph["log_bytes"] = int(sum(i["log_bytes"] for i in store.info()))
    t0 = time.perf_counter()
    store.close()
    ph["close_s"] = time.perf_counter() - t0
    fig["reopen"] = ph
    shutil.rmtree(path, ignore_errors=True)
    return fig, {"keys": keys, **answers}


# ----------------------------------------------------------------------------------------------- one size
def run_size(n: int, args, tmp_root: str, log=print) -> dict:
    load0 = os.getloadavg()[0]  # other work on the machine (the figures are noisy when it is busy)
    t0 = time.perf_counter()
    events = reddit_upvotes(n, seed=args.seed)
    log(f"[cold start, {n:,} events] generated in {time.perf_counter() - t0:.1f}s")
    tmp = tempfile.mkdtemp(prefix=f"coldstart-{n}-", dir=tmp_root)
    try:
        fig, got = run_rayfs(tmp, events, args.shards, args.seed, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    keys = got["keys"]

    res: dict = {"events": n, "rayfs": fig, "duckdb": {}, "pandas": {}, "loadavg_1m_start": load0,
                 "loadavg_1m_after_rayfs": os.getloadavg()[0]}
    duck = peers.DuckPeer(events)
    res["duckdb"]["load_s"] = duck.load_s
    duck_vals, pd_vals = {}, {}
    for f in FEATURES:
        duck_vals[f.name], ts = _best(lambda f=f: duck_feature(duck, f.name), args.peer_repeats)
        res["duckdb"][f.name] = {"first_s": ts[0], "best_s": min(ts)}
    duck.close()
    t0 = time.perf_counter()
    ev = pd.DataFrame({"user": events["user"], "post": events["post"], "score": events["score"],
                       "ts": to_us(events["ts"])})
    res["pandas"]["load_s"] = time.perf_counter() - t0
    for f in FEATURES:
        pd_vals[f.name], ts = _best(lambda f=f: pandas_feature(ev, f.name), args.peer_repeats)
        res["pandas"][f.name] = {"first_s": ts[0], "best_s": min(ts)}
    log("  peers: " + "; ".join(f"{f.name} DuckDB {res['duckdb'][f.name]['best_s']:.3f}s pandas "
                                f"{res['pandas'][f.name]['best_s']:.3f}s" for f in FEATURES))

    # ---- agreement, before any time is reported
    t0 = time.perf_counter()
    for phase in ("memory", "reopen"):
        for f in FEATURES:
            k = keys[f.entity]
            actual = pd.DataFrame({f.name: got[phase][f.name]})
            show = pd.DataFrame({f.entity: k})
            compare.check(actual, pd.DataFrame({f.name: _expected(duck_vals, f.name, k)}), [f.name],
                          f"{n} events cold start [{phase}]: rayfs vs duckdb", show)
            compare.check(actual, pd.DataFrame({f.name: _expected(pd_vals, f.name, k)}), [f.name],
                          f"{n} events cold start [{phase}]: rayfs vs pandas", show)
    res["agreement"] = {"checked": True, "seconds": time.perf_counter() - t0,
                        "pairs": ["rayfs get_features (every key, both phases) ~ duckdb",
                                  "rayfs get_features (every key, both phases) ~ pandas",
                                  "rayfs first get (1,000 keys) ~ rayfs get of every key"]}
    log(f"  all answers agree ({time.perf_counter() - t0:.1f}s of checks)")

    ratios: dict = {}
    for phase in ("memory", "reopen"):
        for f in FEATURES:
            r = fig[phase]["features"][f.name]
            d, p = res["duckdb"][f.name]["best_s"], res["pandas"][f.name]["best_s"]
            r["backfill_events_per_s"] = n / r["register_s"]
            r["ttfv_events_per_s"] = n / r["time_to_first_value_s"]
            ratios[f"{phase}/{f.name}"] = {
                "ttfv/duckdb": r["time_to_first_value_s"] / d, "register/duckdb": r["register_s"] / d,
                "ttfv/pandas": r["time_to_first_value_s"] / p, "register/pandas": r["register_s"] / p,
                # the peer starting from the raw events too (its load is the analogue of rayfs's ingest)
                "ttfv/(duckdb load+query)": r["time_to_first_value_s"] / (d + res["duckdb"]["load_s"])}
    res["ratios"] = ratios
    return res


# ----------------------------------------------------------------------------------------------- report
def markdown(doc: dict) -> str:
    c = doc["config"]
    lines = [f"# rayfs cold start {doc['timestamp']}", "",
             f"`python -m bench --cold-start --events N` ({doc['machine']['cpus']} CPUs, shards={c['shards']}). "
             "A store holds N logged events (100k-row batches, flushed, no feature yet); a NEW feature is "
             "registered (`register_feature` returns when its backfill is done), then read with "
             f"`get_features` ({SAMPLE:,} random keys). *memory*: right after the ingest (events in the "
             "shards' memory); *reopen*: after closing and reopening the store (events read from the log "
             "on disk). TTFV = register + first get. Every rayfs answer (all keys) was checked equal to "
             f"DuckDB's and pandas' before timing was reported; peer times: best of {c['peer_repeats']}, "
             "data already loaded, one feature per query. Shard CPU s: CPU seconds the shard processes "
             "used during `register_feature` (both shards together; less sensitive to other load than wall "
             "times).", "",
             "| events | phase | feature | register s | first get ms | TTFV s | backfill ev/s (register) "
             "| shard CPU s (register) | progress calls | get all keys s | DuckDB s | pandas s | TTFV/DuckDB "
             "| TTFV/pandas | TTFV/(DuckDB load+query) | peak RSS MiB |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        for phase in ("memory", "reopen"):
            for name, x in r["rayfs"][phase]["features"].items():
                ra = r["ratios"][f"{phase}/{name}"]
                lines.append(
                    f"| {r['events']:,} | {phase} | `{name}` | {x['register_s']:.2f} | {x['first_get_s'] * 1e3:.1f} "
                    f"| {x['time_to_first_value_s']:.2f} | {x['backfill_events_per_s']:,.0f} "
                    f"| {x['register_cpu_s']['shards']:.2f} | {x['progress_calls']} "
                    f"| {x['get_all_s']:.2f} ({x['all_keys']:,} keys) | {r['duckdb'][name]['best_s']:.3f} "
                    f"| {r['pandas'][name]['best_s']:.3f} | {ra['ttfv/duckdb']:.1f}x | {ra['ttfv/pandas']:.1f}x "
                    f"| {ra['ttfv/(duckdb load+query)']:.1f}x | {x['peak_mem']['rss'] / MiB:,.0f} |")
    lines += ["", "Features: " + "; ".join(f"`{f.name}` = {KIND[f.name]}" for f in FEATURES) + ".", "",
              "| events | ingest ev/s (no features) | reopen s | close s (memory phase, after both features) "
              "| log MiB | DuckDB load s | machine load (1-min avg) start / after rayfs |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    nan = float("nan")
    for r in doc["runs"]:
        m, o = r["rayfs"]["memory"], r["rayfs"]["reopen"]
        lines.append(f"| {r['events']:,} | {m['ingest_events_per_s']:,.0f} | {o['open_s']:.2f} | {m['close_s']:.2f} "
                     f"| {m['log_bytes'] / MiB:,.0f} | {r['duckdb']['load_s']:.2f} "
                     f"| {r.get('loadavg_1m_start', nan):.1f} / {r.get('loadavg_1m_after_rayfs', nan):.1f} |")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    fig, axes = plt.subplots(1, len(FEATURES), figsize=(6 * len(FEATURES), 4.2), squeeze=False)
    for ax, f in zip(axes[0], FEATURES, strict=True):
        labels = [f"{r['events'] / 1e6:g}M" for r in runs]
        series = {
            "rayfs TTFV (memory)": [r["rayfs"]["memory"]["features"][f.name]["time_to_first_value_s"] for r in runs],
            "rayfs TTFV (reopen)": [r["rayfs"]["reopen"]["features"][f.name]["time_to_first_value_s"] for r in runs],
            "DuckDB": [r["duckdb"][f.name]["best_s"] for r in runs],
            "pandas": [r["pandas"][f.name]["best_s"] for r in runs],
        }
        x = np.arange(len(runs))
        w = 0.8 / len(series)
        for i, (label, ys) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * w, ys, w, label=label)
        ax.set_xticks(x, labels)
        ax.set_title(f"new feature {f.name} ({doc['config']['shards']} shards)")
        ax.set_xlabel("logged events")
        ax.set_ylabel("seconds to first value")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
