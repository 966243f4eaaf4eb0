"""Which checkpoints a run may resume from: only those whose save finished, written by the same stage.

The Trainer writes ``checkpoint-N`` in place (weights, then optimizer and scheduler, then RNG and
trainer state); a run killed part way leaves a folder that looks like a checkpoint but cannot be
loaded. :class:`~sicog.train.trainer.SicogTrainer` writes :data:`COMPLETE_MARKER` into the folder
after every rank has finished its part, and resuming only considers folders that hold it.

The marker also names the stage that wrote the checkpoint and the settings that decide its run's course (data,
starting weights, learning rate, steps, ...). Resuming another stage's checkpoint, or one of a run with other
settings (a second stage-0 run into the first one's folder), would silently continue that run (its weights,
optimizer state, schedule position and step count, skipping as many of this run's samples), so an output folder
holding one stops the run instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from transformers.trainer_utils import sort_checkpoints

from sicog.data.jsonl import RecordError, write_json
from sicog.data.sources import resolved_data_path

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "sicog_checkpoint_complete"


class IncompleteCheckpointError(ValueError):
    """A checkpoint asked for by name whose save did not finish."""


class ForeignCheckpointError(ValueError):
    """The output folder holds a complete checkpoint that another stage (or an unknown one), or a run with other
    settings, wrote."""


def is_complete(checkpoint: str | os.PathLike) -> bool:
    """Whether ``checkpoint``'s save finished (its completion marker exists)."""
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def mark_complete(checkpoint: str | os.PathLike, global_step: int, stage: str, run: dict | None = None,
                  loss_sum: float | None = None) -> None:
    """Write the completion marker: the save of ``checkpoint`` by ``stage`` at ``global_step`` finished; ``run``:
    the settings of the run that wrote it (see :func:`last_complete_checkpoint`); ``loss_sum``: the sum of the
    training loss over its steps 1 to ``global_step``, from which a resumed run reports the whole run's mean."""
    extra = {"run": run} if run is not None else {}
    if loss_sum is not None:
        extra["loss_sum"] = loss_sum
    write_json(Path(checkpoint) / COMPLETE_MARKER, {"global_step": global_step, "stage": stage, **extra})


def _marker(checkpoint: str | os.PathLike) -> dict:
    """A complete checkpoint's marker ({} for one written by hand that is no JSON object)."""
    try:
        marker = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text(encoding="utf-8"))
    except ValueError:
        return {}
    return marker if isinstance(marker, dict) else {}


def checkpoint_stage(checkpoint: str | os.PathLike) -> str | None:
    """The stage named in a complete checkpoint's marker (None: a marker from before markers named it, or one
    written by hand that is no JSON object)."""
    return _marker(checkpoint).get("stage")


def checkpoint_loss_sum(checkpoint: str | os.PathLike) -> float | None:
    """The training loss summed over the steps before a complete checkpoint (None: its marker predates the sum)."""
    value = _marker(checkpoint).get("loss_sum")
    return float(value) if isinstance(value, (int, float)) else None


def settings_differences(written: dict | None, run: dict | None) -> list[str]:
    """``"NAME: WRITTEN -> NOW"`` for each setting both know and that differs (none when either is None: a
    marker from before markers held settings is resumed as before)."""
    if written is None or run is None:
        return []
    if isinstance(written.get("data_path"), str):
        # Recorded before sources were resolved one by one (a brace pattern as typed): read as this run reads it.
        with contextlib.suppress(RecordError):
            written = {**written, "data_path": resolved_data_path(written["data_path"])}
    now = json.loads(json.dumps(run))  # as the marker holds it: tuples as lists
    return [f"{name}: {written[name]!r} -> {value!r}" for name, value in now.items()
            if name in written and written[name] != value]


def is_last_step(checkpoint: str | os.PathLike) -> bool:
    """Whether ``checkpoint`` was saved at its run's last step (its ``trainer_state.json`` says so)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and 0 < (state.get("max_steps") or 0) <= (state.get("global_step") or 0)


def last_complete_checkpoint(output_dir: str | os.PathLike, stage: str, run: dict | None = None) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (None when there is none).

    Newer folders without the marker were left by a run killed while saving; each is named in a
    warning and skipped (the resumed run writes that step's checkpoint again). A complete checkpoint
    whose marker names another stage than ``stage``, or none, raises :class:`ForeignCheckpointError`, and so
    does a newest one whose run had other settings than ``run`` (:func:`settings_differences`).
    """
    if not Path(output_dir).is_dir():
        return None
    checkpoints = sort_checkpoints(str(output_dir))
    complete = [c for c in checkpoints if is_complete(c)]
    for checkpoint in complete:
        written_by = checkpoint_stage(checkpoint)
        if written_by is None:
            raise ForeignCheckpointError(
                f"{checkpoint} does not name the stage that wrote it (saved by an older sicog); if it is this "
                f"stage's, resume it with --resume_from_checkpoint {checkpoint}, else use another --output_dir"
            )
        if written_by != stage:
            raise ForeignCheckpointError(
                f"{checkpoint} is stage {written_by}'s, not stage {stage}'s: resuming it would continue that "
                "stage's run; give each stage its own --output_dir (the training scripts default to one folder "
                "per stage under model_weight/$EXPERIMENT_NAME)"
            )
    newest = complete[-1] if complete else None
    differences = settings_differences(_marker(newest).get("run"), run) if newest is not None else []
    if differences:
        raise ForeignCheckpointError(
            f"{newest} was written by a run with other settings ({'; '.join(differences)}): resuming it would "
            "continue that run; give this run another --output_dir (each stage-0 run its own EXPERIMENT_NAME), "
            f"remove that run's checkpoints to train again, or resume it anyway with --resume_from_checkpoint {newest}"
        )
    skipped = [c for c in checkpoints if not is_complete(c) and (newest is None or _step(c) > _step(newest))]
    for checkpoint in skipped:
        logger.warning("skipping incomplete checkpoint %s (its save was interrupted)", checkpoint)
    if newest is not None:
        logger.info("resuming from %s", newest)
    return newest


def deepspeed_processes(checkpoint: str | os.PathLike) -> int | None:
    """How many processes the DeepSpeed run that saved ``checkpoint`` had: one ZeRO optimizer shard each (None: the
    checkpoint holds no DeepSpeed state)."""
    return len(list(Path(checkpoint).glob("global_step*/*zero_pp_rank_*_optim_states.pt"))) or None


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
