import json

import pytest
import yaml
from PIL import Image

from sicog.data.jsonl import RecordError
from sicog.data.mixture import load_mixture
from sicog.model.processing import ConversationError
from sicog.train.datasets import SupervisedDataset


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def rec(rid, answer="ok", image=None, question="hi"):
    record = {"id": rid, "conversations": [
        {"from": "human", "value": ("<image>\n" if image else "") + question},
        {"from": "gpt", "value": answer},
    ]}
    if image:
        record["image"] = image
    return record


def test_lengths_are_exact_and_overlong_samples_are_handled(tmp_path, tiny_model_factory):
    _, processor = tiny_model_factory()
    Image.new("RGB", (128, 96)).save(tmp_path / "a.png")
    data = write(tmp_path / "d.jsonl", [
        rec("short", image="a.png"),
        rec("long-answer", answer="word " * 300, image="a.png"),  # cut falls in the answer: truncated
        rec("long-question", question="word " * 300, image="a.png"),  # cut removes the answer: skipped
        {"id": "late-image", "image": "a.png", "conversations": [  # cut falls in image tokens (130-218): skipped
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "word " * 15},
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "ok"}]},
    ])
    dataset = SupervisedDataset(data, processor, image_folder=tmp_path, max_length=200, show_progress=False)
    assert [r["id"] for r in dataset.records] == ["short", "long-answer"]
    assert [p.id for p in dataset.skipped] == ["long-question", "late-image"]
    assert "image tokens" in dataset.skipped[1].reason
    short = dataset[0]["encoded"]
    assert len(short.input_ids) == dataset.lengths[0]
    truncated = dataset[1]["encoded"]
    assert len(truncated.input_ids) == len(truncated.labels) == 200 == dataset.lengths[1]


def test_a_sample_of_exactly_max_length_is_whole(tmp_path, tiny_model_factory):
    _, processor = tiny_model_factory()
    Image.new("RGB", (128, 96)).save(tmp_path / "a.png")
    data = write(tmp_path / "d.jsonl", [rec("x", answer="word " * 30, image="a.png")])
    length = SupervisedDataset(data, processor, image_folder=tmp_path, show_progress=False).lengths[0]
    exact = SupervisedDataset(data, processor, image_folder=tmp_path, max_length=length, show_progress=False)
    assert exact.truncated == [] and exact.lengths == [length]
    shorter = SupervisedDataset(data, processor, image_folder=tmp_path, max_length=length - 1, show_progress=False)
    assert [p.reason for p in shorter.truncated] == [f"{length} tokens > max_length {length - 1}: its last 1 tokens "
                                                    "are cut"]


def test_problems_name_file_line_and_field(tmp_path, tiny_model_factory):
    _, processor = tiny_model_factory()
    data = write(
        tmp_path / "d.jsonl", [rec("ok"), rec("no-image", image="missing.png"), {"id": "bad", "conversations": []}]
    )
    dataset = SupervisedDataset(data, processor, image_folder=tmp_path, show_progress=False)
    assert len(dataset) == 1
    problems = {p.id: p for p in dataset.problems}
    assert problems["no-image"].source.line == 2 and "missing.png" in problems["no-image"].reason
    assert problems["bad"].source.line == 3 and "conversations" in problems["bad"].reason


def test_yaml_mixture_with_sampling(tmp_path):
    write(tmp_path / "a.jsonl", [rec(f"a{i}") for i in range(10)])
    write(tmp_path / "b.jsonl", [rec(f"b{i}") for i in range(10)])
    spec = {"datasets": [{"path": "a.jsonl", "sampling": "first:30%"}, {"path": "b.jsonl", "sampling": "random:4"}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    records = load_mixture(tmp_path / "mix.yaml", seed=1)
    ids = [r["id"] for r, _ in records]
    assert ids[:3] == ["a0", "a1", "a2"] and len(ids) == 7 and all(i.startswith("b") for i in ids[3:])
    assert ids == [r["id"] for r, _ in load_mixture(tmp_path / "mix.yaml", seed=1)]
    assert records[3][1].path.endswith("b.jsonl")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"datasets": [{"path": "a.jsonl", "sampling": "some"}]}))
    with pytest.raises(RecordError, match="sampling"):
        load_mixture(tmp_path / "bad.yaml")
    both = load_mixture(f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}")
    assert len(both) == 20


