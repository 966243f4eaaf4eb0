"""The published training-time image augmentation (``--augment release``).

The published loader (train.py, ``uhd_v1`` data mode) changes image sizes, not pixels: an image whose
file name marks it as TextVQA is resized to a 1024-pixel long side, and any other image, with
probability 0.1 and unless it already makes 6 slices, is resized to about 6 slices' area so that the
model sees many 6-slice grids. (Its ``aug_image`` colour/JPEG augmentation is defined but never called.)
"""

from __future__ import annotations

import math
import random

from PIL import Image

from sicog.model.builders import RELEASE_INFERENCE_LONG_SIDE
from sicog.model.processing import SicogProcessor
from sicog.model.slicing import fit_long_side

GRID_SLICES = 6
GRID_PROBABILITY = 0.1
TEXT_HEAVY_MARKERS = ("TextVQA", "textvqa")


def release_augment(image: Image.Image, name: str, processor: SicogProcessor, rng: random.Random) -> Image.Image:
    """``image`` resized as the published loader would resize it (one random draw unless text-heavy)."""
    width, height = image.size
    if any(marker in name for marker in TEXT_HEAVY_MARKERS):
        return image.resize(fit_long_side(width, height, RELEASE_INFERENCE_LONG_SIDE), Image.Resampling.BICUBIC)
    if rng.random() < GRID_PROBABILITY and processor.plan(width, height).num_slices != GRID_SLICES:
        scale = math.sqrt(GRID_SLICES * processor.config.scale_resolution**2 / height / width)
        return image.resize((int(width * scale), int(height * scale)), Image.Resampling.BICUBIC)
    return image
