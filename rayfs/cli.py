"""The ``rayfs`` command line: argument parsing that turns into :class:`~rayfs.store.FeatureStore` calls.

Commands that use a store pick it with one of ``--name NAME`` (a running named store, found with
:func:`rayfs.connect`; ``--address`` defaults to ``auto``), ``--config FILE`` (the store a config file
declares: attached by name if it runs, else opened from its path, definitions applied) or ``--path DIR``
(an embedded store opened for the command). ``--path`` must name the folder of an existing store: no
command creates one there (``rayfs apply`` or ``rayfs serve`` with a config do).

Every error rayfs raises on purpose (a :class:`~rayfs.errors.RayfsError`), and every operating-system error
(a missing file, an unreachable Ray cluster), is printed as one line on stderr, followed by its notes, and
the command exits with status 2; a bad argument is reported by the argument parser, also with status 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

from rayfs.errors import RayfsError, StoreNotFoundError, UnknownStreamError

__all__ = ["COMMANDS", "main"]


def _count(least: int):
    """An argparse type: an integer >= ``least`` (so ``--events -5`` is a usage error, not a traceback)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, not {value}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def _target_args(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--name", help="a running named store (rayfs serve / FeatureStore.open(..., name=...))")
    g.add_argument("--config", help="a store config file (TOML, see configs/)")
    g.add_argument("--path", help="an embedded store's folder")
    p.add_argument("--address", default=None, help="Ray address (default: auto with --name, else a local Ray)")
    p.add_argument("--namespace", default="rayfs", help="Ray namespace of the store's actors")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayfs", description="rayfs: an event-sourced feature store on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the Reddit upvotes demo on an embedded store")
    demo.add_argument("--events", type=_count(1), default=300_000)
    demo.add_argument("--observations", type=_count(1), default=50_000)
    demo.add_argument("--shards", type=_count(1), default=4)
    demo.add_argument("--seed", type=_count(0), default=7)
    demo.add_argument("--path", default=None, help="keep the store in this folder (default: a temporary one)")
    sub.add_parser("bench", help="run the benchmark harness (python -m bench) from a source checkout",
                   add_help=False)
    serve = sub.add_parser("serve", help="start the named store a config declares and apply its definitions")
    serve.add_argument("--config", required=True)
    serve.add_argument("--address", default=None,
                       help="a Ray cluster to start it in (then this command returns, the store keeps running); "
                            "without it a local Ray is started and the store runs until Ctrl-C")
    serve.add_argument("--http", type=int, default=None, metavar="PORT",
                       help="also serve feature reads over HTTP on this port (Ray Serve; default: [serve] port)")
    serve.add_argument("--http-host", default=None, help="the HTTP address (default: [serve] host or 127.0.0.1)")
    status = sub.add_parser("status", help="shards, their nodes and figures, and the features of a store")
    _target_args(status)
    stop = sub.add_parser("stop", help="snapshot and stop a named store")
    _target_args(stop)
    apply = sub.add_parser("apply", help="register the streams and features of a config file")
    apply.add_argument("config")
    apply.add_argument("--address", default=None)
    feats = sub.add_parser("features", help="list or describe features")
    fsub = feats.add_subparsers(dest="action", required=True)
    _target_args(fsub.add_parser("list", help="every feature version"))
    desc = fsub.add_parser("describe", help="one feature: definition, SQL, versions, statistics")
    desc.add_argument("feature")
    _target_args(desc)
    ingest = sub.add_parser("ingest", help="ingest Parquet, CSV or JSON-lines files into a stream, batch-wise")
    ingest.add_argument("stream")
    ingest.add_argument("files", nargs="+")
    ingest.add_argument("--format", choices=["parquet", "csv", "tsv", "jsonl"], default=None)
    ingest.add_argument("--batch-rows", type=_count(1), default=100_000)
    _target_args(ingest)
    train = sub.add_parser("train", help="build a point-in-time training set from an observations file")
    train.add_argument("observations", help="a Parquet/CSV/JSON-lines file of (entity keys, timestamp, labels)")
    train.add_argument("--features", default=None, help="comma-separated names (default: all that apply)")
    train.add_argument("--timestamp", default="ts")
    train.add_argument("-o", "--output", required=True, help="output file: .parquet, .csv or .jsonl")
    _target_args(train)
    audit = sub.add_parser("audit", help="compare online values with a fresh replay of the log")
    audit.add_argument("-n", type=_count(1), default=1000, help="keys to check per feature")
    _target_args(audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``rayfs`` command ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = _parser().parse_args(argv)
    warnings.filterwarnings("ignore")
    command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
    try:
        return COMMANDS[args.command](args) or 0
    except (RayfsError, OSError) as exc:
        # OSError: the environment, not rayfs (an unwritable output file, no Ray cluster at --address)
        what = str(exc) if isinstance(exc, RayfsError) else f"{type(exc).__name__}: {exc}"
        notes = "".join(f"\n  {n}" for n in getattr(exc, "__notes__", ()))
        print(f"rayfs {command}: {what}{notes}", file=sys.stderr)
        return 2


def _demo(args) -> int:
    from rayfs import demo as demo_mod

    demo_mod.run(events=args.events, observations=args.observations, shards=args.shards, seed=args.seed,
                 path=args.path)
    return 0


def _bench(argv: list[str]) -> int:
    """``rayfs bench ARGS`` = ``python -m bench ARGS`` in the checkout rayfs was installed from."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").exists():
        print("rayfs bench needs a source checkout (pip install -e .); bench/ is not installed", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=root)


# ----------------------------------------------------------------------------------------- stores
def _open(args):
    """The store the command's ``--name/--config/--path`` picks (see the module docstring)."""
    from rayfs.store import FeatureStore, connect

    if args.name:
        return connect(args.name, address=args.address or "auto", namespace=args.namespace)
    if args.config:
        from rayfs.model.config import load_config

        cfg = load_config(args.config)
        store = FeatureStore.open(**cfg.store.open_kwargs(), address=args.address)
        _apply(cfg, store)
        return store
    _require_store(args.path)
    return FeatureStore.open(args.path, address=args.address, namespace=args.namespace)


def _require_store(path: str) -> None:
    """Refuse a ``--path`` that holds no store (opening it would create an empty store there)."""
    from rayfs.storage.catalog import FILE, Catalog

    if Catalog.load(path) is None:
        raise StoreNotFoundError(f"--path {path}: no rayfs store there (no {FILE}); give the folder of an "
                                 "existing store, or create one with `rayfs apply CONFIG`")


def _apply(cfg, store) -> None:
    """Register a config's definitions, with a progress bar for backfills that take a while."""
    for s in cfg.streams:
        store.register_stream(s.name, entities=list(s.entities), timestamp=s.timestamp)
    for f in cfg.features:
        bar = _Bar(f"backfill {f.name}", unit="ev")
        try:
            store.register_feature(f, progress=bar.update)
        finally:
            bar.close()
    for od in cfg.on_demand:  # [[on_demand]] tables
        store.register_on_demand(od.feature())
    for stream, source in cfg.kafka:  # [streams.kafka] tables
        store.subscribe(stream, source)
    for o in cfg.observations:  # [[observations]] tables
        store.subscribe(o.name, o.source, observation_keys=list(o.keys), timestamp=o.timestamp)


class _Bar:
    """A tqdm progress bar on stderr, created on first use (so quick steps print nothing)."""

    def __init__(self, desc: str, unit: str, scale: bool = True) -> None:
        self.desc, self.unit, self.scale, self.bar = desc, unit, scale, None

    def update(self, done: float, total: float) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, unit_scale=self.scale, file=sys.stderr,
                            disable=None)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _serve(args) -> int:
    from rayfs.model.config import load_config
    from rayfs.store import FeatureStore

    cfg = load_config(args.config)
    if not cfg.store.name:
        print(f"rayfs serve: {args.config}: [store] needs a name so that drivers can connect to it",
              file=sys.stderr)
        return 2
    http = _http_settings(args, cfg)  # a missing token variable stops here, before anything starts
    store = FeatureStore.open(**cfg.store.open_kwargs(), address=args.address)
    _apply(cfg, store)
    import ray

    address = ray.get_runtime_context().gcs_address
    if http is not None:
        _start_http(args, cfg, store, http)
    print(f"store {cfg.store.name!r} is serving: {cfg.store.shards or len(store.info())} shards, "
          f"{len(store.features)} features, data in {store.path}")
    print(f"connect with: rayfs.connect({cfg.store.name!r}, address={address!r})")
    if args.address:  # detached actors in a cluster: they keep running without this process
        print(f"stop with: rayfs stop --name {cfg.store.name} --address {args.address}")
        if http is not None:
            print(f"the HTTP server keeps running too; stop it with `serve shutdown -y` (needs the Ray dashboard) or "
                  f"rayfs.serve.http.stop_http({cfg.store.name!r}) from a driver")
        store.close()
        return 0
    print("serving until Ctrl-C or SIGTERM (then the store snapshots and stops), or `rayfs stop`", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            if not store.alive():
                print("the store was stopped")
                store.close()
                return 0
    except KeyboardInterrupt:
        pass
    if http is not None:
        from rayfs.serve.http import stop_http

        stop_http(cfg.store.name)
    store.stop()
    print("stopped")
    return 0


def _http_settings(args, cfg) -> dict | None:
    """``serve_http`` arguments from ``--http``/``--http-host`` and ``[serve]``; ``None`` if HTTP is not asked for."""
    port = args.http if args.http is not None else cfg.serve.port
    if port is None:
        return None
    from rayfs.serve.protocol import resolve_token

    return {"host": args.http_host or cfg.serve.host, "port": port, "max_keys": cfg.serve.max_keys,
            "num_replicas": cfg.serve.num_replicas, "token": resolve_token(cfg.serve.token, cfg.serve.token_env)}


def _start_http(args, cfg, store, http: dict) -> None:
    from rayfs.serve.http import serve_http

    try:
        url = serve_http(cfg.store.name, namespace=cfg.store.namespace, **http)
    except BaseException:
        # No store left behind without its server in a local run; in a cluster the store stays up.
        store.close() if args.address else store.stop()
        raise
    auth = "bearer token required" if http["token"] else "no token (open to anyone who reaches the port)"
    print(f"HTTP: POST {url}/get-online-features, GET {url}/health ({auth})")


def _status(args) -> int:
    import pandas as pd

    store = _open(args)
    try:
        st = store.stats()
        st["node"] = st["node_id"].str[:8]
        cols = ["shard", "node", "events", "events_ingested", "log_segments", "log_bytes", "snapshot_age_s",
                "events_since_snapshot", "errors", "replay_observations"]
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(f"store {store.name or store.path} ({len(st)} shards)")
            print(st[cols].to_string(index=False))
            feats = store.list_features()
            print(f"\n{len(feats)} feature versions")
            if len(feats):
                cols = ["key", "kind", "stream", "entity", "agg", "column", "window", "where"]
                print(feats[cols].to_string(index=False))
            subs = store.subscriptions()
            if len(subs):
                print(f"\nKafka subscriptions ({len(subs)} partitions)")
                print(subs[["stream", "topic", "partition", "next_offset", "high_watermark", "lag", "events",
                            "dead_letters", "state", "pid"]].to_string(index=False))
    finally:
        store.close()
    return 0


def _stop(args) -> int:
    store = _open(args)
    store.stop()
    print(f"stopped store {store.name or store.path}")
    return 0


def _apply_cmd(args) -> int:
    from rayfs.model.config import load_config
    from rayfs.store import FeatureStore, connect

    cfg = load_config(args.config)
    try:
        store = connect(cfg.store.name, address=args.address or "auto") if cfg.store.name else None
    except RayfsError:
        store = None
    store = store or FeatureStore.open(**cfg.store.open_kwargs(), address=args.address)
    try:
        _apply(cfg, store)
        print(f"applied {len(cfg.streams)} streams and {len(cfg.features)} features to {store.name or store.path}")
    finally:
        store.close()
    return 0


def _features(args) -> int:
    import pandas as pd

    store = _open(args)
    try:
        if args.action == "list":
            df = store.list_features()
            with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 40):
                print(df.drop(columns=["description", "created"]).to_string(index=False) if len(df) else
                      "no features")
        else:
            print(json.dumps(store.describe(args.feature), indent=2, default=str))
    finally:
        store.close()
    return 0


def _ingest(args) -> int:
    from rayfs.sources.files import iter_batches

    store = _open(args)
    try:
        stream = store.streams.get(args.stream)
        if stream is None:
            raise UnknownStreamError(f"unknown stream {args.stream!r}; registered: {sorted(store.streams)}")
        reader = iter_batches(args.files, format=args.format, batch_rows=args.batch_rows,
                              timestamps=[stream.timestamp])
        bar = _Bar(f"ingest {args.stream}", unit="B")
        t0 = time.perf_counter()

        def batches():
            for batch in reader:
                yield batch
                bar.update(reader.bytes_read, reader.total_bytes)  # batch handed over (acks follow in order)

        try:  # one pipelined call: the next batch is read and prepared while the shards fold this one
            rows = store.ingest(args.stream, batches())["rows"]
        except RayfsError as exc:
            if reader.path is not None:
                exc.add_note(f"file being read: {reader.path} ({reader.rows_read:,} rows read from the files "
                             "so far, the failing batch included)")
            raise
        finally:
            bar.close()
            reader.close()
        dt = time.perf_counter() - t0
        print(f"ingested {rows:,} events into {args.stream!r} from {len(reader.paths)} file(s) in {dt:.1f}s "
              f"({rows / max(dt, 1e-9):,.0f} events/s)")
    finally:
        store.close()
    return 0


def _train(args) -> int:
    import pandas as pd

    from rayfs.sources.files import iter_batches, write_table

    store = _open(args)
    try:
        parts = list(iter_batches(args.observations, timestamps=[args.timestamp]))
        obs = pd.concat([p.to_pandas() for p in parts], ignore_index=True) if parts else pd.DataFrame()
        feats = args.features.split(",") if args.features else None
        t0 = time.perf_counter()
        out = store.training_set(obs, feats, timestamp=args.timestamp)
        dt = time.perf_counter() - t0
        write_table(out, args.output)
        print(f"wrote {len(out):,} rows x {len(out.columns)} columns to {args.output} ({dt:.1f}s)")
    finally:
        store.close()
    return 0


def _audit(args) -> int:
    store = _open(args)
    try:
        report = store.audit(args.n)
        print(report.drop(columns=["examples"]).to_string(index=False))
        bad = int(report["mismatches"].sum())
        print("OK: online values equal a fresh replay of the log" if not bad else f"{bad} mismatches")
        return 0 if not bad else 1
    finally:
        store.close()


COMMANDS = {"demo": _demo, "serve": _serve, "status": _status, "stop": _stop, "apply": _apply_cmd,
            "features": _features, "ingest": _ingest, "train": _train, "audit": _audit}

if __name__ == "__main__":
    sys.exit(main())
