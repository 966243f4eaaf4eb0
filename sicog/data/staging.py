"""Folders written under a hidden name beside their target and put in place only once complete.

A reader of the target never sees a half-written folder: the writer fills the staging folder, then renames it
(or its entries) into place (see :mod:`sicog.data.jsonl` for the same for single files). A run that is killed
(SIGKILL, a lost node) cannot remove its own staging folder, so every later run removes those of processes that
are gone. The name carries the host as well as the pid: a cache under a shared home is written from several
machines, and a pid says nothing about another host's processes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sicog.data.processes import running

# What a staging folder holds: the new one being written; the old one moved aside for the swap; a checkpoint
# being converted; a single file being written (sicog.data.jsonl.atomic_file).
KINDS = ("building", "replaced", "converting", "writing")
# ".<target>.<kind>-<host>-<pid>", a file's with ".<random>.tmp" after it; names from before the host was added
# have no "<host>-".
_STAGING = re.compile(rf"\.(?P<target>.+)\.(?:{'|'.join(KINDS)})-(?:(?P<host>.+)-)?(?P<pid>[1-9]\d*)(?:\.\w+\.tmp)?")


# Bytes of the target's name a staging name keeps: with a host name (at most 64 bytes), a kind and a pid it
# stays within the 255 bytes a file name may have, however long the target's name is.
_TARGET_BYTES = 120


def _target_part(name: str) -> str:
    """``name``, or when longer than :data:`_TARGET_BYTES` its start and a hash of the whole, which stays unique."""
    encoded = name.encode()
    if len(encoded) <= _TARGET_BYTES:
        return name
    start = encoded[: _TARGET_BYTES - 17].decode(errors="ignore")  # a character cut in two is dropped
    return f"{start}~{hashlib.blake2b(encoded, digest_size=8).hexdigest()}"


def staging_path(target: Path, kind: str) -> Path:
    """This process's hidden sibling of ``target`` for ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise ValueError(f"staging kind {kind!r} is not one of {', '.join(KINDS)}")
    return target.parent / f".{_target_part(target.name)}.{kind}-{socket.gethostname()}-{os.getpid()}"


def remove_stale_staging(folder: Path, target: str | None = None) -> None:
    """Remove the staging folders (of ``target`` only, when given) in ``folder`` whose process on this host is
    gone; a live run's, and other hosts', are left alone.

    A host is its host name, and its processes are the pids this process can see: containers that share a host
    name but not a pid namespace (Docker's ``--network host``) and write to one folder would take each other's
    staging folders for stale ones; such containers need host names of their own (``--hostname``).
    """
    try:
        entries = list(folder.iterdir())
    except OSError:  # none yet, or one that may be written to but not listed (a drop box): nothing to find
        return
    host = socket.gethostname()
    for path in entries:
        match = _STAGING.fullmatch(path.name)
        if match is None or (target is not None and match["target"] != _target_part(target)):
            continue
        if match["host"] not in (None, host) or running(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def staged_folder(target: Path, kind: str = "building") -> Iterator[Path]:
    """This process's hidden sibling of ``target`` (:func:`staging_path`), made for the block to fill and move into
    place; whatever of it is left when the block ends, with or without an error, is removed.

    The block does the move itself, because what an existing target means differs by command: kept (a finished
    copy made meanwhile wins), merged into, or replaced under a lock. Whatever the block leaves behind (all of it
    after an error, or when it keeps the existing target; the emptied folder after a merge) is removed. First go
    the staging folders of ``target`` that dead processes left (:func:`remove_stale_staging`) and one of this
    process's own name (a killed earlier process had this pid). The folder is made by ``mkdir``, so with the mode
    the user's umask gives (``mkdtemp`` would make it private), which the rename into place keeps.
    """
    remove_stale_staging(target.parent, target.name)
    staging = staging_path(target, kind)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)
