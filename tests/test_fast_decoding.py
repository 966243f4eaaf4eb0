"""The fast decoding path (static KV cache, one compiled graph per step) gives what the plain path gives."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import CompileConfig

from sicog.data.jsonl import load_records, write_jsonl
from sicog.generate.job import GenerationJob, merge_outputs, read_plan, run_rank
from sicog.generate.settings import SamplingSettings


def conv(text: str) -> list[dict]:
    return [{"from": "human", "value": text}]


@pytest.fixture(scope="module")
def prompts(tiny_model_factory):
    """A tiny model and a left-padded batch of two prompts of different lengths and image sizes."""
    model, processor = tiny_model_factory(seed=3)
    samples = [
        processor.encode(conv("<image>\nDescribe the image."), [Image.new("RGB", (128, 96), (200, 0, 0))], train=False),
        processor.encode(conv("<image>\nWhat?"), [Image.new("RGB", (64, 64), (0, 0, 200))], train=False),
    ]
    return model, processor, processor.collate(samples, padding_side="left")


GREEDY = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False}


def test_greedy_with_a_static_cache_equals_the_dynamic_cache(prompts):
    model, _, batch = prompts
    plain = model.generate(**batch, **GREEDY)
    static = model.generate(**batch, cache_implementation="static", disable_compile=True, **GREEDY)
    longer = model.generate(**batch, cache_implementation="static", disable_compile=True, max_cache_len=200, **GREEDY)
    assert torch.equal(static, plain) and torch.equal(longer, plain)


def test_each_decoding_step_compiles_to_one_graph_and_decodes_the_same(prompts):
    """fullgraph=True fails on any graph break (a GPU read in the step would split its CUDA graph)."""
    model, _, batch = prompts
    plain = model.generate(**batch, **GREEDY)
    config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    config._compile_all_devices = True  # generate() compiles on GPUs only unless told
    torch._dynamo.reset()
    try:
        compiled = model.generate(**batch, cache_implementation="static", compile_config=config, **GREEDY)
        assert "_compiled_call" in model.__dict__  # generate() did decode through the compiled step
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)
    assert torch.equal(compiled, plain)


def test_placeholders_are_still_counted_outside_compiled_decoding(prompts):
    model, processor, batch = prompts
    with pytest.raises(ValueError, match="image placeholder tokens"):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_decoding_settings_are_checked_and_passed_to_generate():
    with pytest.raises(ValueError, match="compiled decoding needs the static cache"):
        SamplingSettings(compile=True)
    with pytest.raises(ValueError, match="cache must be one of dynamic, static"):
        SamplingSettings(cache="paged")
    assert SamplingSettings().generate_kwargs()["disable_compile"] is True
    kwargs = SamplingSettings(cache="static", compile=True).generate_kwargs()
    assert kwargs["cache_implementation"] == "static" and kwargs["disable_compile"] is False
    assert kwargs["compile_config"].fullgraph is True


def test_a_static_cache_run_samples_the_same_candidates(tiny_model_factory, tmp_path):
    """Same seeds, same logits up to the masked cache slots: the same samples (on a CPU, in float32)."""
    model, processor = tiny_model_factory(seed=1)
    images = tmp_path / "images"
    images.mkdir()
    records = []
    for i, size in enumerate([(32, 32), (100, 60), (48, 64), (64, 64), (72, 40)]):
        Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)).save(images / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "question": "How many shapes?" + " Count." * i})
    write_jsonl(tmp_path / "q.jsonl", records)
    outputs = {}
    for cache in ("dynamic", "static"):
        sampling = SamplingSettings(num_candidates=3, temperature=0.9, max_new_tokens=6, cache=cache)
        job = GenerationJob(data=tmp_path / "q.jsonl", output=tmp_path / cache / "out.jsonl", task="reasoning",
                            prompt_type="cot-default", model_name="tiny", sampling=sampling, image_folder=images,
                            batch_size=2, progress=False)
        plan = read_plan(job, processor)
        run_rank(job, plan, model, processor)
        merge_outputs(job, plan.ids)
        outputs[cache] = [(r["id"], r["candidates"]) for r in load_records(job.output)]
    assert outputs["static"] == outputs["dynamic"] and len(outputs["static"]) == 5
    assert any(len(set(candidates)) > 1 for _, candidates in outputs["static"])  # really sampled


def sample(model, batch, **kwargs):
    torch.manual_seed(11)
    return model.generate(**batch, do_sample=True, temperature=0.9, top_k=0, num_return_sequences=3,
                          max_new_tokens=8, min_new_tokens=8, output_scores=True, return_dict_in_generate=True,
                          **kwargs)


def prompt_batches(model) -> tuple[list, object]:
    """Record the (batch, length) of every LLM call; returns the list and the hook's handle."""
    shapes = []
    handle = model.language_model.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    return shapes, handle


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_a_shared_prefill_samples_what_a_prefill_per_sequence_samples(prompts, cache):
    """The prompt runs once per record (not once per candidate); same seed, same candidates and scores."""
    model, _, batch = prompts
    length = batch["input_ids"].shape[1]
    options = {"cache_implementation": "static", "disable_compile": True} if cache == "static" else {}
    shapes, handle = prompt_batches(model)
    try:
        per_sequence = sample(model, batch, shared_prefill=False, **options)
        assert shapes[0] == (6, length)  # transformers: each prompt copied 3 times, then prefilled
        shapes.clear()
        shared = sample(model, batch, **options)
        assert shapes[:2] == [(2, length - 1), (6, 1)]  # once per prompt, then the last position of each copy
    finally:
        handle.remove()
    assert torch.equal(shared.sequences, per_sequence.sequences)
    for ours, theirs in zip(shared.scores, per_sequence.scores, strict=True):
        finite = torch.isfinite(theirs)
        assert torch.equal(torch.isfinite(ours), finite)
        assert torch.allclose(ours[finite], theirs[finite], atol=1e-4)
    assert len({tuple(row.tolist()) for row in shared.sequences}) > 2  # really sampled


