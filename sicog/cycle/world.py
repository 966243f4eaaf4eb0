"""What a cycle runs on: the toy world (built here, with ground truth and tiny starting parts) or real data.

Both give the same keys (``align``, ``cod``, ``cot``, ``sft``, ``unlabeled_images``, ``unlabeled_questions``,
``bench_mc`` and optional ones), so the plan does not care which world it runs on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sicog.cycle.config import DATA_REQUIRED, TRAINING_DATA, CycleConfig
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
        """A dataset of the world as a cycle input, with every file it reads (a comma list's, a YAML mixture's
        and its entries') as its sources."""
        if key not in self.files:
            raise KeyError(f"the world has no {key!r} dataset")
        value = self.files[key]
        if key not in TRAINING_DATA:
            return Input(value)
        from sicog.data.mixture import data_sources
        from sicog.data.sources import names_hub_dataset, split_data_path

        # A mixture that is not there yet is a source of its own (named missing), not one to open.
        parts = [source for part in split_data_path(value)
                 for source in (data_sources(part) if os.path.isfile(part) else [part])]
        if parts == [value] and not names_hub_dataset(value):
            return Input(value)
        # A Hub dataset id (the value, a part of the list or a mixture entry) enters the key by its name.
        hub = tuple(filter(names_hub_dataset, parts))
        return Input(value, tuple(part for part in parts if part not in hub), hub)


def toy_input(root: str, *keys: str) -> Input:
    """The toy world folder ``root`` as the input of a step that reads its manifest and the world's files ``keys``
    (keys of its manifest): the step's key hashes those alone, so an edited benchmark reruns the steps reading it,
    not the toy parts and everything trained from them."""
    from sicog.toy.build import FILES, MANIFEST

    return Input(root, (os.path.join(root, MANIFEST), *(os.path.join(root, FILES[key]) for key in keys)))


def model_input(value: str) -> Input:
    """A starting model (a vision tower, a language model) as a cycle input: a folder, hashed by content, or a Hub
    model id (nothing of that name here), which enters the key by its name."""
    from sicog.data.sources import can_be_hub_id

    if not os.path.exists(value) and can_be_hub_id(value):
        return Input(value, (), (value,))
    return Input(value)


def toy_world_change(config: CycleConfig, out: Path) -> str | None:
    """Why a run would build the toy world in ``out/world`` before its steps, or None when the world there is
    the config's (same world version, seed and size)."""
    from sicog.toy.build import WORLD_VERSION, load_manifest

    try:
        manifest = load_manifest(out / "world")
    except FileNotFoundError:
        return "there is none yet"
    except ValueError as err:
        return f"the one there is damaged ({err})"
    have = tuple(manifest.get(key) for key in ("version", "seed", "size"))
    want = (WORLD_VERSION, config.world_seed, config.toy_size)
    if have == want:
        return None
    return f"the one there is world version {have[0]}, seed {have[1]}, size {have[2]}; the config's is " \
           f"world version {want[0]}, seed {want[1]}, size {want[2]}"


def toy_world(config: CycleConfig, out: Path, build: bool = True) -> World:
    """The toy world under ``out/world``, built (or reused) unless ``build`` is false (a dry run: its paths
    only); its parts are a step of each seed. The caller holds the run's lock on ``out``."""
    from sicog.toy.build import FILES, FOLDERS, build_world
    from sicog.toy.model import toy_model_settings

    root = out / "world"
    if build:
        try:
            build_world(root, seed=config.world_seed, size=config.toy_size)
        except FileExistsError:  # the run's world, from another world seed or size: the cycle owns it, replace it
            build_world(root, seed=config.world_seed, size=config.toy_size, force=True)
    files = {key: str(root / name) for key, name in FILES.items() if key not in FOLDERS}
    parts = Step("parts", ("toy", "parts", "--world", toy_input(str(root), "tokenizer"), "--out", Out()))
    return World(files=files, image_folder=Input(str(root / FILES["image_folder"])),
                 vision_tower=Ref("parts", "vision"), language_model=Ref("parts", "llm"),
                 ground_truth=files["ground_truth"], toy_root=str(root), model_settings=toy_model_settings(),
                 steps=[parts])


def real_world(config: CycleConfig) -> World:
    """The datasets and starting checkpoints named by a real config."""
    missing = [k for k in DATA_REQUIRED if k not in config.data]
    if missing:
        raise ValueError(f"cycle config: key 'data': lacks {', '.join(missing)}")
    files = {k: v for k, v in config.data.items() if k != "image_folder"}
    return World(files=files, image_folder=config.data["image_folder"], vision_tower=model_input(config.vision_tower),
                 language_model=model_input(config.language_model))


def make_world(config: CycleConfig, out: Path, build: bool = True) -> World:
    """The toy world when the config names a toy size (built unless ``build`` is false), else the real one."""
    return toy_world(config, out, build) if config.toy_size else real_world(config)
