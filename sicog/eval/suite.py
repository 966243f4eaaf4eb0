"""``sicog eval-suite``: a benchmark suite (the paper's 12 Figure-1 benchmarks by default) through VLMEvalKit
or lmms-eval as one command (see docs/evaluation.md).

The frameworks score the replies themselves (MME's score, MMBench's circular evaluation, ANLS, LLM
judges); this command names the benchmarks in each framework's terms, starts one process per GPU, points the
framework at the checkpoint, and afterwards reads what the run wrote (:mod:`sicog.eval.framework_results`):
which benchmarks are done, failed or missing, and each one's headline number, the metric the paper reports.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sicog.data.argtypes import os_error_text, positive_int
from sicog.data.checkpoint_files import checkpoint_signature
from sicog.data.jsonl import atomic_file, write_json
from sicog.data.lock import OutputLocked, output_lock
from sicog.data.yaml_file import read_yaml
from sicog.eval.batch_size import parse_batch_size
from sicog.eval.framework_results import (
    DONE,
    FAILED,
    LMMS_EVAL,
    VLMEVALKIT,
    Headline,
    Outcome,
    is_number,
    read_outcomes,
    result_files,
)
from sicog.eval.output_dir import claim_output_dir

# command-line name -> the package that must be importable
FRAMEWORKS = {VLMEVALKIT: "vlmeval", LMMS_EVAL: "lmms_eval"}
# command-line name -> the suite file's field naming a benchmark in that framework
FIELDS = {VLMEVALKIT: "vlmevalkit", LMMS_EVAL: "lmms_eval"}
DEFAULT_SUITE = "figure1"
# The name SICOG has in both frameworks: the launcher registers it in VLMEvalKit under it (run.py's --model, and
# so the folder of its runs), and it is the lmms-eval entry point (pyproject.toml).
MODEL = "sicog"
# Written in --output-dir: the checkpoint and framework whose runs the folder holds (VLMEvalKit's --reuse takes
# the predictions of any earlier run in the folder, whichever checkpoint made them).
OWNER_FILE = "sicog_suite.json"
HEADLINE_JSON, HEADLINE_MD = "headline.json", "headline.md"
PAPER_ARMS = ("base", "sicog")
HEADLINE_FIELDS = ("metric", "scale")
BENCHMARK_FIELDS = ("name", "vlmevalkit", "lmms_eval", "headline", "paper", "note")


@dataclass(frozen=True)
class SuiteBenchmark:
    """One benchmark of a suite: its name, its names in VLMEvalKit (``--data``) and lmms-eval (``--tasks``), and
    optionally where its headline number lies in each framework's results (suite field -> :class:`Headline`), the
    paper's numbers for it (``base``, ``sicog``) and a note printed with the headline table."""

    name: str
    vlmevalkit: str
    lmms_eval: str
    headline: Mapping[str, Headline] = field(default_factory=dict)
    paper: Mapping[str, float] = field(default_factory=dict)
    note: str = ""

    def task(self, framework: str) -> str:
        """This benchmark's name in ``framework`` (a command-line name)."""
        return getattr(self, FIELDS[framework])


