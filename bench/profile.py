"""``python -m bench.profile``: where rayfs spends its time, without Ray in the way.

Runs one :class:`rayfs.shard.core.ShardCore` in this process (1 shard owning every key, durability
"none") under cProfile for (a) ingest of 100k-row batches, (b) the first (cold) and (c) a warm
``replay`` per feature mix, plus (d) the driver-side share of ``FeatureStore.ingest`` (normalising and
encoding a batch). Prints the top functions by cumulative and by own time.

``--cold-start``: instead, the shard's side of ``python -m bench --cold-start``: N events logged with no
feature, then ``add_feature`` (the backfill) and the first ``get`` of each new feature of
:data:`bench.coldstart.FEATURES`, right after the ingest (events in memory) and on a reopened shard
(events from the log).
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
from rayfs.engine import columns as C
from rayfs.engine.fold import TS
from rayfs.model.definitions import Stream
from rayfs.model.timeutil import to_micros
from rayfs.shard.core import ShardCore
from rayfs.storage.catalog import Catalog
from rayfs.store.ingest import Ingestor

BATCH = 100_000


def _report(prof: cProfile.Profile, title: str, top: int) -> str:
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        out.write(f"\n===== {title}: top {top} by {key} =====\n")
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


class _CatalogOnly:
    """The part of a store session :meth:`Ingestor.normalise` reads: the catalog (no Ray, no coordinator)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog


def encode_records(events, stream: Stream, feats, root: str, prof: cProfile.Profile | None = None) -> list[dict]:
    """The shard records of ``events`` in 100k-row batches, as the driver makes them (one shard owns all).

    The column kinds are recorded in the catalog up front, so normalising never asks the coordinator.
    """
    cat = Catalog(root, 1)
    cat.streams[stream.name] = stream
    cat.features = {f.name: f for f in feats}
    kinds = {}
    for c in events.columns:
        if c == stream.timestamp:
            continue
        if c in stream.entities:
            kinds[c] = C.key_kind(C.key_column(events[c], what=c))
        else:
            kinds[c] = C.kind_of(C.value_column(events[c], what=c))
    cat.schema[stream.name] = {c: k for c, k in kinds.items() if k is not None}
    ing = Ingestor.__new__(Ingestor)
    ing.session = _CatalogOnly(cat)
    records = []
    if prof is not None:
        prof.enable()
    for i, lo in enumerate(range(0, len(events), BATCH)):
        cols, _ = ing.normalise(stream, events.iloc[lo:lo + BATCH])
        records.append({"stream": stream.name, "batch_id": f"b{i}", "wm": int(cols[TS].max()),
                        "cols": C.encode_batch(cols)})
    if prof is not None:
        prof.disable()
    return records


def cold_start(a) -> str:
    """Profile of the shard side of ``python -m bench --cold-start`` (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from bench.coldstart import FEATURES, SAMPLE
    from rayfs.workload import reddit_upvotes

    events = reddit_upvotes(a.events, seed=42)
    stream = Stream(name="upvotes", entities=("user", "post"), timestamp="ts")
    tmp = tempfile.mkdtemp(prefix="rayfs-profile-")
    report = []
    try:
        records = encode_records(events, stream, [], tmp)
        core = ShardCore(tmp, 0, 1, [stream.to_dict()], [], durability="none", snapshot_every=10**9)
        t0 = time.perf_counter()
        for r in records:
            core.ingest(r)
        report.append(f"shard ingest (no features): {time.perf_counter() - t0:.2f}s for {len(events):,} events")
        for phase in ("memory", "reopen"):
            if phase == "reopen":
                for f in FEATURES:
                    core.drop_feature(f.key)
                core.windows.reset("upvotes")  # as if never registered: the closed store had no feature
                core.close()
                t0 = time.perf_counter()
                core = ShardCore(tmp, 0, 1, [stream.to_dict()], [], durability="none", snapshot_every=10**9)
                report.append(f"reopen: {time.perf_counter() - t0:.2f}s (event cache loaded: "
                              f"{core.replays.loaded})")
            for i, f in enumerate(FEATURES):
                pool = events[f.entity].drop_duplicates().to_numpy(dtype=object if f.entity == "user" else None)
                sample = pool[np.random.default_rng(i).integers(0, len(pool), SAMPLE)]
                keys = C.key_column(pd.Series(list(sample), dtype=object), what="keys")
                for step in ("add_feature", "first get"):
                    prof = cProfile.Profile()
                    t0 = time.perf_counter()
                    prof.enable()
                    if step == "add_feature":
                        core.add_feature(f.to_dict())
                    else:
                        core.get(f.entity, keys, [f.key])
                    prof.disable()
                    dt = time.perf_counter() - t0
                    title = f"[{phase}] {step} {f.name}"
                    report.append(f"{title}: {dt:.3f}s")
                    report.append(_report(prof, title, a.top))
        core.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(report)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--observations-ratio", type=float, default=0.25)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="also write the report to this file")
    ap.add_argument("--cold-start", action="store_true", help="profile new-feature backfill and first reads")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.cold_start:
        text = cold_start(a)
        print(text)
        if a.out:
            with open(a.out, "w") as fh:
                fh.write(text)
        return 0
    events, obs = make(a.events, a.observations_ratio)
    feats = [f for fs in MIXES.values() for f in fs]
    stream = Stream(name="upvotes", entities=("user", "post"), timestamp="ts")
    tmp = tempfile.mkdtemp(prefix="rayfs-profile-")
    report = []
    try:
        # driver side of ingest: normalise + encode (what FeatureStore.ingest does before the actor calls)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        records = encode_records(events, stream, feats, tmp, prof)
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