def test_data_check_command(tmp_path, tiny_model_factory, capsys):
    from sicog.cli import main
    from sicog.model.builders import save_pretrained

    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "model")
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    good = write(tmp_path / "good.jsonl", [rec("g1", image="a.png"), rec("g2")])
    assert main(["data", "check", str(good), "--model", str(tmp_path / "model"), "--image-folder", str(tmp_path)]) == 0
    assert '"usable": 2' in capsys.readouterr().out
    bad = write(tmp_path / "bad.jsonl", [rec("g1", image="a.png"), rec("b2", image="nope.png")])
    report = tmp_path / "report.jsonl"
    code = main(["data", "check", str(bad), "--model", str(tmp_path / "model"), "--image-folder", str(tmp_path),
                 "--report", str(report)])
    assert code == 1
    assert "bad.jsonl:2 id='b2'" in capsys.readouterr().out
    assert json.loads(report.read_text())["id"] == "b2"


def test_template_that_renders_turns_differently_in_context_is_refused(tokenizer, tiny_model_factory):
    _, processor = tiny_model_factory()
    original = processor.chat_template
    processor.chat_template = "{{ messages|length }}" + original
    try:
        with pytest.raises(ConversationError, match="differently in context"):
            processor.encode([{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}])
    finally:
        processor.chat_template = original


def test_an_image_too_large_to_open_is_a_listed_problem(tmp_path, tiny_model_factory, monkeypatch):
    """PIL refuses to open an image whose header claims too many pixels: a listed problem, SFT and DPO alike."""
    from sicog.train.pairs import PairDataset

    _, processor = tiny_model_factory()
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit: DecompressionBombError
    data = write(tmp_path / "d.jsonl", [rec("ok"), rec("big", image="big.png")])
    pairs = write(tmp_path / "p.jsonl", [{"id": "p", "image": "big.png", "prompt": "What?", "chosen": "Black.",
                                           "rejected": "White."}])
    for dataset in (SupervisedDataset(data, processor, image_folder=tmp_path, show_progress=False),
                    PairDataset(pairs, processor, image_folder=tmp_path, show_progress=False)):
        assert len(dataset.problems) == 1 and "cannot read image" in dataset.problems[0].reason
        assert "decompression bomb" in dataset.problems[0].reason


