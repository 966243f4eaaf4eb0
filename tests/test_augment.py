"""The published training-time resizing (``--augment release``)."""

import json
import random

from PIL import Image

from sicog.train.augment import release_augment
from sicog.train.datasets import SupervisedDataset


class Draws(random.Random):
    """A random source that returns the given draws in turn."""

    def __init__(self, *draws: float) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def random(self) -> float:
        return self.draws.pop(0)


def test_text_heavy_images_get_a_1024_long_side(tiny_model_factory):
    _, processor = tiny_model_factory()
    image = Image.new("RGB", (400, 300))
    assert release_augment(image, "textvqa/train/1.jpg", processor, Draws()).size == (1024, 768)
    assert release_augment(image, "TextVQA/2.jpg", processor, Draws()).size == (1024, 768)


def test_one_draw_in_ten_resizes_to_six_slices(tiny_model_factory):
    _, processor = tiny_model_factory(max_slice_nums=9)  # 64 px slices
    image = Image.new("RGB", (100, 80))
    assert release_augment(image, "coco/1.jpg", processor, Draws(0.5)).size == (100, 80)
    resized = release_augment(image, "coco/1.jpg", processor, Draws(0.05))
    assert resized.size == (175, 140) and processor.plan(*resized.size).num_slices == 6
    six = Image.new("RGB", resized.size)
    assert release_augment(six, "coco/2.jpg", processor, Draws(0.05)).size == six.size  # already 6 slices


def write_textvqa_sample(folder, answer: str) -> None:
    """A 100x75 TextVQA-named image (the release resizes those) and one record asking about it, in ``folder``."""
    (folder / "img").mkdir()
    Image.new("RGB", (100, 75), (10, 200, 30)).save(folder / "img" / "textvqa_1.png")
    record = {"id": "a", "image": "textvqa_1.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is written?"}, {"from": "gpt", "value": answer}]}
    (folder / "data.jsonl").write_text(json.dumps(record) + "\n")


def test_dataset_applies_it_only_when_asked(tiny_model_factory, tmp_path):
    _, processor = tiny_model_factory(max_slice_nums=9)
    write_textvqa_sample(tmp_path, "Nothing.")
    kwargs = dict(image_folder=tmp_path / "img", max_length=100000, show_progress=False)
    plain = SupervisedDataset(tmp_path / "data.jsonl", processor, **kwargs)[0]["encoded"]
    augmented = SupervisedDataset(tmp_path / "data.jsonl", processor, augment="release", **kwargs)[0]["encoded"]
    assert len(augmented.input_ids) > len(plain.input_ids)  # 1024x768 makes more slices than 100x75


def test_an_augmented_sample_that_would_lose_every_answer_is_trained_as_it_is(tiny_model_factory, tmp_path):
    """The enlarged image still fits ``max_length`` but pushes the whole answer past it: the plain sample is used."""
    _, processor = tiny_model_factory(max_slice_nums=9)
    write_textvqa_sample(tmp_path, "Nothing is written here.")
    kwargs = dict(image_folder=tmp_path / "img", show_progress=False)
    plain = SupervisedDataset(tmp_path / "data.jsonl", processor, max_length=100000, **kwargs)[0]["encoded"]
    big = SupervisedDataset(tmp_path / "data.jsonl", processor, max_length=100000, augment="release", **kwargs)
    enlarged = big[0]["encoded"]
    last_image_token = max(i for i, t in enumerate(enlarged.input_ids) if t == processor.image_token_id)
    first_answer = min(i for i, label in enumerate(enlarged.labels) if label != -100)
    max_length = last_image_token + 5
    assert len(plain.input_ids) <= max_length < first_answer  # the case: image kept, every answer token cut
    dataset = SupervisedDataset(tmp_path / "data.jsonl", processor, max_length=max_length, augment="release", **kwargs)
    item = dataset[0]["encoded"]
    assert item.input_ids == plain.input_ids and item.labels == plain.labels


def write_photos(folder, count: int) -> None:
    """``count`` photos under ``folder/img`` and a record asking about each in ``folder/data.jsonl``."""
    (folder / "img").mkdir()
    records = []
    for i in range(count):
        Image.new("RGB", (100, 80), (i, 50, 90)).save(folder / "img" / f"photo_{i}.png")
        records.append({"id": str(i), "image": f"photo_{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A colour."}]})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_samples_draws_depend_on_its_index_and_epoch_only(tiny_model_factory, tmp_path):
    """Whichever DataLoader worker or rank builds a sample, and whatever it built before (a resumed run), the
    sample gets the same resizing; another epoch draws afresh."""
    _, processor = tiny_model_factory(max_slice_nums=9)
    write_photos(tmp_path, 40)

    def lengths(order, epoch=0):
        dataset = SupervisedDataset(tmp_path / "data.jsonl", processor, image_folder=tmp_path / "img",
                                    max_length=100000, augment="release", seed=3, show_progress=False)
        dataset.set_epoch(epoch)
        return {i: len(dataset[i]["encoded"].input_ids) for i in order}

    forward = lengths(range(40))
    assert len(set(forward.values())) == 2  # some samples resized to six slices, the others kept as they are
    assert lengths(reversed(range(40))) == forward
    assert lengths(range(40), epoch=1) != forward


def token_counts(items: list) -> list[int]:
    """A DataLoader collate_fn: each sample's token count (a resized image has more slices, so more tokens)."""
    return [len(item["encoded"].input_ids) for item in items]


def test_persistent_dataloader_workers_draw_each_epochs_augmentations(tiny_model_factory, tmp_path):
    """`--augment release --dataloader_persistent_workers True`: a persistent worker kept the dataset it started with,
    epoch 0 included, so every later epoch repeated epoch 0's resizing; the draws depend on seed, epoch and index."""
    from torch.utils.data import DataLoader

    _, processor = tiny_model_factory(max_slice_nums=9)
    write_photos(tmp_path, 20)
    dataset = SupervisedDataset(tmp_path / "data.jsonl", processor, image_folder=tmp_path / "img", max_length=100000,
                                augment="release", seed=3, show_progress=False)
    loader = DataLoader(dataset, batch_size=5, num_workers=1, persistent_workers=True, collate_fn=token_counts)
    drawn, own = [], []
    for epoch in range(3):
        dataset.set_epoch(epoch)  # as SicogTrainer does before each epoch, in the main process
        drawn.append([count for batch in loader for count in batch])
        own.append([len(dataset[i]["encoded"].input_ids) for i in range(len(dataset))])
    assert drawn == own
    assert len({tuple(counts) for counts in own}) == 3  # each epoch resizes other images
