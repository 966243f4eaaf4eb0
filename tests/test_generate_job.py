"""Generation runs in-process on a tiny model: candidates, greedy, seeds, alignment, resume, merge."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sicog.data.jsonl import RecordError, load_records, write_jsonl
from sicog.data.sharding import shard_path
from sicog.generate.corrupt import record_methods
from sicog.generate.job import GenerationJob, merge_outputs, plan_batches, read_plan, run_rank, shard_files
from sicog.generate.sample import encode_task, sample_candidates
from sicog.generate.settings import SamplingSettings

SIZES = [(32, 32), (64, 48), (48, 64), (100, 60), (40, 40), (64, 64), (56, 32), (32, 56), (72, 40), (60, 60)]


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_factory):
    return tiny_model_factory(seed=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """10 records with distinct images; record 'r4' has a truncated image that only fails when decoded."""
    root = tmp_path_factory.mktemp("gen_data")
    images = root / "images"
    images.mkdir()
    records = []
    for i, size in enumerate(SIZES):
        image = Image.new("RGB", size, (25 * i, 200 - 15 * i, (70 * i) % 256))
        image.paste((255 - 20 * i, 10 * i, 90), (2, 2, size[0] // 2, size[1] // 3))
        image.save(images / f"{i}.png")
        records.append({"id": f"r{i}", "image": f"{i}.png", "question": f"What is in corner {i}?", "answer": "x"})
    data = (images / "4.png").read_bytes()
    (images / "4.png").write_bytes(data[: len(data) // 2])
    path = root / "questions.jsonl"
    write_jsonl(path, records)
    return path, images, records


def make_job(dataset, out_dir, **overrides) -> GenerationJob:
    path, images, _ = dataset
    default = SamplingSettings(num_candidates=3, temperature=0.8, top_p=0.95, max_new_tokens=6)
    sampling = overrides.pop("sampling", default)
    settings = dict(data=path, output=out_dir / "out.jsonl", task="reasoning", prompt_type="cot-default",
                    model_name="tiny", sampling=sampling, image_folder=images, batch_size=3, seed=0, progress=False)
    settings.update(overrides)
    return GenerationJob(**settings)


def generate(job, model_and_processor, *, rank=0, world=1, merge=True):
    model, processor = model_and_processor
    plan = read_plan(job, processor)
    summary = run_rank(job, plan, model, processor, rank=rank, world=world)
    if merge:
        merge_outputs(job, plan.ids)
    return summary


def by_id(path):
    return {r["id"]: r for r in load_records(path)}


def test_every_record_gets_n_candidates_and_its_generation_metadata(dataset, tmp_path, model_and_processor):
    job = make_job(dataset, tmp_path)
    generate(job, model_and_processor)
    outputs, errors = load_records(job.output), load_records(job.errors_output)
    assert [r["id"] for r in outputs] == [f"r{i}" for i in range(10) if i != 4]  # input order
    assert [e["id"] for e in errors] == ["r4"] and "truncated" in errors[0]["reason"] and errors[0]["field"] == "image"
    assert errors[0]["record"] == dataset[2][4] and errors[0]["line"] == 5
    assert not shard_files(job.output) and not shard_files(job.errors_output)
    for record, source in zip(outputs, [r for r in dataset[2] if r["id"] != "r4"]):
        assert {k: record[k] for k in source} == source
        assert len(record["candidates"]) == 3 and all(isinstance(c, str) for c in record["candidates"])
        assert record["generation"] == {
            "model": "tiny", "image_folder": str(dataset[1]), "task": "reasoning", "prompt_type": "cot-default",
            "prompt": f"{source['question']} Answer the question step-by-step.", "temperature": 0.8, "top_p": 0.95,
            "top_k": 50, "repetition_penalty": 1.0, "num_beams": 1, "max_new_tokens": 6, "other_settings": {},
            "seed": 0, "corruption": None}
    assert any(len(set(r["candidates"])) > 1 for r in outputs)  # samples, not copies


@pytest.mark.slow
def test_temperature_zero_repeats_each_records_own_greedy_output(dataset, tmp_path, model_and_processor):
    """Greedy candidates of every record equal that record generated alone: alignment by id holds even
    with the undecodable image in the middle of a batch."""
    model, processor = model_and_processor
    greedy = SamplingSettings(num_candidates=4, temperature=0.0, max_new_tokens=6)
    job = make_job(dataset, tmp_path, sampling=greedy)
    plan = read_plan(job, processor)
    assert any("r4" in [t.id for t in batch][1:-1] for batch in plan_batches(plan.tasks, job.batch_size))
    generate(job, model_and_processor)
    outputs = by_id(job.output)
    assert set(outputs) == {f"r{i}" for i in range(10)} - {"r4"}
    alone = {}
    for task in plan.tasks:
        if task.id == "r4":
            continue
        batch = processor.collate([encode_task(processor, task)[0]], padding_side="left")
        out = model.generate(**batch, do_sample=False, max_new_tokens=6, suppress_tokens=[processor.image_token_id])
        alone[task.id] = processor.decode(out[0, batch["input_ids"].shape[1]:])
    assert len(set(alone.values())) > 3, "records must differ for this test to detect misalignment"
    for rid, record in outputs.items():
        assert record["candidates"] == [alone[rid]] * 4, rid


def test_same_seed_same_bytes_other_seed_other_candidates(dataset, tmp_path, model_and_processor):
    first = make_job(dataset, tmp_path / "a")
    again = make_job(dataset, tmp_path / "b")
    other = make_job(dataset, tmp_path / "c", seed=1)
    for job in (first, again, other):
        generate(job, model_and_processor)
    assert first.output.read_bytes() == again.output.read_bytes()
    a, c = by_id(first.output), by_id(other.output)
    assert all(a[rid]["candidates"] != c[rid]["candidates"] for rid in a)


def test_resume_after_a_kill_mid_batch_is_byte_identical(dataset, tmp_path, model_and_processor):
    reference = make_job(dataset, tmp_path / "ref")
    generate(reference, model_and_processor)
    job = make_job(dataset, tmp_path / "run")
    generate(job, model_and_processor, merge=False)
    part = shard_path(job.output, 0, 1)
    lines = part.read_bytes().splitlines(keepends=True)
    # Keep four records (a batch and a third) and half of the fifth, as a SIGKILL during a write leaves it.
    part.write_bytes(b"".join(lines[:4]) + lines[4][: len(lines[4]) // 2])
    summary = generate(job, model_and_processor)
    assert summary.skipped >= 3 and summary.generated == 9 - 4
    assert job.output.read_bytes() == reference.output.read_bytes()
    assert job.errors_output.read_bytes() == reference.errors_output.read_bytes()
    rerun = generate(job, model_and_processor)  # everything done: nothing generated, same files
    assert rerun.generated == 0 and rerun.errors == 0
    assert job.output.read_bytes() == reference.output.read_bytes()


def test_a_rerun_with_another_world_size_completes_the_same_output(dataset, tmp_path, model_and_processor):
    reference = make_job(dataset, tmp_path / "ref")
    generate(reference, model_and_processor)
    job = make_job(dataset, tmp_path / "run")
    generate(job, model_and_processor, rank=1, world=2, merge=False)  # only rank 1 of 2 ran
    assert [p.name for p in shard_files(job.output)] == ["out.jsonl.rank00001-of-00002"]
    summary = generate(job, model_and_processor, world=1)
    assert summary.skipped > 0 and summary.generated > 0
    assert job.output.read_bytes() == reference.output.read_bytes()
    assert {e["id"] for e in load_records(job.errors_output)} == {"r4"}


def test_a_last_record_without_its_newline_is_generated_again(dataset, tmp_path, model_and_processor):
    """A shard of another world size whose whole last record lacks only its newline: the merge cuts that line,
    so the rerun must not count the record as done."""
    reference = make_job(dataset, tmp_path / "ref")
    generate(reference, model_and_processor)
    job = make_job(dataset, tmp_path / "run")
    generate(job, model_and_processor, rank=1, world=2, merge=False)
    (part,) = shard_files(job.output)
    part.write_bytes(part.read_bytes().removesuffix(b"\n"))
    generate(job, model_and_processor, world=1)
    assert job.output.read_bytes() == reference.output.read_bytes()


@pytest.mark.parametrize("file", ["output", "errors_output"])
@pytest.mark.parametrize("keep", ["half the line", "all but the newline"])
def test_a_merged_file_whose_last_line_lacks_its_newline_regenerates_only_that_record(
        dataset, tmp_path, model_and_processor, file, keep):
    """A cut copy or a full disk: the resume check skipped that line, the whole job was generated again, and the
    merge then failed on the line (invalid JSON, or a second copy of its id) on this run and every rerun."""
    reference = make_job(dataset, tmp_path / "ref")
    generate(reference, model_and_processor)
    job = make_job(dataset, tmp_path / "run")
    generate(job, model_and_processor)
    path = getattr(job, file)
    data = path.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[:-1] if keep == "all but the newline" else data[:last + (len(data) - last) // 2])
    summary = generate(job, model_and_processor)
    assert (summary.generated, summary.errors) == ((1, 0) if file == "output" else (0, 1))
    assert job.output.read_bytes() == reference.output.read_bytes()
    assert job.errors_output.read_bytes() == reference.errors_output.read_bytes()
    assert not shard_files(job.output) and not shard_files(job.errors_output)


def test_two_ranks_split_the_batches_and_merge_exactly_once(dataset, tmp_path, model_and_processor):
    job = make_job(dataset, tmp_path, batch_size=2)
    first = generate(job, model_and_processor, rank=0, world=2, merge=False)
    with pytest.raises(RecordError, match="missing"):
        merge_outputs(job, read_plan(job, model_and_processor[1]).ids)  # rank 1 has not run yet
    second = generate(job, model_and_processor, rank=1, world=2)
    assert first.batches == 3 and second.batches == 2  # 9 decodable-looking records in 5 batches
    ids = [r["id"] for r in load_records(job.output)] + [e["id"] for e in load_records(job.errors_output)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(10))


def test_resume_refuses_records_made_with_other_settings(dataset, tmp_path, model_and_processor):
    generate(make_job(dataset, tmp_path), model_and_processor)
    hotter = SamplingSettings(num_candidates=3, temperature=1.0, top_p=0.95, max_new_tokens=6)
    with pytest.raises(RecordError, match=r"out.jsonl:1 id='r0' field 'generation'.*'temperature': \(0.8, 1.0\)"):
        generate(make_job(dataset, tmp_path, sampling=hotter), model_and_processor)
    with pytest.raises(RecordError, match=r"'corruption': \(\[\], \['mask'\]\)"):
        generate(make_job(dataset, tmp_path, corruptions=("mask",)), model_and_processor)
    more = SamplingSettings(num_candidates=4, temperature=0.8, top_p=0.95, max_new_tokens=6)
    with pytest.raises(RecordError, match=r"'candidates': \(3, 4\)"):  # one output would mix candidate counts
        generate(make_job(dataset, tmp_path, sampling=more), model_and_processor)


def test_a_record_of_several_images_resumes_with_a_corruption_for_each(dataset, tmp_path, model_and_processor):
    path, images, records = dataset
    write_jsonl(tmp_path / "two.jsonl", [{"id": "pair", "image": ["0.png", "1.png"],
                                          "question": "<image>\nFirst. <image>\nSecond. Which is larger?"}])
    job = make_job(dataset, tmp_path, data=tmp_path / "two.jsonl", corruptions=("mask",))
    assert generate(job, model_and_processor).generated == 1
    [record] = load_records(job.output)
    assert [c["method"] for c in record["generation"]["corruption"]] == ["mask", "mask"]
    assert generate(job, model_and_processor).generated == 0  # resumed: nothing refused, nothing generated again


def test_batches_are_longest_first_and_each_draws_from_a_seed_of_its_own(dataset, model_and_processor):
    job = make_job(dataset, Path("unused"))
    plan = read_plan(job, model_and_processor[1])
    lengths = [task.num_tokens for batch in plan_batches(plan.tasks, 3) for task in batch]
    assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 1
    assert len({job.batch_seed(index) for index in range(50)}) == 50
    assert job.batch_seed(0) != make_job(dataset, Path("unused"), seed=1).batch_seed(0)


def test_resume_refuses_another_task_or_another_prompt_for_an_id(dataset, tmp_path, model_and_processor):
    """Both tasks have a `default` prompt type: a reasoning rerun into a cut captions output must not append
    answers to captions; nor may a rerun whose input changed a question under the same id."""
    captions = make_job(dataset, tmp_path, task="captions", prompt_type="default")
    generate(captions, model_and_processor)
    with pytest.raises(RecordError, match=r"'task': \('captions', 'reasoning'\).*'prompt': \('Please generate"):
        generate(make_job(dataset, tmp_path, prompt_type="default"), model_and_processor)
    job = make_job(dataset, tmp_path / "reasoning")
    generate(job, model_and_processor)
    path, images, records = dataset
    changed = [{**r, "question": "What colour is it?"} if r["id"] == "r2" else r for r in records]
    write_jsonl(tmp_path / "changed.jsonl", changed)
    with pytest.raises(RecordError, match=r"id='r2' field 'generation'.*'prompt': \('What is in corner 2\?"):
        generate(make_job(dataset, tmp_path / "reasoning", data=tmp_path / "changed.jsonl"), model_and_processor)


def test_outputs_from_before_the_task_was_recorded_resume_by_their_prompts(dataset, tmp_path, model_and_processor):
    job = make_job(dataset, tmp_path, task="captions", prompt_type="default")
    generate(job, model_and_processor)
    lines = [json.loads(line) for line in job.output.read_text().splitlines()]
    for record in lines:
        del record["generation"]["task"]
    job.output.write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert generate(job, model_and_processor).generated == 0
    with pytest.raises(RecordError, match=r"'prompt': \('Please generate"):
        generate(make_job(dataset, tmp_path, prompt_type="default"), model_and_processor)


def test_resume_refuses_another_order_of_all_corruptions(dataset, tmp_path, model_and_processor):
    generate(make_job(dataset, tmp_path, corruptions=("mask", "color_jitter"), corrupt_all=True), model_and_processor)
    swapped = make_job(dataset, tmp_path, corruptions=("color_jitter", "mask"), corrupt_all=True)
    with pytest.raises(RecordError, match=r"'corruption': \(\['mask', 'color_jitter'\], \['color_jitter', 'mask'\]\)"):
        generate(swapped, model_and_processor)


def test_resume_takes_the_same_model_folder_however_it_is_spelled(dataset, tmp_path, model_and_processor,
                                                                 monkeypatch):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "ckpt")
    generate(make_job(dataset, tmp_path, model_name=str(tmp_path / "ckpt")), model_and_processor)
    monkeypatch.chdir(tmp_path)
    for spelling in ("ckpt", "./ckpt/", "link", str(tmp_path / "link" / ".." / "ckpt")):
        assert generate(make_job(dataset, tmp_path, model_name=spelling), model_and_processor).generated == 0
    (tmp_path / "other").mkdir()
    with pytest.raises(RecordError, match="'model'"):
        generate(make_job(dataset, tmp_path, model_name="other"), model_and_processor)


def test_resume_refuses_an_output_that_holds_records_without_candidates(dataset, tmp_path, model_and_processor):
    job = make_job(dataset, tmp_path)
    write_jsonl(job.output, dataset[2][:2])  # the input records themselves
    with pytest.raises(RecordError, match=r"out.jsonl:1 id='r0' field 'generation': not a generated record"):
        generate(job, model_and_processor)
    assert not shard_files(job.output) and not shard_files(job.errors_output)


def test_corrupted_images_are_recorded_and_planned_at_their_true_length(dataset, tmp_path, model_and_processor):
    _, processor = model_and_processor
    job = make_job(dataset, tmp_path, corruptions=("mirror_rotation", "gaussian_blur"), corrupt_all=True)
    for task in read_plan(job, processor).tasks:
        if task.id != "r4":
            encoded, applied = encode_task(processor, task, job.corruptions, job.seed, corrupt_all=True)
            assert len(encoded.input_ids) == task.num_tokens
            assert [a["method"] for a in applied] == ["mirror_rotation", "gaussian_blur"]
    generate(job, model_and_processor)
    again = make_job(dataset, tmp_path / "again", corruptions=job.corruptions, corrupt_all=True)
    generate(again, model_and_processor)
    assert job.output.read_bytes() == again.output.read_bytes()
    records = load_records(job.output)
    assert all(r["generation"]["corruption"][0]["rotation"] in (90, 270) for r in records)
    assert len({r["generation"]["corruption"][1]["sigma"] for r in records}) == len(records)


def test_one_corruption_per_record_by_default_as_released(dataset, tmp_path, model_and_processor):
    _, processor = model_and_processor
    methods = ("mirror_rotation", "gaussian_blur")
    job = make_job(dataset, tmp_path, corruptions=methods)
    assert not job.corrupt_all
    chosen = {}
    for task in read_plan(job, processor).tasks:
        if task.id == "r4":  # its image fails when decoded
            continue
        encoded, applied = encode_task(processor, task, methods, job.seed)
        chosen[task.id] = [a["method"] for a in applied]
        assert chosen[task.id] == list(record_methods(methods, job.seed, task.id))
        assert len(encoded.input_ids) == task.num_tokens  # a record is planned rotated only when it is rotated
    assert all(len(names) == 1 for names in chosen.values())
    assert {names[0] for names in chosen.values()} == set(methods)  # both drawn among this run's records
    generate(job, model_and_processor)
    again = make_job(dataset, tmp_path / "again", corruptions=methods)
    generate(again, model_and_processor)
    assert job.output.read_bytes() == again.output.read_bytes()
    records = load_records(job.output)
    assert {r["id"]: [c["method"] for c in r["generation"]["corruption"]] for r in records} == chosen
    # Another seed draws another assignment; resuming with all methods is refused.
    assignment = lambda seed: [record_methods(methods, seed, rid) for rid in chosen]  # noqa: E731
    assert any(assignment(seed) != assignment(0) for seed in (1, 2, 3))
    with pytest.raises(RecordError, match="'corruption'"):
        generate(make_job(dataset, tmp_path, corruptions=methods, corrupt_all=True), model_and_processor)


def test_beam_sampling_needs_enough_beams():
    with pytest.raises(ValueError, match="num_beams >= 4"):
        SamplingSettings(num_candidates=4, temperature=0.7, num_beams=2)
    greedy_beams = SamplingSettings(num_candidates=4, temperature=0.0, num_beams=2)
    assert greedy_beams.generate_kwargs()["num_return_sequences"] == 1
    with pytest.raises(ValueError, match="temperature must be 0"):
        SamplingSettings(temperature=-1)



def test_sampling_comes_from_the_checkpoint_unless_flags_override(tmp_path):
    from transformers import GenerationConfig

    from sicog.generate.settings import resolve_sampling

    assert resolve_sampling(tmp_path) == SamplingSettings()  # no generation_config.json: the defaults
    qwen_sampling = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    qwen_sampling.save_pretrained(tmp_path)
    qwen = resolve_sampling(tmp_path, num_candidates=2)
    assert (qwen.top_p, qwen.top_k, qwen.repetition_penalty, qwen.num_candidates) == (0.8, 20, 1.05, 2)
    assert qwen.generate_kwargs()["repetition_penalty"] == 1.05 and qwen.metadata()["top_k"] == 20
    flagged = resolve_sampling(tmp_path, top_k=50, temperature=None)
    assert (flagged.top_k, flagged.temperature, flagged.top_p) == (50, 0.7, 0.8)


def test_outputs_from_before_settings_were_recorded_still_resume(dataset, tmp_path, model_and_processor):
    """A missing penalty means 1.0, this run's value; a missing image folder or set of the checkpoint's other
    decoding settings is not known, and those settings applied then as now."""
    sampling = dataclasses.replace(SamplingSettings(num_candidates=3, temperature=0.8, top_p=0.95, max_new_tokens=6),
                                   checkpoint_settings={"no_repeat_ngram_size": 3})
    job = make_job(dataset, tmp_path, sampling=sampling)
    generate(job, model_and_processor)
    lines = [json.loads(line) for line in job.output.read_text().splitlines()]
    for record in lines:
        for name in ("repetition_penalty", "image_folder", "other_settings"):
            del record["generation"][name]
    job.output.write_text("".join(json.dumps(r) + "\n" for r in lines[:5]))  # as a killed run left it
    summary = generate(job, model_and_processor)
    assert (summary.skipped, summary.generated) == (5 + 1, len(lines) - 5)  # and the record in the errors file


class _EchoModel:
    """generate(): each prompt's rows repeated num_return_sequences times (as HF does), plus a token naming the
    prompt's row, so that a candidate tells which prompt it was sampled for."""
    device = torch.device("cpu")

    def __init__(self, marks):
        self.marks = marks

    def generate(self, input_ids, attention_mask, num_return_sequences=1, **kwargs):
        rows = input_ids.shape[0]
        mark = torch.tensor(self.marks[:rows]).unsqueeze(1)
        out = torch.cat([input_ids, mark], dim=1)
        return out.repeat_interleave(num_return_sequences, dim=0)


def test_each_records_candidates_come_from_its_own_prompt(tiny_model_factory):
    """The candidates of a batch belong to their own record (generate returns each prompt's samples together)."""
    _, processor = tiny_model_factory()
    tok = processor.tokenizer
    words = ["alpha", "bravo", "charlie"]
    marks = [tok.encode(w, add_special_tokens=False)[0] for w in words]
    encoded = [processor.encode([{"from": "human", "value": f"question {i}"}], [], train=False) for i in range(3)]
    settings = SamplingSettings(num_candidates=4, temperature=0.8, top_p=0.95, max_new_tokens=4)
    groups = sample_candidates(_EchoModel(marks), processor, encoded, settings, seed=0)
    assert [len(g) for g in groups] == [4, 4, 4]
    for group, mark in zip(groups, marks):
        assert set(group) == {processor.decode([mark])}
