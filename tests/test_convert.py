"""`sicog convert`: published llava_qwen checkpoints <-> SICOG checkpoints, every tensor kept."""

import json
import re
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GenerationConfig

from sicog.cli import main
from sicog.convert.release import ConversionError, release_to_sicog, sicog_to_release
from sicog.data.jsonl import FILE_MODE
from sicog.model.builders import (
    load_pretrained,
    load_projector,
    new_model,
    tiny_config,
    tiny_text_config,
    tiny_vision_config,
)
from sicog.model.release_format import read_tensor_file, read_weights

# Parameter names of the published AdaptSpatialResampler_v1 (adapt_spatial_resampler_v1).
RELEASE_PROJECTOR_NAMES = {
    "query", "pos_embed", "proj", "kv_proj.weight", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
    "attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias", "ln_post.weight", "ln_post.bias",
}


def release_like_model(tokenizer):
    """A tiny model with the published geometry (vocabulary large enough for the LLaMA separator ids)."""
    torch.manual_seed(0)
    config = tiny_config(
        tokenizer,
        separators="release",
        vision_config=tiny_vision_config(hidden_size=32, layers=2, patch_size=14, image_size=336),
        text_config=tiny_text_config(30000, hidden_size=128, heads=4, kv_heads=2),
        scale_resolution=336,
        max_slice_nums=7,
        resampler_num_queries=144,
        resampler_num_heads=1,
    )
    model, processor = new_model(config, tokenizer)
    for parameter in model.parameters():  # random everywhere, layer norms included
        parameter.data.normal_(0, 0.05)
    return model, processor


def release_config_fields(model) -> dict:
    """config.json as the published stack (transformers 4) writes it: the RoPE base at the top level, no
    rope_parameters, and the LLaVA wrapper's fields, which this model has no setting for."""
    fields = model.config.text_config.to_dict()
    rope_theta = fields.pop("rope_parameters")["rope_theta"]
    fields.pop("dtype", None)
    fields.update(
        rope_theta=rope_theta, rope_scaling=None, torch_dtype="float32", sliding_window=131072,
        use_sliding_window=False, transformers_version="4.40.0.dev0",
        model_type="llava_qwen", architectures=["LlavaQwenForCausalLM"], mm_projector_type="adapt_spatial_resampler_v1",
        mm_vision_tower="openai/clip-vit-large-patch14-336", mm_vision_select_layer=-2, mm_hidden_size=32,
        model_mode="uhd_v1", tokenizer_model_max_length=4096, tokenizer_padding_side="right",
        image_aspect_ratio="square", mm_use_im_start_end=False, mm_tunable_parts="mm_mlp_adapter,mm_language_model",
    )
    return fields


