import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, CLIPVisionModel, GenerationConfig, Qwen2ForCausalLM

from sicog.info import describe
from sicog.model.builders import (
    build_from_parts,
    load_pretrained,
    load_projector,
    real_config,
    save_pretrained,
    save_projector,
    tiny_text_config,
    tiny_vision_config,
)


def conv(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def mixed_batch(processor):
    samples = [
        processor.encode(conv("<image>\nDescribe.", "A red circle."), [Image.new("RGB", (128, 96), (200, 0, 0))]),
        processor.encode(conv("<image>\nDescribe.", "Blue."), [Image.new("RGB", (64, 64), (0, 0, 200))]),
        processor.encode(conv("How many?", "3")),
        processor.encode(conv("<image>\nDescribe.", "Green square."), [Image.new("RGB", (96, 64), (0, 200, 0))]),
    ]
    return processor.collate(samples)


def test_loss_and_gradients_on_a_mixed_batch(tiny_model_factory):
    model, processor = tiny_model_factory()
    model.train()
    batch = mixed_batch(processor)
    # a 2x2 slice grid + global, global, a 2x1 grid + global
    assert [tuple(v.shape[:-3]) for v in batch["pixel_values"]] == [(2, 2), (), (), (1, 2), ()]
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [
        n for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
    ]
    assert not missing, missing
    assert model.resampler.query.grad.abs().sum() > 0
    assert model.vision_tower.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen
    assert all(n.startswith(("vision_tower.encoder.layers.1.", "vision_tower.post_layernorm")) for n in frozen)


def test_text_only_training_batch_still_touches_the_vision_path(tiny_model_factory):
    model, processor = tiny_model_factory()
    model.train()
    model(**processor.collate([processor.encode(conv("hi", "ok"))])).loss.backward()
    assert model.resampler.query.grad is not None


def _greedy_without_cache(model, batch, steps):
    ids = batch["input_ids"]
    mask = batch["attention_mask"]
    for _ in range(steps):
        logits = model(
            input_ids=ids, pixel_values=batch.get("pixel_values"), attention_mask=mask, use_cache=False
        ).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


def test_greedy_generate_with_cache_equals_a_no_cache_loop(tiny_model_factory):
    model, processor = tiny_model_factory(seed=3)
    samples = [
        processor.encode(conv("<image>\nDescribe the image."), [Image.new("RGB", (128, 96), (200, 0, 0))], train=False),
        processor.encode(conv("<image>\nWhat?"), [Image.new("RGB", (64, 64), (0, 0, 200))], train=False),
    ]
    for sample in samples:  # batch of one: no padding, so both paths see identical positions
        batch = processor.collate([sample], padding_side="left")
        cached = model.generate(**batch, max_new_tokens=8, do_sample=False, min_new_tokens=8)
        assert torch.equal(cached, _greedy_without_cache(model, batch, 8))
    batch = processor.collate(samples, padding_side="left")
    together = model.generate(**batch, max_new_tokens=8, do_sample=False, min_new_tokens=8)
    alone = model.generate(
        **processor.collate(samples[1:], padding_side="left"), max_new_tokens=8, do_sample=False, min_new_tokens=8
    )
    assert torch.equal(together[1, -8:], alone[0, -8:])


def test_num_return_sequences_samples_each_prompt(tiny_model_factory):
    model, processor = tiny_model_factory(seed=1)
    sample = processor.encode(conv("<image>\nDescribe."), [Image.new("RGB", (96, 64), (0, 200, 0))], train=False)
    batch = processor.collate([sample, sample], padding_side="left")
    torch.manual_seed(0)
    out = model.generate(
        **batch, do_sample=True, temperature=1.5, max_new_tokens=6, min_new_tokens=6, num_return_sequences=3
    )
    assert out.shape[0] == 6
    assert not (out[:, batch["input_ids"].shape[1] :] == processor.image_token_id).any()
    assert len({tuple(row.tolist()) for row in out[:3]}) > 1


def test_num_return_sequences_rows_start_with_their_prompt(tiny_model_factory):
    """Decoding starts from embeddings alone; the prompt ids are put back in front of every returned row."""
    model, processor = tiny_model_factory(seed=1)
    samples = [
        processor.encode(conv("<image>\nDescribe."), [Image.new("RGB", (96, 64), (0, 200, 0))], train=False),
        processor.encode(conv("How many circles are there?"), train=False),
    ]
    batch = processor.collate(samples, padding_side="left")
    prompt = batch["input_ids"].shape[1]
    out = model.generate(**batch, do_sample=True, max_new_tokens=4, min_new_tokens=4, num_return_sequences=2,
                         return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape == (4, prompt + 4) and len(out.scores) == 4
    assert torch.equal(out.sequences[:, :prompt], batch["input_ids"].repeat_interleave(2, dim=0))


def favour_token(model, token: int) -> None:
    """Make every logit positive (so a repetition penalty lowers it) and put ``token`` on top by 0.5."""

    def hook(module, inputs, logits):
        logits = logits * 0.01 + 20.0
        logits[..., token] = logits.max(-1).values + 0.5
        return logits

    model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.filterwarnings("ignore:Passing `repetition_penalty` with `inputs_embeds`")  # the published-style call
def test_repetition_penalty_skips_the_prompt_as_published(tiny_model_factory, tokenizer):
    """The published generate passes embeddings only, so the penalty hits generated tokens alone: a token of
    the prompt is still sampled first, then, once generated, penalized."""
    from transformers import GenerationMixin

    model, processor = tiny_model_factory(seed=0)
    token = tokenizer.encode(" circles", add_special_tokens=False)[0]  # the first piece of a prompt word
    sample = processor.encode(conv("<image>\nHow many circles are there?"), [Image.new("RGB", (64, 64))],
                              train=False)
    assert token in sample.input_ids
    batch = processor.collate([sample], padding_side="left")
    favour_token(model, token)
    settings = dict(do_sample=False, max_new_tokens=4, repetition_penalty=1.05,
                    suppress_tokens=[processor.image_token_id])
    new = model.generate(**batch, **settings)[0, batch["input_ids"].shape[1]:].tolist()
    assert new[0] == token and token not in new[1:]
    embeds = model.embed_inputs(batch["input_ids"], batch["pixel_values"])
    published = GenerationMixin.generate(model, inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                         **settings)
    assert new == published[0].tolist()


def test_repetition_penalty_does_not_depend_on_left_padding(tiny_model_factory, tokenizer):
    """A short prompt padded beside a long one gets the penalty from its first generated token, as alone."""
    model, processor = tiny_model_factory(seed=0)
    favour_token(model, tokenizer.encode(" circle", add_special_tokens=False)[0])
    image = Image.new("RGB", (64, 64), (0, 0, 200))
    short = processor.encode(conv("<image>\nDescribe."), [image], train=False)
    long = processor.encode(conv("<image>\nHow many circles are there? Describe the image step-by-step."), [image],
                            train=False)
    settings = dict(do_sample=False, max_new_tokens=6, repetition_penalty=1.3)
    together = model.generate(**processor.collate([short, long], padding_side="left"), **settings)
    alone = model.generate(**processor.collate([short], padding_side="left"), **settings)
    assert len(long.input_ids) - len(short.input_ids) >= 6  # the short row's padding spans every new token
    assert len(set(alone[0, -6:].tolist())) == 6  # each token penalized once generated
    assert torch.equal(together[0, -6:], alone[0, -6:])


def test_generate_numbers_positions_from_a_padded_rows_first_token(tiny_model_factory):
    """generate() builds position ids from the attention mask (forward declares them), so a left-padded row's
    first real token is position 0, as the published forward had it; the LLM sees them at every step."""
    model, processor = tiny_model_factory(seed=0)
    image = Image.new("RGB", (64, 64), (0, 0, 200))
    short = processor.encode(conv("<image>\nDescribe."), [image], train=False)
    long = processor.encode(conv("<image>\nHow many circles are there? Describe it."), [image], train=False)
    seen = []
    hook = model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("position_ids")), with_kwargs=True)
    try:
        model.generate(**processor.collate([short, long], padding_side="left"), do_sample=False, max_new_tokens=2)
    finally:
        hook.remove()
    pad = len(long.input_ids) - len(short.input_ids)
    first = seen[0]
    assert first is not None and first[0, pad].item() == 0 and first[1, 0].item() == 0
    assert seen[1][:, -1].tolist() == [len(short.input_ids), len(long.input_ids)]


