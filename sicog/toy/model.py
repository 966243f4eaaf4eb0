"""The toy world's tiny "pretrained parts": a small CLIP vision tower and a small Qwen2, saved like real ones.

The cycle joins them exactly as it would join CLIP-ViT-L/14-336 and Qwen2-7B-Instruct, so every code
path of the real pipeline runs; only the sizes differ. They start from random weights, which is why
the toy preset trains more than the projector in stage 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import CLIPVisionModel, PreTrainedTokenizerBase, Qwen2ForCausalLM

from sicog.model.builders import tiny_text_config, tiny_vision_config
from sicog.toy.settings import TOY_MAX_SLICE_NUMS, TOY_PATCH_SIZE, TOY_SCALE_RESOLUTION

# One source of truth for the toy model's size and image geometry.
TOY_VISION = {"hidden_size": 64, "layers": 2, "patch_size": TOY_PATCH_SIZE, "image_size": TOY_SCALE_RESOLUTION}
TOY_TEXT = {"hidden_size": 192, "layers": 4, "heads": 4, "kv_heads": 2}
TOY_RESAMPLER_QUERIES = 16


def save_toy_parts(out: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> tuple[Path, Path]:
    """Write a random-init CLIP vision tower and Qwen2 LLM (with ``tokenizer``) to ``out``; return both paths."""
    out = Path(out)
    torch.manual_seed(seed)
    vision_dir, llm_dir = out / "vision", out / "llm"
    CLIPVisionModel(tiny_vision_config(**TOY_VISION)).save_pretrained(vision_dir)
    Qwen2ForCausalLM(tiny_text_config(len(tokenizer), **TOY_TEXT)).save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return vision_dir, llm_dir


def toy_model_settings() -> dict:
    """`sicog train` flags that give the toy model its geometry when built from parts."""
    return {
        "resampler_num_queries": TOY_RESAMPLER_QUERIES,
        "scale_resolution": TOY_SCALE_RESOLUTION,
        "max_slice_nums": TOY_MAX_SLICE_NUMS,
    }
