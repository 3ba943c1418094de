"""Markdown table and PNG plot of a benchmark document."""

from __future__ import annotations

MiB = 2**20


def markdown(doc: dict) -> str:
    c = doc["config"]
    lines = [f"# rayfs benchmark {doc['timestamp']}", "",
             f"{doc['machine']['cpus']} CPUs, shards={c['shards']}, observations = {c['observations_ratio']} x "
             f"events, mix={c['mix']}; all answers checked equal (rayfs vs DuckDB vs pandas, rtol 1e-9) "
             "before timing was reported. Peer times: best of "
             f"{c['peer_repeats']}; rayfs cold = first training_set after ingest (loads the log), "
             "warm = second call.", "",
             *_load_line(doc),
             "## Training set (point-in-time join)", "",
             "| events | obs | mix | rayfs cold s | rayfs warm s | rayfs rows/s (warm) | DuckDB s | pandas s "
             "| cold/DuckDB | warm/DuckDB | cold/pandas | warm/pandas | peak RSS MiB (PSS) "
             "| growth MiB / raw columns MiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        for mix, tr in r["rayfs"]["training"].items():
            d = r["duckdb"]["training"][mix]["best_s"]
            p = r["pandas"]["training"][mix]
            ra = r["ratios"][mix]
            note = "*" if p.get("skipped") else ""
            m = tr["peak_mem"]
            lines.append(
                f"| {r['events']:,} | {r['observations']:,} | {mix} | {tr['cold_s']:.2f} | {tr['warm_s']:.2f} "
                f"| {tr['rows_per_s_warm']:,.0f} | {d:.2f} | {p['best_s']:.2f}{note} "
                f"| {ra['rayfs_cold/duckdb']:.2f}x | {ra['rayfs_warm/duckdb']:.2f}x "
                f"| {ra['rayfs_cold/pandas']:.2f}x{note} | {ra['rayfs_warm/pandas']:.2f}x{note} "
                f"| {m['rss'] / MiB:,.0f} ({m['pss'] / MiB:,.0f}) | {_growth(tr, r['rayfs'])} |")
    lines += ["", "\\* pandas rich omits `user_distinct_posts_30d` (windowed count-distinct: DuckDB only).", "",
              "## Ingest, recovery, online reads", "",
              "Ingest: 100k-row DataFrame batches handed to one `ingest` call (pipelined); *per call* = one "
              "`ingest` call per batch, each waiting for its acknowledgement.", "",
              "| events | features | ingest sync ev/s | ingest group ev/s | ingest none ev/s "
              "| ingest sync per call ev/s | DuckDB load s "
              "| reopen s (snapshots) | reopen s / M events (log only) | reopen s / GB (log only) "
              "| get 1 user p50/p99 ms | get 1k users p50/p99 ms "
              "| get 1 post p50/p99 ms | get 1k posts p50/p99 ms |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        f = r["rayfs"]
        g = f["get_features"]

        def lat(k, g=g):
            v = g.get(k)
            return f"{v['p50_ms']:.2f} / {v['p99_ms']:.2f}" if v else "-"

        lines.append(
            f"| {r['events']:,} | {f['features_registered']} | {f['ingest_sync_events_per_s']:,.0f} "
            f"| {f.get('ingest_group_events_per_s', float('nan')):,.0f} "
            f"| {f['ingest_none_events_per_s']:,.0f} | {f.get('ingest_sync_per_call_events_per_s', float('nan')):,.0f} "
            f"| {r['duckdb']['load_s']:.2f} | {f['recovery']['open_s']:.2f} "
            f"| {f['recovery'].get('log_only_s_per_million_tail_events', float('nan')):.2f} "
            f"| {f['recovery'].get('log_only_s_per_gb', float('nan')):.1f} | {lat('user_1')} | {lat('user_1000')} "
            f"| {lat('post_1')} | {lat('post_1000')} |")
    return "\n".join(lines) + "\n"


def _growth(tr: dict, fig: dict) -> str:
    """Memory the training_set call added over all processes, and its ratio to the raw event columns."""
    if "growth_mem" not in tr:
        return "-"
    g, raw = tr["growth_mem"]["rss"], fig["raw_event_bytes"]
    return f"{g / MiB:,.0f} / {raw / MiB:,.0f} = {g / raw:.2f}x"


def _load_line(doc: dict) -> list[str]:
    """A note on other work on the machine during the run (1-minute load average), when recorded."""
    loads = [(r["events"], r["loadavg_1m_start"], r["loadavg_1m_after_rayfs"]) for r in doc["runs"]
             if "loadavg_1m_start" in r]
    if not loads:
        return []
    return [f"Machine load (1-min load average on {doc['machine']['cpus']} CPUs, at the start / after the rayfs "
            "part): " + "; ".join(f"{n:,} events {a:.1f} / {b:.1f}" for n, a, b in loads)
            + ". Above ~2 other processes compete for the CPUs and every time is inflated (DuckDB's, which "
            "uses every core, the most).", ""]


def plot(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = doc["runs"]
    mixes = list(runs[0]["rayfs"]["training"]) if runs else []
    fig, axes = plt.subplots(1, max(1, len(mixes)), figsize=(6 * max(1, len(mixes)), 4.2), squeeze=False)
    x = [r["events"] for r in runs]
    for ax, mix in zip(axes[0], mixes, strict=False):
        series = {
            "rayfs (cold)": [r["rayfs"]["training"][mix]["cold_s"] for r in runs],
            "rayfs (warm)": [r["rayfs"]["training"][mix]["warm_s"] for r in runs],
            "DuckDB": [r["duckdb"]["training"][mix]["best_s"] for r in runs],
            "pandas" + (" (w/o count-distinct)" if mix == "rich" else ""):
                [r["pandas"]["training"][mix]["best_s"] for r in runs],
        }
        for label, ys in series.items():
            ax.plot(x, ys, marker="o", label=label)
        ax.set_title(f"training_set, {mix} mix ({doc['config']['shards']} shards)")
        ax.set_xlabel("events")
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
