"""Cycle configuration: one typed dataclass, filled from a packaged preset (toy, quick) or a YAML file."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

ARMS = ("A", "B", "C", "D", "E")
ARM_NAMES = {
    "A": "base model",
    "B": "baseline pre-training (short captions + annotated data)",
    "C": "self-training without curation (one random candidate)",
    "D": "SICOG (curated self-generated data)",
    "E": "oracle (ground-truth CoD/CoT for the same data)",
    "F": "SICOG + DPO on its curation pairs (--dpo)",
}


@dataclass
class CycleConfig:
    """Everything a cycle run depends on; its hash decides which finished steps can be reused.

    The defaults are the toy preset (``make demo``); other presets and config files override them.
    """

    name: str = "toy"
    # Data: a toy world to build, or the paths of real datasets (relative to the config file).
    toy_size: str | None = "demo"
    world_seed: int = 0
    data: dict[str, str] = field(default_factory=dict)
    vision_tower: str | None = None
    language_model: str | None = None
    unlabeled_images_limit: int | None = 150
    unlabeled_questions_limit: int | None = 150
    arms: tuple[str, ...] = ARMS
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
    train_flags: list[str] = field(default_factory=list)
    model_flags: list[str] = field(default_factory=list)
    # Generation and curation.
    num_candidates: int = 6
    temperature: float = 0.7
    top_p: float = 0.9
    # The toy world's longest CoD caption is 248 tokens; fewer would cut step 5, the part curation reads.
    caption_max_new_tokens: int = 256
    reasoning_max_new_tokens: int = 120
    generation_batch_size: int = 16
    caption_threshold: float = 0.7
    reasoning_threshold: float = 0.7
    min_agreement: float = 0.5
    encoder: str | None = None
    curate_flags: list[str] = field(default_factory=list)
    # Evaluation.
    eval_batch_size: int = 16
    launcher: list[str] = field(default_factory=list)
    # CPU threads per process (None: torch's default). Tiny models are bound by per-operation overhead,
    # where one thread is fastest and immune to the spin-waiting of oversubscribed OpenMP threads.
    threads: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown:
            raise ValueError(f"unknown arm(s) {sorted(unknown)}; choose from {ARMS}")
        if "D" not in self.arms:
            raise ValueError("arm D (SICOG) is the point of the cycle; keep it among the arms")
        if self.toy_size is None and not (self.vision_tower and self.language_model and self.data):
            raise ValueError("a cycle on real data needs vision_tower, language_model and data paths")
        if self.toy_size is None and {"E"} & set(self.arms) and "oracle_captions" not in self.data:
            raise ValueError("arm E needs data.oracle_captions and data.oracle_reasoning")
        self.arms = tuple(a for a in ARMS if a in self.arms)

    def to_dict(self) -> dict:
        """Plain data (for hashing and the manifest)."""
        return dataclasses.asdict(self)


def load_config(spec: str) -> CycleConfig:
    """A packaged preset name (``toy``, ``quick``, ``paper``) or a YAML file path."""
    packaged = resources.files("sicog.configs") / f"cycle_{spec}.yaml"
    path = Path(spec) if os.path.exists(spec) else Path(str(packaged))
    if not path.is_file():
        raise FileNotFoundError(f"no cycle config {spec!r} (a YAML file, or one of: toy, quick, paper)")
    values = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(CycleConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {unknown}")
    base = path.parent
    if "data" in values:
        values["data"] = {k: str(v if os.path.isabs(str(v)) else base / str(v)) for k, v in values["data"].items()}
    for key in ("vision_tower", "language_model"):
        if values.get(key) and not os.path.isabs(values[key]) and (base / values[key]).exists():
            values[key] = str(base / values[key])
    if "arms" in values:
        values["arms"] = tuple(values["arms"])
    return CycleConfig(**values)
