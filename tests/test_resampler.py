import pytest
import torch

from sicog.model.resampler import Resampler, cell_bounds


@pytest.mark.parametrize("shape", [(24, 24), (1, 20), (20, 1), (9, 7), (2, 2), (30, 17)])
@pytest.mark.parametrize("queries", [144, 64])
def test_outputs_exactly_num_queries(shape, queries):
    torch.manual_seed(0)
    resampler = Resampler(32, 64, num_queries=queries, num_heads=2)
    out = resampler(torch.randn(2, *shape, 32))
    assert out.shape == (2, queries, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(24, 24), (25, 22), (1, 20)])
def test_each_query_sees_only_its_cell(shape):
    torch.manual_seed(0)
    resampler = Resampler(16, 32, num_queries=16, num_heads=2).eval()
    features = torch.randn(1, *shape, 16)
    base = resampler(features)
    g = resampler.grid
    for qi, qj in [(0, 0), (1, 2), (3, 3)]:
        r0, r1 = cell_bounds(shape[0], g, qi)
        c0, c1 = cell_bounds(shape[1], g, qj)
        changed = features + 5.0
        changed[0, r0:r1, c0:c1] = features[0, r0:r1, c0:c1]
        out = resampler(changed)
        index = qi * g + qj
        torch.testing.assert_close(out[0, index], base[0, index])
        others = [k for k in range(g * g) if k != index]
        assert not torch.allclose(out[0, others], base[0, others])


def test_position_embeddings_are_frozen():
    resampler = Resampler(16, 32, num_queries=16, num_heads=2)
    names = {name for name, _ in resampler.named_parameters()}
    assert "query_pos" not in names and "cell_key_pos" not in names
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
