"""``sicog eval``: a checkpoint on a VLMEvalKit-style TSV benchmark (multiple choice or yes/no),
sharded over torchrun ranks, resumable (see docs/evaluation.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sicog.data.argtypes import positive_int
from sicog.data.checkpoint_files import checkpoint_signature
from sicog.data.jsonl import RecordError
from sicog.data.lock import OutputLocked, output_lock
from sicog.data.sharding import process_group
from sicog.eval.batch_size import EVAL_BATCH_SIZE
from sicog.eval.output_dir import claim_output_dir
from sicog.eval.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MC_SCORING,
    DEFAULT_PROMPT_STYLE,
    MC_SCORING,
    PROMPT_STYLES,
)
from sicog.model.device import DTYPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the command's flags."""
    parser.add_argument("--model", required=True, type=Path, help="SICOG checkpoint folder (model + tokenizer)")
    parser.add_argument("--benchmark", required=True, type=Path,
                        help="VLMEvalKit-style .tsv: index, image or image_path, question, [hint], A, B, ..., "
                             "answer, [category]")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="predictions.jsonl, errors.jsonl, results.json and results.xlsx go here")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT_STYLE, choices=PROMPT_STYLES,
                        help="direct: answer with the option's letter; cot: answer step-by-step (default: %(default)s)")
    parser.add_argument("--mc-scoring", default=DEFAULT_MC_SCORING, choices=MC_SCORING,
                        help="generate: read the option from a generated reply; likelihood: pick the option whose "
                             "text the model finds most likely as its reply; open: ask without the options and "
                             "compare the reply with the right option's text (likelihood and open: multiple "
                             "choice only; default: %(default)s)")
    parser.add_argument("--synonyms", type=Path,
                        help="with --mc-scoring open: JSON object, canonical phrase -> list of other phrasings "
                             "counted as the same answer (the toy world's: `sicog toy synonyms`)")
    parser.add_argument("--as-asked", action="store_true",
                        help="with --mc-scoring likelihood: score each option after the question as asked, without "
                             "the short-answer instruction (for requests answered by a whole text, such as a "
                             "caption request scored against descriptions)")
    parser.add_argument("--blind-seed", type=int,
                        help="ask each question with another row's image (seeded shuffle): the blind baseline")
    parser.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                        help="rows per generate call (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=positive_int,
                        help="default: " + ", ".join(f"{n} for {style}" for style, n in DEFAULT_MAX_NEW_TOKENS.items()))
    parser.add_argument("--image-root", type=Path,
                        help="where relative image_path values start (default: the TSV's folder)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda:0, ...")
    parser.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="model weights (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report(summary: dict) -> str:
    """What the command prints: the headline (VLMEvalKit's number for the benchmark) when it is not the
    accuracy, the accuracy, and the same by category."""
    accuracy = f"accuracy {_number(summary['accuracy'])} ({summary['correct']}/{summary['scored']} scored rows)"
    yes_no, circular = summary.get("yes_no"), summary.get("circular")
    metric = summary["headline"]["metric"]
    if metric == "f1":
        first = (f"F1 {_number(yes_no['f1'])} (VLMEvalKit's POPE number: yes as positive, each row once per split; "
                 f"precision {_number(yes_no['precision'])}, recall {_number(yes_no['recall'])}); {accuracy}")
    elif metric == "circular_accuracy":
        first = (f"circular accuracy {_number(circular['accuracy'])} ({circular['correct']}/{circular['scored']} "
                 f"questions right in every circular copy); {accuracy}")
    else:
        first = accuracy
    lines = [f"{summary['benchmark']}: {first}"]
    if metric == "accuracy" and yes_no is not None:
        lines.append(f"  precision {_number(yes_no['precision'])}, recall {_number(yes_no['recall'])}, "
                     f"F1 {_number(yes_no['f1'])} (yes as positive)")
    for name, s in summary["by_category"].items():
        line = f"  {name}: {_number(s['accuracy'])} ({s['correct']}/{s['scored']})"
        if yes_no is not None:
            line += f", F1 {_number(yes_no['by_category'][name]['f1'])}"
        if circular is not None and name in circular["by_category"]:
            by = circular["by_category"][name]
            line += f", circular {_number(by['accuracy'])} ({by['correct']}/{by['scored']})"
        lines.append(line)
    if summary["errors"]:
        errors = summary["files"]["errors.jsonl"]
        lines.append(f"  {summary['errors']} row(s) could not be evaluated; reasons in {errors}")
    lines.append(f"  results: {summary['files']['results.json']}, {summary['files']['results.xlsx']}")
    return "\n".join(lines)


# What sicog eval records in its output folder: the checkpoint whose predictions it holds (its folder and a digest
# of its files), so that weights retrained into the same folder never resume the earlier weights' predictions.
CHECKPOINT_RECORD = "checkpoint.json"


def run(args: argparse.Namespace) -> int:
    """Evaluate; rank 0 prints the headline number and the accuracy. 0 when every row is accounted for, 2 on bad
    input."""
    from sicog.data.sharding import rank_and_world
    from sicog.eval.generation import load_for_eval
    from sicog.eval.runner import EvalSettings, check_max_new_tokens, check_scoring, evaluate, open_scoring
    from sicog.eval.tsv import read_benchmark
    from sicog.model.checkpoint_config import read_checkpoint_config

    rank, world = rank_and_world()
    try:
        # The benchmark, the scoring settings, the synonym table and the output folder are checked before the
        # (possibly large) model is loaded.
        benchmark = read_benchmark(args.benchmark, args.image_root)
        EvalSettings(model=str(args.model), prompt_style=args.prompt, mc_scoring=args.mc_scoring,
                     short_answer=not args.as_asked)
        open_scoring(args.mc_scoring, args.synonyms)
        check_scoring(benchmark, args.mc_scoring, args.blind_seed)
        check_max_new_tokens(args.mc_scoring, args.max_new_tokens)
        read_checkpoint_config(args.model)  # a mistyped folder is not taken for a Hugging Face hub id
        owner = {"model": os.path.realpath(args.model), "weights": checkpoint_signature(args.model)}
        claim_output_dir(args.output_dir, owner, CHECKPOINT_RECORD, "a resumed run", write=False)
        model, processor = load_for_eval(args.model, args.device, args.dtype)
    except (RecordError, ValueError, OSError) as err:
        print(f"sicog eval: error: {err}", file=sys.stderr)
        return 2
    try:
        with output_lock(args.output_dir, folder=True, enabled=rank == 0), process_group(world):
            # Written by the run that holds the folder, once the checkpoint loads: a run that stops before leaves
            # nothing behind.
            claim_output_dir(args.output_dir, owner, CHECKPOINT_RECORD, "a resumed run", write=rank == 0)
            summary = evaluate(
                model, processor, benchmark, args.output_dir, prompt=args.prompt, batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, model_name=os.path.abspath(args.model),
                progress=not args.no_progress,
                mc_scoring=args.mc_scoring, blind_seed=args.blind_seed, synonyms=args.synonyms,
                short_answer=not args.as_asked,
            )
    except (RecordError, ValueError, OutputLocked, OSError) as err:
        print(f"sicog eval: error: {err}", file=sys.stderr)
        return 2
    if summary is not None:
        print(_report(summary))
    return 0