def test_pixel_values_in_one_list_per_sample_read_as_the_flat_list(tiny_model_factory):
    """transformers' pipeline collates a batch's pixel_values as one list per sample."""
    model, processor = tiny_model_factory(seed=1)
    samples = [processor.encode(conv("<image>\nDescribe."), [Image.new("RGB", size, colour)], train=False)
               for size, colour in (((128, 96), (200, 0, 0)), ((64, 64), (0, 0, 200)))]
    batch = processor.collate(samples, padding_side="left")
    flat = batch["pixel_values"]
    nested = [flat[: len(samples[0].pixel_values)], flat[len(samples[0].pixel_values):]]
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(model(**{**batch, "pixel_values": nested}).logits, expected, rtol=0, atol=0)


def test_generate_takes_inputs_streams_the_prompt_and_keeps_configured_suppressions(tiny_model_factory):
    model, processor = tiny_model_factory(seed=0)
    batch = processor.collate([processor.encode(conv("<image>\nDescribe."), [Image.new("RGB", (64, 64))],
                                                train=False)])
    ids = batch.pop("input_ids")
    settings = dict(do_sample=False, max_new_tokens=4)
    reference = model.generate(input_ids=ids, **batch, **settings)
    assert torch.equal(model.generate(inputs=ids, **batch, **settings), reference)

    class Recorder:
        def __init__(self):
            self.chunks = []

        def put(self, value):
            self.chunks.append(value.clone())

        def end(self):
            pass

    streamer = Recorder()
    model.generate(input_ids=ids, **batch, streamer=streamer, **settings)
    assert torch.equal(streamer.chunks[0], ids)  # the prompt first, as transformers streams it
    assert torch.cat([c.reshape(-1) for c in streamer.chunks[1:]]).tolist() == reference[0, ids.shape[1]:].tolist()

    banned = reference[0, ids.shape[1]].item()
    model.generation_config.suppress_tokens = [banned]
    assert model.generate(input_ids=ids, **batch, **settings)[0, ids.shape[1]].item() != banned


