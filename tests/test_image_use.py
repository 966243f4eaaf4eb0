"""`sicog image-use`: answer loss with own vs swapped images tells whether a model looks at the image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from sicog.cli import main
from sicog.eval.image_use import image_use, swap_partners
from sicog.model.builders import save_pretrained
from sicog.model.processing import Encoded

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def _colour_data(root: Path, n: int = 8, sizes=((64, 64),)) -> Path:
    """``n`` one-colour images; the answer names the colour, so only the image can predict it."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", sizes[(i // len(COLORS)) % len(sizes)], COLORS[colour]).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"id": f"img-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this image?"},
            {"from": "gpt", "value": f"The image is {colour}."}]}))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _teach_colours(model, processor, data: Path, steps: int = 60) -> None:
    records = [json.loads(line) for line in data.read_text().splitlines()]
    batch = processor.collate(
        [processor.encode(r["conversations"], [data.parent / "images" / r["image"]]) for r in records]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_swap_partners_pair_different_pictures_of_a_view_layout() -> None:
    def item(*shapes):
        return Encoded([0], [0], [torch.zeros(shape) for shape in shapes])

    square, wide, tall = (3, 8, 8), (3, 8, 16), (3, 16, 8)
    items = [item(square), item(wide), item(square), item(square), item(tall), item(square), item(wide)]
    pictures = ["a", "w", "a", "b", "t", "c", "w"]  # "a" twice; the wide layout holds one picture twice
    partners = swap_partners(items, pictures)
    assert sorted(partners) == [0, 2, 3, 5]  # items 1, 6 (one picture) and 4 (alone) have no partner
    assert all(items[p].pixel_values[0].shape == items[i].pixel_values[0].shape for i, p in partners.items())
    assert all(pictures[p] != pictures[i] for i, p in partners.items())
    assert partners == swap_partners(items, pictures)  # fixed: a rerun compares the same records


def test_a_model_blind_to_the_image_has_no_gap(tiny_model_factory, tmp_path: Path) -> None:
    model, processor = tiny_model_factory()
    with torch.no_grad():
        model.resampler.proj.weight.zero_()  # every image becomes the same (zero) features
    result = image_use(model, processor, _colour_data(tmp_path), tmp_path / "images", progress=False)
    assert result["compared"] == 8 and result["errors"] == []
    assert result["gap"] == pytest.approx(0.0, abs=1e-6)


def test_a_model_that_reads_the_colour_has_a_large_gap(tiny_model_factory, tmp_path: Path) -> None:
    model, processor = tiny_model_factory()
    data = _colour_data(tmp_path)
    _teach_colours(model, processor, data)
    result = image_use(model, processor, data, tmp_path / "images", progress=False)
    assert result["loss_own_images"] < 0.2
    assert result["gap"] > 0.5  # per answer token; only the colour word depends on the image


def test_bad_records_are_listed_and_the_rest_measured(tiny_model_factory, tmp_path: Path) -> None:
    model, processor = tiny_model_factory()
    data = _colour_data(tmp_path, sizes=((64, 64), (96, 64)))
    lines = data.read_text().splitlines()
    lines.insert(2, json.dumps({"id": "gone", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}))
    data.write_text("\n".join(lines) + "\n")
    result = image_use(model, processor, data, tmp_path / "images", progress=False)
    assert [(e["line"], e["id"]) for e in result["errors"]] == [(3, "gone")]
    assert "missing.png" in result["errors"][0]["reason"]
    assert result["records"] == 9 and result["compared"] == 8 and result["without_partner"] == 0


def test_a_repeated_id_is_an_error_and_every_error_names_its_field(tiny_model_factory, tmp_path: Path) -> None:
    """The same record twice was measured twice, silently (weighing double in both losses), and every error had
    "field": null although its reason named one."""
    model, processor = tiny_model_factory()
    data = _colour_data(tmp_path)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    question_only = [{"from": "human", "value": "<image>\nWhat colour?"}]
    bad = [records[0], {**records[1], "id": "int-image", "image": 5},
           {**records[2], "id": "gone", "image": "missing.png"},
           {**records[3], "id": "no-answer", "conversations": question_only}]
    data.write_text("".join(json.dumps(record) + "\n" for record in records + bad))
    result = image_use(model, processor, data, tmp_path / "images", progress=False)
    assert [(e["line"], e["id"], e["field"]) for e in result["errors"]] == [
        (9, "img-0", "id"), (10, "int-image", "image"), (11, "gone", "image"), (12, "no-answer", "conversations")]
    assert result["errors"][0]["reason"] == f"{data}:9 id='img-0' field 'id': duplicate id (first seen on line 1)"
    assert all(f"field '{e['field']}'" in e["reason"] for e in result["errors"])
    assert (result["records"], result["compared"]) == (12, 8)


def _repeated_pictures(root: Path) -> Path:
    """Two questions per picture on consecutive lines, as instruction data holds them: four 64x64 pictures, and
    one 96x64 picture, the only one of its view layout."""
    data = _colour_data(root, n=4)
    Image.new("RGB", (96, 64), COLORS["red"]).save(root / "images" / "wide.png")
    records = []
    for record in [json.loads(line) for line in data.read_text().splitlines()] + [
            {"id": "wide", "image": "wide.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is this image?"},
                {"from": "gpt", "value": "The image is red."}]}]:
        second = json.loads(json.dumps(record))
        second["id"] += "-again"
        second["image"] = f"./{record['image']}"  # another spelling of the same file
        second["conversations"][0]["value"] = "<image>\nWhich colour fills the image?"
        records += [record, second]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    return data


