"""``sicog eval-suite``: a benchmark suite (the paper's 12 Figure-1 benchmarks by default) through VLMEvalKit
or lmms-eval as one command (see docs/evaluation.md).

The frameworks score the replies themselves (MME's score, MMBench's circular evaluation, ANLS, LLM
judges); this command only names the benchmarks in each framework's terms, starts one process per GPU and
points the framework at the checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from sicog.data.argtypes import positive_int, require_checkpoint

# command-line name -> the package that must be importable
FRAMEWORKS = {"vlmevalkit": "vlmeval", "lmms-eval": "lmms_eval"}
DEFAULT_SUITE = "figure1"


@dataclass(frozen=True)
class SuiteBenchmark:
    """One benchmark of a suite: its name, and its names in VLMEvalKit (``--data``) and lmms-eval (``--tasks``)."""

    name: str
    vlmevalkit: str
    lmms_eval: str


def load_suite(spec: str) -> list[SuiteBenchmark]:
    """A packaged suite (``figure1``) or a YAML file with a ``benchmarks`` list of ``{name, vlmevalkit,
    lmms_eval}``; raises ``ValueError`` naming the file, entry and field of a problem."""
    packaged = resources.files("sicog.configs") / f"eval_{spec}.yaml"
    path = Path(spec) if os.path.exists(spec) else Path(str(packaged))
    if not path.is_file():
        raise ValueError(f"no benchmark suite {spec!r} (a YAML file, or: {DEFAULT_SUITE})")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable YAML file ({err})") from None
    entries = loaded.get("benchmarks") if isinstance(loaded, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: field 'benchmarks': a non-empty list of {{name, vlmevalkit, lmms_eval}} is needed")
    suite = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: benchmark {number}: a mapping {{name, vlmevalkit, lmms_eval}} is needed")
        for field in ("name", "vlmevalkit", "lmms_eval"):
            if not isinstance(entry.get(field), str) or not entry[field].strip():
                raise ValueError(f"{path}: benchmark {number}: field {field!r}: a non-empty string is needed")
        unknown = sorted(set(entry) - {"name", "vlmevalkit", "lmms_eval"})
        if unknown:
            raise ValueError(f"{path}: benchmark {number}: unknown field(s) {', '.join(unknown)}")
        suite.append(SuiteBenchmark(entry["name"], entry["vlmevalkit"], entry["lmms_eval"]))
    return suite


def select(suite: list[SuiteBenchmark], names: Sequence[str] | None) -> list[SuiteBenchmark]:
    """The benchmarks of ``suite`` named in ``names`` (all when None), in suite order; ``ValueError`` for an
    unknown name."""
    if not names:
        return suite
    known = {b.name.lower(): b for b in suite}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; the suite has {', '.join(b.name for b in suite)}")
    wanted = {n.lower() for n in names}
    return [b for b in suite if b.name.lower() in wanted]


def framework_command(
    framework: str,
    benchmarks: Sequence[SuiteBenchmark],
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    processes: int = 1,
    batch_size: str = "auto",
    vlmevalkit: str | os.PathLike | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command that runs ``benchmarks`` with ``framework`` on the checkpoint ``model``: one process,
    or ``processes`` under torchrun (each on its own GPU)."""
    model = str(Path(model).resolve())
    if framework == "vlmevalkit":
        module = "sicog.eval.vlmevalkit"
        args = ["--sicog-model", model, *(["--vlmevalkit", str(vlmevalkit)] if vlmevalkit else []),
                "--model", "sicog", "--data", *(b.vlmevalkit for b in benchmarks), "--work-dir", str(output_dir)]
    elif framework == "lmms-eval":
        module = "lmms_eval"
        args = ["--model", "sicog", "--model_args", f"pretrained={model}",
                "--tasks", ",".join(b.lmms_eval for b in benchmarks), "--batch_size", batch_size,
                "--output_path", str(output_dir), "--log_samples"]
    else:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                    str(processes), "-m"]
    return [*launcher, module, *args, *extra]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the command's flags."""
    parser.add_argument("--model", required=True, type=Path, help="SICOG checkpoint folder")
    parser.add_argument("--framework", default="vlmevalkit", choices=tuple(FRAMEWORKS),
                        help="the evaluation framework (installed beside SICOG; default: %(default)s, as the paper)")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="the framework's output folder (VLMEvalKit --work-dir, lmms-eval --output_path)")
    parser.add_argument("--suite", default=DEFAULT_SUITE,
                        help=f"{DEFAULT_SUITE} (the paper's Figure 1) or a YAML file of the same layout "
                             "(default: %(default)s)")
    parser.add_argument("--benchmarks", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        help="only these benchmarks of the suite, comma-separated (e.g. MMStar,MME)")
    parser.add_argument("--nproc", type=positive_int, default=1,
                        help="processes, one GPU each (torchrun on one node; default: %(default)s)")
    parser.add_argument("--batch-size", default="auto",
                        help="lmms-eval's batch size: N, or auto (default: %(default)s)")
    parser.add_argument("--vlmevalkit", type=Path,
                        help="VLMEvalKit checkout holding run.py (default: the current folder, else the checkout of "
                             "the installed vlmeval package)")
    parser.add_argument("--dry-run", action="store_true", help="print the command without running it")
    parser.add_argument("extra", nargs="*",
                        help="after --: more arguments for the framework (e.g. -- --judge gpt-4o-mini, "
                             "-- --sicog-prompt cot, -- --limit 8)")


def run(args: argparse.Namespace) -> int:
    """Print the framework command and run it (its exit status); 2 on bad input."""
    try:
        benchmarks = select(load_suite(args.suite), args.benchmarks)
        if not args.dry_run:
            require_checkpoint(args.model)
            if importlib.util.find_spec(FRAMEWORKS[args.framework]) is None:
                raise ValueError(f"{args.framework} is not installed in this environment (docs/evaluation.md: "
                                 "install it beside SICOG)")
    except ValueError as err:
        print(f"sicog eval-suite: error: {err}", file=sys.stderr)
        return 2
    command = framework_command(args.framework, benchmarks, args.model, args.output_dir, processes=args.nproc,
                                batch_size=args.batch_size, vlmevalkit=args.vlmevalkit, extra=args.extra)
    print(f"{len(benchmarks)} benchmark(s) through {args.framework}: {', '.join(b.name for b in benchmarks)}")
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command).returncode
