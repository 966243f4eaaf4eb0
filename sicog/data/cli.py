"""`sicog data check FILE`: validate a training dataset before an expensive launch;
`sicog data head`: the first records of a file or dataset."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from sicog.data.argtypes import os_error_text, positive_int
from sicog.data.mixture import DEFAULT_SEED

# The stages whose data `data check` reads (DPO pairs are another format); `sicog train --stage` names the
# same ones (tests/test_data_check.py keeps the two lists, and the stage and max-length defaults, in step).
SFT_STAGES = ("0", "1", "1.5", "2")
DEFAULT_STAGE = "2"
MAX_LENGTH = 4096
SHOWN = 20  # problems printed; --report lists every one


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog data``."""
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="records, images, <image> counts, roles, ids and lengths")
    check.add_argument("data_path", help="records (.jsonl/.json, .parquet/.arrow, a dataset folder, a cached Hub "
                       "dataset id), comma-separated sources or brace patterns (/data/{a,b}.json), or a .yaml "
                       "mixture")
    check.add_argument("--model", required=True, help="checkpoint whose tokenizer and image settings define lengths")
    check.add_argument("--image-folder", help="folder that image paths are relative to")
    check.add_argument("--max-length", type=positive_int, default=MAX_LENGTH,
                       help="sicog train's --model_max_length (default %(default)s)")
    check.add_argument("--stage", choices=SFT_STAGES, default=DEFAULT_STAGE,
                       help="the stage to train (default %(default)s); stage 1 measures the global view only")
    check.add_argument("--seed", type=int, default=DEFAULT_SEED,
                       help="sicog train's --seed, which draws a YAML mixture's random: rules (default: training's, "
                            "%(default)s)")
    check.add_argument("--decode-images", action=argparse.BooleanOptionalAction, default=True,
                       help="decode every image in full, which finds truncated files (default); "
                            "--no-decode-images reads headers only, as training does before it starts")
    check.add_argument("--workers", type=positive_int, default=None,
                       help="threads decoding images (default: one per core, at most 8)")
    check.add_argument("--report", help="write every problem and warning to this file (JSON Lines; .json: an array)")
    head = sub.add_parser("head", help="the first records of a file or dataset, as JSON Lines")
    head.add_argument("--input", required=True,
                      help="records: .json/.jsonl, or a dataset (see docs/data_formats.md); comma-separated "
                           "sources or brace patterns are read in turn")
    head.add_argument("--output", required=True,
                      help="where the first --limit records go (.jsonl; .json for a JSON array)")
    head.add_argument("--limit", type=positive_int, required=True, help="how many records")


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; 2 when an input cannot be read or an output cannot be written."""
    from sicog.data.jsonl import refuse_overwriting, write_records
    from sicog.data.sources import split_data_path

    if args.action == "head":
        try:
            refuse_overwriting([("--input", path) for path in split_data_path(args.input)], "--output", args.output)
            written = write_records(args.output, _head(args.input, args.limit))
        except ValueError as err:  # RecordError included: a bad record, an unreadable input, the input as output
            print(f"sicog data head: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # an output that cannot be created: a folder in the way, no permission, disk full
            print(f"sicog data head: error: cannot write --output {os_error_text(err)}", file=sys.stderr)
            return 2
        print(f"wrote {written} records to {args.output}")
        return 0
    return _check(args)


def _head(data_path: str, limit: int) -> Iterator[dict]:
    """The first ``limit`` records of ``data_path``. They are read while the output is written, so an input that
    cannot be read raises :class:`RecordError`, not the ``OSError`` that stands for an output not written."""
    from sicog.data.jsonl import RecordError
    from sicog.data.sources import iter_data_path

    try:
        # islice stops after the last record wanted; zip would read one more, and a bad line there would stop us.
        for _, _, record in itertools.islice(iter_data_path(data_path), limit):
            yield record
    except OSError as err:
        raise RecordError(f"cannot read --input {os_error_text(err)}") from None


def _check(args: argparse.Namespace) -> int:
    """Print a summary; exit 1 when a record is invalid, would be skipped or is a copy of another, or none is
    usable; 2 when the input cannot be read or the report cannot be written."""
    from sicog.data.jsonl import RecordError, refuse_overwriting, write_records
    from sicog.data.mixture import data_sources
    from sicog.data.problems import TOO_LONG
    from sicog.data.schema import EMPTY_ANSWER
    from sicog.model.checkpoint_config import read_checkpoint_config
    from sicog.model.processing import SicogProcessor
    from sicog.train.arguments import STAGES
    from sicog.train.datasets import SupervisedDataset, repeated_ids

    if args.report and Path(args.report).is_dir():  # found now, not after a check of a million records
        print(f"sicog data check: error: cannot write --report {args.report}: is a folder, not a file", file=sys.stderr)
        return 2
    try:
        if args.report:
            refuse_overwriting([("data_path", path) for path in data_sources(args.data_path)], "--report",
                               args.report)
        read_checkpoint_config(args.model)  # the whole config.json: a field of the wrong type fails inside transformers
        processor = SicogProcessor.from_pretrained(args.model)
        dataset = SupervisedDataset(
            args.data_path, processor, image_folder=args.image_folder, max_length=args.max_length,
            never_split=STAGES[args.stage].never_split, seed=args.seed, decode_images=args.decode_images,
            decode_workers=args.workers,
        )
    except (RecordError, ValueError) as err:
        print(f"sicog data check: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"sicog data check: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    copies, repeats = repeated_ids(dataset.records, dataset.sources)
    # Errors make the exit status 1 (training would stop, skip, or train a record twice); warnings do not.
    errors = dataset.problems + dataset.skipped + copies
    warnings = repeats + dataset.truncated
    counts = sorted(dataset.token_counts)
    summary = {
        "usable": len(dataset),
        "invalid": len(dataset.problems),
        "skipped_too_long": sum(p.category == TOO_LONG for p in dataset.skipped),
        "skipped_empty_answer": sum(p.category == EMPTY_ANSWER for p in dataset.skipped),
        "duplicate_records": len(copies),
        "truncated": len(dataset.truncated),
        "repeated_ids": len(repeats),
        "with_image": sum(dataset.has_image),
        # Whole lengths, before the cut at --max-length: the longest sample is not hidden by the cut.
        "tokens": {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1]} if counts else None,
        "max_length": args.max_length,
        "problems_by_category": Counter(p.category for p in errors + warnings).most_common(),
    }
    print(json.dumps(summary, indent=2))
    listed = [("error", p) for p in errors] + [("warning", p) for p in warnings]
    for label, problem in listed[:SHOWN]:
        print(f"{label} ({problem.category}): {problem.message}")
    hidden = len(listed) - SHOWN
    if hidden > 0:
        print(f"... and {hidden} more ({'all in ' + args.report if args.report else 'list them all with --report'})")
    if args.report:
        try:
            write_records(args.report, (p.to_json() for p in errors + warnings))
        except OSError as err:
            print(f"sicog data check: error: cannot write --report {os_error_text(err)}", file=sys.stderr)
            return 2
    if not len(dataset):
        print(f"sicog data check: error: no usable training records in {args.data_path}", file=sys.stderr)
    return 1 if errors or not len(dataset) else 0
