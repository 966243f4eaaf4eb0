"""`sicog info`: describe a model (published architecture, tiny preset, or a checkpoint) without loading weights."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from sicog.data.argtypes import os_error_text

if TYPE_CHECKING:
    from sicog.model.configuration import SicogConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``sicog info``."""
    parser.add_argument("--checkpoint", help="a SICOG checkpoint directory (reads config.json only)")
    parser.add_argument("--image-size", default="1024x768", help="WIDTHxHEIGHT of an example image to cost in tokens")


def checkpoint_config(checkpoint: str) -> SicogConfig:
    """The configuration in ``checkpoint/config.json``; ``ValueError`` (one line naming the file) when the file is
    missing, unreadable, damaged, not a SICOG model's, or has a field of the wrong type or settings that do not
    work together.

    The file is checked first (:func:`~sicog.model.checkpoint_config.read_checkpoint_config`): transformers
    would read a plain Qwen2 or CLIP config (what model_weight/ holds) into SicogConfig's defaults and describe a
    7B model that is not there, and fails without naming the file on a field of the wrong type.
    """
    from sicog.model.checkpoint_config import read_checkpoint_config
    from sicog.model.configuration import SicogConfig

    try:
        read_checkpoint_config(checkpoint)
    except OSError as err:
        raise ValueError(os_error_text(err)) from None
    return SicogConfig.from_pretrained(checkpoint)


def describe(config: SicogConfig, image_size: tuple[int, int]) -> dict:
    """Parameter counts (built on the meta device: no memory, no download) and token costs."""
    import torch

    from sicog.model.layout import image_token_count
    from sicog.model.modeling import SicogForConditionalGeneration
    from sicog.model.slicing import fit_long_side, plan_slices

    with torch.device("meta"):
        model = SicogForConditionalGeneration(config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    def tokens(width: int, height: int) -> tuple[tuple[int, int] | None, int]:
        plan = plan_slices(width, height, scale_resolution=config.scale_resolution, patch_size=config.patch_size,
                           max_slice_nums=config.max_slice_nums)
        return plan.grid, image_token_count(plan.grid, config.resampler_num_queries, config.image_layout)

    grid, training_tokens = tokens(*image_size)
    side = config.inference_long_side
    generation_size = image_size if side is None else fit_long_side(*image_size, side)
    generation_grid, generation_tokens = tokens(*generation_size)
    return {
        "parameters": count(model),
        "vision_tower": count(model.vision_tower),
        "resampler": count(model.resampler),
        "language_model": count(model.language_model),
        "tokens_per_slice": config.resampler_num_queries,
        "example_image": f"{image_size[0]}x{image_size[1]}",
        "image_layout": config.image_layout,
        "example_grid": grid,
        "example_image_tokens": training_tokens,
        "example_generation_size": f"{generation_size[0]}x{generation_size[1]}",
        "example_generation_grid": generation_grid,
        "example_generation_image_tokens": generation_tokens,
    }


def run(args: argparse.Namespace) -> int:
    """Print the description as JSON; 2 when the checkpoint or the image size is unusable."""
    try:
        width, height = (int(v) for v in args.image_size.lower().split("x"))
        if width < 1 or height < 1:
            raise ValueError
    except ValueError:
        print(f"sicog info: error: --image-size must be WIDTHxHEIGHT in pixels, got {args.image_size!r}",
              file=sys.stderr)
        return 2
    # Imported here: `sicog info --help` needs neither torch nor transformers.
    from sicog.model.builders import real_config

    try:
        if args.checkpoint == "":  # `--checkpoint "$CKPT"` with CKPT unset: the published model was described instead
            raise ValueError("--checkpoint is empty: give a checkpoint folder, or leave the flag out for the paper's "
                             "model")
        config = checkpoint_config(args.checkpoint) if args.checkpoint is not None else real_config()
    except ValueError as err:
        print(f"sicog info: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(describe(config, (width, height)), indent=2))
    return 0
