"""Cycle configuration: one typed dataclass, filled from a packaged preset (toy, quick, paper) or a YAML file.

A setting left at None is not passed, so the command's own default applies: every default is written once,
where the command defines it. The training schedule, which no command default fits, is required; the toy
values live in the toy presets (sicog/configs/cycle_toy.yaml, cycle_quick.yaml), not here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sicog.cycle.arms import ARMS
from sicog.cycle.flags import setting_problems
from sicog.data.jsonl import RecordError
from sicog.data.sources import can_be_hub_id
from sicog.data.yaml_file import read_yaml
from sicog.toy.similarity import ENCODER_NAME as TOY_ENCODER


@dataclass
class CycleConfig:
    """Everything a cycle run depends on. A setting left out (None) is not passed, so the command's own default
    applies, except the training schedule (:data:`REQUIRED`), which no command default fits and every config
    names. The presets (sicog/configs/cycle_*.yaml) hold the values tuned for the toy world and the paper."""

    name: str = "toy"
    # Data: a toy world to build, or the paths of real datasets (relative to the config file).
    toy_size: str | None = "demo"
    world_seed: int = 0
    data: dict[str, str] = field(default_factory=dict)
    vision_tower: str | None = None
    language_model: str | None = None
    # Records of each unlabeled pool the cycle uses (None: all of them).
    unlabeled_images_limit: int | None = None
    unlabeled_questions_limit: int | None = None
    arms: tuple[str, ...] = tuple(ARMS)
    # Training: the same settings for every arm that runs a stage.
    batch_size: int | None = None
    # Stage 1's batch per device when it differs (the paper aligns with a global batch of 256, the
    # other stages use 128); None: batch_size.
    stage1_batch_size: int | None = None
    stage1_steps: int | None = None
    stage1_lr: float | None = None
    # Stage 1's trained parts (None: the stage's preset, sicog/train).
    stage1_tunable_parts: str | None = None
    stage0_steps: int | None = None
    stage15_steps: int | None = None
    stage2_steps: int | None = None
    finetune_lr: float | None = None
    # Arm F (--dpo) only.
    dpo_steps: int | None = None
    dpo_lr: float | None = None
    # More `sicog train` settings by name (any TrainingArguments or data argument: bf16, deepspeed, ...).
    train: dict[str, typing.Any] = field(default_factory=dict)
    # Model settings when stage 1 builds the model from parts (resampler_num_queries, scale_resolution, ...).
    model: dict[str, typing.Any] = field(default_factory=dict)
    # Generation and curation (None: the command's default). Candidates and temperature are set per task,
    # as the published README sets them for each generation script.
    caption_candidates: int | None = None
    reasoning_candidates: int | None = None
    caption_temperature: float | None = None
    reasoning_temperature: float | None = None
    top_p: float | None = None
    caption_max_new_tokens: int | None = None
    reasoning_max_new_tokens: int | None = None
    generation_batch_size: int | None = None
    # More `sicog generate` settings by name (cache, compile, dtype, ...), beside those the keys above set.
    generate: dict[str, typing.Any] = field(default_factory=dict)
    caption_threshold: float | None = None
    reasoning_threshold: float | None = None
    min_agreement: float | None = None
    # A sentence encoder (None: curation's packaged MiniLM), or "toy-facts": the toy world's fact encoder.
    encoder: str | None = None
    # More `sicog curate` settings by name (batch_size, trust_remote_code, max_length, query_prefix, ...).
    curate: dict[str, typing.Any] = field(default_factory=dict)
    # The command that starts Python in the encoder's own environment (an interpreter path, after a launcher such
    # as srun where it must run on a GPU node; ${VAR} read when the step starts). Set: the embeddings are computed
    # there (`python -m sicog.curate.embed_file`) and curation reads them, for an encoder that does not load with
    # this package's transformers (NV-Embed-v2). Empty: the encoder runs inside `sicog curate`.
    embed_command: list[str] = field(default_factory=list)
    # Evaluation (None: the command's default batch).
    eval_batch_size: int | None = None
    launcher: list[str] = field(default_factory=list)
    # CPU threads per step (None: torch's default). Tiny models are bound by per-operation overhead,
    # where one thread is fastest and immune to the spin-waiting of oversubscribed OpenMP threads.
    threads: int | None = None

    def __post_init__(self) -> None:
        real = [key for key in ("data", "vision_tower", "language_model") if getattr(self, key)]
        if self.toy_size is not None and real:
            # The toy world never reads them: a real-data config that kept the toy default would run the demo.
            raise ValueError(f"key(s) {', '.join(map(repr, real))} name real data, but toy_size is "
                             f"{self.toy_size!r} (the toy world); set toy_size: null for a cycle on real data")
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
        if self.encoder == TOY_ENCODER and self.toy_size is None:
            raise ValueError(f"encoder {TOY_ENCODER!r} reads the toy language; choose a sentence encoder for real data")
        if self.embed_command and self.encoder in (None, TOY_ENCODER):
            raise ValueError(f"embed_command runs a sentence encoder apart, but encoder is {self.encoder!r}; name the "
                             "encoder (its folder or hub id) or leave embed_command out")
        if self.embed_command and self.curate.get("keep_embeddings"):
            # The embed step's output is kept whole in the run folder; curation reading it has none to keep.
            raise ValueError("curate.keep_embeddings keeps the embeddings made inside `sicog curate`; with "
                             "embed_command they are the curate_*_embed steps' output, kept already: leave it out")
        self.arms = tuple(a for a in ARMS if a in self.arms)

    def to_dict(self) -> dict:
        """Plain data (for results.json)."""
        return dataclasses.asdict(self)


# The datasets of a real-data cycle (``data``): those every cycle reads, then optional ones (those arms need,
# and the image-use check's references).
DATA_REQUIRED = ("align", "cod", "cot", "sft", "unlabeled_images", "unlabeled_questions", "bench_mc", "image_folder")
DATA_OPTIONAL = (*dict.fromkeys(key for arm in ARMS.values() for key in arm.needs), "image_use")
# The datasets only `sicog train` reads, which may name several sources (a comma list, a brace pattern, a YAML
# mixture); every other one is one file, read by commands that take one (`curate mix`, `eval`, `data head`).
TRAINING_DATA = ("align", "sft")


# The training schedule: no command default fits it (`sicog train` would train three epochs at
# TrainingArguments' rate), so every config names it; the DPO arm's only with --dpo.
REQUIRED = ("batch_size", "stage1_steps", "stage1_lr", "stage0_steps", "stage15_steps", "stage2_steps", "finetune_lr")
REQUIRED_FOR_DPO = ("dpo_steps", "dpo_lr")


class ConfigError(ValueError):
    """A cycle config file that cannot be used; one line per problem, each naming the file and the key."""


# Inclusive bounds of the numeric settings (None: unbounded on that side).
RANGES: dict[str, tuple[float | None, float | None]] = {
    "world_seed": (0, None),
    "unlabeled_images_limit": (1, None),
    "unlabeled_questions_limit": (1, None),
    "batch_size": (1, None),
    "stage1_batch_size": (1, None),
    "stage1_steps": (1, None),
    "stage0_steps": (1, None),
    "stage15_steps": (1, None),
    "stage2_steps": (1, None),
    "dpo_steps": (1, None),
    "caption_candidates": (1, None),
    "reasoning_candidates": (1, None),
    "caption_max_new_tokens": (1, None),
    "reasoning_max_new_tokens": (1, None),
    "generation_batch_size": (1, None),
    "eval_batch_size": (1, None),
    "threads": (1, None),
    "caption_temperature": (0, None),
    "reasoning_temperature": (0, None),
    "top_p": (0, 1),
    "caption_threshold": (-1, 1),
    "reasoning_threshold": (-1, 1),
    "min_agreement": (0, 1),
}
POSITIVE = ("stage1_lr", "finetune_lr", "dpo_lr", "top_p")  # top_p also at most 1 (RANGES)


def _type_problem(value: object, hint: object) -> tuple[str | None, object]:
    """``(problem, value)``: what is wrong with ``value`` for the type ``hint`` (None if nothing), and the
    value to use (a YAML 1.1 string such as ``1e-3``, or an integer, becomes the float it means)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None, value
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return (None if ok else f"expected an integer, got {value!r}"), value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and isinstance(value, int):
            # `top_p: 1` is the setting `top_p: 1.0` is, so it passes on as the same text (and the same step key);
            # an integer past any float stays one, for the range check to name.
            with contextlib.suppress(OverflowError):
                value = float(value)
        return (None if ok else f"expected a number, got {value!r}"), value
    if hint is str:
        return (None if isinstance(value, str) else f"expected a string, got {value!r}"), value
    if origin in (list, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return (None if ok else f"expected a list of strings, got {value!r}"), value
    if origin is dict:
        values_are = typing.get_args(hint)[1]
        if values_are is str:
            ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
            return (None if ok else f"expected a mapping of names to paths, got {value!r}"), value
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and not isinstance(v, (dict, list)) for k, v in value.items())
        return (None if ok else f"expected a mapping of setting names to single values, got {value!r}"), value
    return None, value


