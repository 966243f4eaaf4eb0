"""`sicog toy build --out DIR [--seed S] [--size tiny|demo]`: write the toy world."""

from __future__ import annotations

import argparse
import sys
import time

from sicog.toy.datasets import SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the ``toy`` sub-commands."""
    sub = parser.add_subparsers(dest="toy_command", metavar="sub-command", required=True)
    build = sub.add_parser("build", help="write images, ground truth, every dataset, a tokenizer and a manifest")
    build.add_argument("--out", required=True, help="directory to write the world into")
    build.add_argument("--seed", type=int, default=0, help="world seed (same seed -> byte-identical tree)")
    build.add_argument("--size", choices=tuple(SIZES), default="demo",
                       help="dataset sizes and layout (demo: the learnable 2x2 grid; tiny: sliced images, for tests)")
    build.add_argument("--force", action="store_true", help="replace an existing, different world in --out")


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command."""
    from sicog.toy.build import build_world

    start = time.perf_counter()
    try:
        manifest = build_world(args.out, seed=args.seed, size=args.size, force=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    where = f"seed {manifest['seed']}, size {manifest['size']}, layout {manifest['layout']}"
    print(f"toy world ({where}) in {args.out}: {counts}")
    print(f"tokenizer: {manifest['vocab_size']} tokens; took {time.perf_counter() - start:.1f} s")
    return 0
