"""`sicog cycle`: the whole self-improvement loop, resumable, with a report comparing its arms."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from sicog.cycle.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog cycle``."""
    parser.add_argument("--config", default="toy", help="toy (default), quick, or a cycle YAML file (see docs/pipeline.md)")
    parser.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    parser.add_argument("--quick", action="store_true", help="the quick preset: a tiny world and few steps (smoke test)")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..K-1 and report mean and spread")
    parser.add_argument("--rounds", type=int, default=1, help="self-improvement rounds (round r+1 starts from round r's SICOG model)")
    parser.add_argument("--dpo", action="store_true", help="add arm F: DPO on the SICOG model with its curation pairs")
    parser.add_argument("--from", dest="rerun_from", help="rerun from this step (a name in manifest.json) onwards")


def run(args: argparse.Namespace) -> int:
    """Run every seed, then write report.md and results.json in ``--out``."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from sicog.cycle.analysis import curation_quality
    from sicog.cycle.report import arm_scores, write_report
    from sicog.cycle.steps import Cycle
    from sicog.toy.build import build_world, load_manifest
    from sicog.toy.score import load_ground_truth

    try:
        config = load_config("quick" if args.quick else args.config)
    except ConfigError as err:
        print("\n".join(f"sicog cycle: error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return 2
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.toy_size:
        build_world(out / "world", seed=config.world_seed, size=config.toy_size)
        world = {k: str(v) for k, v in load_manifest(out / "world").items() if isinstance(v, Path)}
    else:
        world = dict(config.data)
    truth = load_ground_truth(world["ground_truth"]) if "ground_truth" in world else None
    per_seed, first = [], None
    for seed in range(args.seeds):
        results = Cycle(config, out / f"seed{seed}", seed, world, rerun_from=args.rerun_from).run(rounds=args.rounds, dpo=args.dpo)
        scores = {"seed": seed, "arms": {arm: arm_scores(e, truth) for arm, e in results["evals"].items()}}
        per_seed.append(scores)
        if first is None:
            first = results
            if truth is not None:
                first["analysis"] = {task: curation_quality(Path(files["scored"]), task, truth, seed)
                                     for task, files in results["curation"][1].items()}
    if first is not None:
        write_report(out, config, per_seed, first)
        print(f"report: {out / 'report.md'}")
    return 0
