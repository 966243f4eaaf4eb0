"""The output folder of an evaluation: usable as a folder, and holding the runs of one checkpoint only."""

from __future__ import annotations

import json
from pathlib import Path

from sicog.data.jsonl import blocked_reason, write_json


def check_output_dir(path: Path) -> None:
    """Raise ``ValueError`` when ``path`` is a file or lies inside one (it could never be made a folder)."""
    if blocked := blocked_reason(path):
        raise ValueError(f"--output-dir {path} {blocked}")


def claim_output_dir(output_dir: Path, owner: dict, record: str, reused_by: str, *, write: bool = True) -> None:
    """Check that ``output_dir`` is (or can be made) a folder holding only runs of ``owner`` (what decides them:
    the checkpoint's path and weights, ...), recorded in its file ``record`` (written when absent and ``write``).
    ``ValueError`` naming the folder and what differs otherwise: ``reused_by`` would take those runs' outputs for
    this one's."""
    check_output_dir(output_dir)
    path = output_dir / record
    if not path.exists():
        if write:
            write_json(path, owner)
        return
    try:
        held = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable ({err}); it records whose runs {output_dir} holds") from None
    if held != owner:
        differ = [key for key in owner if not isinstance(held, dict) or held.get(key) != owner[key]]
        raise ValueError(f"--output-dir {output_dir} holds runs of another {' and '.join(differ)} ({path}: "
                         f"{held}); give this run another folder, or {reused_by} would take those predictions "
                         "for its own")
