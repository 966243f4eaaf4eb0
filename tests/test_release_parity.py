"""Parity with the published SICOG model code: same weights -> same inputs, embeddings and logits.

The published code (GPL-3.0) is imported at run time from ``$SICOG_REFERENCE_CODE`` (the folder that
holds ``llava/``); nothing of it is copied here. It was written for transformers 4 and a GPU stack,
so the import goes through stand-ins for what cannot load here, each named below:

- modules the published tree references but does not ship (``llava.utils``, the vision-tower and
  resampler builders, ``pooler_projector``, FeatUp's ``hubconf``), ``imgaug`` (training-time
  augmentation only; it does not import with NumPy 2), and, when not installed, ``requests``,
  ``einops``, ``deepspeed`` and ``flash_attn`` (imported, never called by what runs here);
- ``torchvision.ops.roi_align`` when torchvision's compiled operators cannot load (a CUDA wheel
  beside a CPU-only torch): then ``tests/roi_align_scalar.py``, the documented algorithm in scalar
  loops, stands in; with a working torchvision the real operator is used;
- transformers 4 API that transformers 5 removed or changed: ``CLIPVisionTransformer`` (an empty
  base: the published subclass builds every part itself), an encoder that returns all hidden states,
  ``_prepare_4d_attention_mask``, and ``config.rope_scaling = None`` meaning plain RoPE.

The stand-ins are in ``sys.modules`` only while the published modules import. A tiny random-weight
published model is built through the published classes, saved in the published format, converted
with ``sicog convert`` and compared with ours.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

REFERENCE = os.environ.get("SICOG_REFERENCE_CODE")
pytestmark = pytest.mark.skipif(
    not REFERENCE or not (Path(REFERENCE) / "llava" / "model" / "llava_arch.py").is_file(),
    reason="published SICOG code not found: set SICOG_REFERENCE_CODE to the folder holding llava/",
)

# >= 8 sizes: the published examples, unsliced ones (336x336 is the 1-slice case), extreme aspect ratios.
SIZES = [
    (1024, 768), (640, 480), (336, 336), (200, 150), (1500, 200),
    (120, 1400), (800, 800), (4000, 60), (500, 375), (90, 700),
]
FP32_TOLERANCE = 1e-5
# bfloat16 keeps 8 significant bits (one unit in the last place is 0.4-0.8% of a value): through a
# 2-layer tower, the resampler and a 2-layer LLM the two sides round at different points, so the
# largest difference may reach a few such units of the largest value (measured: up to 1%).
BF16_RELATIVE_TOLERANCE = 0.02
HIDDEN, VISION_HIDDEN = 256, 32  # 256 // 128 = 2 resampler heads, as the published builder derives them


def _stub(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


class _V4Encoder(nn.Module):
    """transformers-4 ``CLIPEncoder`` API over transformers-5 layers: returns every hidden state."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, inputs_embeds, attention_mask=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        from transformers.modeling_outputs import BaseModelOutput

        hidden, states = inputs_embeds, [inputs_embeds]
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
            states.append(hidden)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=tuple(states))


def _prepare_4d_attention_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers-4 helper: (B, T) keep-mask -> (B, 1, T, T) additive mask."""
    expanded = mask[:, None, None, :].to(dtype).expand(mask.shape[0], 1, mask.shape[1], mask.shape[1])
    return (1.0 - expanded) * torch.finfo(dtype).min


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Nothing when torchvision's roi_align works; else modules whose roi_align is the scalar algorithm."""
    try:
        from torchvision.ops import roi_align

        roi_align(torch.zeros(1, 1, 2, 2), torch.tensor([[0.0, 0, 0, 1, 1]]), (1, 1))
        return {}
    except Exception:  # noqa: BLE001 - any failure to load the compiled operator means: use the stand-in
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    sys.path.insert(0, str(Path(__file__).parent))
    from roi_align_scalar import roi_align

    transforms = _stub("torchvision.transforms", InterpolationMode=None, ToTensor=None, ToPILImage=None)
    ops = _stub("torchvision.ops", roi_align=roi_align)
    return {
        "torchvision": _stub("torchvision", ops=ops, transforms=transforms),
        "torchvision.ops": ops,
        "torchvision.ops.roi_align": _stub("torchvision.ops.roi_align", roi_align=roi_align),
        "torchvision.transforms": transforms,
    }