def _value_problem(key: str, value: object) -> str | None:
    if key == "arms":
        unknown = sorted(set(value) - set(ARMS))
        if unknown:
            return f"unknown arm(s) {unknown}; choose from {list(ARMS)}"
        return None if "D" in value else "arm D (SICOG) is the point of the cycle; keep it among the arms"
    if key == "toy_size" and value is not None:
        from sicog.toy.datasets import SIZES

        return None if value in SIZES else f"unknown toy world size {value!r}; choose from {list(SIZES)}"
    if key == "data":
        unknown = sorted(set(value) - {*DATA_REQUIRED, *DATA_OPTIONAL})
        return f"unknown dataset(s) {unknown}; choose from {[*DATA_REQUIRED, *DATA_OPTIONAL]}" if unknown else None
    if value is None or isinstance(value, (str, list, dict)):
        return None
    if isinstance(value, int) and abs(value) >= 2**63:  # no step takes it (and math.isfinite overflows on it)
        return f"must fit in 64 bits, got a {len(str(abs(value)))}-digit number"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if key in POSITIVE and not value > 0:
        return f"must be greater than 0, got {value}"
    low, high = RANGES.get(key, (None, None))
    if low is not None and value < low or high is not None and value > high:
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        return f"must be {bounds}, got {value}"
    return None


