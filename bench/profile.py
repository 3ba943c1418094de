"""``python -m bench.profile``: where rayfs spends its time, without Ray in the way.

Runs one :class:`rayfs.shardcore.ShardCore` in this process (1 shard owning every key, durability
"none") under cProfile for (a) ingest of 100k-row batches, (b) the first (cold) and (c) a warm
``replay`` per feature mix, plus (d) the driver-side share of ``FeatureStore.ingest`` (normalising and
encoding a batch). Prints the top functions by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import time
import warnings

from bench.workload import MIXES, make
from rayfs import columns as C
from rayfs.catalog import Catalog
from rayfs.definitions import Stream
from rayfs.shardcore import ShardCore
from rayfs.store import FeatureStore
from rayfs.timeutil import to_micros

BATCH = 100_000


def _report(prof: cProfile.Profile, title: str, top: int) -> str:
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        out.write(f"\n===== {title}: top {top} by {key} =====\n")
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--observations-ratio", type=float, default=0.25)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="also write the report to this file")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    events, obs = make(a.events, a.observations_ratio)
    feats = [f for fs in MIXES.values() for f in fs]
    stream = Stream(name="upvotes", entities=("user", "post"), timestamp="ts")
    tmp = tempfile.mkdtemp(prefix="rayfs-profile-")
    report = []
    try:
        # driver side of ingest: normalise + encode (what FeatureStore.ingest does before the actor call)
        cat = Catalog(tmp, 1)
        cat.streams["upvotes"] = stream
        cat.features = {f.name: f for f in feats}
        drv = FeatureStore.__new__(FeatureStore)
        drv._catalog = cat
        prof = cProfile.Profile()
        records = []
        t0 = time.perf_counter()
        prof.enable()
        for i, lo in enumerate(range(0, len(events), BATCH)):
            cols, _ = drv._normalise(stream, events.iloc[lo:lo + BATCH])
            records.append({"stream": "upvotes", "batch_id": f"b{i}", "cols": C.encode_batch(cols)})
        prof.disable()
        report.append(f"driver normalise+encode: {time.perf_counter() - t0:.2f}s for {len(events):,} events")
        report.append(_report(prof, "driver normalise+encode", a.top))

        core = ShardCore(tmp, 0, 1, [stream.to_dict()], [], durability="none", snapshot_every=10**9)
        for f in feats:
            core.add_feature(f.to_dict())
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for r in records:
            core.ingest(r)
        prof.disable()
        dt = time.perf_counter() - t0
        report.append(f"shard ingest ({len(feats)} features): {dt:.2f}s, {len(events) / dt:,.0f} ev/s")
        report.append(_report(prof, "shard ingest", a.top))

        keys = C.key_column(obs["user"], what="obs user")
        pkeys = C.key_column(obs["post"], what="obs post")
        t = to_micros(obs["ts"])
        first = True
        for _pass in (1, 2):
            for mix, fs in MIXES.items():
                label = "cold: includes loading the log" if first else "warm"
                first = False
                by: dict[str, list[str]] = {}
                for f in fs:
                    by.setdefault(f.entity, []).append(f.name)
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                for ent, names in by.items():
                    core.replay(ent, keys if ent == "user" else pkeys, t, names)
                prof.disable()
                dt = time.perf_counter() - t0
                report.append(f"shard replay {mix} ({label}): {dt:.2f}s for {len(obs):,} observations")
                report.append(_report(prof, f"shard replay {mix} ({label})", a.top))
        core.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = "\n".join(report)
    print(text)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
