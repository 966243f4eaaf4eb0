"""Optional fast paths of training, each numerically checked against the plain path (tests/test_fast_training.py,
benchmarks/gpu_check.py):

- a fused linear cross-entropy (Liger kernel's, GPU only): the loss straight from the LLM's last hidden
  states and its head's weight, in chunks, so that the ``batch x length x vocabulary`` logits are never
  stored in float32 (about 1.5 GiB for 8 x 1,530 tokens of a 32,000-word vocabulary, and as much again for
  their gradient);
- compiled layers (``torch.compile`` of each vision-tower and LLM layer, the same code compiled once):
  norms, activations and rotary embeddings fused into fewer kernels, while the image merging, whose
  shapes change with every batch, stays eager.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from sicog.model.vision import layers_used, tower_body

FUSED_LOSSES = ("auto", "liger", "off")


class FastPathError(ValueError):
    """A fast path was asked for where it cannot run."""


def fused_loss(choice: str, device: torch.device) -> Callable | None:
    """The fused loss for ``choice`` on ``device``, or None for the plain path.

    ``auto``: Liger's kernel on a CUDA device where ``liger_kernel`` imports and ZeRO-3 is off, else
    the plain path; ``liger``: the kernel or a :class:`FastPathError` saying why it cannot run; ``off``: the plain path.
    """
    if choice not in FUSED_LOSSES:
        raise FastPathError(f"--fused_loss must be one of {', '.join(FUSED_LOSSES)}, got {choice!r}")
    if choice == "off":
        return None
    # Under ZeRO-3 the head's weight is partitioned except inside the head's own forward, which this path skips.
    missing = [why for why, ok in (("a CUDA device", device.type == "cuda"),
                                   ("ZeRO stage 2 or none (not 3)", not is_deepspeed_zero3_enabled())) if not ok]
    if not missing:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError as err:
            missing.append(f"the liger-kernel package ({err})")
    if missing:
        if choice == "liger":
            raise FastPathError(f"--fused_loss liger needs {' and '.join(missing)}; --fused_loss auto falls back")
        return None
    # A bound method, not a module: the model must not hold it as a submodule (nothing to save or shard).
    return LigerFusedLinearCrossEntropyLoss(reduction="sum").forward


def repeated_layers(model: nn.Module) -> list[nn.Module]:
    """The vision-tower layers that run (up to the feature layer) and the LLM's decoder layers."""
    tower = tower_body(model.vision_tower)
    used = tower.encoder.layers[: layers_used(model.vision_tower, model.config.vision_feature_layer)]
    return [*used, *model.language_model.get_decoder().layers]


def compile_layers(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated layer in place (``nn.Module.compile``); returns how many."""
    layers = repeated_layers(model)
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)