def test_a_shared_prefill_with_compiled_steps_samples_the_same(prompts):
    model, _, batch = prompts
    plain = sample(model, batch, shared_prefill=False)
    config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    config._compile_all_devices = True
    torch._dynamo.reset()
    try:
        compiled = sample(model, batch, cache_implementation="static", compile_config=config)
        assert "_compiled_call" in model.__dict__
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)
    assert torch.equal(compiled.sequences, plain.sequences)


def test_a_prefill_per_sequence_is_kept_where_sharing_does_not_apply(prompts):
    """One sequence per prompt, beam search, or a cache the caller gives: transformers' own path."""
    model, _, batch = prompts
    length = batch["input_ids"].shape[1]
    shapes, handle = prompt_batches(model)
    try:
        model.generate(**batch, max_new_tokens=2, do_sample=False)
        model.generate(**batch, max_new_tokens=2, do_sample=False, num_beams=2, num_return_sequences=2)
    finally:
        handle.remove()
    assert shapes[0] == (2, length) and (4, length) in shapes


def test_the_shared_prefill_setting_reaches_generate():
    assert SamplingSettings().generate_kwargs()["shared_prefill"] is True
    assert SamplingSettings(shared_prefill=False).generate_kwargs()["shared_prefill"] is False


def test_compiled_shared_decoding_is_not_compiled_again_for_a_shorter_prompt(prompts):
    """Batches come longest first; the static cache keeps the longest length, so the compiled step is reused."""
    from torch._dynamo.utils import counters

    model, processor, batch = prompts
    shorter = processor.collate([processor.encode(conv("<image>\nWhy?"), [Image.new("RGB", (64, 64))], train=False)
                                 for _ in range(2)], padding_side="left")
    assert shorter["input_ids"].shape[1] < batch["input_ids"].shape[1]
    config = CompileConfig(fullgraph=True, backend="eager", mode=None)
    config._compile_all_devices = True
    torch._dynamo.reset()
    counters.clear()
    try:
        sample(model, batch, cache_implementation="static", compile_config=config)
        graphs = counters["stats"]["unique_graphs"]
        sample(model, shorter, cache_implementation="static", compile_config=config)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)


