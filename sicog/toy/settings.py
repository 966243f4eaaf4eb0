"""Image settings of the toy world's tiny model: the single source of truth for its slicing geometry.

One patch is 16 pixels and the scale resolution 32, so a 32x32 image of the "grid" layout (2x2 cells
of 16 pixels) is seen as exactly one patch per cell, while the larger images of the "sliced" layout
(32-pixel cells, up to 96x96) are cut into 2-4 slices.
"""

from __future__ import annotations

TOY_SCALE_RESOLUTION = 32
TOY_PATCH_SIZE = 16
TOY_MAX_SLICE_NUMS = 4