def check_values(values: object, path: Path, dpo: bool = False) -> dict:
    """The settings of a config file, checked against :class:`CycleConfig`'s fields (with ``dpo``: for a run
    with arm F).

    Raises :class:`ConfigError` listing every problem (file shape, unknown keys, types, ranges; when there are
    none of those, required settings left out), one per line.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), got {type(values).__name__}")
    hints = typing.get_type_hints(CycleConfig)
    problems, checked = [], {}
    for key, value in values.items():
        if key not in hints:
            problems.append(f"{path}: key {key!r}: unknown setting (see docs/pipeline.md for the settings)")
            continue
        problem, value = _type_problem(value, hints[key])
        problem = problem or _value_problem(key, value)
        if problem:
            problems.append(f"{path}: key {key!r}: {problem}")
        checked[key] = value
    # Once the settings given are sound: a misspelt key would otherwise be reported twice, as unknown and as
    # the required one left out.
    for key in () if problems else (*REQUIRED, *(REQUIRED_FOR_DPO if dpo else ())):
        if checked.get(key) is None:
            why = "with --dpo" if key in REQUIRED_FOR_DPO else "no command default fits every dataset"
            problems.append(f"{path}: key {key!r}: required ({why}); the presets in sicog/configs/cycle_*.yaml "
                            "show values")
    if problems:
        raise ConfigError("\n".join(problems))
    return checked


PRESETS = ("toy", "quick", "paper")
# A config file's key naming the preset whose values it starts from (its own keys win).
PRESET_KEY = "preset"
# The preset a toy config (one without `data`) starts from unless it names another: the toy world's own
# values (pool sizes, token budgets, schedule) then come with a file that sets only, say, `world_seed: 1`.
TOY_BASE = "toy"


def config_path(spec: str) -> Path:
    """The file of a packaged preset name (``toy``, ``quick``, ``paper``) or of a YAML file path (a preset's name
    is the preset unless a file of that name exists: a folder named ``quick`` does not hide it)."""
    return Path(spec) if os.path.isfile(spec) or spec not in PRESETS else preset_file(spec)


def _read_yaml(path: Path) -> object:
    """A config file's YAML, or :class:`ConfigError` naming the file, line and column of what cannot be read."""
    try:
        return read_yaml(path)
    except RecordError as err:  # invalid YAML, or bytes that are not UTF-8
        raise ConfigError(str(err)) from None


def preset_file(name: str) -> Path:
    """The packaged file of preset ``name``."""
    return Path(str(resources.files("sicog.configs") / f"cycle_{name}.yaml"))


def with_preset(values: object, path: Path) -> object:
    """A config file's settings over those of the preset it starts from: the one its ``preset`` key names, else
    for a toy config (no ``data``) the toy preset; a real-data config without ``preset`` starts from nothing, so
    each setting it leaves out takes its command's own default. The presets themselves start from nothing."""
    if not isinstance(values, dict):
        return values
    if path in {preset_file(name) for name in PRESETS}:
        return _over({}, values)
    values = dict(values)
    name = values.pop(PRESET_KEY, None if "data" in values else TOY_BASE)
    if name is None:
        return _over({}, values)
    if name not in PRESETS:
        raise ConfigError(f"{path}: key {PRESET_KEY!r}: one of {', '.join(PRESETS)}, got {name!r}")
    preset = preset_file(name)
    preset_values = _paths_beside(_read_yaml(preset), preset)  # the preset's paths are its file's
    emptied = [key for key in SECTIONS if values.get(key) == {} and preset_values.get(key)]
    if emptied:  # it replaced the preset's section before sections were merged: a file of that time changes meaning
        raise ConfigError("\n".join(
            f"{path}: key {key!r}: {{}} adds nothing to the {name} preset's {key} settings "
            f"({', '.join(sorted(preset_values[key]))}); write {key}: null to drop them, or leave the key out"
            for key in emptied))
    return _over(preset_values, values)


