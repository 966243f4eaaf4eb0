"""Hidden staging folders beside what the toy commands write, and the removal of those their process left.

A world or a parts folder is built under a hidden sibling name and renamed into place when complete. A run
that is killed (SIGKILL, a lost node) cannot remove its own, so every later run removes those of processes
that are gone. The name carries the host as well as the pid: a cache under a shared home is written from
several machines, and a pid says nothing about another host's processes.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

# ".<target>.<kind>-<host>-<pid>"; names from before the host was added have no "<host>-".
_STAGING = re.compile(r"\.(?P<target>.+)\.(?:building|replaced)-(?:(?P<host>.+)-)?(?P<pid>[1-9]\d*)")


def staging_path(target: Path, kind: str) -> Path:
    """This process's hidden sibling of ``target`` for ``kind`` (``building``: the new one being written;
    ``replaced``: the old one moved aside for the swap)."""
    return target.parent / f".{target.name}.{kind}-{socket.gethostname()}-{os.getpid()}"


def remove_stale_staging(folder: Path, target: str | None = None) -> None:
    """Remove the staging folders (of ``target`` only, when given) in ``folder`` whose process on this host is
    gone; a live run's, and other hosts', are left alone."""
    if not folder.is_dir():
        return
    host = socket.gethostname()
    for path in folder.iterdir():
        match = _STAGING.fullmatch(path.name)
        if match is None or (target is not None and match["target"] != target):
            continue
        if match["host"] not in (None, host) or _alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (signal 0 only checks that it could be sent)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; no pid is that large
        return False
    except PermissionError:  # another user's process
        return True
    return True
