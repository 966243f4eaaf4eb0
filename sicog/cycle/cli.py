"""`sicog cycle`: the whole self-improvement loop, resumable, with a report comparing its arms."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sicog.data.argtypes import positive_int
from sicog.data.jsonl import blocked_reason

if TYPE_CHECKING:
    from sicog.cycle.config import CycleConfig
    from sicog.cycle.engine import Engine, Plan
    from sicog.cycle.plan import SeedPlan
    from sicog.cycle.world import World


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog cycle``."""
    # --quick names a preset, so it and --config would be two answers to one question.
    config = parser.add_mutually_exclusive_group()
    config.add_argument("--config", default="toy", help="toy (default), quick, paper, or a cycle YAML file "
                                                       "(see docs/pipeline.md)")
    config.add_argument("--quick", action="store_true",
                        help="the quick preset (= --config quick): a tiny world and few steps (smoke test)")
    parser.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="repeat with seeds 0..K-1; report mean and spread")
    parser.add_argument("--rounds", type=positive_int, default=1,
                        help="self-improvement rounds (round r+1 starts from round r's SICOG model)")
    parser.add_argument("--dpo", action="store_true", help="add arm F: DPO on the SICOG model with its curation pairs")
    parser.add_argument("--from", dest="rerun_from",
                        help="rerun this step (a name in manifest.json) and its dependants, in every seed")
    parser.add_argument("--ignore-code-changes", action="store_true",
                        help="keep finished steps that the sicog code or a library upgrade has changed since (their "
                             "keys differ only by the code fingerprint): only when you know the change does not alter "
                             "their outputs (an upgraded library rarely leaves them as they were); each kept step's "
                             "manifest entry records it (see docs/pipeline.md)")
    parser.add_argument("--jobs", type=positive_int,
                        help="steps run at once (default: the CPU cores divided by the config's threads per step; "
                             "1 when threads are unset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every step's command (and whether it would run) without running or building "
                             "anything")


def print_plan(engine: Engine, plan: Plan, force: list[str], seed: int) -> None:
    """Every step of one seed with its command line, and whether a run would reuse it, keep it across a code
    change, or run it."""
    todo = set(engine.pending(plan, force))
    requested = ", ".join(engine.manifest["rerun"])
    print(f"# seed {seed}: {len(plan.steps)} steps, {len(todo)} to run"
          + (f" (an earlier run's --from {requested} is still to rerun)" if requested else ""))
    for name, step in plan.steps.items():
        launcher = " ".join(engine.launcher) + " -m sicog" if step.launched and engine.launcher else "sicog"
        launcher = shlex.join(step.program) if step.program else launcher
        note = f"  # {step.note}" if step.note else ""
        status = "run" if name in todo else "keep" if name in engine.kept else "reuse"
        print(f"[{status}] {name}: {launcher} {shlex.join(engine.command(step))}{note}")


def run(args: argparse.Namespace) -> int:
    """Run every seed, then write report.md and results.json in ``--out``; 2 on a bad config or a run folder in
    use, 1 when a step failed (after every seed ran what did not depend on a failure)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sicog.cycle.commands import load_checked
    from sicog.cycle.config import ConfigError
    from sicog.data.lock import OutputLocked, output_lock

    try:
        config = load_checked("quick" if args.quick else args.config, dpo=args.dpo)
    except ConfigError as err:
        print("\n".join(f"sicog cycle: error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    if blocked := blocked_reason(out):  # a dry run would plan a run that cannot start
        print(f"error: --out {args.out} {blocked}", file=sys.stderr)
        return 2
    try:
        if args.dry_run:
            return _dry_run(args, config, out)
        out.mkdir(parents=True, exist_ok=True)
        # One run per run folder, taken before the shared world is built or replaced, held to the end.
        with output_lock(out, folder=True):
            return _run(args, config, out)
    except (ValueError, FileNotFoundError, OutputLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _seed_plans(args: argparse.Namespace, config: CycleConfig, world: World, out: Path,
                **engine_settings) -> dict[int, tuple[SeedPlan, Engine]]:
    """Every seed's plan and engine; ValueError for a ``--from`` that names no step."""
    from sicog.cycle.engine import Engine, default_jobs
    from sicog.cycle.plan import plan_seed

    seeds = {}
    for seed in range(args.seeds):
        seed_plan = plan_seed(config, world, seed, rounds=args.rounds, dpo=args.dpo)
        if args.rerun_from is not None and args.rerun_from not in seed_plan.plan.steps:
            raise ValueError(f"--from {args.rerun_from!r} is not a step; steps: {', '.join(seed_plan.plan.steps)}")
        seeds[seed] = seed_plan, Engine(out / f"seed{seed}", jobs=args.jobs or default_jobs(config.threads),
                                        anchor=out, threads=config.threads, launcher=config.launcher,
                                        progress=not args.no_progress,
                                        keep_code_changes=args.ignore_code_changes, **engine_settings)
    return seeds


