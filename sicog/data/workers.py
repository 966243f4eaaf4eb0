"""Worker processes that do not outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# prctl(2) option: the signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int, signal_number: int = signal.SIGKILL) -> None:
    """Have the kernel send this process ``signal_number`` (SIGKILL by default) when ``parent``, the process that
    started it, dies (Linux; a no-op elsewhere). Call it first in a pool worker's initializer, or as the
    ``preexec_fn`` of a launched command, where it outlasts the command's ``exec``.

    A pool's workers otherwise outlive a parent killed with SIGKILL: each finishes the task it runs, writing
    into outputs that a rerun has started to write too, then waits forever for the next task. A parent that died
    before the call has left this process to another one already: it exits at once.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0) != 0:
        return  # not allowed here (a sandbox): workers keep the default
    if os.getppid() != parent:
        os._exit(1)
