"""`sicog data check FILE`: validate a training dataset before an expensive launch;
`sicog data head`: the first records of a file or dataset."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter

from sicog.data.argtypes import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog data``."""
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="records, images, <image> counts, roles and lengths")
    check.add_argument("data_path", help="records (.jsonl/.json, .parquet/.arrow, a dataset folder, a cached Hub "
                       "dataset id), comma-separated sources, or a .yaml mixture")
    check.add_argument("--model", required=True, help="checkpoint whose tokenizer and image settings define lengths")
    check.add_argument("--image-folder", help="folder that image paths are relative to")
    check.add_argument("--max-length", type=int, default=4096)
    check.add_argument("--stage", default="2", help="stage 1 measures the global view only (no slices)")
    check.add_argument("--report", help="write every problem as JSON Lines to this file")
    head = sub.add_parser("head", help="the first records of a file or dataset, as JSON Lines")
    head.add_argument("--input", required=True, help="records: .json/.jsonl, or a dataset (see docs/data_formats.md)")
    head.add_argument("--output", required=True, help="where the first --limit records go (.jsonl)")
    head.add_argument("--limit", type=positive_int, required=True, help="how many records")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action."""
    from sicog.data.jsonl import RecordError, write_jsonl
    from sicog.data.sources import iter_input_records

    if args.action == "head":
        # islice stops after the last record wanted; zip would read one more, and a bad line there would stop us.
        head = (record for _, record in itertools.islice(iter_input_records(args.input), args.limit))
        try:
            written = write_jsonl(args.output, head)
        except RecordError as err:
            print(f"sicog data head: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {written} records to {args.output}")
        return 0
    return _check(args)


def _check(args: argparse.Namespace) -> int:
    """Print a summary; exit 1 when any record is invalid or would be skipped, 2 when the input cannot be read."""
    from sicog.data.argtypes import require_checkpoint
    from sicog.data.jsonl import RecordError, write_jsonl
    from sicog.model.processing import SicogProcessor
    from sicog.train.datasets import SupervisedDataset

    try:
        require_checkpoint(args.model)
        processor = SicogProcessor.from_pretrained(args.model)
        dataset = SupervisedDataset(
            args.data_path, processor, image_folder=args.image_folder, max_length=args.max_length,
            never_split=args.stage == "1",
        )
    except (RecordError, ValueError) as err:
        print(f"sicog data check: error: {err}", file=sys.stderr)
        return 2
    lengths = sorted(dataset.lengths)
    summary = {
        "usable": len(dataset),
        "invalid": len(dataset.problems),
        "skipped_too_long": len(dataset.skipped),
        "with_image": sum(dataset.has_image),
        "tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]} if lengths else None,
        "problems_by_reason": Counter(p.reason.split(":")[-1].strip()[:80] for p in dataset.problems).most_common(10),
    }
    print(json.dumps(summary, indent=2))
    for problem in (dataset.problems + dataset.skipped)[:20]:
        print(f"{problem.source.path}:{problem.source.line} id={problem.id}: {problem.reason}")
    if args.report:
        write_jsonl(args.report, (p.to_json() for p in dataset.problems + dataset.skipped))
    return 1 if dataset.problems or dataset.skipped else 0
