"""The ``rayfs`` command line: argument parsing that turns into :class:`~rayfs.store.FeatureStore` calls."""

from __future__ import annotations

import argparse
import subprocess
import sys
import warnings
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayfs", description="rayfs: an event-sourced feature store on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the Reddit upvotes demo on an embedded store")
    demo.add_argument("--events", type=int, default=300_000)
    demo.add_argument("--observations", type=int, default=50_000)
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--path", default=None, help="keep the store in this folder (default: a temporary one)")
    sub.add_parser("bench", help="run the benchmark harness (python -m bench) from a source checkout",
                   add_help=False)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.command == "demo":
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


if __name__ == "__main__":
    sys.exit(main())
