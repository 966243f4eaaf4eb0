"""``sicog generate captions|reasoning``: N candidates per record, sharded over torchrun ranks, resumable
(see docs/generation.md)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sicog.data.argtypes import (
    at_least_one_float,
    fraction,
    non_negative_float,
    non_negative_int,
    option_flags,
    os_error_text,
    positive_float,
    positive_int,
)
from sicog.data.jsonl import RecordError, refuse_overwriting
from sicog.data.lock import OutputLocked, output_lock
from sicog.data.prompts import CAPTION_PROMPT_TYPES, REASONING_PROMPT_TYPES
from sicog.data.sharding import process_group
from sicog.data.sources import split_data_path
from sicog.generate.corrupt import CORRUPTIONS, corruption_methods
from sicog.generate.settings import (
    CACHES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_SEED,
    SamplingSettings,
)
from sicog.model.device import DTYPES

if TYPE_CHECKING:
    import torch

    from sicog.generate.job import GenerationJob


def generation_option_names() -> dict[str, tuple[str | None, str | None] | None]:
    """The settings ``sicog generate captions|reasoning`` take, by argument name (``cache``, ``dtype``, ...), each
    with its switch flags (:func:`~sicog.data.argtypes.option_flags`)."""
    return {**option_flags(_common_arguments()), "prompt": None}


def _common_arguments() -> argparse.ArgumentParser:
    """The arguments both tasks take (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, type=Path, help="SICOG checkpoint folder (model + tokenizer)")
    common.add_argument("--data", required=True, type=Path,
                        help="input records: .jsonl, .json array, .parquet, .arrow, a dataset folder (save_to_disk), "
                        "or a Hub dataset id in the local cache (owner/name[:split]); several, comma-separated "
                        "or as a brace pattern (/data/part{1..3}.jsonl), are read in order")
    common.add_argument("--image-folder", type=Path,
                        help="folder that relative image paths start from (default: the working folder)")
    common.add_argument("--output", required=True, type=Path,
                        help="output .jsonl; errors go to <stem>.errors.jsonl beside it")
    common.add_argument("--num-candidates", type=positive_int, default=SamplingSettings.num_candidates,
                        help="candidates per record (default: %(default)s)")
    from_checkpoint = "default: the checkpoint's generation_config.json, else SamplingSettings' default"
    common.add_argument("--temperature", type=non_negative_float, help=f"0 means greedy ({from_checkpoint})")
    common.add_argument("--top-p", type=fraction, help=f"nucleus sampling mass ({from_checkpoint})")
    common.add_argument("--top-k", type=non_negative_int, help=f"top-k sampling, 0 for off ({from_checkpoint})")
    common.add_argument("--repetition-penalty", type=positive_float, help=f"1 for off ({from_checkpoint})")
    common.add_argument("--num-beams", type=positive_int, default=SamplingSettings.num_beams,
                        help="beams (default: %(default)s)")
    common.add_argument("--max-new-tokens", type=positive_int, default=SamplingSettings.max_new_tokens,
                        help="(default: %(default)s)")
    common.add_argument("--cache", choices=CACHES, default=SamplingSettings.cache,
                        help="KV cache: dynamic grows as tokens come; static is allocated once at prompt + "
                             "--max-new-tokens, which --compile needs (default: %(default)s)")
    common.add_argument("--compile", action="store_true",
                        help="compile each decoding step into one graph (GPU; with --cache static): removes the "
                             "per-token Python and kernel-launch overhead; the first batch pays the compilation")
    common.add_argument("--no-shared-prefill", dest="shared_prefill", action="store_false",
                        help="prefill each of a record's N sequences on its own, as transformers does, instead of "
                             "the prompt once with its KV cache copied N times (same candidates, more compute)")
    common.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE,
                        help="records per generate call; each yields N sequences (default: %(default)s)")
    common.add_argument("--seed", type=non_negative_int, default=DEFAULT_SEED, help="run seed (default: %(default)s)")
    common.add_argument("--corrupt", metavar="METHOD[,METHOD]", type=corruption_methods,
                        help="corrupt images before encoding: one of these methods per record, drawn at random "
                             f"(seeded) as in the release: {', '.join(CORRUPTIONS)}")
    common.add_argument("--corrupt-all", action="store_true",
                        help="apply every --corrupt method to each record, in the order given")
    common.add_argument("--max-prompt-tokens", type=positive_int,
                        help="longer prompts (images included) become errors "
                             "(default: the LLM's context minus --max-new-tokens)")
    common.add_argument("--max-aspect-ratio", type=at_least_one_float, default=DEFAULT_MAX_ASPECT_RATIO,
                        help="images more elongated than this are degenerate errors (default: %(default)s)")
    common.add_argument("--device", default="auto",
                        help="auto (cuda:LOCAL_RANK when available, else cpu), cpu, cuda:0, ...")
    common.add_argument("--dtype", default="auto", choices=("auto", *DTYPES),
                        help="model weights (auto: bfloat16 on GPU, float32 on CPU)")
    common.add_argument("--skip-failed", action="store_true",
                        help="on a rerun, keep the records that failed before as failed (default: try them again)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the ``captions`` and ``reasoning`` sub-commands."""
    common = _common_arguments()
    sub = parser.add_subparsers(dest="task", metavar="task", required=True)
    captions = sub.add_parser("captions", parents=[common], help="captions for images ({id, image})")
    captions.add_argument("--prompt", default="cod-default", choices=CAPTION_PROMPT_TYPES,
                          help="cod-default: step-by-step; default: detailed caption; cod-conv: the record's question "
                               "step-by-step (default: %(default)s)")
    reasoning = sub.add_parser("reasoning", parents=[common],
                               help="answers for image-question pairs ({id, image, question})")
    reasoning.add_argument("--prompt", default="cot-default", choices=REASONING_PROMPT_TYPES,
                           help="cot-default: step-by-step; default: direct answer (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Generate, then (rank 0, after every rank is done) merge; 0 when every input id is accounted for."""
    from sicog.data.sharding import rank_and_world
    from sicog.generate.job import GenerationJob
    from sicog.generate.settings import resolve_sampling
    from sicog.model.checkpoint_config import read_checkpoint_config

    rank, world = rank_and_world()
    try:
        sampling = resolve_sampling(
            args.model, num_candidates=args.num_candidates, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k, repetition_penalty=args.repetition_penalty, num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, cache=args.cache, compile=args.compile,
            shared_prefill=args.shared_prefill,
        )
        job = GenerationJob(
            data=args.data, output=args.output, task=args.task, prompt_type=args.prompt,
            model_name=_model_name(args.model), sampling=sampling, image_folder=args.image_folder,
            batch_size=args.batch_size, seed=args.seed,
            corruptions=_corruptions(args), corrupt_all=args.corrupt_all,
            max_prompt_tokens=args.max_prompt_tokens, max_aspect_ratio=args.max_aspect_ratio,
            progress=not args.no_progress,
        )
        # Retrying earlier failures clears the errors file: given as --data, the input would be lost.
        refuse_overwriting([("--data", source) for source in split_data_path(args.data)], "--output", job.output,
                           also=[job.errors_output])
        if job.output.suffix != ".jsonl":  # x.json and x.jsonl would share x.errors.jsonl
            raise ValueError(f"--output {job.output}: give the path of a .jsonl file (its errors go to "
                             f"{job.errors_output.name} beside it)")
        for path in (job.output, job.errors_output):
            if path.is_dir():
                raise ValueError(f"--output {job.output}: {path} is a folder; give the path of a .jsonl file")
        from sicog.model.device import resolve_device

        device, dtype = resolve_device(args.device, args.dtype)
        # The whole config.json is checked here: a field of the wrong type would fail inside transformers.
        read_checkpoint_config(args.model)
    except (ValueError, RuntimeError) as err:
        print(f"sicog generate {args.task}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a config.json that cannot be read (no permission)
        print(f"sicog generate {args.task}: error: {os_error_text(err)}", file=sys.stderr)
        return 2
    try:
        with output_lock(job.output, enabled=rank == 0), process_group(world):
            return _generate(job, device, dtype, rank, world, retry_failed=not args.skip_failed)
    except (RecordError, OutputLocked) as err:
        print(f"sicog generate {args.task}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an input that cannot be read, an output that cannot be written (no permission, disk full)
        print(f"sicog generate {args.task}: error: {os_error_text(err)}", file=sys.stderr)
        return 2


def _corruptions(args: argparse.Namespace) -> tuple[str, ...]:
    """The ``--corrupt`` methods; ``ValueError`` for ``--corrupt-all`` without any, which would corrupt nothing."""
    methods = args.corrupt or ()
    if args.corrupt_all and not methods:
        raise ValueError("--corrupt-all applies every --corrupt method to each record: give them with "
                         "--corrupt METHOD[,METHOD]")
    return methods


def _generate(job: GenerationJob, device: torch.device, dtype: torch.dtype, rank: int, world: int,
              retry_failed: bool) -> int:
    import torch.distributed as dist

    from sicog.generate.job import clear_errors, earlier_failures, merge_outputs, read_plan, run_rank, written_outputs
    from sicog.model.builders import load_pretrained
    from sicog.model.processing import SicogProcessor, context_size, prompt_limit

    if rank == 0 and not job.sampling.sampling and job.sampling.num_candidates > 1:
        print(f"warning: temperature 0 decodes greedily: each record's {job.sampling.num_candidates} candidates are "
              "copies of one, and self-consistency curation has nothing to compare", file=sys.stderr)
    # The input and the earlier outputs are checked with the tokenizer alone, before the (possibly large)
    # model is loaded.
    processor = SicogProcessor.from_pretrained(job.model_name)
    if job.max_prompt_tokens is None:
        limit = prompt_limit(context_size(processor), job.sampling.max_new_tokens)
        job = dataclasses.replace(job, max_prompt_tokens=limit)
    plan = read_plan(job, processor)
    written = written_outputs(job, plan, rank=rank, world=world)
    # Kept failures are checked now too; retried ones are read after rank 0 has cleared them (none).
    failed = None if retry_failed else earlier_failures(job, plan, rank=rank, world=world)
    model, processor = load_pretrained(job.model_name, dtype=dtype)
    model.to(device).eval()
    # Earlier errors are removed only now that the run is sure to retry them: a run refused above, or one
    # whose model does not load, leaves the errors file of a finished output as it was.
    if retry_failed and rank == 0:
        retried = clear_errors(job)
        if retried:
            print(f"retrying {retried} records that failed in an earlier run (--skip-failed keeps them as they are)",
                  file=sys.stderr)
    if world > 1:
        dist.barrier()  # no rank reads what is done before earlier errors are cleared
    summary = run_rank(job, plan, model, processor, rank=rank, world=world, written=written, failed=failed)
    print(f"rank {rank}/{world}: {summary.generated} records generated, {summary.errors} errors, "
          f"{summary.skipped} already done ({summary.batches} batches run)", file=sys.stderr)
    if world > 1:
        dist.barrier()
    if rank == 0:
        n_out, n_err = merge_outputs(job, plan.ids)
        print(f"{n_out} records with candidates -> {job.output}; {n_err} errors -> {job.errors_output}",
              file=sys.stderr)
        if n_err and not n_out:
            print(f"sicog generate {job.task}: error: every one of the {n_err} records failed; the reasons are in "
                  f"{job.errors_output}", file=sys.stderr)
            return 1
    return 0


def _model_name(model: str) -> str:
    """The model as records name it: a folder as an absolute path, so that a rerun from another working folder
    compares it with its own (a relative path is only known from where it was typed); a Hub id as given."""
    return os.path.abspath(model) if os.path.exists(model) else model