def both_prefills(model, batch, **kwargs) -> tuple:
    """The result (or the error) of each prefill, from the same seed."""
    results = []
    for shared in (False, True):
        torch.manual_seed(11)
        try:
            results.append(model.generate(**batch, shared_prefill=shared, **kwargs))
        except ValueError as err:
            results.append(err)
    return tuple(results)


def test_a_shared_prefill_keeps_transformers_settings_and_checks(prompts):
    """Settings resolved as generate() resolves them: a config given without num_beams takes the model's, greedy
    with several sequences is refused, a static cache without a length gets transformers' default, attentions
    asked for come from transformers' own prefill (the prompt's are in them)."""
    from transformers import GenerationConfig

    model, _, batch = prompts
    per_sequence, shared = both_prefills(model, batch, do_sample=False, num_return_sequences=3)
    assert isinstance(per_sequence, ValueError) and type(shared) is type(per_sequence)
    assert str(shared) == str(per_sequence)
    per_sequence, shared = both_prefills(model, batch, do_sample=True, num_return_sequences=2,
                                         cache_implementation="static", disable_compile=True)
    assert torch.equal(shared, per_sequence) and shared.shape[1] == batch["input_ids"].shape[1] + 20
    model.generation_config.num_beams = 2  # as a checkpoint's generation_config.json may set it
    try:
        config = GenerationConfig(do_sample=True, num_return_sequences=2, max_new_tokens=4)
        per_sequence, shared = both_prefills(model, batch, generation_config=config)
    finally:
        model.generation_config.num_beams = 1
    assert torch.equal(shared, per_sequence)
    options = {"do_sample": True, "num_return_sequences": 2, "max_new_tokens": 3, "return_dict_in_generate": True,
               "output_hidden_states": True}
    per_sequence, shared = both_prefills(model, batch, **options)
    assert shared.hidden_states[0][-1].shape == per_sequence.hidden_states[0][-1].shape


def test_a_shared_prefill_on_the_static_cache_with_sliding_window_layers(tiny_model_factory):
    """A full-attention layer and a sliding-window one, a prompt longer than the window: the static cache is given
    every position (a sliding layer of a dynamic cache keeps only its window)."""
    from transformers import Qwen2Config

    model, processor = tiny_model_factory(seed=3)
    text = Qwen2Config(**{**model.config.text_config.to_dict(), "use_sliding_window": True, "sliding_window": 32,
                          "max_window_layers": 1, "layer_types": None})
    model, processor = tiny_model_factory(seed=3, text_config=text)
    assert model.language_model.config.layer_types == ["full_attention", "sliding_attention"]
    batch = processor.collate([
        processor.encode(conv("<image>\nDescribe the image."), [Image.new("RGB", (128, 96), (200, 0, 0))], train=False),
        processor.encode(conv("<image>\nWhat?"), [Image.new("RGB", (64, 64), (0, 0, 200))], train=False),
    ], padding_side="left")
    assert batch["input_ids"].shape[1] > 2 * 32
    options = {"do_sample": True, "num_return_sequences": 3, "max_new_tokens": 6, "min_new_tokens": 6,
               "cache_implementation": "static", "disable_compile": True}
    per_sequence, shared = both_prefills(model, batch, **options)
    assert torch.equal(shared, per_sequence)


class Grouped(torch.nn.Module):
    """An attention module's one attribute the attention functions read: query heads per key/value head."""

    num_key_value_groups = 2


def repeated_heads_attention(query, key, value, mask):
    """Grouped-query attention with every key/value head repeated for its query heads (the compiled decoding step
    of transformers' SDPA attention)."""
    from transformers.integrations.sdpa_attention import repeat_kv

    out = torch.nn.functional.scaled_dot_product_attention(query, repeat_kv(key, 2), repeat_kv(value, 2),
                                                           attn_mask=mask)
    return out.transpose(1, 2)