def load_suite(spec: str) -> list[SuiteBenchmark]:
    """A packaged suite (``figure1``) or a YAML file with a ``benchmarks`` list of ``{name, vlmevalkit, lmms_eval}``
    (and optionally ``headline``, ``paper``, ``note``), a name to each, and no other field; raises ``ValueError``
    naming the file, entry and field of a problem."""
    packaged = Path(str(resources.files("sicog.configs") / f"eval_{spec}.yaml"))
    # A packaged suite's name names it even where a file or folder of that name is here (the output folder of
    # `--output-dir figure1`); anything else is a file.
    path = packaged if packaged.is_file() and not spec.endswith((".yaml", ".yml")) else Path(spec)
    if not path.is_file():
        raise ValueError(f"no benchmark suite {spec!r} (a YAML file, or: {DEFAULT_SUITE})")
    loaded = read_yaml(path)
    entries = loaded.get("benchmarks") if isinstance(loaded, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: field 'benchmarks': a non-empty list of {{name, vlmevalkit, lmms_eval}} is needed")
    # A mistyped field (`benchmark:` beside `benchmarks:`) would be dropped without a word.
    unknown = sorted(str(key) for key in loaded if key != "benchmarks")
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {', '.join(unknown)} (a suite file has only 'benchmarks')")
    suite = []
    numbers: dict[str, int] = {}  # lower-case name -> the entry's number
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: benchmark {number}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a mapping {{name, vlmevalkit, lmms_eval}} is needed")
        for name in ("name", "vlmevalkit", "lmms_eval"):
            if not isinstance(entry.get(name), str) or not entry[name].strip():
                raise ValueError(f"{where}: field {name!r}: a non-empty string is needed")
        unknown = sorted(set(entry) - set(BENCHMARK_FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        # --benchmarks matches names in any case, and the headline table shows them: two benchmarks of one name
        # would make both ambiguous.
        earlier = numbers.setdefault(entry["name"].strip().lower(), number)
        if earlier != number:
            raise ValueError(f"{where}: field 'name': {entry['name']!r} repeats benchmark {earlier}")
        if not isinstance(entry.get("note", ""), str):
            raise ValueError(f"{where}: field 'note': a string is needed")
        suite.append(SuiteBenchmark(entry["name"], entry["vlmevalkit"], entry["lmms_eval"],
                                    _headlines(entry.get("headline", {}), where), _paper(entry.get("paper", {}), where),
                                    entry.get("note", "")))
    return suite


def _headlines(value: object, where: str) -> dict[str, Headline]:
    """A benchmark's ``headline`` field: suite field (``vlmevalkit``, ``lmms_eval``) -> ``{metric, scale}``."""
    if not isinstance(value, dict) or set(value) - set(FIELDS.values()):
        raise ValueError(f"{where}: field 'headline': a mapping from {' and/or '.join(FIELDS.values())} to "
                         "{metric, scale} is needed")
    headlines = {}
    for framework, spec in value.items():
        name = f"headline.{framework}"
        if not isinstance(spec, dict) or set(spec) - set(HEADLINE_FIELDS):
            raise ValueError(f"{where}: field {name!r}: a mapping {{metric, scale}} is needed")
        if not isinstance(spec.get("metric"), str) or not spec["metric"].strip():
            raise ValueError(f"{where}: field '{name}.metric': a non-empty string is needed")
        scale = spec.get("scale", 1)
        if not is_number(scale) or scale <= 0:
            raise ValueError(f"{where}: field '{name}.scale': a number above 0 is needed, got {scale!r}")
        headlines[framework] = Headline(spec["metric"], float(scale))
    return headlines


def _paper(value: object, where: str) -> dict[str, float]:
    """A benchmark's ``paper`` field: ``{base, sicog}``, the paper's numbers."""
    if not isinstance(value, dict) or set(value) - set(PAPER_ARMS) or not all(is_number(v) for v in value.values()):
        raise ValueError(f"{where}: field 'paper': a mapping {{{', '.join(PAPER_ARMS)}}} of numbers is needed")
    return dict(value)


def lmms_batch_size(text: str) -> str:
    """lmms-eval's batch size (argparse type): N (at least 1), ``auto`` or ``auto:N``, as lmms-eval's CLI documents it
    and the SICOG model reads it (:func:`sicog.eval.batch_size.parse_batch_size`); passed on as given."""
    try:
        parse_batch_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be N (at least 1), auto or auto:N, got {text!r}") from None
    return text


def select(suite: list[SuiteBenchmark], names: Sequence[str] | None) -> list[SuiteBenchmark]:
    """The benchmarks of ``suite`` named in ``names`` (all when None), in suite order; ``ValueError`` for an
    unknown name or an empty selection."""
    if names is None:
        return suite
    if not names:
        # An empty --benchmarks (a script's unset variable) is a mistake, not a request for the whole suite.
        raise ValueError("--benchmarks names no benchmark")
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
    batch_size: str | None = None,
    vlmevalkit: str | os.PathLike | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command that runs ``benchmarks`` with ``framework`` on the checkpoint ``model``: one process, or
    ``processes`` under torchrun (:mod:`sicog.launch`, each on its own GPU). VLMEvalKit gets ``--reuse``: a rerun
    after a crash keeps the predictions that earlier runs in ``output_dir`` finished. ``batch_size`` is lmms-eval's
    (None: ``auto``), ``vlmevalkit`` VLMEvalKit's checkout; each framework refuses the other's
    (:class:`ValueError`)."""
    if framework == VLMEVALKIT and batch_size is not None:
        raise ValueError("--batch-size is lmms-eval's; VLMEvalKit batches nothing (leave it out, or use "
                         "--framework lmms-eval)")
    if framework == LMMS_EVAL and vlmevalkit is not None:
        raise ValueError("--vlmevalkit names VLMEvalKit's checkout; lmms-eval reads none (leave it out)")
    model = str(Path(model).resolve())
    if framework == VLMEVALKIT:
        module = "sicog.eval.vlmevalkit"
        args = ["--sicog-model", model, *(["--vlmevalkit", str(vlmevalkit)] if vlmevalkit else []),
                "--model", MODEL, "--data", *(b.vlmevalkit for b in benchmarks), "--work-dir", str(output_dir),
                "--reuse"]
    elif framework == LMMS_EVAL:
        module = "lmms_eval"
        args = ["--model", MODEL, "--model_args", f"pretrained={model}",
                "--tasks", ",".join(b.lmms_eval for b in benchmarks), "--batch_size", batch_size or "auto",
                "--output_path", str(output_dir), "--log_samples"]
    else:
        raise ValueError(f"unknown framework {framework!r}; choose from {', '.join(FRAMEWORKS)}")
    launcher = [sys.executable, "-m"]
    if processes > 1:
        # torchrun through sicog.launch: a failed process is one line after its errors, with its exit status.
        launcher = [sys.executable, "-m", "sicog.launch", "--standalone", "--nproc-per-node", str(processes), "-m"]
    return [*launcher, module, *args, *extra]


def claim_suite_dir(output_dir: Path, model: Path, framework: str, extra: Sequence[str] = ()) -> None:
    """Check that ``output_dir`` holds only runs of checkpoint ``model`` (these weights:
    :func:`~sicog.data.checkpoint_files.checkpoint_signature`) with ``framework`` and the framework arguments
    ``extra`` (which may change the predictions: a prompt, a decoding setting), recorded in ``OWNER_FILE``
    (:func:`~sicog.eval.output_dir.claim_output_dir`): VLMEvalKit's ``--reuse`` would take another run's
    predictions for this one's."""
    owner = {"model": str(model.resolve()), "weights": checkpoint_signature(model), "framework": framework,
             "extra": list(extra)}
    claim_output_dir(output_dir, owner, OWNER_FILE, "VLMEvalKit's --reuse")


def headline_rows(
    benchmarks: Sequence[SuiteBenchmark], framework: str, outcomes: Mapping[str, Outcome]
) -> list[dict]:
    """One row per benchmark: its state (a scored benchmark whose headline metric cannot be read has failed), the
    reason when it is not done, the headline metric and value on the paper's scale, the paper's numbers, the
    note, every number the framework recorded for it, and the file they came from."""
    rows = []
    for benchmark in benchmarks:
        outcome = outcomes[benchmark.task(framework)]
        state, reason, metric, value = outcome.state, outcome.reason, None, None
        spec = benchmark.headline.get(FIELDS[framework])
        if state == DONE and spec is not None:
            if outcome.metrics:
                try:
                    metric, value = spec.find(outcome.metrics)
                except ValueError as err:
                    state, reason = FAILED, f"no headline number in {outcome.source}: {err}"
            else:
                reason = reason or "no scores recorded"
        rows.append({
            "benchmark": benchmark.name, "task": outcome.task, "state": state, "reason": reason,
            "metric": metric, "scale": None if spec is None else spec.scale,
            "value": None if value is None else round(value, 4), "paper": dict(benchmark.paper),
            "note": benchmark.note, "metrics": outcome.metrics, "source": outcome.source,
        })
    return rows


def _cell(value: object) -> str:
    if value is None:
        return "-"
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")  # a VLMEvalKit metric key holds "|"


def headline_markdown(rows: Sequence[dict], framework: str) -> str:
    """The headline table (values to one decimal, as the paper gives them), then why each benchmark without a
    number has none, then the notes."""
    lines = [f"| benchmark | {framework} | state | metric | value | paper base | paper SICOG |", "|" + "---|" * 7]
    for row in rows:
        metric = row["metric"] if row["metric"] is None or row["scale"] == 1 else f"{row['metric']} x{row['scale']:g}"
        lines.append("| " + " | ".join(_cell(v) for v in (
            row["benchmark"], row["task"], row["state"], metric, row["value"], row["paper"].get("base"),
            row["paper"].get("sicog"))) + " |")
    lines += [""] + [f"- {row['benchmark']}: {row['state']}: {row['reason']}" for row in rows if row["reason"]]
    lines += [f"- {row['benchmark']}: {row['note']}" for row in rows if row["note"]]
    return "\n".join(lines).rstrip() + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the command's flags."""
    parser.add_argument("--model", required=True, type=Path, help="SICOG checkpoint folder")
    parser.add_argument("--framework", default=VLMEVALKIT, choices=tuple(FRAMEWORKS),
                        help="the evaluation framework (installed beside SICOG; default: %(default)s, as the paper)")
    parser.add_argument("--output-dir", required=True, type=Path,
                        help="the framework's output folder (VLMEvalKit --work-dir, lmms-eval --output_path), one per "
                             "checkpoint and framework; the headline table goes there too")
    parser.add_argument("--suite", default=DEFAULT_SUITE,
                        help=f"{DEFAULT_SUITE} (the paper's Figure 1) or a YAML file of the same layout "
                             "(default: %(default)s)")
    parser.add_argument("--benchmarks", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        help="only these benchmarks of the suite, comma-separated (e.g. MMStar,MME)")
    parser.add_argument("--nproc", type=positive_int, default=1,
                        help="processes, one GPU each (torchrun on one node; default: %(default)s)")
    parser.add_argument("--batch-size", type=lmms_batch_size,
                        help="lmms-eval's batch size: N, auto or auto:N (default: auto)")
    parser.add_argument("--vlmevalkit", type=Path,
                        help="VLMEvalKit checkout holding run.py (default: the current folder, else the checkout of "
                             "the installed vlmeval package)")
    parser.add_argument("--dry-run", action="store_true", help="print the command without running it")
    parser.add_argument("extra", nargs="*",
                        help="after --: more arguments for the framework (e.g. -- --judge gpt-4o-mini, "
                             "-- --sicog-prompt cot, -- --limit 8)")


def run(args: argparse.Namespace) -> int:
    """Print the framework command, run it, then print and write the headline table: 1 when a benchmark failed or
    is missing, else the framework's exit status; 2 on bad input or a folder another run holds."""
    with contextlib.ExitStack() as held:
        try:
            benchmarks = select(load_suite(args.suite), args.benchmarks)
            command = framework_command(args.framework, benchmarks, args.model, args.output_dir, processes=args.nproc,
                                        batch_size=args.batch_size, vlmevalkit=args.vlmevalkit, extra=args.extra)
            if not args.dry_run:
                # The whole config.json, before the framework starts (a published llava_qwen folder, a field of the
                # wrong type): the framework would fail on it only after its own set-up, in a traceback.
                from sicog.model.checkpoint_config import read_checkpoint_config

                read_checkpoint_config(args.model)
                if importlib.util.find_spec(FRAMEWORKS[args.framework]) is None:
                    raise ValueError(f"{args.framework} is not installed in this environment (docs/evaluation.md: "
                                     "install it beside SICOG)")
                # One run per folder: two would write the same predictions and one headline table would be lost.
                held.enter_context(output_lock(args.output_dir, folder=True))
                claim_suite_dir(args.output_dir, args.model, args.framework, args.extra)
        except (ValueError, OSError, OutputLocked) as err:
            print(f"sicog eval-suite: error: {os_error_text(err) if isinstance(err, OSError) else err}",
                  file=sys.stderr)
            return 2
        return _run_framework(args, benchmarks, command)


def _run_framework(args: argparse.Namespace, benchmarks: Sequence[SuiteBenchmark], command: list[str]) -> int:
    """:func:`run` once the input is checked (and the output folder held, unless ``--dry-run``): run ``command``."""
    print(f"{len(benchmarks)} benchmark(s) through {args.framework}: {', '.join(b.name for b in benchmarks)}")
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    earlier = result_files(args.framework, args.output_dir, MODEL)
    status = subprocess.run(command).returncode
    # Only this run's files count: an earlier run's result is not this checkpoint's answer to this command.
    outcomes = read_outcomes(args.framework, [b.task(args.framework) for b in benchmarks],
                             result_files(args.framework, args.output_dir, MODEL) - earlier)
    rows = headline_rows(benchmarks, args.framework, outcomes)
    table = headline_markdown(rows, args.framework)
    print(table, end="")
    try:
        write_json(args.output_dir / HEADLINE_JSON, {
            "model": str(args.model.resolve()), "framework": args.framework, "suite": args.suite,
            "command": command, "exit_status": status, "benchmarks": rows})
        with atomic_file(args.output_dir / HEADLINE_MD) as handle:
            handle.write(table)
    except OSError as err:
        print(f"sicog eval-suite: error: cannot write the headline table to {args.output_dir}: {err}", file=sys.stderr)
        return 2
    print(f"headline table: {args.output_dir / HEADLINE_JSON}, {args.output_dir / HEADLINE_MD}")
    unfinished = [row["benchmark"] for row in rows if row["state"] != DONE]
    if unfinished:
        again = " (their finished predictions are reused)" if args.framework == VLMEVALKIT else ""
        print(f"sicog eval-suite: {len(unfinished)} of {len(rows)} benchmark(s) failed or missing; once the cause is "
              f"fixed, run them again with --benchmarks {','.join(unfinished)}{again}", file=sys.stderr)
        return 1
    return status
