"""A second process that ingests paced batches into a named store while a benchmark reads (shared by
``bench.http`` and ``bench.serving``)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

BATCH = 25_000


def ingest_worker(name: str, address: str, rate: float, seed: int, n_users: int, start: float, log: str,
                  stop: str) -> None:
    """Ingest paced batches into the store called ``name`` until the file ``stop`` exists; log ``(time, events)``."""
    import rayfs
    from rayfs.workload import reddit_upvotes

    warnings.filterwarnings("ignore")
    store = rayfs.connect(name, address=address)
    events = reddit_upvotes(1_000_000, seed=seed, n_users=n_users, start=start, days=30)
    span = 31 * 86_400.0
    total, loop = 0, 0
    t0 = time.perf_counter()

    def paced(fh, loop):
        nonlocal total
        for lo in range(0, len(events), BATCH):
            if os.path.exists(stop):
                return
            batch = events.iloc[lo:lo + BATCH]
            if loop:
                batch = batch.assign(ts=batch["ts"] + loop * span)  # later rounds move forward in time
            yield batch
            total += len(batch)
            fh.write(f"{time.time()} {total}\n")
            fh.flush()
            ahead = total / rate - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)

    with open(log, "a") as fh:
        while not os.path.exists(stop):
            store.ingest("upvotes", paced(fh, loop))  # pipelined: batch k+1 is prepared while k folds
            loop += 1
    store.close()


def rate_between(log: str, t0: float, t1: float) -> float:
    """Events/s handed over between the last log line at or before ``t0`` and the first at or after ``t1``
    (a window shorter than a batch still spans two lines; with no line after ``t1``, up to ``t1``)."""
    rows = [tuple(map(float, ln.split())) for ln in Path(log).read_text().splitlines() if ln.strip()]
    before = [r for r in rows if r[0] <= t0] or rows[:1]
    after = [r for r in rows if r[0] >= t1] or [(t1, rows[-1][1])] if rows else []  # none since: up to t1
    if not before or not after or after[0][0] <= before[-1][0]:
        return 0.0
    (ta, na), (tb, nb) = before[-1], after[0]
    return (nb - na) / (tb - ta)


def start(module: str, address: str, rate: float, n_users: int, after_ts: float, tmp: str):
    """Start ``python -m <module> --ingest-worker`` (which calls :func:`ingest_worker`) against the Ray at
    ``address``; return ``(process, log, stop file)`` once it is ingesting."""
    import subprocess
    import sys

    log, stop = os.path.join(tmp, "ingest.log"), os.path.join(tmp, "ingest.stop")
    proc = subprocess.Popen([sys.executable, "-m", module, "--ingest-worker", address, str(rate), "11",
                             str(n_users), str(after_ts), log, "--stop-file", stop],
                            cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + 120
    while not (os.path.exists(log) and os.path.getsize(log) > 0):  # ingesting: measure now
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc, stop)
            raise RuntimeError("the ingesting process did not start")
        time.sleep(0.2)
    time.sleep(2.0)
    return proc, log, stop


def stop_worker(proc, stop: str) -> None:
    """Ask the ingesting process to stop (its batches in flight finish), kill it if it does not."""
    import signal
    import subprocess

    Path(stop).touch()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def save_results(results: Path, name: str, out: dict, plot) -> Path:
    """``<results>/<name>-<stamp>.json`` and ``.png`` (drawn by ``plot(out, path)``), copied to
    ``<name>.json`` and ``<name>.png``; returns the stamped base path."""
    import json
    import shutil

    results.mkdir(exist_ok=True)
    base = results / f"{name}-{out['stamp']}"
    base.with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")
    plot(out, base.with_suffix(".png"))
    shutil.copy(base.with_suffix(".json"), results / f"{name}.json")
    shutil.copy(base.with_suffix(".png"), results / f"{name}.png")
    return base
