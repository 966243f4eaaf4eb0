"""Wall and CPU time of a whole cycle with one step at a time against several at once, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_cycle_jobs.py [--config toy] [--jobs 1 2] [--out /tmp/bench_jobs]

Each variant runs ``sicog cycle`` in a fresh folder (the world is built in each, the same way), then the
script checks that every variant gave the same results and prints a markdown table with the 1-minute load
average at the start and end of each run. The toy world's pretrained parts are built once before the timed
runs (they are cached per world, like a download), so no variant pays for them. The demo preset (``toy``)
takes about 8-13 minutes per variant on 2 cores; ``--config quick`` under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cpu_time import stopwatch


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="toy", help="cycle preset or YAML (default: toy, what `make demo` runs)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="variants to compare")
    parser.add_argument("--out", default="/tmp/bench_cycle_jobs", help="parent folder of the runs (replaced)")
    args = parser.parse_args()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    rows, results = [], {}
    warm = root / "warm"
    # The config's world, built as the cycle builds it (a dry run builds nothing).
    from sicog.cycle.config import load_config

    config = load_config(args.config)
    # At the cycle's thread count: the parts' cache key holds it, and parts built at another would not be reused.
    as_cycle = {**os.environ, **({"OMP_NUM_THREADS": str(config.threads)} if config.threads else {})}
    subprocess.run([sys.executable, "-m", "sicog", "toy", "build", "--out", str(warm / "world"), "--size",
                    config.toy_size, "--seed", str(config.world_seed)], check=True, stdout=subprocess.DEVNULL,
                   env=as_cycle)
    subprocess.run([sys.executable, "-m", "sicog", "toy", "parts", "--world", str(warm / "world"),
                    "--out", str(warm / "parts")], check=True, stdout=subprocess.DEVNULL, env=as_cycle)
    for jobs in args.jobs:
        out = root / f"jobs{jobs}"
        before_load = load()
        with stopwatch(scope="children") as clock:
            subprocess.run([sys.executable, "-m", "sicog", "cycle", "--config", args.config, "--out", str(out),
                            "--jobs", str(jobs), "--no-progress"], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        results[jobs] = json.loads((out / "results.json").read_text())
        rows.append((jobs, clock.wall_s, clock.cpu_s, before_load, load()))
    same = all(r["per_seed"] == results[args.jobs[0]]["per_seed"] for r in results.values())
    print(f"config {args.config}; identical results across variants: {same}\n")
    print("| --jobs | wall (s) | CPU (s, user+sys) | wall vs first | load at start / end |")
    print("|---:|---:|---:|---:|---|")
    for jobs, wall, cpu, start, end in rows:
        print(f"| {jobs} | {wall:.0f} | {cpu:.0f} | {wall / rows[0][1]:.2f}x | {start:.2f} / {end:.2f} |")


if __name__ == "__main__":
    main()
