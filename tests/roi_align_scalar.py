"""torchvision's ``roi_align`` (``aligned=False``, adaptive sampling ratio) as plain scalar loops.

An independent check for the core-torch version in ``sicog.model.resampler`` and a stand-in for
torchvision where its compiled operators cannot load (a CUDA wheel beside a CPU-only torch). It
follows the documented algorithm point by point: no vectorisation, no shared code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

F32 = np.float32  # torchvision computes sample positions in the input's precision (float32 here)


def _bilinear(plane: torch.Tensor, y: float, x: float) -> torch.Tensor:
    height, width = plane.shape[-2:]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return torch.zeros(plane.shape[0], dtype=plane.dtype)
    y, x = max(y, F32(0.0)), max(x, F32(0.0))
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = F32(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = F32(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = F32(1.0) - ly, F32(1.0) - lx
    weights = [float(hy * hx), float(hy * lx), float(ly * hx), float(ly * lx)]
    return (
        weights[0] * plane[:, y_low, x_low]
        + weights[1] * plane[:, y_low, x_high]
        + weights[2] * plane[:, y_high, x_low]
        + weights[3] * plane[:, y_high, x_high]
    )


def roi_align(features, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """``features`` (N, C, H, W), ``boxes`` (K, 5) rows ``[batch, x1, y1, x2, y2]`` -> (K, C, ph, pw)."""
    assert not aligned and sampling_ratio == -1 and spatial_scale == 1.0
    pooled_h, pooled_w = output_size
    out = torch.zeros(boxes.shape[0], features.shape[1], pooled_h, pooled_w, dtype=features.dtype)
    for k, row in enumerate(boxes.float().numpy()):
        index, x1, y1, x2, y2 = row
        plane = features[int(index)]
        roi_w, roi_h = max(x2 - x1, F32(1.0)), max(y2 - y1, F32(1.0))
        bin_h, bin_w = roi_h / F32(pooled_h), roi_w / F32(pooled_w)
        grid_h, grid_w = math.ceil(roi_h / F32(pooled_h)), math.ceil(roi_w / F32(pooled_w))
        count = max(grid_h * grid_w, 1)
        for ph in range(pooled_h):
            for pw in range(pooled_w):
                total = torch.zeros(features.shape[1], dtype=features.dtype)
                for iy in range(grid_h):
                    y = y1 + F32(ph) * bin_h + F32(iy + 0.5) * bin_h / F32(grid_h)
                    for ix in range(grid_w):
                        x = x1 + F32(pw) * bin_w + F32(ix + 0.5) * bin_w / F32(grid_w)
                        total += _bilinear(plane, y, x)
                out[k, :, ph, pw] = total / count
    return out