def write_release_checkpoint(model, tokenizer, directory, fmt="safetensors"):
    """The published layout: LLM + tower in two shards with an index, the projector in mm_projector.bin."""
    from sicog.model.release_format import to_release_state

    state = to_release_state({k: v.clone() for k, v in model.state_dict().items()})
    projector = {k: v for k, v in state.items() if k.startswith("model.mm_projector.")}
    assert {k[len("model.mm_projector."):] for k in projector} == RELEASE_PROJECTOR_NAMES
    rest = sorted(k for k in state if k not in projector)
    halves = [rest[: len(rest) // 2], rest[len(rest) // 2 :]]
    directory.mkdir()
    weight_map = {}
    for i, keys in enumerate(halves):
        name = f"model-0000{i + 1}-of-00002.{'safetensors' if fmt == 'safetensors' else 'bin'}"
        part = {k: state[k].contiguous() for k in keys}
        save_file(part, directory / name) if fmt == "safetensors" else torch.save(part, directory / name)
        weight_map.update({k: name for k in keys})
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save(projector, directory / "mm_projector.bin")
    (directory / "config.json").write_text(json.dumps(release_config_fields(model)))
    qwen_sampling = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    qwen_sampling.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {**state}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_release_to_sicog_to_release_is_lossless(tokenizer, tmp_path, fmt, monkeypatch):
    import sicog.convert.release as convert

    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())  # tiny tower behind the hub id
    original = write_release_checkpoint(model, tokenizer, tmp_path / "release", fmt)
    release_to_sicog(tmp_path / "release", tmp_path / "ours")
    loaded, processor = load_pretrained(tmp_path / "ours")
    assert loaded.config.image_layout == "release" and loaded.config.inference_long_side == 1024
    assert (loaded.config.slice_comma_id, loaded.config.slice_newline_id) == (29892, 13)
    assert loaded.generation_config.repetition_penalty == 1.05 and loaded.generation_config.top_k == 20
    # The release's generation config names no stop or pad id (sampling values alone): the tokenizer's are set
    # after it is read, not dropped by it.
    assert loaded.generation_config.eos_token_id == tokenizer.eos_token_id
    assert loaded.generation_config.pad_token_id == tokenizer.pad_token_id
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    sicog_to_release(tmp_path / "ours", tmp_path / "back")
    back = read_weights(tmp_path / "back")
    assert sorted(back) == sorted(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    projector = read_tensor_file(tmp_path / "back" / "mm_projector.bin")
    assert len(projector) == len(RELEASE_PROJECTOR_NAMES)
    assert all(torch.equal(projector[k], original[k]) for k in projector)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == "llava_qwen" and config["mm_projector_type"] == "adapt_spatial_resampler_v1"
    # Every field as the published code reads it, the wrapper's too, but where the tower copy now is, the version
    # that wrote it, and an unused sliding window, which transformers keeps as null.
    release = json.loads((tmp_path / "release" / "config.json").read_text())
    changed = {k: (v, config.get(k)) for k, v in release.items() if config.get(k) != v}
    tower = ("openai/clip-vit-large-patch14-336", str(tmp_path / "back" / "vision_tower"))
    assert changed == {"mm_vision_tower": tower, "sliding_window": (131072, None),
                       "transformers_version": ("4.40.0.dev0", config["transformers_version"])}
    assert "rope_parameters" not in config  # which the published code's transformers 4 would not read
    # The tokenizer as the published stack reads it (tokenizers before 0.20 refuse merges written as pairs, and
    # transformers 4.40 reads the chat template from tokenizer_config.json only).
    saved = json.loads((tmp_path / "back" / "tokenizer.json").read_text())
    assert saved["model"]["merges"] and all(isinstance(merge, str) for merge in saved["model"]["merges"])
    assert json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())["chat_template"]
    prompt = "<|im_start|>user\nHow many red circles are there?<|im_end|>\n"
    assert AutoTokenizer.from_pretrained(tmp_path / "back")(prompt)["input_ids"] == tokenizer(prompt)["input_ids"]
    written = [p for folder in ("ours", "back") for p in (tmp_path / folder).rglob("*.safetensors")]
    assert written and {stat.S_IMODE(p.stat().st_mode) for p in written} == {FILE_MODE}


def test_the_tower_may_be_a_hugging_face_cache_folder_and_must_be_a_clip_folder(tokenizer, tmp_path, capsys):
    """The published scripts name CLIP as .../hub/models--openai--clip-vit-large-patch14-336, the cache folder
    `huggingface-cli download --cache-dir` fills: transformers read it as a CLIP config of its defaults (patch 32)."""
    from sicog.model.builders import local_model_folder

    model, _ = release_like_model(tokenizer)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    cache = tmp_path / "hub" / "models--openai--clip-tiny"
    model.vision_tower.config.save_pretrained(cache / "snapshots" / "0123abc")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0123abc")
    assert local_model_folder(cache) == str(cache / "snapshots" / "0123abc")
    release_to_sicog(tmp_path / "release", tmp_path / "ours", vision_tower=str(cache))
    assert load_pretrained(tmp_path / "ours")[0].config.vision_config.patch_size == 14
    (cache / "refs" / "main").write_text("fedcba9")  # a revision the cache does not hold
    with pytest.raises(OSError, match="a Hugging Face cache folder of openai/clip-tiny without a usable snapshot"):
        local_model_folder(cache)
    assert main(["convert", "from-release", str(tmp_path / "release"), str(tmp_path / "out"), "--vision-tower",
                 str(tmp_path / "hub")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sicog convert: error: {tmp_path / 'hub'}: no config.json (not a CLIP checkpoint folder); pass --vision-tower")


@pytest.mark.parametrize("name", [
    "/model_weight/huggingface/hub/models--openai--clip-vit-large-patch14-336",
    "/model_weight/huggingface/hub/models--openai--clip-vit-large-patch14-336/snapshots/0123abc/",
])
def test_a_tower_named_by_the_published_scripts_cache_folder_is_clip_l14_336(tokenizer, tmp_path, monkeypatch, name):
    """A release trained by the published scripts records their CLIP_CKPT_DIR, a cache folder on the machine that
    trained: with the tower's weights in the checkpoint it names CLIP-L/14-336 as the hub id does."""
    import sicog.convert.release as convert

    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    _edit_config(tmp_path / "release", mm_vision_tower=name)
    release_to_sicog(tmp_path / "release", tmp_path / "ours")
    loaded, _ = load_pretrained(tmp_path / "ours")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_release_tokenizer_without_an_image_token_gets_one(tokenizer, tmp_path, monkeypatch):
    """The published checkpoints' tokenizer (Qwen2's) has no <image>: the published code splits the prompt text on
    it. Conversion adds it as one special token, so our ids are the published chunk-by-chunk tokenization."""
    from conftest import bpe_tokenizer

    import sicog.convert.release as convert

    release_tokenizer = bpe_tokenizer(image_token=False)
    assert "<image>" not in release_tokenizer.get_vocab()
    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, release_tokenizer, tmp_path / "release")
    release_to_sicog(tmp_path / "release", tmp_path / "ours")
    loaded, processor = load_pretrained(tmp_path / "ours")
    ours = processor.tokenizer
    image_id = ours.convert_tokens_to_ids("<image>")
    assert image_id == len(release_tokenizer) == loaded.config.image_token_id
    assert {"<image>", "<|im_start|>", "<|im_end|>"} <= set(ours.all_special_tokens)
    for question in ("<image>\nHow many circles?", "<image> How many?", "Describe <image>\nnow"):
        prompt = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        before, after = (release_tokenizer(chunk)["input_ids"] for chunk in prompt.split("<image>"))
        assert ours(prompt)["input_ids"] == before + [image_id] + after
    assert ours.decode([image_id, *before], skip_special_tokens=True) == release_tokenizer.decode(
        before, skip_special_tokens=True)


def test_to_release_writes_the_release_special_tokens_where_transformers_4_reads_them(tokenizer, tmp_path,
                                                                                        monkeypatch):
    """transformers 5 saves them as extra_special_tokens, which the published stack (transformers 4.40) ignores:
    its training code's `im_start, im_end = tokenizer.additional_special_tokens_ids` failed on the written folder."""
    from conftest import bpe_tokenizer

    import sicog.convert.release as convert

    qwen_tokens = ["<|im_start|>", "<|im_end|>"]
    release_tokenizer = bpe_tokenizer(image_token=False)
    release_tokenizer.add_special_tokens({"additional_special_tokens": qwen_tokens})
    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, release_tokenizer, tmp_path / "release")
    # As transformers 4 writes the published checkpoints' tokenizer_config.json.
    written = json.loads((tmp_path / "release" / "tokenizer_config.json").read_text())
    written["additional_special_tokens"] = written.pop("extra_special_tokens")
    (tmp_path / "release" / "tokenizer_config.json").write_text(json.dumps(written))
    release_to_sicog(tmp_path / "release", tmp_path / "ours")
    assert "<image>" in AutoTokenizer.from_pretrained(tmp_path / "ours").extra_special_tokens
    sicog_to_release(tmp_path / "ours", tmp_path / "back")
    config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert config["additional_special_tokens"] == qwen_tokens and "extra_special_tokens" not in config
    assert AutoTokenizer.from_pretrained(tmp_path / "back").extra_special_tokens == qwen_tokens


@pytest.mark.parametrize(("fields", "named"), [
    ({"model_mode": "llava"}, "model_mode 'llava' is not 'uhd_v1'"),
    ({"model_mode": None}, "model_mode 'llava' (absent: the published code's default) is not 'uhd_v1'"),
    ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature 'cls_patch' is not 'patch'"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling {\"type\": \"yarn\", \"factor\": 4.0} is set"),
])
def test_a_release_the_published_code_computes_another_way_is_refused(tokenizer, tmp_path, capsys, fields, named):
    """The published code's non-slicing mode, or a tower that keeps CLS, would give other numbers once converted."""
    model, _ = release_like_model(tokenizer)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    config_path = tmp_path / "release" / "config.json"
    config = json.loads(config_path.read_text())
    config.update({k: v for k, v in fields.items() if v is not None})
    for key in (k for k, v in fields.items() if v is None):
        del config[key]
    config_path.write_text(json.dumps(config))
    assert main(["convert", "from-release", str(tmp_path / "release"), str(tmp_path / "ours")]) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "ours").exists()