def test_save_load_round_trip_and_auto_classes(tiny_model_factory, tmp_path):
    model, processor = tiny_model_factory(seed=2)
    batch = mixed_batch(processor)
    save_pretrained(model, processor, tmp_path)
    loaded, loaded_processor = load_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "sicog"
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(**batch).logits, model(**batch).logits, rtol=0, atol=0)
    assert loaded_processor.encode(conv("hi", "ok")).input_ids == processor.encode(conv("hi", "ok")).input_ids


def test_text_only_logits_equal_the_underlying_llm(tiny_model_factory):
    model, processor = tiny_model_factory(seed=4)
    batch = processor.collate([processor.encode(conv("How many circles?", "3"))])
    del batch["labels"]
    plain = Qwen2ForCausalLM(model.config.text_config).eval()
    plain.load_state_dict(model.language_model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, plain(**batch).logits, rtol=0, atol=0)


def test_build_from_parts_and_projector_round_trip(tokenizer, tmp_path):
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config()).save_pretrained(tmp_path / "clip")
    Qwen2ForCausalLM(tiny_text_config(len(tokenizer) + 8)).save_pretrained(tmp_path / "llm")
    # As Qwen2-7B-Instruct's generation_config.json: it also stops at <|endoftext|>, listed after <|im_end|>.
    stops = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    qwen_sampling = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                                     eos_token_id=stops)
    qwen_sampling.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    model, processor = build_from_parts(
        tmp_path / "clip", tmp_path / "llm", scale_resolution=64, resampler_num_queries=16, resampler_num_heads=2
    )
    model.eval()
    assert processor.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    # the LLM's sampling defaults travel with the checkpoint
    save_pretrained(model, processor, tmp_path / "checkpoint")
    saved = GenerationConfig.from_pretrained(tmp_path / "checkpoint")
    assert (saved.top_k, saved.top_p, saved.repetition_penalty) == (20, 0.8, 1.05)
    assert saved.eos_token_id == stops  # the LLM's stop ids are kept
    reference = CLIPVisionModel.from_pretrained(tmp_path / "clip")
    torch.testing.assert_close(model.vision_tower.state_dict(), reference.state_dict())
    batch = mixed_batch(processor)
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)
    save_projector(model, tmp_path / "projector")
    # The tower named as the published scripts name CLIP: its folder in a Hugging Face cache.
    cache = tmp_path / "hub" / "models--openai--clip-tiny"
    shutil.copytree(tmp_path / "clip", cache / "snapshots" / "r1")
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("r1")
    torch.manual_seed(99)
    fresh, _ = build_from_parts(
        cache, tmp_path / "llm", scale_resolution=64, resampler_num_queries=16, resampler_num_heads=2
    )
    fresh.eval()
    torch.testing.assert_close(fresh.vision_tower.state_dict(), reference.state_dict(), rtol=0, atol=0)
    features = torch.randn(2, 5, 3, model.config.vision_config.hidden_size)
    with torch.no_grad():
        assert not torch.allclose(fresh.resampler(features), model.resampler(features))
        load_projector(fresh, tmp_path / "projector")
        torch.testing.assert_close(fresh.resampler(features), model.resampler(features), rtol=0, atol=0)


