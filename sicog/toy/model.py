"""The toy world's tiny model: a small CLIP vision tower and a small Qwen2, joined like the real ones.

The cycle joins them exactly as it would join CLIP-ViT-L/14-336 and Qwen2-7B-Instruct, so every code
path of the real pipeline runs; only the sizes differ. They are pretrained once per world
(:mod:`sicog.toy.pretrain`), as the real parts come pretrained.
"""

from __future__ import annotations

from sicog.toy.settings import TOY_MAX_SLICE_NUMS, TOY_PATCH_SIZE, TOY_SCALE_RESOLUTION

# One source of truth for the toy model's size and image geometry. Three tower layers, so that the
# feature layer the model reads (the second to last, as LLaVA reads CLIP's) has two layers below it.
TOY_VISION = {"hidden_size": 64, "layers": 3, "patch_size": TOY_PATCH_SIZE, "image_size": TOY_SCALE_RESOLUTION}
TOY_TEXT = {"hidden_size": 192, "layers": 4, "heads": 4, "kv_heads": 2}
TOY_RESAMPLER_QUERIES = 16
# The record a finished set of parts carries: losses, seconds and the LM's reading check.
PARTS_RECORD = "parts.json"


def toy_model_settings() -> dict:
    """`sicog train` flags that give the toy model its geometry when built from parts."""
    return {
        "resampler_num_queries": TOY_RESAMPLER_QUERIES,
        "scale_resolution": TOY_SCALE_RESOLUTION,
        "max_slice_nums": TOY_MAX_SLICE_NUMS,
    }