def _missing_inputs(seeds: dict[int, tuple[SeedPlan, Engine]]) -> list[str]:
    """The outside inputs of every seed's plan that are not there, each once."""
    return list(dict.fromkeys(path for plan, engine in seeds.values() for path in engine.missing_inputs(plan.plan)))


def _command_problems(config: CycleConfig) -> list[str]:
    """Why the launcher or embed_command cannot start here, one entry each: environment variables they name
    (``$VAR``, ``${VAR}``, expanded when a step starts) that are not set, which would reach torchrun as an address
    it cannot read, or an embed_command whose program (its first word: srun, or the Python) is not there, or whose
    Python, given as a path, is not there: the last word before its first ``-m`` (else of all) that is no option
    and no ``NAME=value``."""
    problems = []
    for what, command in (("the launcher", config.launcher), ("embed_command", config.embed_command)):
        named = (m.group(1) or m.group(2) for arg in command for m in re.finditer(r"\$\{(\w+)\}|\$(\w+)", arg))
        if unset := sorted({name for name in named if name not in os.environ}):
            problems.append(f"{what} reads environment variable(s) that are not set: {', '.join(unset)}")
        elif what == "embed_command" and command:
            words = [os.path.expandvars(word) for word in command]
            if not shutil.which(words[0]):
                problems.append(f"{what} starts {words[0]}, which is not a program here")
            before = words[:words.index("-m")] if "-m" in words else words
            python = next((w for w in reversed(before[1:]) if not w.startswith("-") and "=" not in w), None)
            if python is not None and "/" in python and not os.path.exists(python):
                problems.append(f"{what} names {python}, which is not there")
    return problems


def _dry_run(args: argparse.Namespace, config: CycleConfig, out: Path) -> int:
    """Print every seed's plan against what ``out`` holds now; build, replace and write nothing."""
    from sicog.cycle.world import make_world, toy_world_change

    change = toy_world_change(config, out) if config.toy_size else None
    world = make_world(config, out, build=False)
    unbuilt = (world.toy_root,) if change else ()
    force = [args.rerun_from] if args.rerun_from is not None else []
    try:
        if change:
            print(f"# the toy world in {out / 'world'} would be built first: {change}; every step reading it is "
                  "shown as to run")
        seeds = _seed_plans(args, config, world, out, missing_inputs_ok=True, unbuilt=unbuilt)
        for seed, (seed_plan, engine) in seeds.items():
            print_plan(engine, seed_plan.plan, force, seed)
        if missing := _missing_inputs(seeds):
            print(f"# inputs not there (a run stops on them): {', '.join(missing)}")
        for problem in _command_problems(config):
            print(f"# {problem} (a run stops on it)")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`--dry-run | head`): nothing else was to be done. Standard output then points
        # at /dev/null so the interpreter's last flush does not fail again on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run(args: argparse.Namespace, config: CycleConfig, out: Path) -> int:
    """Run every seed (the caller holds ``out``'s lock); a seed with a failed step does not stop the others."""
    from sicog.cycle.engine import CycleFailed
    from sicog.cycle.report import clear_report, seed_results, write_report
    from sicog.cycle.world import make_world

    if problems := _command_problems(config):
        raise ValueError("; ".join(problems))
    world = make_world(config, out)
    seeds = _seed_plans(args, config, world, out)
    if missing := _missing_inputs(seeds):
        raise FileNotFoundError(f"cycle input(s) not there: {', '.join(missing)}")
    if args.rerun_from is not None:
        # Recorded in every seed before any runs, so a run killed in seed 0 still reruns the step in seed 1.
        for _, engine in seeds.values():
            engine.request_rerun([args.rerun_from])
    # An earlier run's report would pass for this run's while it runs, and after it when it is interrupted.
    earlier_report = clear_report(out)
    per_seed, failures = [], {}
    for seed, (seed_plan, engine) in seeds.items():
        try:
            engine.run(seed_plan.plan)
        except CycleFailed as err:
            failures[seed] = err.failures
            continue
        per_seed.append(seed_results(engine, seed_plan, world, seed))
    if per_seed:
        write_report(out, config, per_seed, incomplete={seed: sorted(failed) for seed, failed in failures.items()})
        print(f"report: {out / 'report.md'}"
              + (f" (seeds {', '.join(map(str, failures))} left out: incomplete)" if failures else ""))
    elif earlier_report:
        print(f"no report: no seed finished; the report of an earlier run in {out} is removed")
    if failures:
        count = sum(map(len, failures.values()))
        print(f"error: {count} step(s) failed or could not run:", file=sys.stderr)
        for seed, failed in failures.items():
            for name, reason in failed.items():
                print(f"  seed{seed}/{name}: {reason}", file=sys.stderr)
        return 1
    return 0
