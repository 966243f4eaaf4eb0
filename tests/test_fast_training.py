"""The fast paths of training (sicog/train/fast_paths.py) give the plain path's loss and gradients."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_modeling import mixed_batch

from sicog.train.fast_paths import FastPathError, compile_layers, fused_loss, repeated_layers


def reference_kernel(weight: torch.Tensor, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """What the fused kernel computes, written plainly: the summed next-token NLL of ``hidden @ weight.T``."""
    return F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100, reduction="sum")


def loss_and_gradients(model, batch, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model(**batch, **kwargs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("num_items_in_batch", [None, torch.tensor(17)])
def test_fused_loss_path_equals_the_llms_own_loss(tiny_model_factory, num_items_in_batch):
    """Same targets (shifted, -100 ignored), same normalisation (mean, or sum over the trainer's token count)."""
    model, processor = tiny_model_factory(seed=2)
    model.train()
    batch = mixed_batch(processor)
    extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    plain_loss, plain_grads = loss_and_gradients(model, batch, **extra)
    model.fused_loss = reference_kernel
    try:
        fused_loss_value, fused_grads = loss_and_gradients(model, batch, **extra)
        assert model(**batch).logits is None  # the fused path never makes the logits
    finally:
        model.fused_loss = None
    assert torch.allclose(fused_loss_value, plain_loss, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-6), name


def test_fused_loss_falls_back_on_a_cpu_and_says_why_when_forced():
    cpu = torch.device("cpu")
    assert fused_loss("auto", cpu) is None and fused_loss("off", cpu) is None
    with pytest.raises(FastPathError, match="needs a CUDA device"):
        fused_loss("liger", cpu)
    with pytest.raises(FastPathError, match="must be one of auto, liger, off"):
        fused_loss("triton", cpu)


def test_train_refuses_a_forced_fused_loss_it_cannot_run(tmp_path):
    """Before any model is loaded: one line, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "sicog", "train", "--stage", "2", "--model_name_or_path", str(tmp_path / "none"),
         "--data_path", str(tmp_path / "none.jsonl"), "--output_dir", str(tmp_path / "out"), "--use_cpu", "True",
         "--fused_loss", "liger"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "sicog train: error: --fused_loss liger needs a CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss_and_gradients_without_graph_breaks(tiny_model_factory):
    """Every repeated layer is captured whole, forward and backward (AOT autograd), and the numbers stay the
    eager ones. aot_eager stops short of generating kernels, which inductor does on a CPU with a C++ compiler
    (minutes on a busy machine); test_train's whole run with --compile_layers covers inductor."""
    from torch._dynamo.utils import counters

    model, processor = tiny_model_factory(seed=4)
    model.train()
    batch = mixed_batch(processor)
    plain_loss, plain_grads = loss_and_gradients(model, batch)
    torch._dynamo.reset()
    counters.clear()
    try:
        # 1 of the 2 vision layers runs, and both LLM layers
        assert compile_layers(model, backend="aot_eager") == len(repeated_layers(model)) == 1 + 2
        for _ in range(2):  # the second call reuses the compiled code
            compiled_loss, compiled_grads = loss_and_gradients(model, batch)
        assert not counters["graph_break"], dict(counters["graph_break"])
        # The vision layer twice (this batch has a one-view size group: dynamo specializes size 1) and the LLM
        # layer once, however many LLM layers: a training step builds no KV cache, whose per-layer state made
        # dynamo compile each LLM layer anew (on a GPU, past its recompile limit, leaving the rest uncompiled).
        assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    finally:
        torch._dynamo.reset()
    assert torch.allclose(compiled_loss, plain_loss, atol=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-5), name