# Settings passed on to a command by name: a file's section adds to its preset's, setting by setting, so that
# `train: {report_to: tensorboard}` over the paper preset keeps its bf16 and DeepSpeed. A setting of null removes the
# preset's (the command's own default then holds); a section of null removes all of them.
SECTIONS = ("train", "model", "generate", "curate")


def _over(preset: dict, values: dict) -> dict:
    """A file's ``values`` over its ``preset``'s: whole values replaced, :data:`SECTIONS` merged by setting."""
    merged = {**preset, **values}
    for key in SECTIONS:
        if key in values and values[key] is None:
            merged[key] = {}
        section = merged.get(key)
        if isinstance(preset.get(key), dict) and isinstance(values.get(key), dict):
            section = {**preset[key], **values[key]}
        if isinstance(section, dict):
            merged[key] = {name: value for name, value in section.items() if value is not None}
    return merged


def _paths_beside(values: dict, path: Path) -> dict:
    """``values`` (a config file's, checked, or a packaged preset's) with the paths they name (datasets, the vision
    tower, language model and sentence encoder, a projector's weights, a DeepSpeed JSON file) relative to the folder
    of their config file ``path`` unless absolute; Hub ids stay ids."""
    values, base = dict(values), path.parent
    if "data" in values:
        values["data"] = {k: _sources_beside(str(v), base, path, k) if k in TRAINING_DATA else _beside(str(v), base)
                          for k, v in values["data"].items()}
    for key in ("vision_tower", "language_model"):
        if values.get(key):
            values[key] = _model_beside(values[key], base)
    if values.get("encoder") and values["encoder"] != TOY_ENCODER:
        values["encoder"] = _model_beside(values["encoder"], base)
    if isinstance(values.get("model", {}).get("projector"), str):
        values["model"] = {**values["model"], "projector": _beside(values["model"]["projector"], base)}
    deepspeed = values.get("train", {}).get("deepspeed")
    if isinstance(deepspeed, str) and deepspeed not in ("zero2", "zero3") and not deepspeed.lstrip().startswith("{"):
        values["train"] = {**values["train"], "deepspeed": _beside(deepspeed, base)}  # a JSON file, not inline JSON
    return values


def _beside(value: str, base: Path) -> str:
    """A path of the config file: relative to its folder unless absolute, made absolute (a relative result, such as
    "models/clip" of "./models/clip" beside "cfg.yaml", would read as a Hub id where nothing of that name is); ".."
    is kept, for the system to resolve through linked folders."""
    return value if os.path.isabs(value) else str((base / value).absolute())


def _model_beside(value: str, base: Path) -> str:
    """A model's path of the config file (:func:`_beside`); a name that can be a Hub model id (``owner/name``) with
    nothing of that name beside the file stays an id."""
    # "../../model_weight/clip" cannot be an id: a path, read beside the file as the preset says.
    if os.path.isabs(value) or (base / value).exists() or not can_be_hub_id(value):
        return _beside(value, base)
    return value


def _sources_beside(value: str, base: Path, path: Path, key: str) -> str:
    """A training dataset with each source it names (a comma list, a brace pattern) relative to the config's folder;
    a Hub dataset id (``owner/name``) with no such file there stays an id."""
    from sicog.data.jsonl import RecordError
    from sicog.data.sources import names_hub_dataset, split_data_path

    def beside(source: str) -> str:
        return source if names_hub_dataset(source) and not (base / source).exists() else _beside(source, base)

    try:
        return ",".join(map(beside, split_data_path(value)))
    except RecordError as err:
        raise ConfigError(f"{path}: key 'data': {key}: {err}") from None


def load_config(spec: str, dpo: bool = False) -> CycleConfig:
    """A packaged preset name (``toy``, ``quick``, ``paper``) or a YAML file path, checked for a run (with
    ``dpo``: one with arm F): every value and the names of the settings passed on to commands
    (:class:`ConfigError`). A file's settings lie over its preset's (:func:`with_preset`)."""
    path = config_path(spec)
    if not path.is_file():
        raise ConfigError(f"no cycle config {spec!r} (a YAML file, or one of: {', '.join(PRESETS)})")
    loaded = with_preset({} if (raw := _read_yaml(path)) is None else raw, path)
    values = _paths_beside(check_values(loaded, path, dpo), path)
    if "arms" in values:
        values["arms"] = tuple(values["arms"])
    try:
        config = CycleConfig(**values)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    # Settings passed on to commands by name are checked here too, so that a run never starts on them (their
    # values by the commands' own parsers: sicog.cycle.commands.load_checked).
    problems = setting_problems(config)
    if problems:
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    return config
