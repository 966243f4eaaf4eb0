"""The spatially constrained resampler: a fixed number of query tokens per image view.

Learnable queries sit on a g x g grid (g = 12 -> 144 queries). In ``cell`` mode the view's feature map
is cut into the same g x g grid and each query attends only to its own cell, pooled to a fixed
``bins x bins`` window, so every token summarises one region of the slice (LLaVA-UHD's "spatially
constrained" design, vectorised: all cells of all views go through one attention call). In ``global``
mode every query attends to the whole map (original LLaVA-UHD). Position embeddings are fixed 2-D
sine-cosine tables stored as buffers, so they can never receive gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table of shape ``(height * width, dim)`` (half rows, half columns)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freqs
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freqs
    row_emb = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_emb = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([row_emb, col_emb], dim=-1).reshape(height * width, dim).float()


def cell_bounds(length: int, grid: int, index: int) -> tuple[int, int]:
    """Rows (or columns) ``[start, end)`` of a feature map of ``length`` covered by cell ``index`` of ``grid``.

    These are exactly the inputs that adaptive average pooling reads for that cell's bins.
    """
    return (index * length) // grid, -((-(index + 1) * length) // grid)


class Resampler(nn.Module):
    """Map a batch of feature maps ``(B, h, w, C_vision)`` to ``(B, num_queries, width)`` tokens."""

    def __init__(
        self,
        vision_width: int,
        width: int,
        num_queries: int = 144,
        num_heads: int = 8,
        attention: str = "cell",
        cell_bins: int = 2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.grid = math.isqrt(num_queries)
        if self.grid**2 != num_queries:
            raise ValueError(f"num_queries={num_queries} is not a perfect square")
        if attention not in ("cell", "global"):
            raise ValueError(f"attention={attention!r} is not 'cell' or 'global'")
        self.attention = attention
        self.cell_bins = cell_bins
        self.width = width
        self.query = nn.Parameter(torch.zeros(num_queries, width))
        self.kv_proj = nn.Linear(vision_width, width, bias=False)
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(width, eps=eps)
        self.ln_kv = nn.LayerNorm(width, eps=eps)
        self.ln_post = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Linear(width, width, bias=False)
        nn.init.trunc_normal_(self.query, std=0.02)
        # Buffers, not parameters: frozen by construction; persistent so checkpoints are self-contained.
        self.register_buffer("query_pos", sincos_2d(self.grid, self.grid, width))
        side = self.grid * cell_bins
        self.register_buffer("cell_key_pos", sincos_2d(side, side, width))

    @property
    def num_queries(self) -> int:
        """Tokens produced for every view."""
        return self.grid**2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features``: ``(B, h, w, C_vision)`` patch features of equally sized views."""
        batch, height, width, _ = features.shape
        kv = self.ln_kv(self.kv_proj(features))
        queries = self.ln_q(self.query) + self.query_pos.to(kv.dtype)
        if self.attention == "global":
            pos = sincos_2d(height, width, self.width).to(device=kv.device, dtype=kv.dtype)
            values = kv.reshape(batch, height * width, self.width)
            out, _ = self.attn(queries.expand(batch, -1, -1), values + pos, values, need_weights=False)
        else:
            out = self._cell_attention(kv, queries)
        return self.proj(self.ln_post(out))

    def _cell_attention(self, kv: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, g, k, width = kv.shape[0], self.grid, self.cell_bins, self.width
        pooled = F.adaptive_avg_pool2d(kv.permute(0, 3, 1, 2), (g * k, g * k)).permute(0, 2, 3, 1)
        keys_pos = pooled + self.cell_key_pos.to(kv.dtype).reshape(g * k, g * k, width)
        # (B, g, k, g, k, D) -> (B * g * g, k * k, D): one short key sequence per query
        def cells(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, g, k, g, k, width).permute(0, 1, 3, 2, 4, 5).reshape(batch * g * g, k * k, width)

        q = queries.unsqueeze(0).expand(batch, -1, -1).reshape(batch * g * g, 1, width)
        out, _ = self.attn(q, cells(keys_pos), cells(pooled), need_weights=False)
        return out.reshape(batch, g * g, width)