def test_release_projector_bin_loads_into_the_resampler(tokenizer, tmp_path):
    model, _ = release_like_model(tokenizer)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    torch.manual_seed(1)
    fresh, _ = release_like_model(tokenizer)
    for parameter in fresh.resampler.parameters():
        parameter.data.normal_(0, 0.05)
    load_projector(fresh, tmp_path / "release" / "mm_projector.bin")
    for key, value in model.resampler.state_dict().items():
        assert torch.equal(fresh.resampler.state_dict()[key], value), key


@pytest.mark.parametrize(("settings", "named"), [
    ({"resampler_attention": "global"}, "this model has resampler_attention='global'"),
    ({"resampler_pooling": "average"}, "this model has resampler_pooling='average'"),
])
def test_release_projector_bin_needs_the_published_resampler_settings(tokenizer, tmp_path, settings, named):
    model, _ = release_like_model(tokenizer)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    other, _ = new_model(model.config.__class__.from_dict({**model.config.to_dict(), **settings}), tokenizer)
    before = {k: v.clone() for k, v in other.resampler.state_dict().items()}
    expected = "needs resampler_attention='cell', resampler_pooling='roi_align'; " + named
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_projector(other, tmp_path / "release" / "mm_projector.bin")
    assert all(torch.equal(other.resampler.state_dict()[k], v) for k, v in before.items())