def test_a_clean_rerun_removes_the_lists_of_an_earlier_run(tmp_path, tiny_model_factory):
    """After the data is fixed, the errors and skipped files of the earlier run on the folder do not stay behind."""
    from types import SimpleNamespace

    from sicog.train.datasets import DataProblemsError, check_dataset

    _, processor = tiny_model_factory()
    Image.new("RGB", (128, 96)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    args = SimpleNamespace(output_dir=str(out), process_index=0, per_device_train_batch_size=1, world_size=1,
                           dataloader_drop_last=True)
    too_long = rec("long", question="word " * 300, image="a.png")  # the cut would remove the answer
    broken = write(tmp_path / "broken.jsonl", [rec("ok"), rec("gone", image="missing.png"), too_long])
    with pytest.raises(DataProblemsError):
        check_dataset(SupervisedDataset(broken, processor, image_folder=tmp_path, max_length=200,
                                        show_progress=False), str(broken), args)
    assert (out / "data_errors.jsonl").is_file() and (out / "skipped_samples.jsonl").is_file()
    fixed = write(tmp_path / "fixed.jsonl", [rec("ok")])
    check_dataset(SupervisedDataset(fixed, processor, image_folder=tmp_path, max_length=200, show_progress=False),
                  str(fixed), args)
    assert not (out / "data_errors.jsonl").exists() and not (out / "skipped_samples.jsonl").exists()


def test_records_whose_labels_cannot_be_built_are_listed_before_training(tmp_path, tiny_model_factory):
    """A conversation with no assistant turn has nothing to learn: a listed problem naming file, line and field
    at construction, never an error at the step that reaches it."""
    _, processor = tiny_model_factory()
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    human_only = {"id": "human-only", "image": "a.png",
                  "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}]}
    data = write(tmp_path / "d.jsonl", [rec("ok", image="a.png"), human_only])
    dataset = SupervisedDataset(data, processor, image_folder=tmp_path, show_progress=False)
    assert [r["id"] for r in dataset.records] == ["ok"]
    [problem] = dataset.problems
    assert (problem.id, problem.source.line) == ("human-only", 2)
    assert "field 'conversations'" in problem.reason and "no gpt turn" in problem.reason
    assert any(label != -100 for label in dataset[0]["encoded"].labels)


@pytest.mark.parametrize("masking", ["replies", "release"])
def test_a_cut_that_keeps_no_answer_token_is_skipped_whatever_the_masking(tmp_path, tiny_model_factory, masking):
    """``release`` masking labels the prompt's newlines and chat markers too: a cut keeping only those is skipped
    like one keeping no label at all; a cut inside the answer is trained on, answer tokens kept."""
    _, processor = tiny_model_factory(label_masking=masking)
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    data = write(tmp_path / "d.jsonl", [
        rec("long-question", question="How many circles are there? " * 12, answer="The answer is 3.", image="a.png"),
        rec("long-answer", answer="The answer is 3. " * 12, image="a.png"),
    ])
    dataset = SupervisedDataset(data, processor, image_folder=tmp_path, max_length=80, show_progress=False)
    assert [p.id for p in dataset.skipped] == ["long-question"]
    assert [r["id"] for r in dataset.records] == ["long-answer"]
    kept = dataset[0]["encoded"]
    assert len(kept.input_ids) == 80 and any(kept.in_reply[i] and kept.labels[i] != -100 for i in range(80))


def _built(kind: str, processor, data, folder):
    """The dataset of ``kind`` ("samples": SupervisedDataset, "pairs": PairDataset) and what it holds."""
    from sicog.train.pairs import PairDataset

    dataset = (SupervisedDataset if kind == "samples" else PairDataset)(
        data, processor, image_folder=folder, max_length=200, show_progress=False)
    return {"records": [r["id"] for r in dataset.records], "lengths": dataset.lengths,
            **{kind: [[p.id, p.reason, p.category] for p in getattr(dataset, kind, [])]
               for kind in ("problems", "skipped", "truncated")}}


def _counting_measure(measured: list):
    """``measure`` of the datasets' module, noting each record it measures."""
    import sicog.train.datasets as datasets

    real = datasets.measure
    return lambda record, *args: measured.append(json.dumps(record["conversations"])) or real(record, *args)


def _measure_on_rank(rank: int, world: int, port: int, checkpoint: str, data: str, folder: str, out: str,
                     kind: str) -> None:
    """One rank of a gloo group: what the dataset built there holds and which records this rank measured."""
    import torch.distributed as dist

    import sicog.train.datasets as datasets
    import sicog.train.pairs as pairs
    from sicog.model.processing import SicogProcessor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    measured = []
    datasets.measure = pairs.measure = _counting_measure(measured)
    held = _built(kind, SicogProcessor.from_pretrained(checkpoint), data, folder)
    with open(f"{out}.rank{rank}.json", "w") as handle:
        json.dump({**held, "measured": measured}, handle)
    dist.destroy_process_group()


def _pair(rid, image=None, chosen="Red.", prompt="What colour?"):
    return {"id": rid, "prompt": prompt, "chosen": chosen, "rejected": "Blue.", **({"image": image} if image else {})}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["samples", "pairs"])
def test_ranks_measure_a_share_each_and_hold_the_whole_result(tmp_path, tiny_model_factory, monkeypatch, kind):
    """Every rank measured every record (a million records took each of 32 ranks the whole time); now each measures
    every world-th and they exchange results, which equal one process's, in order."""
    import torch.multiprocessing as mp
    from ports import free_port

    import sicog.train.datasets as datasets
    import sicog.train.pairs as pairs
    from sicog.model.builders import save_pretrained

    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "ckpt")
    Image.new("RGB", (128, 96)).save(tmp_path / "a.png")
    if kind == "samples":
        records = [rec(f"r{i}", image="a.png" if i % 2 else None, answer="word " * (3 * i)) for i in range(9)]
        records += [rec("no-image", image="missing.png"), rec("empty", answer=""),
                    rec("long-answer", "word " * 300), rec("long-question", question="word " * 300, image="a.png"),
                    {"id": "bad", "conversations": []}]
    else:
        records = [_pair(f"p{i}", image="a.png" if i % 2 else None, chosen="Red. " * i) for i in range(9)]
        records += [_pair("no-image", image="missing.png"), _pair("long", prompt="word " * 300, image="a.png"),
                    {"id": "bad", "prompt": "?"}]
    data = write(tmp_path / "d.jsonl", records)
    measured = []
    monkeypatch.setattr(datasets, "measure", _counting_measure(measured))
    monkeypatch.setattr(pairs, "measure", datasets.measure)
    alone = _built(kind, processor, data, tmp_path)
    assert alone["problems"] and alone["skipped"] and (kind == "pairs" or alone["truncated"])
    args = (2, free_port(), str(tmp_path / "ckpt"), str(data), str(tmp_path), str(tmp_path / "held"), kind)
    mp.start_processes(_measure_on_rank, args=args, nprocs=2, start_method="spawn")
    held = [json.loads((tmp_path / f"held.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert sorted(held[0]["measured"] + held[1]["measured"]) == sorted(measured)
    for result in held:
        assert 0 < len(result.pop("measured")) < len(measured)
        assert result == alone