def test_grouped_attention_equals_repeated_heads_and_leaves_other_calls_to_transformers():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sicog.model.attention import grouped_sdpa_attention

    torch.manual_seed(0)
    query, key, value = torch.randn(3, 4, 1, 8), torch.randn(3, 2, 10, 8), torch.randn(3, 2, 10, 8)
    mask = torch.ones(3, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., :4] = False  # a left-padded row
    mask[2, ..., 7:] = False  # static cache slots not yet written
    ours, _ = grouped_sdpa_attention(Grouped(), query, key, value, mask)
    assert ours.shape == (3, 1, 4, 8)
    assert torch.allclose(ours, repeated_heads_attention(query, key, value, mask), atol=1e-6)
    prefill = torch.randn(3, 4, 5, 8)
    causal = torch.ones(5, 10, dtype=torch.bool).tril(5)[None, None].expand(3, 1, 5, 10)
    for args in ((query, key, value, None), (prefill, key, value, causal)):
        assert torch.equal(grouped_sdpa_attention(Grouped(), *args)[0], sdpa_attention_forward(Grouped(), *args)[0])


def test_compiled_decoding_reads_each_key_value_head_once(prompts):
    """Each compiled step attends with the cache's own key/value heads, not copies per query head, and decodes
    what the plain path decodes."""
    model, _, batch = prompts
    text = model.language_model.config
    assert text.num_attention_heads > text.num_key_value_heads  # the tiny model has grouped-query attention
    attended = []

    def recording(graph, example_inputs):
        for node in graph.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product" in str(node.target):
                attended.append(tuple(node.args[1].meta["example_value"].shape))
        return graph.forward

    plain = model.generate(**batch, **GREEDY)
    config = CompileConfig(fullgraph=True, backend=recording, mode=None)
    config._compile_all_devices = True
    torch._dynamo.reset()
    try:
        compiled = model.generate(**batch, cache_implementation="static", compile_config=config, **GREEDY)
    finally:
        torch._dynamo.reset()
        model.__dict__.pop("_compiled_call", None)
    assert len(attended) == text.num_hidden_layers
    assert all(shape[1] == text.num_key_value_heads for shape in attended)
    assert torch.equal(compiled, plain)
    assert text._attn_implementation == "sdpa"  # switched back after generate


def test_generate_switches_the_attention_back_after_an_error(prompts):
    model, _, batch = prompts
    with pytest.raises(ValueError, match="max_length"):
        model.generate(**batch, max_length=2)
    assert model.language_model.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    try:
        seen = []
        handle = model.language_model.get_decoder().register_forward_pre_hook(
            lambda module, args: seen.append(model.language_model.config._attn_implementation))
        model.generate(**batch, max_new_tokens=2, do_sample=False)
        handle.remove()
    finally:
        model.set_attn_implementation("sdpa")
    assert set(seen) == {"eager"}  # an implementation other than SDPA is kept


def test_the_static_cache_is_kept_between_calls_of_one_size_and_emptied(tiny_model_factory, prompts):
    """A compiled step's CUDA graphs are recorded at the cache's addresses: asked to, one cache serves every batch of
    a size, emptied for each, and samples what the dynamic cache samples. Unasked, every call has its own cache,
    as in transformers: one a caller kept is not overwritten by the next call."""
    _, processor, batch = prompts
    model, _ = tiny_model_factory(seed=3)
    other = processor.collate([processor.encode(conv("<image>\nWhy?"), [Image.new("RGB", (64, 64), (0, 90, 0))],
                                                train=False) for _ in range(2)], padding_side="left")
    static = {"cache_implementation": "static", "disable_compile": True}
    first = sample(model, batch, **static).past_key_values
    kept = first.layers[0].keys.clone()
    assert sample(model, other, **static).past_key_values is not first and torch.equal(first.layers[0].keys, kept)
    assert SamplingSettings(cache="static").generate_kwargs()["keep_static_cache"] is True
    static["keep_static_cache"] = True
    sample(model, batch, **static)
    keys = model._static_cache.layers[0].keys
    reused = sample(model, other, **static)
    assert model._static_cache.layers[0].keys is keys
    assert torch.equal(reused.sequences, sample(model, other).sequences)
    sample(model, {name: value[:1] for name, value in other.items()}, **static)  # fewer rows: another cache
    assert model._static_cache.layers[0].keys.shape[0] == 3 and model._static_cache.layers[0].keys is not keys
