"""Running the CLIP vision tower on image views of any size.

The tower's own forward is not used: HF's CLIP calls its position-embedding module for views of the
native size but reads the table directly for other sizes, so under DeepSpeed ZeRO-3 two ranks with
different view sizes would gather different modules and deadlock. Here every view takes the same path
(the table interpolated to the view's patch grid, an exact copy at the native size), and the layers
after ``feature_layer`` are not run at all.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn


def tower_body(vision_tower: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``pre_layrnorm`` and ``encoder`` (older CLIPs wrap it in ``vision_model``)."""
    return getattr(vision_tower, "vision_model", vision_tower)


def layers_used(vision_tower: nn.Module, feature_layer: int) -> int:
    """How many encoder layers produce the hidden state ``feature_layer`` (-2: all but the last)."""
    total = len(tower_body(vision_tower).encoder.layers)
    return total + 1 + feature_layer if feature_layer < 0 else feature_layer


def directly_read_parameters(vision_tower: nn.Module) -> list[nn.Parameter]:
    """Parameters read outside their own module's forward (ZeRO-3 must gather them explicitly)."""
    embeddings = tower_body(vision_tower).embeddings
    return [embeddings.class_embedding, embeddings.position_embedding.weight]


def group_by_size(views: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``views`` grouped by ``(height, width)``, so equal sizes run as one batch without padding."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, view in enumerate(views):
        if view.ndim != 3 or view.shape[0] != 3:
            raise ValueError(f"image view {index} has shape {tuple(view.shape)}; expected (3, height, width)")
        groups[(int(view.shape[1]), int(view.shape[2]))].append(index)
    return dict(groups)


def _positions(table: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """CLS position + the square patch-position table resized (bicubic) to a ``rows x cols`` grid."""
    side = math.isqrt(table.shape[0] - 1)
    if rows == cols == side:  # what bicubic gives at the native size, without its slow kernel on every forward
        return table
    grid = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(table.dtype)])


def patch_features(vision_tower: nn.Module, pixels: torch.Tensor, feature_layer: int, patch_size: int) -> torch.Tensor:
    """Features ``(B, h, w, C)`` of the chosen hidden layer, CLS dropped, position embeddings interpolated."""
    batch, _, height, width = pixels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"view of {width}x{height} pixels is not a multiple of the patch size {patch_size}")
    body = tower_body(vision_tower)
    embeddings = body.embeddings
    patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
    cls = embeddings.class_embedding.to(patches.dtype).expand(batch, 1, -1)
    rows, cols = height // patch_size, width // patch_size
    positions = _positions(embeddings.position_embedding.weight, rows, cols).to(patches.dtype)
    hidden = torch.cat([cls, patches], dim=1) + positions
    hidden = body.pre_layrnorm(hidden)
    for layer in body.encoder.layers[: layers_used(vision_tower, feature_layer)]:
        hidden = layer(hidden, None)
    return hidden[:, 1:].reshape(batch, rows, cols, hidden.shape[-1])