@pytest.fixture(scope="module")
def published():
    """The published modules, imported once with the stand-ins above."""
    import transformers.models.clip.modeling_clip as modeling_clip

    def build_vision_tower(config, delay_load=False, **kwargs):
        return clip_encoder.CLIPVisionTower(config.mm_vision_tower, args=config, delay_load=False)

    stand_ins = {
        "llava.utils": _stub("llava.utils", rank0_print=lambda *a, **k: None, rank_print=lambda *a, **k: None),
        "llava.model.multimodal_encoder.builder": _stub(
            "llava.model.multimodal_encoder.builder", build_vision_tower=build_vision_tower
        ),
        "llava.model.multimodal_resampler.builder": _stub(
            "llava.model.multimodal_resampler.builder", build_vision_resampler=lambda *a, **k: nn.Identity()
        ),
        "llava.model.multimodal_projector.pooler_projector": _stub(
            "llava.model.multimodal_projector.pooler_projector", PoolerProjector=None
        ),
        "llava.model.multimodal_encoder.hubconf": _stub("llava.model.multimodal_encoder.hubconf", clipLarge=None),
        "imgaug": _stub("imgaug", augmenters=_stub("imgaug.augmenters")),
        "transformers.modeling_attn_mask_utils": _stub(
            "transformers.modeling_attn_mask_utils", _prepare_4d_attention_mask=_prepare_4d_attention_mask
        ),
        **_torchvision_stand_in(),
    }
    # Imported at the top of published modules but unused by what runs here.
    for name in ("requests", "einops", "deepspeed", "flash_attn"):
        if importlib.util.find_spec(name) is None:
            stand_ins[name] = _stub(name, rearrange=None)
    saved_modules = {name: sys.modules.get(name) for name in stand_ins}
    saved_clip = {name: getattr(modeling_clip, name, None) for name in ("CLIPVisionTransformer", "CLIPEncoder")}
    sys.modules.update(stand_ins)
    modeling_clip.CLIPVisionTransformer = type(
        "CLIPVisionTransformer", (nn.Module,), {"__init__": lambda self, config: nn.Module.__init__(self)}
    )
    modeling_clip.CLIPEncoder = _V4Encoder
    sys.path.insert(0, REFERENCE)
    try:
        clip_encoder = importlib.import_module("llava.model.multimodal_encoder.clip_encoder")
        modules = types.SimpleNamespace(
            clip_encoder=clip_encoder,
            qwen=importlib.import_module("llava.model.language_model.llava_qwen"),
            resampler=importlib.import_module("llava.model.multimodal_projector.uhd_v1_resampler"),
            slicing=importlib.import_module("llava.slice_process"),
            mm_utils=importlib.import_module("llava.mm_utils"),
            conversation=importlib.import_module("llava.conversation"),
            constants=importlib.import_module("llava.constants"),
        )
    finally:
        sys.path.remove(REFERENCE)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_clip.items():
            if value is None:
                delattr(modeling_clip, name)
            else:
                setattr(modeling_clip, name, value)
    return modules


class _Float32AsBfloat16:
    """Stands for ``torch`` inside the published resampler module: ``torch.bfloat16`` reads float32,
    which neutralises the cast at the top of its ``forward`` for the float32 comparison."""

    bfloat16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


