"""A process that has exited but is not reaped (a zombie), as a killed run's processes stay where nothing reaps them
(a container without an init, or a parent that never waits)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def zombie(holding_lock_of: Path | None = None) -> Iterator[int]:
    """Start a Python process that kills itself (after taking the output lock of ``holding_lock_of``, when given), and
    yield its pid while it is a zombie; it is reaped when the block ends."""
    take = "" if holding_lock_of is None else (
        # held by a name until the kill: a lock whose context manager is collected is released
        f"from sicog.data.lock import output_lock\nheld = output_lock({str(holding_lock_of)!r})\nheld.__enter__()\n")
    process = subprocess.Popen([sys.executable, "-c", f"import os, signal\n{take}os.kill(os.getpid(), signal.SIGKILL)"])
    try:
        while Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.05)  # not waited for, so not reaped
        yield process.pid
    finally:
        process.wait()