def test_records_are_never_shown_their_own_picture_as_the_other_one(tiny_model_factory, tmp_path, monkeypatch) -> None:
    import sicog.eval.image_use as image_use_module

    model, processor = tiny_model_factory()
    measured = []

    def spy(model, processor, encoded, batch_size=16, desc=None):
        measured.append(list(encoded))
        return [(1.0, 1)] * len(encoded)

    monkeypatch.setattr(image_use_module, "answer_losses", spy)
    result = image_use(model, processor, _repeated_pictures(tmp_path), tmp_path / "images", progress=False)
    assert (result["records"], result["compared"], result["without_partner"]) == (10, 8, 2)
    own, other = measured
    for mine, borrowed in zip(own, other, strict=True):
        assert mine.input_ids == borrowed.input_ids
        assert not torch.equal(mine.pixel_values[0], borrowed.pixel_values[0])  # always another picture


def test_cli_writes_the_result(tiny_model_factory, tmp_path: Path, capsys) -> None:
    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "model")
    data = _colour_data(tmp_path)
    code = main(["image-use", "--model", str(tmp_path / "model"), "--data", str(data), "--image-folder",
                 str(tmp_path / "images"), "--output", str(tmp_path / "out.json"), "--limit", "6", "--no-progress"])
    assert code == 0
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["records"] == 6 and result["compared"] == 6 and result["model"] == str(tmp_path / "model")
    assert result["gap"] == pytest.approx(result["loss_other_images"] - result["loss_own_images"])
    assert "gap" in capsys.readouterr().out


def test_only_the_last_answer_is_the_reference(tiny_model_factory, tmp_path: Path, monkeypatch) -> None:
    """Earlier turns, answers included, are context: the loss is measured on the last reply and its end marker."""
    import sicog.eval.image_use as image_use_module

    model, processor = tiny_model_factory()
    data = _colour_data(tmp_path, n=4)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    for record in records:
        first, answer = record["conversations"]
        record["conversations"] = [first, {"from": "gpt", "value": "There are 3 circles on a blue background."},
                                   {"from": "human", "value": "And its colour, in a word?"},
                                   {"from": "gpt", "value": answer["value"].split()[-1].rstrip(".")}]
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    measured = []

    def spy(model, processor, encoded, batch_size=16, desc=None):
        measured.extend(encoded)
        return [(1.0, 1)] * len(encoded)

    monkeypatch.setattr(image_use_module, "answer_losses", spy)
    image_use(model, processor, data, tmp_path / "images", progress=False)
    end = processor.tokenizer.eos_token
    texts = [processor.tokenizer.decode([t for t in item.labels if t >= 0]) for item in measured]
    colours = [list(COLORS)[i % len(COLORS)] for i in range(4)]
    assert texts == [f"{colour}{end}" for colour in colours] * 2  # own images, then swapped ones


def test_the_reference_is_the_reply_whatever_training_supervises(tiny_model_factory, tmp_path: Path) -> None:
    from sicog.eval.image_use import last_reply_only

    _, processor = tiny_model_factory()
    image = Image.new("RGB", (64, 64), COLORS["red"])
    turns = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A square."},
             {"from": "human", "value": "Its colour?"}, {"from": "gpt", "value": "red"}]
    item = last_reply_only(processor.encode(turns, [image], label_masking="release"))
    assert processor.tokenizer.decode([t for t in item.labels if t >= 0]) == f"red{processor.tokenizer.eos_token}"


def test_cli_checks_its_paths_before_loading_the_model(tiny_model_factory, tmp_path: Path, capsys, monkeypatch) -> None:
    import sicog.eval.generation as generation

    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "model")
    data = _colour_data(tmp_path, n=2)
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(generation, "load_for_eval", lambda *args: pytest.fail("the model was loaded"))
    cases = [
        (data, tmp_path / "images", f"--output {tmp_path / 'images'} is a folder, not a file"),
        (data, tmp_path / "afile" / "out.json",
         f"--output {tmp_path / 'afile' / 'out.json'} cannot be written ({tmp_path / 'afile'} is a file)"),
        (tmp_path / "none.jsonl", tmp_path / "out.json", f"--data {tmp_path / 'none.jsonl'}: no such file"),
        (tmp_path / "images", tmp_path / "out.json", f"--data {tmp_path / 'images'}: a folder, not a file"),
    ]
    for data_path, output, message in cases:
        code = main(["image-use", "--model", str(tmp_path / "model"), "--data", str(data_path), "--output", str(output),
                     "--image-folder", str(tmp_path / "images"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.splitlines()[-1] == f"sicog image-use: error: {message}" and "Traceback" not in err


def test_cli_reports_a_failed_write_in_one_line(tiny_model_factory, tmp_path: Path, capsys, monkeypatch) -> None:
    import sicog.eval.image_use_cli as cli

    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "model")
    data = _colour_data(tmp_path, n=2)

    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "write_json", full_disk)
    code = main(["image-use", "--model", str(tmp_path / "model"), "--data", str(data), "--image-folder",
                 str(tmp_path / "images"), "--output", str(tmp_path / "out.json"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "gap" in captured.out  # the measurement is printed, not lost
    assert captured.err.splitlines()[-1] == (f"sicog image-use: error: cannot write --output {tmp_path / 'out.json'}: "
                                             "[Errno 28] No space left on device") and "Traceback" not in captured.err
