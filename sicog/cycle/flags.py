"""The settings a cycle config passes on to commands by name (``train``, ``model``, ``generate``, ``curate``):
checked against each command's own arguments and against the flags the plan writes itself, then turned into
command-line flags. Checked when the config is read (:func:`setting_problems`) and used by the plan."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sicog.cycle.engine import Arg, Input

# A switch's flags: the one that turns it on, the one that turns it off (None: its default).
Switch = tuple[str | None, str | None]

if TYPE_CHECKING:
    from sicog.cycle.config import CycleConfig
    from sicog.cycle.world import World


# Settings whose value is something a step reads (a file or a checkpoint folder), never one it writes: such a value
# enters the step's key by its content, as the step's other inputs do, so that replacing what it names reruns the
# step. (A path a step writes, such as train.sample_log, would change every key each time it is written.)
INPUT_SETTINGS = frozenset({"deepspeed", "projector", "encoder"})


def setting_arg(name: str, value: object) -> Arg:
    """The value of setting ``name`` as a step's argument: by its content when the setting names an input
    (:data:`INPUT_SETTINGS`) and the file or folder exists, else by its text."""
    text = str(value)
    return Input(text) if name in INPUT_SETTINGS and isinstance(value, str) and os.path.exists(text) else text


def _flags(settings: dict, known: Mapping[str, Switch | None], planned: dict[str, str | None], what: str,
           dashes: bool = False) -> list[Arg]:
    """Command-line flags from a settings mapping, checked against the command's own argument names (``known``:
    name -> its switch flags, :func:`~sicog.data.argtypes.option_flags`, or None) and against those the plan sets
    itself (``planned``: name -> the cycle keys that set it, None for the plan). A switch set true or false gets
    the flag that says so (none where that is its default); any other setting ``--name value`` (with ``dashes``,
    ``--na-me``). Sorted by name, so that a setting's place in the config file is no part of a step's key."""
    unknown = sorted(set(settings) - set(known) - set(planned))
    if unknown:
        raise ValueError(f"cycle config: key {what!r}: unknown setting(s) {unknown}")
    owned = sorted(set(settings) & set(planned))
    if owned:
        where = "; ".join(f"{name}: {'the plan' if planned[name] is None else 'use ' + planned[name]}"
                          for name in owned)
        raise ValueError(f"cycle config: key {what!r}: setting(s) {owned} are set by the cycle itself ({where})")
    flags = []
    for key, value in sorted(settings.items()):
        switch = known.get(key)
        if switch is not None and isinstance(value, bool):
            flags += [flag] if (flag := switch[0 if value else 1]) else []
        else:
            flags += ["--" + (key.replace("_", "-") if dashes else key), setting_arg(key, value)]
    return flags


# `sicog train` flags the plan writes into every training step; a `train` setting may not replace them, or the
# cycle's own keys (and the global batch the plan prints) would silently stop applying.
PLANNED_TRAIN: dict[str, str | None] = {
    **dict.fromkeys(("max_steps", "num_train_epochs"), "stage1_steps, stage0_steps, stage15_steps, stage2_steps and "
                                                       "dpo_steps"),
    "per_device_train_batch_size": "batch_size and stage1_batch_size",
    "learning_rate": "stage1_lr, finetune_lr and dpo_lr",
    **dict.fromkeys(("stage", "data_path", "image_folder", "output_dir", "seed")),
}
# The schedule every training step gets unless ``train`` gives its own value for a flag (which then replaces
# it); stage 1 draws random batches, as the published alignment script does (no grouping by modality and length).
TRAIN_SCHEDULE = {"lr_scheduler_type": "cosine", "warmup_steps": "0.03", "weight_decay": "0.0", "save_total_limit": "1",
                  "group_by_modality_length": "True", "disable_tqdm": "True"}
# DPO's instead (arm F), as the DPO script has it (LLaVA-NeXT's scripts/train/dpo.sh): linear decay after a 10% warm-up.
DPO_SCHEDULE = {"lr_scheduler_type": "linear", "warmup_steps": "0.1"}
# `sicog train` model settings that hold for loading any checkpoint, not only for stage 1's building from parts (the
# published scripts pass flash-attention to every stage).
LOAD_SETTINGS = frozenset({"attn_implementation"})
# `sicog train` model flags stage 1 gets from the cycle's keys.
PLANNED_MODEL: dict[str, str | None] = {"vision_tower": "vision_tower", "language_model": "language_model",
                                        "model_name_or_path": None}
# `sicog curate captions|reasoning` flags the plan writes. Every other curation option is taken by both tasks,
# so ``config.curate`` goes to both unchanged.
PLANNED_CURATE: dict[str, str | None] = {
    "threshold": "caption_threshold and reasoning_threshold", "min_agreement": "min_agreement",
    "encoder": "encoder", **dict.fromkeys(("input", "output_dir", "seed", "embeddings")),
}
# `sicog generate` flags the plan writes.
PLANNED_GENERATE: dict[str, str | None] = {
    "num_candidates": "caption_candidates and reasoning_candidates",
    "temperature": "caption_temperature and reasoning_temperature", "top_p": "top_p",
    "max_new_tokens": "caption_max_new_tokens and reasoning_max_new_tokens", "batch_size": "generation_batch_size",
    **dict.fromkeys(("model", "data", "image_folder", "output", "prompt", "seed", "no_progress")),
}


def train_flags(config: CycleConfig) -> list[Arg]:
    """``config.train`` as `sicog train` flags."""
    from sicog.train.arguments import DataArguments, SicogTrainingArguments

    known = dict.fromkeys(f.name for cls in (DataArguments, SicogTrainingArguments) for f in dataclasses.fields(cls))
    accumulation = config.train.get("gradient_accumulation_steps", 1)
    if isinstance(accumulation, bool) or not isinstance(accumulation, int) or accumulation < 1:
        raise ValueError(f"cycle config: key 'train': gradient_accumulation_steps must be a whole number of at "
                         f"least 1, got {accumulation!r}")
    return _flags(config.train, known, PLANNED_TRAIN, "train")


def model_flags(config: CycleConfig, world: World) -> list[Arg]:
    """The world's model settings and ``config.model`` as `sicog train` flags (building from parts)."""
    return _flags({**world.model_settings, **config.model}, _model_names(), PLANNED_MODEL, "model")


