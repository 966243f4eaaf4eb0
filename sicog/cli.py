"""SICOG: self-improving cognition for multimodal LLMs (`sicog <command> --help` for each command).

Each command lives in a module exposing ``add_arguments(parser)`` and ``run(args) -> int``, or
``main(argv) -> int`` when it parses its own flags.
Modules are imported only when their command runs, so ``sicog --help`` stays fast and a
command never pays for another's heavy imports (torch, sentence-transformers, openai).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "cycle": ("sicog.cycle.cli", "run the whole SICOG loop (toy world by default) and write a report"),
    "info": ("sicog.info", "describe a model configuration or checkpoint (parameters, tokens per slice)"),
    "convert": ("sicog.convert.cli", "convert a published llava_qwen checkpoint to a SICOG checkpoint, or back"),
    "train": (
        "sicog.train.cli",
        "train a stage: 0 (warm-up), 1 (alignment), 1.5 (self-generated pre-training), 2 (SFT), dpo",
    ),
    "data": ("sicog.data.cli", "check a training dataset before an expensive launch"),
    "toy": ("sicog.toy.cli", "build the toy world: images with ground truth, every dataset, a tiny tokenizer"),
    "curate": ("sicog.curate.cli", "self-consistency curation of candidates, the stage-1.5 mixture, DPO pairs"),
    "annotate": ("sicog.annotate.cli", "stage-0 annotation: CoD captions through a chat API, CoT conversion"),
    "generate": ("sicog.generate.cli", "sample N candidate captions or CoT answers per record (sharded, resumable)"),
    "eval": ("sicog.eval.cli", "evaluate a checkpoint on a VLMEvalKit-style TSV benchmark (multiple choice, yes/no)"),
    "eval-suite": (
        "sicog.eval.suite",
        "the paper's 12 Figure-1 benchmarks (or another suite) through VLMEvalKit or lmms-eval, as one command",
    ),
    "image-use": (
        "sicog.eval.image_use_cli", "does a checkpoint use the image? answer loss with own vs swapped images"
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand's arguments are attached lazily in :func:`main`."""
    parser = argparse.ArgumentParser(prog="sicog", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sicog`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser = build_parser()
        if not argv or argv[0] in ("-h", "--help"):
            parser.print_help()
            return 0
        parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    if hasattr(module, "main"):  # commands with their own parser (HfArgumentParser)
        return int(module.main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog=f"sicog {name}", description=help_text)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.run(args) or 0)


def console() -> int:
    """The ``sicog`` console script (and ``python -m sicog``): :func:`main`, with Ctrl-C as one line and exit
    status 130 instead of a traceback through whatever was running. Every long job resumes on a rerun."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\nsicog: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(console())
