"""The LLM's attention while generating: each key/value head read once per decoding step, compiled or not.

With grouped-query attention (Qwen2: several query heads per key/value head), transformers' SDPA
attention decodes a single-token query by packing the query heads of one group onto their key/value
head, so the cache is read as it is stored, but only when the step runs eagerly. In a compiled step
(``--cache static --compile``) it repeats every cached key and value once per query head instead: the
whole static cache is copied, for every layer, at every step, which grows with the batch and made
compiled decoding gain little at batch 32. :func:`grouped_sdpa_attention` packs the heads in both
cases and leaves every other call (prefill, training, no mask, no groups) to transformers' function;
:func:`grouped_decoding` switches an LLM on plain SDPA to it for the length of a ``generate`` call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "sicog_grouped_sdpa"


def grouped_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with a single-token query's heads packed onto their key/value heads.

    ``query`` ``(batch, heads, 1, dim)`` becomes ``(batch, kv_heads, heads / kv_heads, dim)``: the query heads of
    a group attend as positions of one query to their shared key/value head, under a mask shared by all heads.
    Without a mask transformers' function already uses SDPA's own grouped attention, so it gets the call.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if (groups == 1 or query.shape[2] != 1 or attention_mask is None or attention_mask.shape[1] != 1
            or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, heads // groups, groups, dim)
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa_attention)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)  # the same masks as plain SDPA


@contextlib.contextmanager
def grouped_decoding(config: PretrainedConfig) -> Iterator[None]:
    """While inside, an LLM ``config`` on plain SDPA uses :func:`grouped_sdpa_attention` (any other left as is)."""
    if config._attn_implementation != "sdpa":
        yield
        return
    config._attn_implementation = GROUPED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"