def load_flags(config: CycleConfig) -> list[Arg]:
    """The ``config.model`` settings (:data:`LOAD_SETTINGS`) every training step loads its checkpoint with (stage 1,
    which builds the model, gets all of ``config.model``)."""
    return _flags({k: v for k, v in config.model.items() if k in LOAD_SETTINGS}, _model_names(), PLANNED_MODEL,
                  "model")


def _model_names() -> dict[str, None]:
    from sicog.train.arguments import ModelArguments

    return dict.fromkeys(f.name for f in dataclasses.fields(ModelArguments))


def curate_flags(config: CycleConfig, encoding: bool | None = None) -> list[Arg]:
    """``config.curate`` as `sicog curate captions|reasoning` flags; ``encoding`` True: only how the texts are
    embedded (:class:`~sicog.curate.embed.EncoderSettings` and the chunk size, which `python -m
    sicog.curate.embed_file` takes under the same flags), False: all but those, None: all."""
    from sicog.curate.cli import curation_option_names
    from sicog.curate.embed import EncoderSettings

    settings = config.curate
    if encoding is not None:  # the two parts are checked as they are turned into flags, each by its call
        encoder = {f.name for f in dataclasses.fields(EncoderSettings)} | {"chunk_size"}
        settings = {k: v for k, v in settings.items() if (k in encoder) == encoding}
    return _flags(settings, curation_option_names(), PLANNED_CURATE, "curate", dashes=True)


def generate_flags(config: CycleConfig) -> list[Arg]:
    """``config.generate`` as `sicog generate` flags."""
    from sicog.generate.cli import generation_option_names

    return _flags(config.generate, generation_option_names(), PLANNED_GENERATE, "generate", dashes=True)


def setting_problems(config: CycleConfig) -> list[str]:
    """What is wrong with the settings the cycle passes on to commands by name (``train``, ``model``,
    ``generate``, ``curate``), one line per key (``key 'train': ...``); empty when they can all be used."""
    checks = (lambda: train_flags(config), lambda: _flags(config.model, _model_names(), PLANNED_MODEL, "model"),
              lambda: generate_flags(config), lambda: curate_flags(config))
    problems = []
    for check in checks:
        try:
            check()
        except ValueError as err:
            problems.append(str(err).removeprefix("cycle config: "))
    return problems
