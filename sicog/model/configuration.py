"""`SicogConfig`: one composite configuration for the vision tower, the resampler, slicing and the LLM."""

from __future__ import annotations

import math
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# CLIP's normalisation constants (the published checkpoints were trained with them).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# CLIP-ViT-L/14-336, the vision tower of every published SICOG model.
CLIP_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
}

# The sub-configs' sizes a model is built with; each must be >= 1 (where the sub-config has it).
_SIZES = {
    "vision_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                      "patch_size"),
    "text_config": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
}


@strict
class SicogConfig(PreTrainedConfig):
    """Configuration of :class:`~sicog.model.modeling.SicogForConditionalGeneration`.

    ``vision_config`` is a CLIP vision config, ``text_config`` any causal-LM config (Qwen2 by default).
    The slicing patch size is the vision tower's; the resampler's width is the LLM's hidden size.
    ``image_token_id`` marks placeholder positions; ``slice_comma_id`` and ``slice_newline_id`` are the
    ids written between slices (the published checkpoints use LLaMA's "," and "\\n" ids, 29892 and 13,
    whatever the tokenizer; models built here may use the tokenizer's own). ``image_layout`` and
    ``resampler_pooling`` default to what the published checkpoints compute (see docs/model.md).
    """

    model_type = "sicog"
    sub_configs_defaults = {
        # By model type rather than class: this module must import without transformers' CLIP code,
        # because it is imported while transformers' AutoConfig module finishes loading (registration.py).
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_L14_336
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    slice_comma_id: int | None = None
    slice_newline_id: int | None = None
    vision_feature_layer: int = -2
    scale_resolution: int = 336
    max_slice_nums: int = 7
    resampler_num_queries: int = 144
    resampler_attention: Literal["cell", "global"] = "cell"
    resampler_pooling: Literal["roi_align", "average"] = "roi_align"
    resampler_cell_bins: int = 2
    image_layout: Literal["release", "uhd_v1"] = "release"
    inference_long_side: int | None = None
    label_masking: Literal["release", "replies"] = "replies"
    resampler_num_heads: int | None = None
    image_mean: tuple[float, float, float] | list[float] = CLIP_MEAN
    image_std: tuple[float, float, float] | list[float] = CLIP_STD
    tie_word_embeddings: bool = False
    # The fields of a published checkpoint's config.json that this model has no setting for (the LLaVA wrapper's
    # tokenizer_model_max_length, image_aspect_ratio, ...): kept by `sicog convert from-release`, written back by
    # `to-release`, which is how release -> SICOG -> release keeps them.
    release_fields: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def patch_size(self) -> int:
        """The vision tower's patch size, which slicing also uses."""
        return int(self.vision_config.patch_size)

    @property
    def query_grid(self) -> int:
        """Side of the resampler's square query grid (12 for 144 queries)."""
        return math.isqrt(self.resampler_num_queries)

    @property
    def resampler_heads(self) -> int:
        """Attention heads of the resampler: explicit, else one per 128 channels of the LLM width."""
        return self.resampler_num_heads or max(1, self.text_config.hidden_size // 128)

    def validate_architecture(self) -> None:
        """Reject settings that cannot work together, with a message saying which and why."""
        super().validate_architecture()
        # First, and alone: the checks below divide by these sizes, and a model built with a size below 1 fails
        # deep inside torch ("Trying to create tensor with negative dimension") without naming the field.
        sizes = [(f"{name}.{field}", getattr(getattr(self, name), field, None))
                 for name, fields in _SIZES.items() for field in fields]
        sizes += [(name, getattr(self, name)) for name in ("scale_resolution", "resampler_num_queries")]
        too_small = [f"{label}={value} must be >= 1" for label, value in sizes
                     if isinstance(value, int) and not isinstance(value, bool) and value < 1]
        if too_small:
            raise ValueError("invalid SicogConfig: " + "; ".join(too_small))
        problems = []
        layers = self.vision_config.num_hidden_layers
        if not -(layers + 1) <= self.vision_feature_layer <= layers:
            # A hidden state of the tower: 0 (the embeddings) to its layer count, or counted from the end; beyond, a
            # slice would quietly pick another layer where the published code raises an IndexError.
            problems.append(f"vision_feature_layer={self.vision_feature_layer} is no hidden state of a {layers}-layer "
                            f"vision tower (from {-(layers + 1)} to {layers})")
        if self.resampler_num_heads is not None and self.resampler_num_heads < 1:
            problems.append(f"resampler_num_heads={self.resampler_num_heads} must be >= 1 (or unset: one per 128 "
                            "channels of the LLM width)")
        if self.query_grid**2 != self.resampler_num_queries:
            problems.append(f"resampler_num_queries={self.resampler_num_queries} is not a perfect square")
        if self.scale_resolution % self.patch_size:
            problems.append(
                f"scale_resolution={self.scale_resolution} is not a multiple of patch size {self.patch_size}"
            )
        if self.resampler_attention not in ("cell", "global"):
            problems.append(f"resampler_attention={self.resampler_attention!r} is not 'cell' or 'global'")
        if self.resampler_pooling not in ("roi_align", "average"):
            problems.append(f"resampler_pooling={self.resampler_pooling!r} is not 'roi_align' or 'average'")
        if self.image_layout not in ("release", "uhd_v1"):
            problems.append(f"image_layout={self.image_layout!r} is not 'release' or 'uhd_v1'")
        if self.text_config.hidden_size % self.resampler_heads:
            problems.append(
                f"LLM width {self.text_config.hidden_size} is not divisible by {self.resampler_heads} resampler heads"
            )
        if self.label_masking not in ("release", "replies"):
            problems.append(f"label_masking={self.label_masking!r} is not 'release' or 'replies'")
        if self.inference_long_side is not None and self.inference_long_side < 1:
            problems.append(f"inference_long_side={self.inference_long_side} must be >= 1 or unset")
        if self.max_slice_nums < 1 or self.resampler_cell_bins < 1:
            problems.append("max_slice_nums and resampler_cell_bins must be >= 1")
        vocab = self.text_config.vocab_size
        for name in ("image_token_id", "slice_comma_id", "slice_newline_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < vocab:
                problems.append(f"{name}={value} is outside the LLM vocabulary (size {vocab})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            problems.append("image_mean and image_std need 3 values")
        if problems:
            raise ValueError("invalid SicogConfig: " + "; ".join(problems))


if __name__.startswith("sicog."):  # copies saved with a checkpoint are found through its auto_map instead
    AutoConfig.register(SicogConfig.model_type, SicogConfig, exist_ok=True)
