"""Cycle configuration: one typed dataclass, filled from a packaged preset (toy, quick, paper) or a YAML file.

A generation or curation setting left at None is not passed, so the command's own default applies:
every default is written once, where the command defines it.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from sicog.cycle.arms import ARMS


@dataclass
class CycleConfig:
    """Everything a cycle run depends on. The defaults are the toy preset (``make demo``); other presets and
    config files override them."""

    name: str = "toy"
    # Data: a toy world to build, or the paths of real datasets (relative to the config file).
    toy_size: str | None = "demo"
    world_seed: int = 0
    data: dict[str, str] = field(default_factory=dict)
    vision_tower: str | None = None
    language_model: str | None = None
    unlabeled_images_limit: int | None = 150
    unlabeled_questions_limit: int | None = 150
    arms: tuple[str, ...] = tuple(ARMS)
    # Training: the same settings for every arm that runs a stage.
    batch_size: int = 8
    stage1_steps: int = 1000
    # 2e-3 trains the toy parts' captions but leaves the image unused (held-out caption loss with
    # shuffled images equals the loss with the right ones); 1e-3 grounds them (docs/pipeline.md).
    stage1_lr: float = 1e-3
    stage1_tunable_parts: str | None = "vision_tower,resampler,language_model"
    stage0_steps: int = 200
    stage15_steps: int = 150
    stage2_steps: int = 200
    finetune_lr: float = 1e-3
    dpo_steps: int = 60
    dpo_lr: float = 2e-4
    # More `sicog train` settings by name (any TrainingArguments or data argument: bf16, deepspeed, ...).
    train: dict[str, typing.Any] = field(default_factory=dict)
    # Model settings when stage 1 builds the model from parts (resampler_num_queries, scale_resolution, ...).
    model: dict[str, typing.Any] = field(default_factory=dict)
    # Generation and curation (None: the command's default).
    num_candidates: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # The toy world's longest CoD caption is 248 tokens; fewer would cut step 5, the part curation reads.
    caption_max_new_tokens: int | None = 256
    reasoning_max_new_tokens: int | None = 120
    generation_batch_size: int | None = 16
    caption_threshold: float | None = 0.7
    reasoning_threshold: float | None = 0.7
    min_agreement: float | None = None
    encoder: str | None = None
    # More `sicog curate` settings by name (batch_size, trust_remote_code, max_length, query_prefix, ...).
    curate: dict[str, typing.Any] = field(default_factory=dict)
    # Evaluation.
    eval_batch_size: int = 16
    launcher: list[str] = field(default_factory=list)
    # CPU threads per step (None: torch's default). Tiny models are bound by per-operation overhead,
    # where one thread is fastest and immune to the spin-waiting of oversubscribed OpenMP threads.
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {tuple(ARMS)}")
        if "D" not in self.arms:
            raise ValueError("arm D (SICOG) is the point of the cycle; keep it among the arms")
        if self.toy_size is None and not (self.vision_tower and self.language_model and self.data):
            raise ValueError("a cycle on real data needs vision_tower, language_model and data paths")
        if self.toy_size is None:
            for arm in self.arms:
                missing = [k for k in ARMS[arm].needs if k not in self.data]
                if missing:
                    raise ValueError(f"arm {arm} needs data.{' and data.'.join(missing)}")
        self.arms = tuple(a for a in ARMS if a in self.arms)

    def to_dict(self) -> dict:
        """Plain data (for results.json)."""
        return dataclasses.asdict(self)


def _type_error(value: object, annotation: object) -> str | None:
    """Why ``value`` does not fit ``annotation`` (None when it does); ints are accepted where floats are."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is typing.Any:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = [_type_error(value, a) for a in args]
        return None if None in errors else " or ".join(e for e in errors if e)
    if annotation is type(None):
        return None if value is None else "null"
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "a list"
        return next((f"a list of {e}" for e in (_type_error(v, args[0]) for v in value) if e), None)
    if origin is dict:
        return None if isinstance(value, dict) else "a mapping"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    return None if isinstance(value, annotation) else f"a {annotation.__name__}"


POSITIVE = ("batch_size", "stage1_steps", "stage0_steps", "stage15_steps", "stage2_steps", "dpo_steps", "num_candidates",
            "caption_max_new_tokens", "reasoning_max_new_tokens", "generation_batch_size", "eval_batch_size", "threads",
            "unlabeled_images_limit", "unlabeled_questions_limit", "stage1_lr", "finetune_lr", "dpo_lr")


def check_values(values: object, source: str) -> list[str]:
    """Every problem of a config mapping, one line each naming ``source`` and the key."""
    if not isinstance(values, dict):
        return [f"{source}: a cycle config is a mapping of settings, got {type(values).__name__}"]
    hints = typing.get_type_hints(CycleConfig)
    problems = [f"{source}: unknown setting {key!r}" for key in values if key not in hints]
    for key, value in values.items():
        if key not in hints:
            continue
        wrong = _type_error(value, hints[key])
        if wrong:
            problems.append(f"{source}: {key} must be {wrong}, got {value!r}")
        elif key in POSITIVE and value is not None and value <= 0:
            problems.append(f"{source}: {key} must be positive, got {value!r}")
    return problems


def load_config(spec: str) -> CycleConfig:
    """A packaged preset name (``toy``, ``quick``, ``paper``) or a YAML file path; raises ValueError listing
    every problem (file and key) of an invalid one."""
    packaged = resources.files("sicog.configs") / f"cycle_{spec}.yaml"
    path = Path(spec) if os.path.exists(spec) else Path(str(packaged))
    if not path.is_file():
        raise FileNotFoundError(f"no cycle config {spec!r} (a YAML file, or one of: toy, quick, paper)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable YAML file ({str(err).splitlines()[0]})") from None
    values = {} if values is None else values
    problems = check_values(values, str(path))
    if problems:
        raise ValueError("\n".join(problems))
    base = path.parent
    if "data" in values:
        values["data"] = {k: str(v if os.path.isabs(str(v)) else base / str(v)) for k, v in values["data"].items()}
    for key in ("vision_tower", "language_model"):
        if values.get(key) and not os.path.isabs(values[key]) and (base / values[key]).exists():
            values[key] = str(base / values[key])
    if "arms" in values:
        values["arms"] = tuple(values["arms"])
    try:
        return CycleConfig(**values)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