def test_unknown_and_missing_keys_are_listed_in_one_error(tokenizer, tmp_path, monkeypatch):
    import sicog.convert.release as convert

    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    projector = read_tensor_file(tmp_path / "release" / "mm_projector.bin")
    projector.pop("model.mm_projector.ln_post.bias")
    projector["model.mm_projector.extra_scale"] = torch.ones(3)
    proj = projector["model.mm_projector.proj"]  # stored transposed: its shape as the release holds it is named
    projector["model.mm_projector.proj"] = torch.ones(proj.shape[0], proj.shape[1] + 1)
    torch.save(projector, tmp_path / "release" / "mm_projector.bin")
    expected = (f"{tmp_path / 'release'}: release checkpoint does not match the model: "
                "unknown keys ['model.mm_projector.extra_scale']; missing keys ['model.mm_projector.ln_post.bias']; "
                f"shape mismatches ['model.mm_projector.proj {(proj.shape[0], proj.shape[1] + 1)} != "
                f"{tuple(proj.shape)}']")
    with pytest.raises(ConversionError) as raised:
        release_to_sicog(tmp_path / "release", tmp_path / "ours")
    assert str(raised.value) == expected


def test_export_refuses_what_the_published_code_cannot_compute(tiny_model_factory, tmp_path, capsys):
    from sicog.model.builders import save_pretrained

    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "ours")
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "out")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sicog convert: error:")]
    assert len(errors) == 1 and "scale_resolution=64 (needs 336)" in errors[0] and "separator ids" in errors[0]


def test_export_refuses_an_llm_the_published_code_does_not_build(tokenizer, tmp_path, capsys):
    """The published code builds a Qwen2 LLM (LlavaQwenForCausalLM) whatever the weights are: a Llama one was
    written as llava_qwen, exit 0."""
    from transformers import LlamaConfig

    from sicog.model.builders import save_pretrained

    model, _ = release_like_model(tokenizer)
    config, text = model.config, model.config.text_config
    config.text_config = LlamaConfig(vocab_size=text.vocab_size, hidden_size=text.hidden_size,
                                     intermediate_size=text.intermediate_size, num_hidden_layers=text.num_hidden_layers,
                                     num_attention_heads=text.num_attention_heads,
                                     num_key_value_heads=text.num_key_value_heads)
    save_pretrained(*new_model(config, tokenizer), tmp_path / "ours")
    capsys.readouterr()
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("sicog convert: error: the published code cannot run this model: "
                                       "text_config.model_type='llama' (needs 'qwen2')\n")
    assert not (tmp_path / "out").exists()


def test_to_release_lists_every_tensor_that_does_not_fit_in_one_error(tokenizer, tmp_path, capsys):
    """Only the tower was checked: a checkpoint missing an LLM or resampler tensor, holding a mis-shaped or an
    unknown one, was written as a release, exit 0."""
    from sicog.model.builders import save_pretrained

    model, processor = release_like_model(tokenizer)
    save_pretrained(model, processor, tmp_path / "ours")
    weights_file = tmp_path / "ours" / "model.safetensors"
    state = load_file(weights_file)
    del state["language_model.model.layers.1.mlp.up_proj.weight"], state["resampler.ln_post.bias"]
    state["language_model.model.norm.weight"] = torch.ones(5)
    state["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, weights_file)
    capsys.readouterr()
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"sicog convert: error: {tmp_path / 'ours'}: its weights do not fit its config.json: "
        "unknown keys ['language_model.model.layers.0.self_attn.rotary_emb.inv_freq']; "
        "missing keys ['language_model.model.layers.1.mlp.up_proj.weight', 'resampler.ln_post.bias']; "
        "shape mismatches ['language_model.model.norm.weight (5,) != (128,)']\n")
    assert not (tmp_path / "out").exists()


