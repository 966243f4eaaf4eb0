"""High-resolution image slicing (LLaVA-UHD v1 / MiniCPM-V geometry).

An image is cut into a grid of slices whose count follows its area (``ceil(W*H / scale^2)``, capped by
``max_slice_nums``) and whose grid shape best matches its aspect ratio in log space; each slice and a
downsized global ("source") image are resized to about ``scale^2`` pixels with sides that are multiples
of the patch size. Sizes are floored to the patch size, which reproduces the published geometry
(1024x768 -> 3x2 slices of 308x350 + a 378x280 global image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SlicePlan:
    """Where an image goes: the global image size, and the grid and per-slice size when it is sliced."""

    source_size: tuple[int, int]
    grid: tuple[int, int] | None = None
    slice_size: tuple[int, int] | None = None

    @property
    def num_slices(self) -> int:
        """Number of slices (0 when the image is not sliced)."""
        return 0 if self.grid is None else self.grid[0] * self.grid[1]


def _floor_to(length: float, multiple: int) -> int:
    return max(int(length / multiple) * multiple, multiple)


def fit_area(
    width: float, height: float, scale_resolution: int, patch_size: int, allow_upscale: bool
) -> tuple[int, int]:
    """Resize ``(width, height)`` to about ``scale_resolution**2`` pixels keeping the aspect ratio.

    Without ``allow_upscale`` a smaller image keeps its size. Sides are floored to the patch size.
    """
    if width * height > scale_resolution**2 or allow_upscale:
        ratio = width / height
        height = int(scale_resolution / math.sqrt(ratio))
        width = int(height * ratio)
    return _floor_to(width, patch_size), _floor_to(height, patch_size)


def best_grid(width: int, height: int, num_slices: int, max_slice_nums: int) -> tuple[int, int]:
    """The ``(cols, rows)`` grid among ``num_slices - 1 .. num_slices + 1`` slices closest to the aspect ratio.

    Candidates are tried by increasing slice count, then column count; a later one wins only with a strictly
    smaller floating-point error, as in the published code. Mirror grids of a square image do not tie in
    floating point (``log(2/3)`` rounds further from 0 than ``log(3/2)``): 1024x1024 gets 3 cols x 2 rows.
    """
    log_ratio = math.log(width / height)
    best, best_error = (1, 1), math.inf
    for total in (num_slices - 1, num_slices, num_slices + 1):
        if total <= 1 or total > max_slice_nums:
            continue
        for cols in range(1, total + 1):
            if total % cols:
                continue
            error = abs(log_ratio - math.log(cols / (total // cols)))
            if error < best_error:
                best, best_error = (cols, total // cols), error
    return best


def plan_slices(
    width: int,
    height: int,
    *,
    scale_resolution: int = 336,
    patch_size: int = 14,
    max_slice_nums: int = 7,
    never_split: bool = False,
) -> SlicePlan:
    """Plan how an image of ``width x height`` pixels is sliced; raises ``ValueError`` for an empty image."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image has zero size ({width}x{height})")
    num_slices = min(math.ceil(width * height / scale_resolution**2), max_slice_nums)
    if num_slices <= 1 or never_split:
        return SlicePlan(fit_area(width, height, scale_resolution, patch_size, allow_upscale=True))
    source = fit_area(width, height, scale_resolution, patch_size, allow_upscale=False)
    cols, rows = best_grid(width, height, num_slices, max_slice_nums)
    cell_w = _floor_to(width, cols) / cols
    cell_h = _floor_to(height, rows) / rows
    slice_size = fit_area(cell_w, cell_h, scale_resolution, patch_size, allow_upscale=True)
    return SlicePlan(source, (cols, rows), slice_size)


def fit_long_side(width: int, height: int, side: int) -> tuple[int, int]:
    """Size with the long side resized to ``side`` and the other truncated in proportion (the published
    generation scripts' resize before slicing; a square's height is the long side). The short side is at
    least 1 pixel, so an image more elongated than ``side``:1 still has one."""
    if width > height:
        return side, max(1, int(side / width * height))
    return max(1, int(side / height * width)), side


def slice_image(image: Image.Image, plan: SlicePlan) -> tuple[Image.Image, list[Image.Image]]:
    """Cut ``image`` by ``plan``: the resized global image and the slices in row-major order."""
    source = image.resize(plan.source_size, Image.Resampling.BICUBIC)
    if plan.grid is None:
        return source, []
    (cols, rows), (slice_w, slice_h) = plan.grid, plan.slice_size
    refined = image.resize((slice_w * cols, slice_h * rows), Image.Resampling.BICUBIC)
    slices = [
        refined.crop((c * slice_w, r * slice_h, (c + 1) * slice_w, (r + 1) * slice_h))
        for r in range(rows)
        for c in range(cols)
    ]
    return source, slices
