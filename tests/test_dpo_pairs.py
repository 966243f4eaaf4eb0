"""Pair records -> encoded chosen/rejected samples, pair batches, and the cached, resumable reference pass."""

import json
import os

import pytest
import torch
from PIL import Image

from sicog.data.jsonl import RecordError
from sicog.data.lock import OutputLocked, output_lock
from sicog.model.modeling import flatten_views
from sicog.model.processing import IGNORE_INDEX
from sicog.train.dpo_reference import compute_reference, fingerprint, reference_settings
from sicog.train.pairs import PairCollator, PairDataset, check_pair_record


@pytest.fixture()
def pairs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (96, 64), (220, 30, 30)).save(images / "wide.png")
    Image.new("RGB", (64, 64), (30, 30, 220)).save(images / "square.png")
    records = [
        {"id": "a", "image": "wide.png", "prompt": "What colour is this image?", "chosen": "The image is red.",
         "rejected": "The image is blue."},
        {"id": "b", "image": ["square.png", "wide.png"], "prompt": "<image>\\nFirst. <image>\\nSecond. Which is red?",
         "chosen": "The second.", "rejected": "The first one is red.", "source": {"kind": "noisy"}},
        {"id": "c", "prompt": "Say hello.", "chosen": "Hello there.", "rejected": "No."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_both_sides_share_prompt_and_image_views(pairs, tiny_model_factory):
    _, processor = tiny_model_factory()
    dataset = PairDataset(pairs, processor, image_folder=pairs.parent / "images", show_progress=False)
    assert len(dataset) == 3 and not dataset.problems and dataset.has_image == [True, True, False]
    for index, record in enumerate(dataset.records):
        item = dataset[index]
        chosen, rejected = item["chosen"], item["rejected"]
        assert item["id"] == record["id"] and "reference" not in item
        assert chosen.pixel_values is rejected.pixel_values  # the same view tensors, not a copy
        prompt_end = chosen.labels.index(next(label for label in chosen.labels if label != IGNORE_INDEX))
        assert rejected.input_ids[:prompt_end] == chosen.input_ids[:prompt_end]
        for side, text in ((chosen, record["chosen"]), (rejected, record["rejected"])):
            supervised = [t for t in side.labels if t != IGNORE_INDEX]
            assert processor.tokenizer.decode(supervised).startswith(text)
        assert dataset.lengths[index] == max(len(chosen.input_ids), len(rejected.input_ids))
    # one "<image>" line is added for the single image; placed placeholders are kept where they are
    first = processor.tokenizer.decode(dataset[0]["chosen"].input_ids)
    views, _ = flatten_views(dataset[0]["chosen"].pixel_values)
    assert first.count("<image>") == len(views) * processor.config.resampler_num_queries
    assert len(flatten_views(dataset[1]["chosen"].pixel_values)[0]) > 2  # two images, sliced


def test_collator_puts_chosen_rows_first_and_keeps_the_reference(pairs, tiny_model_factory):
    _, processor = tiny_model_factory()
    dataset = PairDataset(pairs, processor, image_folder=pairs.parent / "images", show_progress=False)
    dataset.attach_reference([(-1.0, -2.0), (-3.0, -4.0), (-5.0, -6.0)])
    items = [dataset[0], dataset[1]]
    batch = PairCollator(processor)(items)
    assert batch["ids"] == ["a", "b"] and batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][0, : len(items[0]["chosen"].input_ids)].tolist() == items[0]["chosen"].input_ids
    assert batch["input_ids"][3, : len(items[1]["rejected"].input_ids)].tolist() == items[1]["rejected"].input_ids
    views = items[0]["chosen"].pixel_values + items[1]["chosen"].pixel_values
    assert len(batch["pixel_values"]) == 2 * len(views)
    assert all(a is b for a, b in zip(batch["pixel_values"], views + views))
    assert batch["reference_chosen_logps"] == [-1.0, -3.0]
    assert batch["reference_rejected_logps"] == [-2.0, -4.0]
    with pytest.raises(ValueError, match="2 reference values for 3 pairs"):
        dataset.attach_reference([(0.0, 0.0)] * 2)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prompt": ""}, "prompt"),
        ({"chosen": None}, "chosen"),
        ({"rejected": " The image is red. "}, "rejected"),
        ({"rejected": "<image> red"}, "rejected"),
        ({"prompt": "<image>\n<image>\nTwo?"}, "prompt"),
        ({"image": 7}, "image"),
        ({"id": ""}, "id"),
    ],
)
def test_invalid_pairs_name_their_field(change, field):
    record = {"id": "x", "image": "a.png", "prompt": "What colour?", "chosen": "The image is red.",
              "rejected": "The image is blue.", **change}
    with pytest.raises(RecordError) as err:
        check_pair_record(record, path="p.jsonl", line=4)
    assert err.value.field == field and err.value.line == 4 and "p.jsonl:4" in str(err.value)


