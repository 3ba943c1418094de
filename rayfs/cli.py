"""The ``rayfs`` command line: argument parsing that turns into :class:`~rayfs.store.FeatureStore` calls."""

from __future__ import annotations

import argparse
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rayfs", description="rayfs: an event-sourced feature store on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the Reddit upvotes demo on an embedded store")
    demo.add_argument("--events", type=int, default=300_000)
    demo.add_argument("--observations", type=int, default=50_000)
    demo.add_argument("--shards", type=int, default=4)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--path", default=None, help="keep the store in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.command == "demo":
        from rayfs import demo as demo_mod

        demo_mod.run(events=args.events, observations=args.observations, shards=args.shards, seed=args.seed,
                     path=args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
