"""Which checkpoints a run may resume from: only those whose save finished.

The Trainer writes ``checkpoint-N`` in place (weights, then optimizer and scheduler, then RNG and
trainer state); a run killed part way leaves a folder that looks like a checkpoint but cannot be
loaded. :class:`~sicog.train.trainer.SicogTrainer` writes :data:`COMPLETE_MARKER` into the folder
after every rank has finished its part, and resuming only considers folders that hold it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers.trainer_utils import sort_checkpoints

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "sicog_checkpoint_complete"


class IncompleteCheckpointError(ValueError):
    """A checkpoint asked for by name whose save did not finish."""


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """Whether ``checkpoint``'s save finished (its completion marker exists)."""
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (None when there is none).

    Newer folders without the marker were left by a run killed while saving; each is named in a
    warning and skipped (the resumed run writes that step's checkpoint again).
    """
    if not Path(output_dir).is_dir():
        return None
    checkpoints = sort_checkpoints(str(output_dir))
    complete = [c for c in checkpoints if is_complete(c)]
    newest = complete[-1] if complete else None
    skipped = [c for c in checkpoints if not is_complete(c) and (newest is None or _step(c) > _step(newest))]
    for checkpoint in skipped:
        logger.warning("skipping incomplete checkpoint %s (its save was interrupted)", checkpoint)
    if newest is not None:
        logger.info("resuming from %s", newest)
    return newest


def check_resume_target(checkpoint: str | os.PathLike) -> None:
    """Raise :class:`IncompleteCheckpointError` when a checkpoint given by name is missing or incomplete."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise IncompleteCheckpointError(f"no checkpoint at {path}")
    if not is_complete(path):
        raise IncompleteCheckpointError(
            f"checkpoint {path} is incomplete (no {COMPLETE_MARKER}: its save was interrupted); "
            "resume from an earlier one or omit --resume_from_checkpoint to pick the newest complete one"
        )


def _step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])
