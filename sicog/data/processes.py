"""Whether a process recorded in a lock or a staging folder's name still runs on this host."""

from __future__ import annotations

import os
from pathlib import Path


def running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host.

    Signal 0 only checks that it could be sent, which also holds for a process that has exited but was never reaped
    (Linux's zombie): a killed run's processes, orphaned, wait for the machine's first process to reap them, which in
    a container without an init may never happen, and a parent that is still alive may not reap them either.
    """
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; no pid is that large
        return False
    except PermissionError:  # another user's process
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:  # no /proc (not Linux), or gone meanwhile
        return True
    # The state follows the command name, which may hold spaces and parentheses: read after the last ")".
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
