"""The supervised training dataset: LLaVA records -> encoded samples, lazily, with exact lengths.

Construction reads every record once (validation, image headers, token counts, text labels) so that
lengths are exact for length-grouped batching, and over-long samples and conversations whose labels cannot
be built are found before training starts. Images are decoded and their tokens built only in ``__getitem__``.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import TrainingArguments

from sicog.data.jsonl import RecordError, write_jsonl
from sicog.data.mixture import Source, load_mixture
from sicog.data.schema import check_llava_record, record_images, resolve_image
from sicog.model.image_io import load_image
from sicog.model.processing import IGNORE_INDEX, ConversationError, Encoded, SicogProcessor
from sicog.train.augment import AUGMENT_CHOICES, release_augment

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """A record that cannot be trained on, and why."""

    id: str | None
    source: Source
    reason: str

    def to_json(self) -> dict:
        """The line written to an errors or skipped file."""
        return {"id": self.id, "file": self.source.path, "line": self.source.line, "reason": self.reason}


def measure(record: dict, processor: SicogProcessor, image_folder, never_split: bool) -> int:
    """Exact token length of ``record`` once encoded (reads image headers only, not pixels).

    The text is encoded with its labels, so a conversation that cannot be trained on (no assistant turn,
    a token running past a turn's end) raises :class:`ConversationError` here, before training.
    """
    length = len(processor.encode_text(record["conversations"], train=True).input_ids)
    for name in record_images(record):
        path = resolve_image(name, image_folder)
        try:
            with Image.open(path) as image:
                size = image.size
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ValueError(f"cannot read image {path}: {err}") from None
        if size[0] == 0 or size[1] == 0:
            raise ValueError(f"image {path} has zero size")
        length += processor.image_token_count(*size, never_split=never_split) - 1
    return length


class SupervisedDataset(Dataset):
    """LLaVA conversation records for stages 0, 1, 1.5 and 2.

    ``problems`` lists invalid records (bad schema, unreadable image, labels that cannot be built);
    ``skipped`` lists records that cannot fit ``max_length`` without cutting image tokens or losing every
    supervised reply token.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        processor: SicogProcessor,
        *,
        image_folder: str | os.PathLike | None = None,
        max_length: int = 4096,
        never_split: bool = False,
        seed: int = 0,
        augment: str = "none",
        show_progress: bool = True,
    ) -> None:
        if augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment={augment!r} is not one of {AUGMENT_CHOICES}")
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.processor = processor
        self.image_folder = image_folder
        self.max_length = max_length
        self.never_split = never_split
        self.records: list[dict] = []
        self.sources: list[Source] = []
        self.lengths: list[int] = []
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []
        loaded = load_mixture(data_path, seed=seed)
        for record, source in tqdm(loaded, desc="measuring samples", disable=not show_progress):
            rid = record.get("id")
            try:
                check_llava_record(record, path=source.path, line=source.line)
                length = measure(record, processor, image_folder, never_split)
            except ConversationError as err:  # its labels cannot be built: named like a schema error
                located = RecordError(str(err), path=source.path, line=source.line, record_id=rid,
                                      field="conversations")
                self.problems.append(Problem(rid, source, str(located)))
                continue
            except (RecordError, ValueError) as err:
                self.problems.append(Problem(rid, source, str(err)))
                continue
            if length > max_length and not self._truncatable(record, length):
                reason = (
                    f"{length} tokens > max_length {max_length} "
                    "and the cut would fall in image tokens or remove every answer"
                )
                self.skipped.append(Problem(str(rid), source, reason))
                continue
            self.records.append(record)
            self.sources.append(source)
            self.lengths.append(min(length, max_length))

    def _truncatable(self, record: dict, length: int) -> bool:
        try:
            encoded = self._encode(record)
        except (ValueError, OSError):
            return False
        return self._fits(encoded)

    def _fits(self, encoded: Encoded) -> bool:
        """Whether cutting ``encoded`` at ``max_length`` keeps every image token and at least one supervised
        reply token (with ``label_masking: release`` the newlines and chat markers of the prompt are labels
        too, but a sample keeping only those teaches no answer)."""
        cut = encoded.input_ids[self.max_length :]
        kept = zip(encoded.labels[: self.max_length], encoded.in_reply[: self.max_length])
        return self.processor.image_token_id not in cut and any(
            label != IGNORE_INDEX and reply for label, reply in kept
        )

    @property
    def has_image(self) -> list[bool]:
        """Whether each sample carries an image (for modality-grouped batching)."""
        return [bool(record_images(r)) for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of epoch ``epoch`` (called by the trainer before each epoch)."""
        self.epoch = epoch

    def _encode(self, record: dict, index: int | None = None) -> Encoded:
        """``record`` encoded; with ``index``, its images augmented as the sample ``index`` of this epoch."""
        names = record_images(record)
        images = [resolve_image(name, self.image_folder) for name in names]
        if index is not None:
            # One generator per sample and epoch: the draws do not depend on which DataLoader worker or rank
            # builds the sample, nor on what it built before, so a resumed run augments as the first did.
            rng = random.Random(f"sicog-augment/{self.seed}/{self.epoch}/{index}")
            images = [release_augment(load_image(path), str(name), self.processor, rng)
                      for path, name in zip(images, names)]
        return self.processor.encode(record["conversations"], images, train=True, never_split=self.never_split)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            encoded = self._encode(record, index if self.augment == "release" else None)
            if self.augment == "release" and not self._fits(encoded):
                # The resized image would be cut, or would push every answer token past the cut (a sample
                # without labels gives a NaN loss): train on the image as it is, which construction checked.
                encoded = self._encode(record)
        except (ValueError, OSError) as err:
            source = self.sources[index]
            raise RecordError(str(err), path=source.path, line=source.line, record_id=record.get("id")) from None
        if len(encoded.input_ids) > self.max_length:
            encoded = Encoded(
                encoded.input_ids[: self.max_length], encoded.labels[: self.max_length], encoded.pixel_values,
                encoded.in_reply[: self.max_length],
            )
        return {"id": str(record["id"]), "encoded": encoded}


class SupervisedCollator:
    """Pad a list of dataset items into a model batch; keeps the sample ids under ``ids``."""

    def __init__(self, processor: SicogProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[dict]) -> dict:
        batch = self.processor.collate([item["encoded"] for item in items], padding_side="right")
        batch["ids"] = [item["id"] for item in items]
        return batch


class DataProblemsError(ValueError):
    """The training data holds records that cannot be used."""


def check_dataset(dataset: Dataset, data_path: str, args: TrainingArguments) -> Dataset:
    """Write the dataset's invalid and skipped records beside the run; stop when any is invalid or none is left.

    ``dataset`` is a :class:`SupervisedDataset` or any dataset with the same ``problems`` and ``skipped`` lists.
    """
    output = Path(args.output_dir)
    if args.process_index == 0:
        errors_file, skipped_file = output / "data_errors.jsonl", output / "skipped_samples.jsonl"
        # A list from an earlier run on the same folder would describe data that has since been fixed.
        if dataset.problems:
            write_jsonl(errors_file, (p.to_json() for p in dataset.problems))
        else:
            errors_file.unlink(missing_ok=True)
        if dataset.skipped:
            write_jsonl(skipped_file, (p.to_json() for p in dataset.skipped))
            logger.warning("skipped %d over-long samples (listed in %s)", len(dataset.skipped), skipped_file)
        else:
            skipped_file.unlink(missing_ok=True)
    if dataset.problems:
        first = "; ".join(f"{p.source.path}:{p.source.line} id={p.id}: {p.reason}" for p in dataset.problems[:3])
        raise DataProblemsError(
            f"{len(dataset.problems)} invalid training records (all in {output / 'data_errors.jsonl'}); first: {first}"
        )
    if not len(dataset):
        raise DataProblemsError(f"no usable training records in {data_path}")
    return dataset
