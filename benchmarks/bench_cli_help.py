"""Start-up cost of the command line: wall and CPU time of ``sicog <command> --help`` for every subcommand.

Each run is a fresh interpreter (``python -m sicog <command> --help``), as a user's shell starts it;
the time includes Python's own start-up. CPU time is the child process's user+sys (``RUSAGE_CHILDREN``
before and after it), which other processes on a shared machine disturb far less than wall time.
Commands import their heavy dependencies (torch, transformers, sentence-transformers) only when they
run, so ``--help`` should not pay for them; the table also says whether torch was imported.

    .venv/bin/python benchmarks/bench_cli_help.py               # about 10 s
    .venv/bin/python benchmarks/bench_cli_help.py --repeats 5 --json help.json
    .venv/bin/python benchmarks/bench_cli_help.py --commands info train

Prints a markdown table (medians of ``--repeats`` runs) and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

from cpu_time import stopwatch

from sicog.cli import COMMANDS

# Runs the command's --help in this interpreter, then reports whether torch got imported.
PROBE = (
    "import sys\n"
    "from sicog.cli import main\n"
    "try:\n"
    "    main([sys.argv[1], '--help'])\n"
    "except SystemExit:\n"
    "    pass\n"
    "sys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))\n"
)


def time_help(command: str) -> tuple[float, float, bool]:
    """Wall seconds and CPU seconds (user+sys of the child) of one fresh ``--help`` of ``command``, and whether
    it imported torch."""
    with stopwatch(scope="children") as clock:
        result = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, check=True)
    return clock.wall_s, clock.cpu_s, "TORCH=True" in result.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (medians reported)")
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS),
                        help="subcommands to time (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    runs: dict[str, list[tuple[float, float, bool]]] = {command: [] for command in args.commands}
    # Rounds go over every command in turn, so a burst of load from other processes hits all of them alike.
    for _ in range(args.repeats):
        for command in args.commands:
            runs[command].append(time_help(command))
    rows = [{"command": command, "seconds": round(statistics.median(t for t, _, _ in timings), 3),
             "cpu_s": round(statistics.median(c for _, c, _ in timings), 3), "imports_torch": timings[0][2]}
            for command, timings in runs.items()]
    load_after = os.getloadavg()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; median of {args.repeats} runs; "
          "CPU = user+sys of the child process\n")
    print("| command | `--help` wall s | `--help` CPU s | imports torch |")
    print("|---|---:|---:|---|")
    for row in rows:
        print(f"| `sicog {row['command']}` | {row['seconds']:.2f} | {row['cpu_s']:.2f} | "
              f"{'yes' if row['imports_torch'] else 'no'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"load_before": load_before, "load_after": load_after, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
