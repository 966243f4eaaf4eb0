"""`sicog cycle`: the whole self-improvement loop, resumable, with a report comparing its arms."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sicog.data.argtypes import positive_int

if TYPE_CHECKING:
    from sicog.cycle.engine import Engine, Plan


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
                        help="rerun this step (a name in manifest.json) and its dependants")
    parser.add_argument("--jobs", type=positive_int,
                        help="steps run at once (default: the CPU cores divided by the config's threads per step; "
                             "1 when threads are unset)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--dry-run", action="store_true",
                        help="print every step's command (and whether it would run) without running anything")


def print_plan(engine: Engine, plan: Plan, force: list[str], seed: int) -> None:
    """Every step of one seed with its command line, and whether a run would reuse it or run it."""
    todo = set(engine.pending(plan, force))
    print(f"# seed {seed}: {len(plan.steps)} steps, {len(todo)} to run")
    for name, step in plan.steps.items():
        launcher = " ".join(engine.launcher) + " -m sicog" if step.launched and engine.launcher else "sicog"
        note = f"  # {step.note}" if step.note else ""
        print(f"[{'run' if name in todo else 'reuse'}] {name}: {launcher} {shlex.join(engine.command(step))}{note}")


def run(args: argparse.Namespace) -> int:
    """Run every seed, then write report.md and results.json in ``--out``; 2 on a bad config, 1 when a step failed."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sicog.cycle.config import ConfigError, load_config
    from sicog.cycle.engine import CycleFailed, Engine, default_jobs
    from sicog.cycle.plan import plan_seed
    from sicog.cycle.report import seed_results, write_report
    from sicog.cycle.world import make_world
    from sicog.data.lock import OutputLocked

    try:
        config = load_config("quick" if args.quick else args.config)
    except ConfigError as err:
        print("\n".join(f"sicog cycle: error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = args.jobs or default_jobs(config.threads)
    per_seed = []
    try:
        world = make_world(config, out)
        for seed in range(args.seeds):
            seed_plan = plan_seed(config, world, seed, rounds=args.rounds, dpo=args.dpo)
            engine = Engine(out / f"seed{seed}", jobs=jobs, anchor=out, threads=config.threads,
                            launcher=config.launcher, progress=not args.no_progress, missing_inputs_ok=args.dry_run)
            if args.rerun_from and args.rerun_from not in seed_plan.plan.steps:
                print(f"error: --from {args.rerun_from!r} is not a step; steps: {', '.join(seed_plan.plan.steps)}",
                      file=sys.stderr)
                return 2
            force = [args.rerun_from] if args.rerun_from else []
            if args.dry_run:
                print_plan(engine, seed_plan.plan, force, seed)
                continue
            engine.run(seed_plan.plan, force=force)
            per_seed.append(seed_results(engine, seed_plan, world, seed))
    except (ValueError, FileNotFoundError, OutputLocked) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except CycleFailed as err:
        print(f"error: {len(err.failures)} step(s) failed or could not run:", file=sys.stderr)
        for name, reason in err.failures.items():
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    if args.dry_run:
        return 0
    write_report(out, config, per_seed)
    print(f"report: {out / 'report.md'}")
    return 0
