"""What identifies a checkpoint folder's contents cheaply: its files' names, sizes and modification times.
Weights, config, processor or tokenizer files rewritten in place (a retrained checkpoint) change it."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def files_signature(path: str | os.PathLike | None) -> list:
    """Names, sizes and times of a checkpoint folder's files (or of one file); ``[path]`` for none."""
    if not path or not Path(path).exists():
        return [None if path is None else str(path)]
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def checkpoint_signature(path: str | os.PathLike) -> str:
    """A short digest of :func:`files_signature`: predictions of earlier weights are never taken for new ones."""
    return hashlib.sha256(json.dumps(files_signature(path)).encode()).hexdigest()[:16]