@pytest.fixture(scope="module")
def models(published, tokenizer, tmp_path_factory):
    """(published model, its tokenizer-side helpers, our converted model, our processor)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    from sicog.convert.release import release_to_sicog
    from sicog.model.builders import load_pretrained
    from sicog.model.configuration import CLIP_MEAN, CLIP_STD

    root = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    clip_dir = root / "clip"
    vision_config = CLIPVisionConfig(
        hidden_size=VISION_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=336,
        patch_size=14,
    )
    CLIPVisionModel(vision_config).save_pretrained(clip_dir)
    CLIPImageProcessorPil(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), size={"shortest_edge": 336},
                          crop_size={"height": 336, "width": 336}).save_pretrained(clip_dir)
    class Config(published.qwen.LlavaQwenConfig):
        """``rope_scaling = None`` (set by the published model's __init__) meant plain RoPE under
        transformers 4; transformers 5 reads it as "no RoPE parameters at all"."""

        def __setattr__(self, name, value):
            if not (name == "rope_scaling" and value is None):
                super().__setattr__(name, value)

    config = Config(
        vocab_size=30000, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=False,
        mm_vision_tower=str(clip_dir), mm_projector_type="adapt_spatial_resampler_v1", mm_hidden_size=VISION_HIDDEN,
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", model_mode="uhd_v1", mm_patch_merge_type="flat",
    )
    reference = published.qwen.LlavaQwenForCausalLM(config).eval()
    fixed_table = reference.get_model().mm_projector.pos_embed.detach().clone()
    generator = torch.Generator().manual_seed(1)
    for name, parameter in reference.named_parameters():
        if name.endswith("mm_projector.pos_embed"):
            continue  # the published table is fixed; ours must build the same one (checked below)
        is_norm = "norm" in name or ".ln_" in name or "layer_norm" in name
        noise = torch.randn(parameter.shape, generator=generator)
        parameter.data = (1 + 0.1 * noise) if is_norm and name.endswith("weight") else 0.05 * noise

    # Saved as a fine-tuned published checkpoint: LLM, tower and projector in the weights.
    release_dir = root / "release"
    release_dir.mkdir()
    state = reference.state_dict()
    # AdaptCLIPVisionModel subclasses transformers' CLIPVisionModel, which under transformers 5 owns
    # its own unused copy of the tower at the top level; the published forward runs vision_model only.
    unused = [k for k in state if k.startswith("model.vision_tower.vision_tower.") and ".vision_model." not in k]
    save_file({k: v.contiguous() for k, v in state.items() if k not in unused}, release_dir / "model.safetensors")
    fields = config.to_dict()
    (release_dir / "config.json").write_text(json.dumps(fields))
    tokenizer.save_pretrained(release_dir)
    release_to_sicog(release_dir, root / "ours")
    ours, processor = load_pretrained(root / "ours")
    ours.eval()
    return types.SimpleNamespace(reference=reference, ours=ours, processor=processor, fixed_table=fixed_table,
                                 image_processor=reference.get_model().get_vision_tower().image_processor)


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def published_inputs(published, models, image: Image.Image, generation: bool):
    """The published preprocessing: slicing, CLIP tensors, and the qwen_1_5 prompt with one image marker."""
    if generation:
        image = published.slicing.resize_image_keep_ratio(image, max_size=1024)
    source, patches, grid, ind_tokens = published.slicing.slice_image_minicpm(
        image, max_slice_nums=7, scale_resolution=336, patch_size=14, never_split=False
    )
    kwargs = dict(do_resize=False, do_center_crop=False, do_rescale=True, do_normalize=True, return_tensors="pt")
    source_tensor = models.image_processor.preprocess(source, **kwargs)["pixel_values"]
    if grid:
        patch_tensor = models.image_processor.preprocess(patches, **kwargs)["pixel_values"]
    else:  # what the published loader passes for an unsliced image (ignored by the model)
        patch_tensor = torch.zeros(1, 3, 336, 336)
    conv = published.conversation.conv_templates["qwen_1_5"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is in the picture?")
    conv.append_message(conv.roles[1], None)
    ids = published.mm_utils.tokenizer_image_token(conv.get_prompt(), models.processor.tokenizer, return_tensors="pt")
    return ids, source_tensor, patch_tensor, grid, ind_tokens


def our_inputs(models, image: Image.Image, generation: bool):
    turn = [{"from": "human", "value": "<image>\nWhat is in the picture?"}]
    images = models.processor.image_processor
    saved, images.inference_long_side = images.inference_long_side, (1024 if generation else None)
    try:
        return models.processor.encode(turn, [image], train=False)
    finally:
        images.inference_long_side = saved


def collapse_image(ids: list[int], span: tuple[int, int], marker: int) -> list[int]:
    """Our ids with the image's positions (placeholders and separators) replaced by one published marker."""
    return ids[: span[0]] + [marker] + ids[span[1] :]


def test_published_query_table_is_ours(models):
    torch.testing.assert_close(models.ours.resampler.query_pos.float(), models.fixed_table.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("generation", [False, True], ids=["training", "generation"])
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_same_pixels_and_token_ids_as_published_preprocessing(published, models, size, generation):
    image = noise_image(size, seed=size[0] * 7 + size[1])
    ids, source, patches, grid, ind_tokens = published_inputs(published, models, image, generation)
    encoded = our_inputs(models, image, generation)
    views = encoded.pixel_values
    torch.testing.assert_close(views[-1], source[0], rtol=0, atol=1e-5)
    if grid is None:
        assert len(views) == 1
    else:
        cols, rows = grid
        assert tuple(views[0].shape[:2]) == (rows, cols)
        torch.testing.assert_close(views[0].reshape(-1, *views[0].shape[2:]), patches, rtol=0, atol=1e-5)
    image_positions = [i for i, t in enumerate(encoded.input_ids) if t == models.processor.image_token_id]
    start, end = image_positions[0], image_positions[-1] + 1
    marker = published.constants.IMAGE_TOKEN_INDEX
    assert collapse_image(encoded.input_ids, (start, end), marker) == ids.tolist()


def _published_forward(published, models, image, dtype, reference=None):
    ids, source, patches, grid, ind_tokens = published_inputs(published, models, image, generation=False)
    reference = reference or models.reference
    with torch.no_grad():
        _, _, _, _, embeds, _ = reference.prepare_inputs_labels_for_multimodal(
            ids[None], None, None, None, None, source.to(dtype),
            patch_images=[patches.to(dtype)], ind_tokens=[ind_tokens],
        )
        logits = reference(inputs_embeds=embeds).logits
    return embeds[0], logits[0], ids


def _our_forward(models, image, dtype, ours=None):
    encoded = our_inputs(models, image, generation=False)
    ids = torch.tensor([encoded.input_ids])
    ours = ours or models.ours
    with torch.no_grad():
        embeds = ours.embed_inputs(ids, [v.to(dtype) for v in encoded.pixel_values])
        logits = ours(input_ids=ids, pixel_values=[v.to(dtype) for v in encoded.pixel_values]).logits
    return embeds[0], logits[0], encoded


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_same_embeddings_logits_and_image_tokens_in_float32(published, models, size, monkeypatch):
    monkeypatch.setattr(published.resampler, "torch", _Float32AsBfloat16())
    image = noise_image(size, seed=size[0] * 7 + size[1])
    ref_embeds, ref_logits, ref_ids = _published_forward(published, models, image, torch.float32)
    our_embeds, our_logits, encoded = _our_forward(models, image, torch.float32)
    published_image_tokens = ref_embeds.shape[0] - (ref_ids.shape[0] - 1)
    assert our_embeds.shape == ref_embeds.shape
    assert published_image_tokens == models.processor.image_token_count(*size)
    embed_diff, logit_diff = (our_embeds - ref_embeds).abs().max().item(), (our_logits - ref_logits).abs().max().item()
    image_rows = ref_embeds[encoded.input_ids.index(models.processor.image_token_id) :][:published_image_tokens]
    assert image_rows.std().item() > 0.1  # image features that actually vary, not a constant that trivially agrees
    assert embed_diff <= FP32_TOLERANCE and logit_diff <= FP32_TOLERANCE, (embed_diff, logit_diff)
    print(f"{size}: {published_image_tokens} image tokens, max |diff| embeddings {embed_diff:.2e}, "
          f"logits {logit_diff:.2e}")


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1024, 768), (336, 336), (1500, 200)], ids=["1024x768", "336x336", "1500x200"])
def test_same_embeddings_and_logits_in_bfloat16(published, models, size):
    """Both sides in bfloat16; the published resampler's own cast to bfloat16 stays in force."""
    image = noise_image(size, seed=size[0] * 7 + size[1])
    reference, ours = copy.deepcopy(models.reference).to(torch.bfloat16), copy.deepcopy(models.ours).to(torch.bfloat16)
    ref_embeds, ref_logits, _ = _published_forward(published, models, image, torch.bfloat16, reference)
    our_embeds, our_logits, _ = _our_forward(models, image, torch.bfloat16, ours)
    assert our_embeds.shape == ref_embeds.shape and our_embeds.dtype == ref_embeds.dtype == torch.bfloat16
    for name, ours, ref in (("embeddings", our_embeds, ref_embeds), ("logits", our_logits, ref_logits)):
        scale = ref.float().abs().max().item()
        diff = (ours.float() - ref.float()).abs().max().item()
        print(f"{size} bf16 {name}: max |diff| {diff:.3e} of max |value| {scale:.3e}")
        assert diff <= BF16_RELATIVE_TOLERANCE * scale, (name, diff, scale)
