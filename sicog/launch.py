"""``python -m sicog.launch ARGS``: torchrun (``torch.distributed.run``, with its arguments) whose failure is one line.

When a process fails, torchrun raises ``ChildFailedError`` and prints it as a traceback with exit status 1, after the
processes' own error lines: on a node of 8 GPUs, a mistyped data path put 8 lines of ``sicog train: error: ...``
above a page of traceback, and the exit status said 1 where the command said 2 (a usage error). Here the failure
is one line after theirs, and the exit status is the processes' own when they agree.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; 0 when every process succeeded, else the failed processes' exit status when they
    share one, 1 otherwise (a process killed by a signal included)."""
    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        codes = sorted({failure.exitcode for failure in error.failures.values()})
        print(f"torchrun: {len(error.failures)} process(es) failed with exit status {', '.join(map(str, codes))}; "
              "their errors are above", file=sys.stderr)
        return codes[0] if len(codes) == 1 and codes[0] > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
