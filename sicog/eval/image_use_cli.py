"""`sicog image-use`: its flags and entry point; the measurement lives in :mod:`sicog.eval.image_use`, imported
when the command runs so that ``--help`` needs neither torch nor transformers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sicog.data.argtypes import positive_int
from sicog.data.jsonl import RecordError, write_json
from sicog.eval.batch_size import IMAGE_USE_BATCH_SIZE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the flags of ``sicog image-use``."""
    parser.add_argument("--model", required=True, type=Path, help="SICOG checkpoint folder")
    parser.add_argument("--data", required=True, type=Path,
                        help="LLaVA records with one image each; the last assistant answer is the reference text "
                             "(earlier turns, answers included, are its context)")
    parser.add_argument("--image-folder", type=Path, help="where the records' image paths start")
    parser.add_argument("--output", required=True, type=Path, help="JSON with both losses, the gap and any errors")
    parser.add_argument("--limit", type=positive_int, help="read at most this many records")
    parser.add_argument("--batch-size", type=positive_int, default=IMAGE_USE_BATCH_SIZE, help="default: %(default)s")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda:0, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_paths(data: Path, output: Path) -> None:
    """Raise ``ValueError`` when ``data`` is not a file or ``output`` could not be written (a folder, a path inside a
    file, an unwritable folder): checked before the model is loaded and every loss computed."""
    if not data.is_file():
        raise ValueError(f"--data {data}: {'a folder, not a file' if data.is_dir() else 'no such file'}")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder, not a file")
    folder = next(p for p in output.absolute().parents if p.exists())
    if not folder.is_dir():
        raise ValueError(f"--output {output} cannot be written ({folder} is a file)")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output} cannot be written (no permission to write in {folder})")


def run(args: argparse.Namespace) -> int:
    """Measure and write the result; 2 when the data cannot be read, the output cannot be written or nothing could
    be compared."""
    try:
        _check_paths(args.data, args.output)
        # Imported once the paths are known to be usable: the model code needs torch and transformers.
        from sicog.eval.generation import load_for_eval
        from sicog.eval.image_use import image_use
        from sicog.model.checkpoint_config import read_checkpoint_config

        read_checkpoint_config(args.model)  # a mistyped folder is not taken for a Hugging Face hub id

        model, processor = load_for_eval(args.model, args.device)
        result = image_use(model, processor, args.data, args.image_folder, limit=args.limit,
                           batch_size=args.batch_size, progress=not args.no_progress)
    except (RecordError, ValueError, OSError) as err:
        print(f"sicog image-use: error: {err}", file=sys.stderr)
        return 2
    summary = (f"{args.data}: loss {result['loss_own_images']} with own images, {result['loss_other_images']} with "
               f"swapped images (gap {result['gap']}; {result['compared']} of {result['records']} records compared, "
               f"{len(result['errors'])} errors)")
    try:
        write_json(args.output, {"model": str(args.model), **result})
    except OSError as err:
        print(summary)  # the measurement is not lost with the file
        print(f"sicog image-use: error: cannot write --output {args.output}: {err}", file=sys.stderr)
        return 2
    print(f"{summary} -> {args.output}")
    return 0 if result["compared"] else 2
