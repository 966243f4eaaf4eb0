"""Running the CLIP vision tower on image views of any size."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn


def group_by_size(views: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``views`` grouped by ``(height, width)``, so equal sizes run as one batch without padding."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, view in enumerate(views):
        if view.ndim != 3 or view.shape[0] != 3:
            raise ValueError(f"image view {index} has shape {tuple(view.shape)}; expected (3, height, width)")
        groups[(int(view.shape[1]), int(view.shape[2]))].append(index)
    return dict(groups)


def patch_features(vision_tower: nn.Module, pixels: torch.Tensor, feature_layer: int, patch_size: int) -> torch.Tensor:
    """Features ``(B, h, w, C)`` of the chosen hidden layer, CLS dropped, position embeddings interpolated."""
    batch, _, height, width = pixels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"view of {width}x{height} pixels is not a multiple of the patch size {patch_size}")
    out = vision_tower(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
    hidden = out.hidden_states[feature_layer][:, 1:]
    return hidden.reshape(batch, height // patch_size, width // patch_size, hidden.shape[-1])
