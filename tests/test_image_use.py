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


def test_swap_partners_rotate_within_a_view_layout() -> None:
    def item(*shapes):
        return Encoded([0], [0], [torch.zeros(shape) for shape in shapes])

    items = [item((3, 8, 8)), item((3, 8, 16)), item((3, 8, 8)), item((3, 8, 8)), item((3, 16, 8))]
    partners = swap_partners(items)
    assert partners == {0: 2, 2: 3, 3: 0}  # items 1 and 4 have no partner of their layout


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
