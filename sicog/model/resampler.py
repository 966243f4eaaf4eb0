"""The spatially constrained resampler: a fixed number of query tokens per image view.

Learnable queries sit on a g x g grid (g = 12 -> 144 queries). In ``cell`` mode the view's feature map
is cut into the same g x g grid and each query attends only to its own cell (LLaVA-UHD's "spatially
constrained" design, vectorised: all cells of all views go through one attention call). How a cell
becomes a short key sequence is ``pooling``:

- ``roi_align`` (the published ``adapt_spatial_resampler_v1``): the g x g query position table is
  resized (bicubic) onto the feature map and added to the keys, then every cell is sampled to a small
  grid of RoIAlign bins (2x4 ... 4x2, chosen by the map's aspect ratio) with torchvision's
  ``roi_align`` arithmetic (``aligned=False``, adaptive sampling ratio), written here with core torch;
- ``average`` (earlier releases of this package): every cell is average-pooled to ``cell_bins x
  cell_bins`` and a fixed table of that finer grid is added after pooling.

In ``global`` mode every query attends to the whole map (original LLaVA-UHD). Position tables are
fixed 2-D sine-cosine tables (MAE layout: first half columns, second half rows) stored as buffers, so
they never receive gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# RoIAlign bin grids as (columns, rows), in the order the published resampler tries them (ties keep the first).
BIN_GRIDS = ((4, 2), (3, 2), (4, 3), (3, 3), (2, 4), (2, 3), (3, 4))
# Resized key position tables a resampler keeps (least recently used dropped first): a view's map size follows
# its image's aspect ratio, so the sizes are many, but a few (the slices') make up most views.
KEY_POSITION_SIZES = 32


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table ``(height * width, dim)``: half columns, then half rows (MAE)."""
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freqs
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freqs
    row_emb = torch.cat([rows.sin(), rows.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    col_emb = torch.cat([cols.sin(), cols.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    return torch.cat([col_emb, row_emb], dim=-1).reshape(height * width, dim).float()


def resize_table(table: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A square ``(g*g, D)`` position table resized (bicubic, in float32) to ``(height * width, D)``."""
    side = math.isqrt(table.shape[0])
    grid = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(height * width, -1).to(table.dtype)


def bin_grid(width: int, height: int) -> tuple[int, int]:
    """``(rows, cols)`` of RoIAlign bins per cell: the candidate closest to the map's aspect ratio in log space."""
    log_ratio = math.log(width / height)
    best, best_error = (3, 3), math.inf
    for cols, rows in BIN_GRIDS:
        error = abs(log_ratio - math.log(cols / rows))
        if error < best_error:
            best, best_error = (rows, cols), error
    return best


def cell_edges(height: int, width: int, grid: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractional ``(start, end)`` of the ``grid`` cells along rows and along columns, shape ``(grid, 2)`` each.

    The cells split the map into ``grid x grid`` equal boxes; their corners are rounded through the
    features' dtype as the published resampler does (a bfloat16 map gets bfloat16 box corners).
    """
    aspect = width / height
    cell_h = math.sqrt(height * width / grid**2 / aspect)
    cell_w = cell_h * aspect

    def edges(step: float) -> torch.Tensor:
        starts = [i * step for i in range(grid)]
        box = torch.tensor([[s, s + step] for s in starts], dtype=torch.float32)
        return box.to(dtype).float()

    return edges(cell_h), edges(cell_w)


def _axis_weights(edges: torch.Tensor, bins: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear weights ``(grid, bins, length)`` summed over each bin's sample points, and the points per bin.

    RoIAlign's arithmetic along one axis: boxes at least one unit long, ``ceil(size / bins)`` samples
    per bin at the centres of equal sub-bins, points clamped to the map as torchvision does.
    """
    start = edges[:, 0]
    size = (edges[:, 1] - start).clamp(min=1.0)
    bin_size = size / bins
    samples = torch.ceil(size / bins)
    count = int(samples.max())
    b = torch.arange(bins, dtype=torch.float32)[None, :, None]
    k = torch.arange(count, dtype=torch.float32)[None, None, :]
    start, bin_size, samples = start[:, None, None], bin_size[:, None, None], samples[:, None, None]
    pos = start + b * bin_size + (k + 0.5) * bin_size / samples
    valid = (k < samples) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0.0)
    low = pos.floor()
    at_end = low >= length - 1
    low = torch.where(at_end, torch.full_like(low, length - 1), low)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low)
    high = torch.where(at_end, low, low + 1)
    weights = torch.zeros(*pos.shape, length)
    weights.scatter_add_(-1, low.long()[..., None], ((1 - frac) * valid)[..., None])
    weights.scatter_add_(-1, high.long()[..., None], (frac * valid)[..., None])
    return weights.sum(dim=2), samples[:, 0, 0]


def roi_align_cells(features: torch.Tensor, grid: int) -> torch.Tensor:
    """RoIAlign every cell of a ``grid x grid`` split of ``(B, h, w, C)`` -> ``(B * grid * grid, bins, C)``.

    Equal to ``torchvision.ops.roi_align(x.float(), boxes, bin_grid(w, h), spatial_scale=1)`` over the
    cell boxes (cells in row-major order, bins row-major), computed as two separable matmuls in float32
    and returned in the input's dtype.
    """
    batch, height, width, channels = features.shape
    rows, cols = bin_grid(width, height)
    row_edges, col_edges = cell_edges(height, width, grid, features.dtype)
    wy, ny = _axis_weights(row_edges, rows, height)
    wx, nx = _axis_weights(col_edges, cols, width)
    wy, wx = wy.to(features.device), wx.to(features.device)
    x = features.float()
    partial = torch.einsum("ipr,brwc->bipwc", wy, x)
    pooled = torch.einsum("jqw,bipwc->bijpqc", wx, partial)
    pooled = pooled / (ny[:, None] * nx[None, :]).to(features.device)[None, :, :, None, None, None]
    return pooled.reshape(batch * grid * grid, rows * cols, channels).to(features.dtype)


class Resampler(nn.Module):
    """Map a batch of feature maps ``(B, h, w, C_vision)`` to ``(B, num_queries, width)`` tokens."""

    def __init__(
        self,
        vision_width: int,
        width: int,
        num_queries: int = 144,
        num_heads: int = 8,
        attention: str = "cell",
        pooling: str = "roi_align",
        cell_bins: int = 2,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.grid = math.isqrt(num_queries)
        if self.grid**2 != num_queries:
            raise ValueError(f"num_queries={num_queries} is not a perfect square")
        if attention not in ("cell", "global"):
            raise ValueError(f"attention={attention!r} is not 'cell' or 'global'")
        if pooling not in ("roi_align", "average"):
            raise ValueError(f"pooling={pooling!r} is not 'roi_align' or 'average'")
        self.attention = attention
        self.pooling = pooling
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
        # The table the cache was made from is held, so a later table cannot reuse its address unnoticed.
        self._key_pos_table: torch.Tensor | None = None
        self._key_pos_state: tuple[int, int, bool] | None = None
        self._key_pos_cache: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
        if pooling == "average":
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
            out, _ = self.attn(queries.expand(batch, -1, -1), values + pos, values, need_weights=True)
        elif self.pooling == "roi_align":
            key_pos = self._key_positions(height, width, kv.dtype)
            keys, values = roi_align_cells(kv + key_pos, self.grid), roi_align_cells(kv, self.grid)
            out = self._attend_cells(queries, keys, values, batch)
        else:
            out = self._average_cells(kv, queries)
        return self.proj(self.ln_post(out))

    def _key_positions(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The query position table resized onto a ``height x width`` map, ``(height, width, D)`` in ``dtype``.

        PyTorch's bicubic kernel is slow for a table this wide (3% of a training step on a GPU, with the tower's
        own resize), and the result depends only on the map's size, so it is kept per size. The key holds the
        table itself, its storage and its version counter: loading a state dict and DDP's buffer broadcast
        write the table in place, ``.to()`` replaces it, and each of them starts a fresh cache. Compiled graphs
        fuse the resize instead, and inference tensors keep no version counter: both compute it every time.
        """
        table = self.query_pos
        if torch.compiler.is_compiling() or table.is_inference():
            return resize_table(table, height, width).to(dtype).reshape(height, width, self.width)
        state = (table._version, table.data_ptr(), torch.is_inference_mode_enabled())
        if self._key_pos_table is not table or self._key_pos_state != state:
            self._key_pos_table, self._key_pos_state, self._key_pos_cache = table, state, {}
        key = (height, width, dtype)
        resized = self._key_pos_cache.pop(key, None)
        if resized is None:
            resized = resize_table(table, height, width).to(dtype).reshape(height, width, self.width)
            if len(self._key_pos_cache) >= KEY_POSITION_SIZES:
                del self._key_pos_cache[next(iter(self._key_pos_cache))]
        self._key_pos_cache[key] = resized  # last in the (ordered) dict: the least recently used goes first
        return resized

    def _attend_cells(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """One query per cell against that cell's keys ``(B * g * g, n, D)``."""
        q = queries.unsqueeze(0).expand(batch, -1, -1).reshape(batch * self.num_queries, 1, self.width)
        # need_weights=True, the published call's default, takes the same kernel: in bfloat16 need_weights=False (the
        # fused path) rounds about half the outputs one step apart from the release's; the weights cost little here.
        out, _ = self.attn(q, keys, values, need_weights=True)
        return out.reshape(batch, self.num_queries, self.width)

    def _average_cells(self, kv: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        batch, g, k, width = kv.shape[0], self.grid, self.cell_bins, self.width
        pooled = F.adaptive_avg_pool2d(kv.permute(0, 3, 1, 2), (g * k, g * k)).permute(0, 2, 3, 1)
        keys_pos = pooled + self.cell_key_pos.to(kv.dtype).reshape(g * k, g * k, width)

        # (B, g, k, g, k, D) -> (B * g * g, k * k, D): one short key sequence per query
        def cells(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, g, k, g, k, width).permute(0, 1, 3, 2, 4, 5).reshape(batch * g * g, k * k, width)

        return self._attend_cells(queries, cells(keys_pos), cells(pooled), batch)
