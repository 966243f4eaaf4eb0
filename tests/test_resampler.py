import math
import sys
from pathlib import Path

import pytest
import torch

from sicog.model.resampler import (
    KEY_POSITION_SIZES,
    Resampler,
    bin_grid,
    cell_edges,
    resize_table,
    roi_align_cells,
    sincos_2d,
)

sys.path.insert(0, str(Path(__file__).parent))
from roi_align_scalar import roi_align  # noqa: E402


def read_window(length: int, grid: int, index: int, pooling: str) -> tuple[int, int]:
    """``[start, end)`` of the rows (or columns) a cell's keys are computed from."""
    if pooling == "average":  # the inputs adaptive average pooling reads for the cell's bins
        return (index * length) // grid, -((-(index + 1) * length) // grid)
    # RoIAlign samples inside the fractional box and interpolates with the next row/column.
    start, end = index * length / grid, (index + 1) * length / grid
    return math.floor(start), min(math.ceil(end), length - 1) + 1


@pytest.mark.parametrize("shape", [(24, 24), (1, 20), (20, 1), (9, 7), (2, 2), (30, 17)])
@pytest.mark.parametrize("queries", [144, 64])
def test_outputs_exactly_num_queries(shape, queries):
    torch.manual_seed(0)
    resampler = Resampler(32, 64, num_queries=queries, num_heads=2)
    out = resampler(torch.randn(2, *shape, 32))
    assert out.shape == (2, queries, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", ["roi_align", "average"])
@pytest.mark.parametrize("shape", [(24, 24), (25, 22), (1, 20)])
def test_each_query_sees_only_its_cell(shape, pooling):
    torch.manual_seed(0)
    resampler = Resampler(16, 32, num_queries=16, num_heads=2, pooling=pooling).eval()
    features = torch.randn(1, *shape, 16)
    base = resampler(features)
    g = resampler.grid
    for qi, qj in [(0, 0), (1, 2), (3, 3)]:
        r0, r1 = read_window(shape[0], g, qi, pooling)
        c0, c1 = read_window(shape[1], g, qj, pooling)
        changed = features + 5.0
        changed[0, r0:r1, c0:c1] = features[0, r0:r1, c0:c1]
        out = resampler(changed)
        index = qi * g + qj
        torch.testing.assert_close(out[0, index], base[0, index])
        others = [k for k in range(g * g) if k != index]
        assert not torch.allclose(out[0, others], base[0, others])


@pytest.mark.parametrize("pooling", ["roi_align", "average"])
def test_position_embeddings_are_frozen(pooling):
    resampler = Resampler(16, 32, num_queries=16, num_heads=2, pooling=pooling)
    names = {name for name, _ in resampler.named_parameters()}
    assert "query_pos" not in names and "cell_key_pos" not in names
    assert ("cell_key_pos" in dict(resampler.named_buffers())) == (pooling == "average")
    resampler(torch.randn(1, 4, 4, 16)).sum().backward()
    assert resampler.query.grad is not None
    assert not resampler.query_pos.requires_grad and resampler.query_pos.grad is None


def test_global_attention_mixes_the_whole_map():
    torch.manual_seed(0)
    resampler = Resampler(16, 32, num_queries=64, num_heads=2, attention="global").eval()
    features = torch.randn(1, 8, 8, 16)
    base = resampler(features)
    changed = features.clone()
    changed[0, 7, 7] += 10
    assert resampler(changed).shape == (1, 64, 32)
    assert not torch.allclose(resampler(changed)[0, 0], base[0, 0])


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="perfect square"):
        Resampler(16, 32, num_queries=10)
    with pytest.raises(ValueError, match="attention"):
        Resampler(16, 32, num_queries=16, attention="local")


@pytest.mark.parametrize("shape", [(24, 24), (25, 22), (22, 25), (1, 20), (20, 1), (9, 7), (36, 36), (2, 70), (3, 3)])
@pytest.mark.parametrize("grid", [12, 8])
def test_cell_pooling_equals_scalar_roi_align(shape, grid):
    """The vectorised pooling equals RoIAlign computed point by point on the same cell boxes."""
    torch.manual_seed(0)
    height, width = shape
    x = torch.randn(2, height, width, 6)
    rows, cols = cell_edges(height, width, grid, torch.float32)
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    boxes = [[b, cols[j, 0], rows[i, 0], cols[j, 1], rows[i, 1]] for b in range(2) for i, j in cells]
    pooled = roi_align(x.permute(0, 3, 1, 2), torch.tensor(boxes), bin_grid(width, height))
    expected = pooled.flatten(-2).transpose(1, 2)
    torch.testing.assert_close(roi_align_cells(x, grid), expected, rtol=0, atol=2e-6)


