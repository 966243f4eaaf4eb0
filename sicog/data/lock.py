"""One run per output: an exclusive lock file beside (or in) what a command writes.

Two runs writing one output would interleave shard lines and break the exactly-once merge. The lock is
filelock's :class:`~filelock.SoftFileLock`: a file holding the owner's pid and host, created
exclusively, removed on exit; a lock left by a dead process on this host is taken over (one that has exited but was
never reaped too), and so is an empty one left by a run killed between creating the file and writing its pid. Under
torchrun only rank 0 takes it (torchrun stops the other ranks when rank 0 exits with an error).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import filelock
from filelock import SoftFileLock, Timeout
from packaging.version import Version

from sicog.data.argtypes import os_error_text
from sicog.data.jsonl import blocked_reason
from sicog.data.processes import running

#: An empty lock file unchanged this long (seconds) was left by a run killed while taking it: a holder
#: writes its pid microseconds after creating the file.
RECORDLESS_GRACE_S = 2.0
#: The oldest filelock whose soft lock has the stale-marker takeover :class:`_OutputFileLock` extends (as pyproject.toml
#: requires; repeated here for the encoder's environment, which installs its own).
MIN_FILELOCK = "4.3"


class OutputLocked(RuntimeError):
    """The output cannot be taken for this run: another run holds its lock, or the lock file cannot be created
    there (a file where a folder must be, no permission to write)."""


def lock_path(output: str | os.PathLike, *, folder: bool = False) -> Path:
    """The lock of ``output``: ``<output>.lock`` beside a file, ``<output>/.sicog.lock`` in a folder."""
    output = Path(output)
    return output / ".sicog.lock" if folder else output.with_name(f"{output.name}.lock")


def holder(path: str | os.PathLike) -> str:
    """``pid N on host H`` from a lock file (what is known of it)."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "a process that just finished"
    if len(lines) < 2:
        return "a run that is just taking it"
    return f"pid {lines[0]} on host {lines[1]}"


def locks_in(folder: str | os.PathLike) -> list[Path]:
    """The lock files directly in ``folder``: its own and those of the files in it."""
    return sorted(Path(folder).glob("*.lock"))


def _host(path: Path) -> str | None:
    """The host line of a lock file's record (None: no record yet, or gone)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return lines[1] if len(lines) > 1 else None


def remove_left_lock(path: str | os.PathLike) -> None:
    """Remove a lock file that a killed run left, unless a live process on this host holds it: then raise
    :class:`OutputLocked` naming it. A lock recorded on another host cannot be checked from here and is removed, as
    is one that was being taken when its run was killed (no record yet).
    """
    path = Path(path)
    lock = _OutputFileLock(path, timeout=0)
    try:
        lock.acquire()  # taken over when its holder on this host is gone
    except Timeout:
        if _host(path) == _this_host():
            raise OutputLocked(
                f"{path.parent} is still being written by {holder(path)} (a process of a run that was killed?); "
                "wait for it to finish or stop it, then run again"
            ) from None
        path.unlink(missing_ok=True)
        return
    lock.release()


def _this_host() -> str:
    """This host as filelock's lock records name it. Imported here: ``python -m sicog.curate.embed_file`` takes
    locks in the encoder's environment too, whose filelock may predate this (its soft lock then never calls the
    takeover that asks)."""
    from filelock._identity import host_name

    return host_name()


def _exited_here(path: Path) -> bool:
    """Whether the holder a lock file records is a process of this host that no longer runs though filelock counts
    it as alive: one that has exited but was never reaped (see :func:`~sicog.data.processes.running`)."""
    try:
        pid, host = path.read_text(encoding="utf-8").splitlines()[:2]
        return host == _this_host() and not running(int(pid))
    except (OSError, ValueError):  # no record yet, gone, or not one
        return False


def _unwritable(output: str | os.PathLike, folder: bool, err: OSError) -> str:
    """Why the lock file of ``output`` (a file, or a ``folder``) could not be created (``err``), naming the path at
    fault: a file where a folder must be, worded as every command words it, else the system's reason."""
    blocked = blocked_reason(output, folder=folder)
    if blocked is None:
        blocked = f"cannot be written ({os_error_text(err)})"
    return f"{output} {blocked}"


class _OutputFileLock(SoftFileLock):
    """filelock's soft lock, which also takes over a stale empty lock file and one whose holder has exited unreaped.

    filelock never breaks an empty marker, because releases before 3.22 held the lock with one; every
    holder of a SICOG lock writes its record (``filelock>=4.3``), so an old empty one is abandoned. filelock counts a
    zombie holder as alive. The takeover is filelock's own atomic one, which re-checks the marker before replacing it.
    """

    def _try_break_stale_lock(self) -> None:
        super()._try_break_stale_lock()
        if self.is_locked:
            return
        with suppress(OSError):  # the marker went away or changed: the next run tries again
            marker = os.stat(self._lock_path)
            recordless = marker.st_size == 0 and time.time() - marker.st_mtime >= RECORDLESS_GRACE_S
            if recordless or _exited_here(Path(self._lock_path)):
                self._take_over(marker, None)


@contextmanager
def output_lock(output: str | os.PathLike, *, folder: bool = False, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``output`` (a file, or a ``folder``) for the block; raise :class:`OutputLocked` at once
    when another run has it. ``enabled=False`` (torchrun ranks other than 0) takes no lock.
    """
    if not enabled:
        yield
        return
    if Version(filelock.__version__) < Version(MIN_FILELOCK):
        raise OutputLocked(
            f"this environment's filelock {filelock.__version__} is older than {MIN_FILELOCK}, which the output "
            f"locks need: pip install 'filelock>={MIN_FILELOCK}'"
        )
    path = lock_path(output, folder=folder)
    lock = _OutputFileLock(path, timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise OutputLocked(
            f"{output} is in use by another run ({holder(path)}; lock file {path}); wait for it to finish, "
            "or delete the lock file if that run is gone"
        ) from None
    except OSError as err:
        raise OutputLocked(_unwritable(output, folder, err)) from None
    try:
        yield
    finally:
        lock.release()
