"""Candidate generation on a CPU with each KV cache: the demo's stage-0 captioner on the demo's unlabeled images.

With a dynamic cache, every new token grows each layer's keys and values by a copy, and past a size the C
allocator hands each copy fresh pages from the kernel, whose page faults show up as system time; a static cache is
allocated once per batch and written in place. This runs `sicog generate captions` as the demo's
`generate_captions` step did (its prompt, N, temperature, top-p, token limit and seed, read from its log) on the
first ``--records`` images of a finished demo run, for each (cache, batch size), one at a time in child processes,
and reports their CPU seconds (user+sys of the child, and its system part) and whether each made the same
candidates as the first configuration.

    make demo                                                   # once: the run folder it reads
    python benchmarks/bench_generation_cache.py --run runs/demo   # about 5 CPU minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from cpu_time import stopwatch

# The options of the run's generate_captions step that say what it generates (not where, nor in what batches).
SETTINGS = ("--prompt", "--num-candidates", "--temperature", "--top-p", "--max-new-tokens", "--seed")


def step_settings(seed_folder: Path) -> dict[str, str]:
    """:data:`SETTINGS` as the run's generate_captions step ran them: the command its log's first line records."""
    first = (seed_folder / "generate_captions" / "log.txt").read_text().splitlines()[0]
    argv = shlex.split(first.removeprefix("$ "))
    return {option: argv[argv.index(option) + 1] for option in SETTINGS if option in argv}


def candidates(output: Path) -> dict[str, list[str]]:
    """Each record's candidates in a `sicog generate` output file."""
    with output.open() as handle:
        return {record["id"]: record["candidates"] for record in map(json.loads, handle)}


def generate(seed_folder: Path, world: Path, data: Path, output: Path, cache: str, batch_size: int,
             settings: dict[str, str]) -> dict:
    """One `sicog generate captions` run in a child process: its wall, CPU and system seconds."""
    command = [sys.executable, "-m", "sicog", "generate", "captions", "--model", str(seed_folder / "stage0_perception"),
               "--data", str(data), "--image-folder", str(world / "images"), "--output", str(output),
               "--cache", cache, "--batch-size", str(batch_size), *(x for pair in settings.items() for x in pair),
               "--no-progress"]
    system_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
    with stopwatch(scope="children") as clock:
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {"cache": cache, "batch": batch_size, "wall_s": clock.wall_s, "cpu_s": clock.cpu_s,
            "system_s": resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - system_before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished `sicog cycle` run folder")
    parser.add_argument("--seed", type=int, default=0, help="which seed folder of the run")
    parser.add_argument("--records", type=int, default=48)
    parser.add_argument("--configs", default="dynamic:16,static:16,dynamic:4,dynamic:48,static:48",
                        help="cache:batch pairs; the first is the reference of 'same candidates'")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    seed_folder = args.run / f"seed{args.seed}"
    pool = seed_folder / "pool_unlabeled_images" / "pool.jsonl"
    if not (seed_folder / "stage0_perception" / "config.json").is_file() or not pool.is_file():
        parser.error(f"{args.run} holds no finished demo run (need {pool} and seed{args.seed}/stage0_perception)")
    settings = step_settings(seed_folder)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "records.jsonl"
        with pool.open() as source:
            data.write_text("".join(line for _, line in zip(range(args.records), source)))
        reference = None
        for pair in args.configs.split(","):
            cache, batch = pair.split(":")
            output = Path(tmp) / f"{cache}-{batch}" / "generated.jsonl"
            run = generate(seed_folder, args.run / "world", data, output, cache, int(batch), settings)
            made = candidates(output)
            reference = reference or made
            run["same_candidates"] = sum(made[key] == reference[key] for key in reference)
            runs.append(run)
    print(f"{args.records} images of {pool}, {' '.join(x for pair in settings.items() for x in pair)} (the run's "
          "generate_captions step), one torch thread; CPU = user+sys of the child process\n")
    print("| cache | batch | wall s | CPU s | of which system s | records with the same candidates as the first row |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['cache']} | {run['batch']} | {run['wall_s']:.1f} | {run['cpu_s']:.1f} | {run['system_s']:.1f} "
              f"| {run['same_candidates']}/{args.records} |")
    if args.json:
        args.json.write_text(json.dumps({"records": args.records, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