def test_to_release_writes_the_tower_copy_in_the_weights_dtype_and_clips_own_names(tokenizer, tmp_path):
    """The vision_tower/ copy was always float32 (twice the size of a bfloat16 checkpoint's tower), and under
    transformers 5's bare names, where the published tower class (transformers 4's CLIPVisionModel) looks for
    vision_model.*: it found none and drew every weight at random."""
    from transformers import CLIPVisionModel

    from sicog.model.builders import save_pretrained

    model, processor = release_like_model(tokenizer)
    model.to(torch.bfloat16)
    save_pretrained(model, processor, tmp_path / "ours")
    sicog_to_release(tmp_path / "ours", tmp_path / "back")
    tower = load_file(tmp_path / "back" / "vision_tower" / "model.safetensors")
    expected = {"vision_model." + k: v for k, v in model.vision_tower.state_dict().items()}
    assert sorted(tower) == sorted(expected)
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, expected[k]) for k, v in tower.items())
    loaded, info = CLIPVisionModel.from_pretrained(tmp_path / "back" / "vision_tower", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert all(torch.equal(v, expected["vision_model." + k]) for k, v in loaded.state_dict().items())


def test_tower_saved_with_clips_prefix_converts_and_a_tower_that_fits_neither_naming_is_one_line(
    tokenizer, tmp_path, capsys
):
    """ZeRO-3 runs saved the tower as vision_tower.vision_model.* (transformers put CLIP's prefix back): such a
    checkpoint converts to the same release files; a tower missing a weight under both namings is one error line."""
    from sicog.model.builders import save_pretrained

    model, processor = release_like_model(tokenizer)
    save_pretrained(model, processor, tmp_path / "ours")
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "plain")]) == 0
    weights_file = tmp_path / "ours" / "model.safetensors"
    prefixed = {"vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k: v
                for k, v in load_file(weights_file).items()}
    save_file(prefixed, weights_file)
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "prefixed")]) == 0
    plain, converted = read_weights(tmp_path / "plain"), read_weights(tmp_path / "prefixed")
    assert sorted(converted) == sorted(plain) and all(torch.equal(converted[k], v) for k, v in plain.items())
    capsys.readouterr()
    del prefixed["vision_tower.vision_model.embeddings.class_embedding"]
    save_file(prefixed, weights_file)
    assert main(["convert", "to-release", str(tmp_path / "ours"), str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sicog convert: error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert f"{tmp_path / 'ours'}: its weights do not fit its config.json" in errors[0]
    assert "missing keys ['vision_tower.embeddings.class_embedding']" in errors[0]
    assert not (tmp_path / "broken").exists()


def test_a_clip_folder_lacking_a_tower_weight_is_refused_naming_them(tokenizer, tmp_path, capsys):
    """transformers only warns about a weight the CLIP folder lacks or holds in another shape, and initialises it at
    random: the conversion wrote an invented tower, exit 0."""
    from sicog.model.release_format import VISION_PREFIX

    model, _ = release_like_model(tokenizer)
    model.vision_tower.save_pretrained(tmp_path / "clip")
    clip_file = tmp_path / "clip" / "model.safetensors"
    clip = load_file(clip_file)
    del clip["encoder.layers.0.self_attn.q_proj.weight"]
    save_file(clip, clip_file)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    index_file = tmp_path / "release" / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    for shard in sorted(set(index["weight_map"].values())):  # a release without the tower's weights
        weights = read_tensor_file(tmp_path / "release" / shard)
        save_file({k: v for k, v in weights.items() if not k.startswith(VISION_PREFIX)}, tmp_path / "release" / shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith(VISION_PREFIX)}
    index_file.write_text(json.dumps(index))
    command = ["convert", "from-release", str(tmp_path / "release"), str(tmp_path / "out"), "--vision-tower",
               str(tmp_path / "clip")]
    said = f"sicog convert: error: {tmp_path / 'clip'}: the CLIP tower's weights do not fit its config.json: "
    missing = "missing keys ['encoder.layers.0.self_attn.q_proj.weight']"
    assert main(command) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sicog convert: error:")]
    assert errors == [said + missing] and not (tmp_path / "out").exists()
    clip["post_layernorm.weight"] = torch.ones(5)  # a traceback from transformers, which refuses it unless told not to
    save_file(clip, clip_file)
    assert main(command) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sicog convert: error:")]
    assert errors == [said + missing + "; shape mismatches ['post_layernorm.weight (5,) != (32,)']"]
    assert not (tmp_path / "out").exists()


def test_non_release_config_is_refused(tokenizer, tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_llama"}))
    assert main(["convert", "from-release", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "model_type 'llava_llama' is not 'llava_qwen'" in capsys.readouterr().err


def _edit_config(folder, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def _store_twice(folder, key, fmt="safetensors"):
    """Put a copy of ``key`` (held by the first shard) into the second shard too, with other values."""
    first, second = (folder / f"model-0000{i}-of-00002.{fmt}" for i in (1, 2))
    weights = read_tensor_file(second)
    weights[key] = torch.zeros_like(read_tensor_file(first)[key])
    save_file(weights, second) if fmt == "safetensors" else torch.save(weights, second)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(("fmt", "damage", "named"), [
    ("safetensors", lambda d: _truncate(d / "config.json"), "config.json: not valid JSON"),
    ("safetensors", lambda d: (d / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object"),
    ("safetensors", lambda d: (d / "config.json").unlink(), "release: no config.json"),
    ("safetensors", lambda d: (d / "model.safetensors.index.json").write_text('{"metadata": {}}'),
     "model.safetensors.index.json: no 'weight_map'"),
    ("safetensors", lambda d: _truncate(d / "model.safetensors.index.json"),
     "model.safetensors.index.json: not valid JSON"),
    ("safetensors", lambda d: _truncate(d / "model-00002-of-00002.safetensors", 0.01),
     "model-00002-of-00002.safetensors: not a readable safetensors file"),
    ("safetensors", lambda d: _truncate(d / "model-00002-of-00002.safetensors"),
     "model-00002-of-00002.safetensors: not a readable safetensors file"),
    ("bin", lambda d: _truncate(d / "model-00001-of-00002.bin"), "model-00001-of-00002.bin: not a readable torch file"),
    ("bin", lambda d: (d / "model-00001-of-00002.bin").write_bytes(b""), "model-00001-of-00002.bin: not a readable"),
    ("safetensors", lambda d: _truncate(d / "mm_projector.bin"), "mm_projector.bin: not a readable torch file"),
    ("safetensors", lambda d: [(d / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json")],
     "release: no tokenizer (tokenizer.json or tokenizer_config.json)"),
    ("safetensors", lambda d: _truncate(d / "tokenizer.json"), "release: its tokenizer does not load"),
    ("safetensors", lambda d: _store_twice(d, "lm_head.weight"), "release: tensor lm_head.weight is stored twice, in "
     "model-00001-of-00002.safetensors and model-00002-of-00002.safetensors"),
    ("bin", lambda d: _store_twice(d, "lm_head.weight", "bin"), "release: tensor lm_head.weight is stored twice, in "
     "model-00001-of-00002.bin and model-00002-of-00002.bin"),
    ("safetensors", lambda d: _edit_config(d, hidden_size="128"),
     "config.json: Field 'hidden_size' expected int, got str (value: '128')"),
    ("safetensors", lambda d: _edit_config(d, mm_vision_select_layer="-2"),
     "config.json: field 'mm_vision_select_layer': expected an integer, got \"-2\""),
    ("safetensors", lambda d: _edit_config(d, mm_vision_select_layer=-7),
     "config.json: invalid SicogConfig: vision_feature_layer=-7 is no hidden state of a"),
    ("safetensors", lambda d: (d / "generation_config.json").write_text("[1, 2]"),
     "generation_config.json: 'list' object is not a mapping"),
    ("safetensors", lambda d: (d / "generation_config.json").write_text('{"max_new_tokens": -5}'),
     "generation_config.json: `max_new_tokens` must be greater than 0"),
    ("safetensors", lambda d: _edit_config(d, num_hidden_layers=3), "release/config.json: "),
    ("safetensors", lambda d: save_file({k: torch.empty(0) for k in load_file(d / "model-00001-of-00002.safetensors")},
                                        d / "model-00001-of-00002.safetensors")
     or save_file({k: torch.empty(0) for k in load_file(d / "model-00002-of-00002.safetensors")},
                  d / "model-00002-of-00002.safetensors")
     or (d / "mm_projector.bin").unlink(),
     "every tensor in it is empty (saved under ZeRO-3 without gathering the weights"),
])
def test_damaged_release_files_are_one_line_errors_naming_the_file(tokenizer, tmp_path, capsys, monkeypatch, fmt,
                                                                   damage, named):
    import sicog.convert.release as convert

    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())  # the damage is the only fault
    write_release_checkpoint(model, tokenizer, tmp_path / "release", fmt)
    damage(tmp_path / "release")
    assert main(["convert", "from-release", str(tmp_path / "release"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sicog convert: error:")]
    assert len(errors) == 1 and named in errors[0], err
    assert not (tmp_path / "out").exists()


def test_a_named_projector_that_does_not_exist_is_an_error(tokenizer, tmp_path, capsys):
    model, _ = release_like_model(tokenizer)
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    missing = tmp_path / "stage1" / "mm_projector.bin"
    assert main(["convert", "from-release", str(tmp_path / "release"), str(tmp_path / "out"),
                 "--projector", str(missing)]) == 2
    assert f"sicog convert: error: --projector {missing}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def tied_release_model(tokenizer):
    """A release-like model whose LM head is its input embedding."""
    model, processor = release_like_model(tokenizer)
    config = model.config
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    tied, processor = new_model(config, tokenizer)
    tied.load_state_dict({k: v for k, v in model.state_dict().items() if k != "language_model.lm_head.weight"},
                         strict=False)
    tied.tie_weights()
    return tied, processor


def test_tied_release_checkpoint_saved_without_lm_head_converts(tokenizer, tmp_path, monkeypatch):
    import sicog.convert.release as convert

    model, _ = tied_release_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    # transformers saves a tied model without its LM head; so do the published checkpoints built on one.
    index = json.loads((tmp_path / "release" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "release" / index["weight_map"].pop("lm_head.weight")
    save_file({k: v for k, v in read_tensor_file(shard).items() if k != "lm_head.weight"}, shard)
    (tmp_path / "release" / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "release" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "release" / "config.json").read_text()), "tie_word_embeddings": True}))

    release_to_sicog(tmp_path / "release", tmp_path / "ours")
    loaded, _ = load_pretrained(tmp_path / "ours")
    assert loaded.config.tie_word_embeddings
    embedding = loaded.get_input_embeddings().weight
    assert torch.equal(loaded.get_output_embeddings().weight, embedding)
    assert torch.equal(embedding, model.get_input_embeddings().weight)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_tied_release_checkpoint_with_a_different_lm_head_is_refused(tokenizer, tmp_path, monkeypatch):
    import sicog.convert.release as convert

    model, _ = release_like_model(tokenizer)  # untied: its head differs from its embedding
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    (tmp_path / "release" / "config.json").write_text(json.dumps(
        {**json.loads((tmp_path / "release" / "config.json").read_text()), "tie_word_embeddings": True}))
    with pytest.raises(ConversionError, match="tie_word_embeddings is true but lm_head.weight differs"):
        release_to_sicog(tmp_path / "release", tmp_path / "ours")


def _files(folder):
    """Every file under ``folder`` with its bytes: what a refused conversion must leave as it was."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def checkpoints(tokenizer, tmp_path, monkeypatch):
    """A published checkpoint ("release") and a SICOG checkpoint ("ours") of the same release-like model."""
    import sicog.convert.release as convert
    from sicog.model.builders import save_pretrained

    model, processor = release_like_model(tokenizer)
    monkeypatch.setattr(convert, "CLIP_L14_336", model.config.vision_config.to_dict())
    write_release_checkpoint(model, tokenizer, tmp_path / "release")
    save_pretrained(model, processor, tmp_path / "ours")
    return {"from-release": tmp_path / "release", "to-release": tmp_path / "ours"}


@pytest.mark.parametrize("direction", ["from-release", "to-release"])
@pytest.mark.parametrize("inside", [False, True])
def test_converting_into_the_source_is_refused_and_changes_nothing(checkpoints, capsys, direction, inside):
    """`convert to-release ck ck` overwrote the checkpoint's weights before failing; `from-release rel rel` deleted
    the release's shards and exited 0."""
    src = checkpoints[direction]
    before = _files(src)
    out = src / "converted" if inside else src
    capsys.readouterr()
    assert main(["convert", direction, str(src), str(out)]) == 2
    err = capsys.readouterr().err
    says = "lies inside the checkpoint being converted" if inside else "is the checkpoint being converted"
    assert err.startswith(f"sicog convert: error: output folder {out} {says} ({src})") and len(err.splitlines()) == 1
    assert _files(src) == before and sorted(src.parent.glob(".*")) == []


@pytest.mark.parametrize("direction", ["from-release", "to-release"])
def test_an_output_folder_that_holds_files_is_refused_and_an_empty_one_is_used(checkpoints, tmp_path, capsys,
                                                                               direction):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["convert", direction, str(checkpoints[direction]), str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"sicog convert: error: output folder {out} already holds files: remove it or choose another folder\n"
    assert _files(out) == {Path("notes.txt"): b"keep me"}
    (out / "notes.txt").unlink()
    assert main(["convert", direction, str(checkpoints[direction]), str(out)]) == 0
    assert (out / "config.json").is_file() and sorted(tmp_path.glob(".*")) == []
    (tmp_path / "probe").mkdir()  # the user's umask, as a folder made by hand has it
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "probe").stat().st_mode)
    if direction == "to-release":  # the tower is recorded where it ends up, not in the staging folder
        assert json.loads((out / "config.json").read_text())["mm_vision_tower"] == str(out.resolve() / "vision_tower")
        assert (out / "vision_tower" / "config.json").is_file()


@pytest.mark.parametrize("direction", ["from-release", "to-release"])
def test_an_interrupted_conversion_leaves_no_output(checkpoints, tmp_path, monkeypatch, direction):
    """A conversion killed while writing must not leave a half-written folder that looks like a checkpoint."""
    import sicog.convert.release as convert

    def interrupted(folder):
        assert any(folder.glob("*.safetensors"))  # the weights are written
        raise KeyboardInterrupt

    monkeypatch.setattr(convert, "share_weights_like_config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["convert", direction, str(checkpoints[direction]), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and sorted(tmp_path.glob(".*")) == []


@pytest.mark.parametrize("direction", ["from-release", "to-release"])
def test_a_conversion_that_finds_its_output_filled_meanwhile_says_so(checkpoints, tmp_path, monkeypatch, capsys,
                                                                     direction):
    """Two conversions into one folder: the second to finish said "[Errno 39] Directory not empty" about its hidden
    staging folder."""
    import sicog.convert.release as convert

    share = convert.share_weights_like_config

    def other_finished_first(folder):
        share(folder)
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "config.json").write_text("{}")

    monkeypatch.setattr(convert, "share_weights_like_config", other_finished_first)
    assert main(["convert", direction, str(checkpoints[direction]), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"sicog convert: error: output folder {tmp_path / 'out'} was filled by another conversion while this one "
        "ran; it is kept, and this one's copy is dropped")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["config.json"]
    assert sorted(tmp_path.glob(".*")) == []


def test_staging_folders_of_killed_conversions_are_removed_and_no_others(tmp_path):
    """A conversion killed outright (SIGKILL, the out-of-memory killer) runs no clean-up: its hidden staging folder,
    a whole checkpoint, stayed beside the output for good. The next conversion into the same folder removes those
    of this host whose process is gone, and leaves a running conversion's, another host's and another output's."""
    import os
    import socket
    import subprocess
    import sys

    from sicog.convert.release import _staged

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    host = socket.gethostname()
    killed = tmp_path / f".out.converting-{host}-{finished.pid}"
    same_id = tmp_path / f".out.converting-{host}-{os.getpid()}"  # a killed conversion that had this process's id
    running = tmp_path / f".out.converting-{host}-{os.getppid()}"
    other_host = tmp_path / f".out.converting-not-{host}-{finished.pid}"
    other_output = tmp_path / f".out2.converting-{host}-{finished.pid}"
    not_a_process = tmp_path / f".out.converting-{host}-{finished.pid}-x"
    for folder in (killed, same_id, running, other_host, other_output, not_a_process):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    with _staged(tmp_path / "out") as staging:
        (staging / "config.json").write_text("{}")
    assert (tmp_path / "out" / "config.json").is_file()
    assert sorted(tmp_path.glob(".*")) == sorted([running, other_host, other_output, not_a_process])
    assert all((folder / "model.safetensors").is_file() for folder in tmp_path.glob(".*"))


def test_to_release_of_a_folder_that_is_no_sicog_checkpoint_is_one_line(checkpoints, tmp_path, capsys):
    """A mistyped folder was looked up on the Hub ("We couldn't connect to 'https://huggingface.co'...")."""
    typo = tmp_path / "ourz"
    assert main(["convert", "to-release", str(typo), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"sicog convert: error: no SICOG checkpoint at {typo} (config.json missing)\n"
    release = checkpoints["from-release"]
    assert main(["convert", "to-release", str(release), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"sicog convert: error: {release}/config.json: not a SICOG checkpoint "
                                       "(model_type 'llava_qwen', not 'sicog') but a published one: convert it with "
                                       "`sicog convert from-release`\n")
    assert not (tmp_path / "out").exists()


def test_a_projector_file_that_differs_from_the_weights_is_refused(tokenizer, tmp_path, monkeypatch):
    """A (stale) mm_projector.bin that differs from the projector in the weights is refused, not taken silently."""
    model, _ = release_like_model(tokenizer)
    monkeypatch.setattr("sicog.convert.release.CLIP_L14_336", model.config.vision_config.to_dict())
    release = tmp_path / "release"
    state = write_release_checkpoint(model, tokenizer, release)
    for shard in [*release.glob("model-*.safetensors"), release / "model.safetensors.index.json"]:
        shard.unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, release / "model.safetensors")  # projector included
    stale = {k: v + 1 for k, v in state.items() if k.startswith("model.mm_projector.")}
    torch.save(stale, release / "mm_projector.bin")
    with pytest.raises(ConversionError, match="hold different values"):
        release_to_sicog(release, tmp_path / "ours")


def test_merges_with_a_space_in_a_part_stay_pairs(tmp_path):
    """Such a merge has no "a b" string form: written as one, "a b c" would read back as another merge."""
    from sicog.convert.release import legacy_merges

    path = tmp_path / "tokenizer.json"
    plain = {"model": {"type": "BPE", "merges": [["a", "b"], ["ab", "c"]]}}
    path.write_text(json.dumps(plain))
    legacy_merges(path)
    assert json.loads(path.read_text())["model"]["merges"] == ["a b", "ab c"]
    spaced = {"model": {"type": "BPE", "merges": [["a", "b"], ["a b", "c"]]}}
    path.write_text(json.dumps(spaced))
    legacy_merges(path)
    assert json.loads(path.read_text()) == spaced


def test_a_tower_weight_under_both_names_is_refused(tmp_path):
    """One copy would silently have won."""
    from sicog.convert.release import read_sicog_weights

    weight = torch.zeros(2)
    save_file({"vision_tower.post_layernorm.weight": weight,
               "vision_tower.vision_model.post_layernorm.weight": weight + 1}, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError, match="holds both vision_tower.post_layernorm.weight and "
                                              "vision_tower.vision_model.post_layernorm.weight"):
        read_sicog_weights(tmp_path)
