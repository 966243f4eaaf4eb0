"""`sicog convert`: its flags and entry point; the conversion lives in :mod:`sicog.convert.release`, imported
when the command runs so that ``--help`` needs neither torch nor transformers."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog convert``."""
    parser.add_argument(
        "direction", choices=("from-release", "to-release"), help="release -> SICOG, or SICOG -> release"
    )
    parser.add_argument("src", help="checkpoint directory to read")
    parser.add_argument("out", help="directory to write")
    parser.add_argument(
        "--vision-tower", help="from-release: CLIP directory when the checkpoint holds no tower weights"
    )
    parser.add_argument(
        "--projector", help="from-release: a projector weights file to use (default: the one in src, if any)"
    )
    parser.add_argument("--vision-tower-name", help="to-release: mm_vision_tower to record (default: the written copy)")


def run(args: argparse.Namespace) -> int:
    """Convert; a checkpoint that cannot be converted is one line on stderr and exit status 2."""
    from sicog.convert.release import ConversionError, release_to_sicog, sicog_to_release
    from sicog.data.argtypes import os_error_text

    try:
        if args.direction == "from-release":
            out = release_to_sicog(args.src, args.out, vision_tower=args.vision_tower, projector=args.projector)
        else:
            out = sicog_to_release(args.src, args.out, vision_tower_name=args.vision_tower_name)
    except (ConversionError, OSError) as error:
        print(f"sicog convert: error: {os_error_text(error) if isinstance(error, OSError) else error}",
              file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