def test_problems_and_overlong_pairs_are_listed(pairs, tiny_model_factory):
    _, processor = tiny_model_factory()
    lines = pairs.read_text().splitlines()
    lines.append(json.dumps({"id": "gone", "image": "nowhere.png", "prompt": "Q?", "chosen": "A.", "rejected": "B."}))
    lines.append(json.dumps({"id": "long", "prompt": "Say hello.", "chosen": "Hello there. " * 60, "rejected": "No."}))
    same = "Hello there. " * 60
    lines.append(json.dumps({"id": "same-cut", "prompt": "Say hello.", "chosen": same + "Yes.",
                             "rejected": same + "No."}))
    pairs.write_text("\n".join(lines) + "\n")
    dataset = PairDataset(pairs, processor, image_folder=pairs.parent / "images", max_length=100, show_progress=False)
    assert [(p.id, p.source.line) for p in dataset.problems] == [("gone", 4)]
    assert "nowhere.png" in dataset.problems[0].reason
    # the long text pair can be cut (its answers keep supervised tokens); the image pairs cannot fit, and the
    # answers that differ only after the cut would leave no preference
    assert [r["id"] for r in dataset.records] == ["c", "long"] and max(dataset.lengths) == 100
    reasons = {p.id: p.reason for p in dataset.skipped}
    assert set(reasons) == {"a", "b", "same-cut"}
    assert reasons["a"].endswith("the cut would remove an answer")
    assert reasons["same-cut"].endswith("chosen and rejected differ only after the cut")
    assert len(dataset[1]["chosen"].input_ids) == 100


def test_reference_pass_resumes_and_is_cached(pairs, tiny_model_factory, tmp_path):
    model, processor = tiny_model_factory()
    dataset = PairDataset(pairs, processor, image_folder=pairs.parent / "images", show_progress=False)
    collator = PairCollator(processor)
    path = tmp_path / "ref.json"
    options = {"batch_size": 2, "device": "cpu", "show_progress": False}
    fresh = compute_reference(model, dataset, collator, path=tmp_path / "fresh.json", key="k1", **options)
    assert len(fresh) == 3 and all(c < 0 and r < 0 for c, r in fresh)
    # a killed run left the score of pair 1 in its shard: the rerun keeps it and scores only the others
    shard = tmp_path / ".ref-k1" / "rank00000-of-00001.jsonl"
    shard.parent.mkdir()
    shard.write_text(json.dumps({"id": "1", "pair": "b", "chosen": -1.5, "rejected": -2.5}) + "\n{\"id\": \"2\", \"cho")
    resumed = compute_reference(model, dataset, collator, path=path, key="k1", **options)
    assert resumed[1] == (-1.5, -2.5)
    torch.testing.assert_close(
        torch.tensor([resumed[0], resumed[2]]), torch.tensor([fresh[0], fresh[2]]), rtol=0, atol=1e-4
    )
    assert not shard.parent.exists() and json.loads(path.read_text())["ids"] == ["a", "b", "c"]
    # same key: read back without scoring; another key: scored again
    model.language_model.lm_head.weight.data.zero_()
    assert compute_reference(model, dataset, collator, path=path, key="k1", **options) == resumed
    again = compute_reference(model, dataset, collator, path=path, key="k2", **options)
    assert again != resumed and json.loads(path.read_text())["fingerprint"] == "k2"
    # Another run scoring into the same file stops at once, rather than sharing its shard files.
    with output_lock(path), pytest.raises(OutputLocked, match="in use by another run"):
        compute_reference(model, dataset, collator, path=path, key="k3", **options)
    assert json.loads(path.read_text())["fingerprint"] == "k2" and not (tmp_path / ".ref-k3").exists()


def test_the_reference_fingerprint_follows_what_decides_the_starting_model(tiny_model_factory, tmp_path):
    """A reference computed for another starting model is never reused: another projector file, a checkpoint's
    file rewritten in place, another slicing, attention or chat template each change the settings' digest."""
    model, processor = tiny_model_factory()
    checkpoint, projector = tmp_path / "base", tmp_path / "projector.safetensors"
    model.save_pretrained(checkpoint)
    projector.write_bytes(b"one")

    def digest(checkpoints=None, model=model, chat_template=processor.chat_template) -> str:
        checkpoints = checkpoints or {"model_name_or_path": str(checkpoint), "projector": None}
        return json.dumps(reference_settings(model, chat_template, checkpoints, "images", 64, 0), default=str)

    base = digest()
    assert digest() == base
    model.config._name_or_path = "base"  # the checkpoint as typed from another working folder: the same model
    assert digest() == base
    changed = [
        digest({"model_name_or_path": str(checkpoint), "projector": str(projector)}),
        digest(chat_template=processor.chat_template + " "),
        digest(model=tiny_model_factory(max_slice_nums=2)[0]),
        digest(model=tiny_model_factory(attn_implementation="eager")[0]),
    ]
    (checkpoint / "config.json").write_text((checkpoint / "config.json").read_text() + "\n")
    changed.append(digest())
    assert base not in changed and len(set(changed)) == len(changed)


def test_the_pairs_fingerprint_follows_their_pictures_and_the_image_folder_not_its_spelling(
        pairs, tiny_model_factory, tmp_path, monkeypatch):
    """Pictures rewritten under the same names reused the reference scored on the old ones; an image folder typed
    relative from two working folders was one setting."""
    _, processor = tiny_model_factory()
    folder = pairs.parent / "images"

    def key(image_folder=folder) -> str:
        dataset = PairDataset(pairs, processor, image_folder=folder, show_progress=False)
        settings = reference_settings(tiny_model_factory()[0], "t", {}, image_folder, 64, 0)
        return fingerprint(dataset, settings)

    base = key()
    monkeypatch.chdir(pairs.parent)
    assert key(image_folder="images") == base  # the same folder typed another way
    Image.new("RGB", (96, 64), (30, 220, 30)).save(folder / "wide.png")  # another picture, the same name
    os.utime(folder / "wide.png", ns=(1, 10**18))
    assert key() != base
