"""Start-up cost of the command line: wall time of ``sicog <command> --help`` for every subcommand.

Each run is a fresh interpreter (``python -m sicog <command> --help``), as a user's shell starts it;
the time includes Python's own start-up. Commands import their heavy dependencies (torch,
transformers, sentence-transformers) only when they run, so ``--help`` should not pay for them;
the table also says whether torch was imported.

    .venv/bin/python benchmarks/bench_cli_help.py               # about 10 s
    .venv/bin/python benchmarks/bench_cli_help.py --repeats 5 --json help.json

Prints a markdown table (median of ``--repeats`` runs) and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

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


def time_help(command: str) -> tuple[float, bool]:
    """Seconds for one fresh ``--help`` of ``command``, and whether it imported torch."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    return elapsed, "TORCH=True" in result.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median reported)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    for command in COMMANDS:
        runs = [time_help(command) for _ in range(args.repeats)]
        rows.append({"command": command, "seconds": round(statistics.median(t for t, _ in runs), 3),
                     "imports_torch": runs[0][1]})
    load_after = os.getloadavg()
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; median of {args.repeats} runs\n")
    print("| command | `--help` seconds | imports torch |")
    print("|---|---:|---|")
    for row in rows:
        print(f"| `sicog {row['command']}` | {row['seconds']:.2f} | {'yes' if row['imports_torch'] else 'no'} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"load_before": load_before, "load_after": load_after, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