def test_bin_grid_follows_the_aspect_ratio():
    assert bin_grid(24, 24) == (3, 3)
    assert bin_grid(48, 24) == (2, 4)  # twice as wide: 2 rows x 4 columns of bins
    assert bin_grid(24, 48) == (4, 2)
    assert bin_grid(25, 22) == (3, 3)


def test_sincos_table_puts_columns_first():
    table = sincos_2d(3, 4, 8).reshape(3, 4, 8)
    assert torch.equal(table[0, :, :4], table[2, :, :4])  # first half depends on the column only
    assert torch.equal(table[:, 0, 4:], table[:, 3, 4:])  # second half on the row only
    assert not torch.equal(table[0, 0, :4], table[0, 1, :4])


@pytest.mark.parametrize("attention", ["cell", "global"])
def test_attention_in_bfloat16_is_bit_equal_to_the_published_call(attention):
    """The published resampler calls nn.MultiheadAttention sequence-first with its default need_weights=True; the
    same weights and inputs must round the same way in bfloat16, not one step apart."""
    torch.manual_seed(0)
    resampler = Resampler(16, 64, num_queries=16, num_heads=2, attention=attention).eval().to(torch.bfloat16)
    captured = {}
    attn_forward = resampler.attn.forward

    def record(query, key, value, **kwargs):
        captured["inputs"], captured["out"] = (query, key, value), attn_forward(query, key, value, **kwargs)[0]
        return captured["out"], None

    resampler.attn.forward = record
    with torch.no_grad():
        resampler(torch.randn(3, 6, 6, 16, dtype=torch.bfloat16))
        published_attn = torch.nn.MultiheadAttention(64, 2).to(torch.bfloat16)  # sequence-first, as published
        published_attn.load_state_dict(resampler.attn.state_dict())
        published, _ = published_attn(*(t.transpose(0, 1) for t in captured["inputs"]))
    assert captured["out"].dtype == torch.bfloat16
    assert torch.equal(captured["out"], published.transpose(0, 1))


def key_positions_uncached(resampler: Resampler, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    return resize_table(resampler.query_pos, height, width).to(dtype).reshape(height, width, resampler.width)


def test_key_positions_are_kept_per_map_size_and_equal_a_fresh_resize():
    resampler = Resampler(16, 32, num_queries=16, num_heads=2)
    first = resampler._key_positions(6, 5, torch.float32)
    assert resampler._key_positions(6, 5, torch.float32) is first
    sizes = [(6, 5, torch.float32), (5, 6, torch.float32), (6, 5, torch.bfloat16), (7, 7, torch.bfloat16)]
    for height, width, dtype in sizes:
        assert torch.equal(resampler._key_positions(height, width, dtype),
                           key_positions_uncached(resampler, height, width, dtype))
    for size in range(1, KEY_POSITION_SIZES + 10):
        resampler._key_positions(size, 3, torch.float32)
    assert len(resampler._key_pos_cache) == KEY_POSITION_SIZES
    assert torch.equal(resampler._key_positions(6, 5, torch.float32), first)  # dropped, made again alike


@pytest.mark.parametrize("change", ["load_state_dict", "in_place", "to_dtype"])
def test_key_positions_follow_a_changed_table(change):
    """Loading a checkpoint and DDP's buffer broadcast write the table in place, ``.to()`` replaces it: each must
    reach the keys, as in a resampler made with that table."""
    torch.manual_seed(0)
    resampler = Resampler(16, 32, num_queries=16, num_heads=2).eval()
    features = torch.randn(2, 6, 5, 16)
    resampler(features)  # fills the cache from the old table
    other = torch.randn_like(resampler.query_pos)
    if change == "load_state_dict":
        resampler.load_state_dict({**resampler.state_dict(), "query_pos": other})
    elif change == "in_place":
        resampler.query_pos.copy_(other)
    else:
        resampler.query_pos = other.double()
        resampler.to(torch.float32)
        other = other.double().float()
    fresh = Resampler(16, 32, num_queries=16, num_heads=2).eval()
    fresh.load_state_dict({**resampler.state_dict(), "query_pos": other})
    with torch.no_grad():
        assert torch.equal(resampler(features), fresh(features))


def test_key_positions_made_in_inference_mode_do_not_reach_training():
    torch.manual_seed(0)
    resampler = Resampler(16, 32, num_queries=16, num_heads=2)
    features = torch.randn(1, 6, 5, 16)
    with torch.inference_mode():
        resampler(features)
    assert not resampler._key_positions(6, 5, torch.float32).is_inference()
    resampler(features).sum().backward()
    assert resampler.query.grad is not None