def test_generation_ids_add_the_tokenizers_eos_to_the_llms_stop_ids(tiny_model_factory, tokenizer):
    from sicog.model.builders import _set_generation_ids

    model, _ = tiny_model_factory()
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id  # a fresh model: the tokenizer's alone
    model.generation_config.eos_token_id = tokenizer.pad_token_id  # a base LLM stopping at <|endoftext|> only
    _set_generation_ids(model, tokenizer)
    assert model.generation_config.eos_token_id == [tokenizer.pad_token_id, tokenizer.eos_token_id]


def test_projector_with_other_settings_is_refused(tiny_model_factory, tmp_path):
    model, _ = tiny_model_factory()
    save_projector(model, tmp_path)
    other, _ = tiny_model_factory(resampler_num_queries=64)
    with pytest.raises(ValueError, match="resampler_num_queries"):
        load_projector(other, tmp_path)


def test_real_size_config_on_meta_device():
    info = describe(real_config(), (1024, 768))
    assert 7.8e9 < info["parameters"] < 8.2e9
    assert info["tokens_per_slice"] == 144
    assert info["example_image_tokens"] == 1033  # 3x2 slices in the published layout
    assert describe(real_config(), (640, 480))["example_image_tokens"] == 745
    small = describe(real_config(), (336, 336))  # one view in training; resized to 1024x1024 and sliced to generate
    assert small["example_image_tokens"] == 144 and small["example_generation_image_tokens"] == 1033
    assert describe(real_config(image_layout="uhd_v1"), (1024, 768))["example_image_tokens"] == 1014


def test_info_names_a_missing_checkpoint_and_a_bad_image_size(tmp_path, capsys):
    from sicog.cli import main

    assert main(["info", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"sicog info: error: no SICOG checkpoint at {tmp_path / 'nowhere'} " \
                                              "(config.json missing)"
    assert main(["info", "--image-size", "1024by768"]) == 2
    assert "--image-size must be WIDTHxHEIGHT" in capsys.readouterr().err


def test_config_validates_itself(tokenizer):
    from sicog.model.builders import tiny_config

    with pytest.raises(Exception, match="perfect square"):
        tiny_config(tokenizer, resampler_num_queries=50)
    with pytest.raises(Exception, match="outside the LLM vocabulary"):
        tiny_config(tokenizer, text_config=tiny_text_config(3))


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (64, 96)])
def test_vision_features_equal_clips_own_second_to_last_layer(size):
    from sicog.model.vision import patch_features

    torch.manual_seed(0)
    tower = CLIPVisionModel(tiny_vision_config(hidden_size=32, layers=3, image_size=64)).eval()
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        outputs = tower(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=True)
        reference = outputs.hidden_states[-2][:, 1:]
        ours = patch_features(tower, pixels, -2, 8)
    torch.testing.assert_close(ours.reshape(reference.shape), reference, rtol=0, atol=0)


def test_a_training_forward_builds_no_kv_cache(tiny_model_factory):
    """Training never reads a cache: none is built unless asked for; inference keeps the config's default."""
    model, processor = tiny_model_factory()
    batch = mixed_batch(processor)
    model.train()
    assert model(**batch).past_key_values is None
    assert model(**batch, use_cache=True).past_key_values is not None
    model.eval()
    assert model(**batch).past_key_values is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_position_table_at_its_native_size_is_what_bicubic_gives(dtype):
    """The vision tower skips the resize at the table's own grid: bicubic there is an exact copy."""
    import torch.nn.functional as F

    from sicog.model.vision import _positions

    table = torch.randn(1 + 6 * 6, 8).to(dtype)
    grid = table[1:].reshape(1, 6, 6, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    expected = torch.cat([table[:1], resized.permute(0, 2, 3, 1).reshape(36, -1).to(dtype)])
    assert torch.equal(_positions(table, 6, 6), expected)
    assert _positions(table, 4, 8).shape == (1 + 32, 8)  # other grids are still resized
