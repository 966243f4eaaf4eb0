"""Where an image's tokens go in the sequence: placeholder ids (processor) and feature order (model).

Two layouts, chosen by ``SicogConfig.image_layout``:

- ``release`` (SICOG's published ``llava_arch.py``): the slices' query grids are stitched into one
  large grid, row of features by row of features; every feature row of the stitched grid ends with a
  newline id; then one separator (the comma id when the grid has several columns, else the newline
  id), then the global view's queries. A 3x2-slice image with 144 queries per view costs
  ``2*12 * (3*12 + 1) + 1 + 144 = 1033`` tokens.
- ``uhd_v1`` (the LLaVA-UHD v1 branch, this package's earlier layout): each slice's queries in turn,
  each followed by the comma id (the newline id after the last slice of a row), then the global
  view's queries: ``6*144 + 6 + 144 = 1014`` tokens for the same image.

An unsliced image is its global view's queries in both layouts.
"""

from __future__ import annotations

import math

import torch

LAYOUTS = ("release", "uhd_v1")


def image_token_ids(
    grid: tuple[int, int] | None, num_queries: int, image_id: int, comma_id: int, newline_id: int, layout: str
) -> list[int]:
    """Placeholder and separator ids standing for one image sliced on ``grid`` = (cols, rows) (None: unsliced)."""
    block = [image_id] * num_queries
    if grid is None:
        return block
    cols, rows = grid
    ids: list[int] = []
    if layout == "release":
        side = math.isqrt(num_queries)
        for _ in range(rows * side):
            ids += [image_id] * (cols * side) + [newline_id]
        ids.append(comma_id if cols > 1 else newline_id)
    elif layout == "uhd_v1":
        for _ in range(rows):
            for c in range(cols):
                ids += block + [comma_id if c < cols - 1 else newline_id]
    else:
        raise ValueError(f"image layout {layout!r} is not one of {LAYOUTS}")
    return ids + block


def image_token_count(grid: tuple[int, int] | None, num_queries: int, layout: str) -> int:
    """How many sequence positions one image takes (placeholders and separators)."""
    return len(image_token_ids(grid, num_queries, 0, 1, 2, layout))


def order_slice_features(features: torch.Tensor, grid: tuple[int, int], layout: str) -> torch.Tensor:
    """Slice features ``(rows * cols, Q, D)`` (row-major slices) -> ``(rows * cols * Q, D)`` in sequence order."""
    cols, rows = grid
    num_slices, num_queries, dim = features.shape
    if layout == "uhd_v1":
        return features.reshape(num_slices * num_queries, dim)
    side = math.isqrt(num_queries)
    stitched = features.reshape(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4)
    return stitched.reshape(num_slices * num_queries, dim)
