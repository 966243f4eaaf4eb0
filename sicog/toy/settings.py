"""Image settings of the toy world's tiny model: the single source of truth for its slicing geometry.

Toy images are 64 to 128 pixels a side, so with a 64-pixel scale resolution a good share of them is
cut into 2-4 slices while the global (source) view stays about 64x64.
"""

from __future__ import annotations

TOY_SCALE_RESOLUTION = 64
TOY_PATCH_SIZE = 8
TOY_MAX_SLICE_NUMS = 4
