"""``python -m sicog.launch ARGS``: torchrun (``torch.distributed.run``, with its arguments) whose failure is one line.

When a process fails, torchrun raises ``ChildFailedError`` and prints it as a traceback with exit status 1, after the
processes' own error lines: on a node of 8 GPUs, a mistyped data path put 8 lines of ``sicog train: error: ...``
above a page of traceback, and the exit status said 1 where the command said 2 (a usage error). Here the failure
is one line after theirs, and the exit status is the processes' own when they agree.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def main(argv: list[str] | None = None) -> int:
    """Run torchrun with ``argv``; 0 when every process succeeded, else the exit status the failed processes that
    exited share (those torchrun killed when another failed, by a signal, do not count), 1 when they differ or
    every failure was a signal; 128 + the signal's number when the launcher itself was stopped (SIGTERM from
    scancel or a time limit), after torchrun passed it on to the processes."""
    try:
        run(parse_args(argv))
    except ChildFailedError as error:
        codes = sorted({failure.exitcode for failure in error.failures.values()})
        print(f"torchrun: {len(error.failures)} process(es) failed with exit status {', '.join(map(str, codes))}; "
              "their errors are above", file=sys.stderr)
        exited = [code for code in codes if code > 0]
        return exited[0] if len(exited) == 1 else 1
    except SignalException as stop:
        print(f"torchrun: stopped by {stop.sigval.name}, passed on to the processes", file=sys.stderr)
        return 128 + stop.sigval
    return 0


if __name__ == "__main__":
    sys.exit(main())
