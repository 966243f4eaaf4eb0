"""What a cycle runs on: the toy world (built here, with ground truth and tiny starting parts) or real data.

Both give the same keys (``align``, ``cod``, ``cot``, ``sft``, ``unlabeled_images``, ``unlabeled_questions``,
``bench_mc`` and optional ones), so the plan does not care which world it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sicog.cycle.config import DATA_REQUIRED, CycleConfig
from sicog.cycle.engine import Arg, Input, Out, Ref, Step


@dataclass
class World:
    """Datasets by key, the image folder, the starting vision tower and LLM, and the toy ground truth if any."""

    files: dict[str, str]
    # Toy images are few and small, so their folder is hashed like any input; a real image folder is named only.
    image_folder: Arg
    vision_tower: Arg
    language_model: Arg
    ground_truth: str | None = None
    toy_root: str | None = None
    model_settings: dict = field(default_factory=dict)
    # Steps the world needs before the cycle (the toy parts).
    steps: list[Step] = field(default_factory=list)

    def input(self, key: str) -> Input:
        """A dataset of the world as a cycle input."""
        if key not in self.files:
            raise KeyError(f"the world has no {key!r} dataset")
        return Input(self.files[key])


def toy_world(config: CycleConfig, out: Path) -> World:
    """Build (or reuse) the toy world under ``out/world``; its parts are a step of each seed."""
    from sicog.toy.build import build_world, load_manifest
    from sicog.toy.model import toy_model_settings

    root = out / "world"
    try:
        build_world(root, seed=config.world_seed, size=config.toy_size)
    except FileExistsError:  # the run's world, from another world seed or size: the cycle owns it, replace it
        build_world(root, seed=config.world_seed, size=config.toy_size, force=True)
    manifest = load_manifest(root)
    files = {k: str(v) for k, v in manifest.items() if isinstance(v, Path) and v.is_file()}
    parts = Step("parts", ("toy", "parts", "--world", Input(str(root)), "--out", Out()))
    return World(files=files, image_folder=Input(str(manifest["image_folder"])), vision_tower=Ref("parts", "vision"),
                 language_model=Ref("parts", "llm"), ground_truth=str(manifest["ground_truth"]), toy_root=str(root),
                 model_settings=toy_model_settings(), steps=[parts])


def real_world(config: CycleConfig) -> World:
    """The datasets and starting checkpoints named by a real config."""
    missing = [k for k in DATA_REQUIRED if k not in config.data]
    if missing:
        raise ValueError(f"cycle config: data lacks {', '.join(missing)}")
    files = {k: v for k, v in config.data.items() if k != "image_folder"}
    return World(files=files, image_folder=config.data["image_folder"], vision_tower=Input(config.vision_tower),
                 language_model=Input(config.language_model))


def make_world(config: CycleConfig, out: Path) -> World:
    """The toy world when the config names a toy size, else the real one."""
    return toy_world(config, out) if config.toy_size else real_world(config)
