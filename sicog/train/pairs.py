"""Preference pairs for DPO: ``{id, image, prompt, chosen, rejected}`` records -> encoded chosen/rejected samples.

``prompt`` is the user text. Without ``<image>`` in it, one ``<image>`` line per image is put in front
(as curation writes its prompts); with placeholders, their number must equal the number of images.
Both sides of a pair are encoded by the same processor from the same loaded images and share the
same image-view tensors, so the model sees exactly the same slices under the chosen and the
rejected answer. Like :class:`~sicog.train.datasets.SupervisedDataset`, construction validates every
record and measures exact lengths; invalid pairs are listed in ``problems``, unfittable ones in
``skipped``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from sicog.data.jsonl import RecordError
from sicog.data.mixture import DEFAULT_SEED, Source, load_mixture
from sicog.data.problems import TOO_LONG, Problem, default_decode_workers, undecodable_images, undecodable_problem
from sicog.data.prompts import IMAGE_TOKEN, user_turn
from sicog.data.schema import check_llava_record, record_images, resolve_image
from sicog.data.text import blank
from sicog.model.image_io import load_image
from sicog.model.processing import IGNORE_INDEX, Encoded, SicogProcessor
from sicog.train.datasets import (
    FailedFetch,
    Outcome,
    RecordErrorsAsData,
    measure,
    measure_in_shares,
    record_problem,
    usable,
)

TEXT_FIELDS = ("prompt", "chosen", "rejected")


def human_turn(prompt: str, n_images: int) -> str:
    """The user turn of a pair: the prompt as given when it places its images, else one ``<image>`` line
    per image first."""
    if IMAGE_TOKEN in prompt:
        return prompt
    return user_turn(prompt.strip(), n_images)


def pair_conversations(record: dict) -> tuple[list[dict], list[dict]]:
    """The chosen and the rejected conversation of a pair record (same user turn)."""
    user = {"from": "human", "value": human_turn(record["prompt"], len(record_images(record)))}
    return [user, {"from": "gpt", "value": record["chosen"]}], [user, {"from": "gpt", "value": record["rejected"]}]


def check_pair_record(record: Any, *, path: str | None = None, line: int | None = None) -> None:
    """Raise :class:`RecordError` (naming file, line, id and field) when ``record`` is not a usable pair."""
    if not isinstance(record, dict):
        raise RecordError(f"expected an object, got {type(record).__name__}", path=path, line=line)
    rid = record.get("id")

    def fail(message: str, field: str) -> None:
        raise RecordError(message, path=path, line=line, record_id=rid, field=field)

    for field in TEXT_FIELDS:
        value = record.get(field)
        if not isinstance(value, str) or blank(value):
            fail("missing, empty or not a string", field)
        if field != "prompt" and IMAGE_TOKEN in value:
            fail(f"{IMAGE_TOKEN} in an answer", field)
    if record["chosen"].strip() == record["rejected"].strip():
        fail("identical to chosen: the pair prefers nothing", "rejected")
    placed = record["prompt"].count(IMAGE_TOKEN)
    n_images = len(record_images(record)) if isinstance(record.get("image"), (str, list)) else 0
    if placed and placed != n_images:
        fail(f"{placed} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s)", "prompt")
    # The remaining rules (id, image field) are those of every LLaVA record.
    conversation = [
        {"from": "human", "value": human_turn(record["prompt"], n_images)},
        {"from": "gpt", "value": record["chosen"]},
    ]
    check_llava_record({**record, "conversations": conversation}, path=path, line=line)


class PairDataset(RecordErrorsAsData, Dataset):
    """Chosen/rejected pairs for ``sicog train --stage dpo``.

    ``lengths`` holds the longer side of each pair (for length-grouped batches). After
    :meth:`attach_reference`, every item also carries the reference model's log-probabilities. With
    ``decode_images`` every image is decoded in full at construction, so that one whose pixels are cut off is a
    listed problem too (image headers alone pass it).
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        processor: SicogProcessor,
        *,
        image_folder: str | os.PathLike | None = None,
        max_length: int = 4096,
        seed: int = DEFAULT_SEED,
        show_progress: bool = True,
        decode_images: bool = False,
    ) -> None:
        self.processor = processor
        self.image_folder = image_folder
        self.max_length = max_length
        self.records: list[dict] = []
        self.sources: list[Source] = []
        self.lengths: list[int] = []
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []
        self.reference: list[tuple[float, float]] | None = None
        records = load_mixture(data_path, seed=seed)
        undecodable = undecodable_images(records, image_folder, workers=default_decode_workers(),
                                         show_progress=show_progress) if decode_images else {}
        outcomes = measure_in_shares(records, lambda record, source: self._outcome(record, source, undecodable),
                                     "measuring pairs", show_progress)
        for record, source, length in usable(records, outcomes, {"problem": self.problems, "skipped": self.skipped}):
            self.records.append(record)
            self.sources.append(source)
            self.lengths.append(length)

    def _outcome(self, record: dict, source: Source, undecodable: dict) -> Outcome:
        """A pair's trained length (its longer side, at most ``max_length``), or how it is listed: ``("problem",
        ...)`` when invalid, ``("skipped", ...)`` when too long to cut."""
        rid = record.get("id") if isinstance(record, dict) else None
        try:
            check_pair_record(record, path=source.path, line=source.line)
            lengths = [measure({"conversations": c, "image": record.get("image")}, self.processor, self.image_folder,
                               False) for c in pair_conversations(record)]
        except ValueError as err:
            return 0, ("problem", record_problem(err, rid, source, None))
        if problem := undecodable_problem(record, source, self.image_folder, undecodable):
            return 0, ("problem", problem)
        cut_problem = self._cut_problem(record) if max(lengths) > self.max_length else None
        if cut_problem:
            return 0, ("skipped", Problem(str(rid), source, f"{max(lengths)} tokens > max_length {self.max_length} "
                                                            f"and {cut_problem}", TOO_LONG))
        return min(max(lengths), self.max_length), None

    @property
    def has_image(self) -> list[bool]:
        """Whether each pair carries an image (for modality-grouped batching)."""
        return [bool(record_images(r)) for r in self.records]

    def _encode(self, record: dict) -> tuple[Encoded, Encoded]:
        images = [load_image(resolve_image(name, self.image_folder)) for name in record_images(record)]
        # DPO scores the replies alone, whatever masking supervised training uses.
        chosen, rejected = (
            self.processor.encode(c, images, train=True, label_masking="replies") for c in pair_conversations(record)
        )
        # One set of view tensors for both sides: the same slices, and no second copy in the batch.
        return chosen, Encoded(rejected.input_ids, rejected.labels, chosen.pixel_values)

    def _cut_problem(self, record: dict) -> str | None:
        """Why ``record`` cannot be cut at ``max_length`` (None when it can)."""
        try:
            sides = self._encode(record)
        except (ValueError, OSError):
            return "its images cannot be encoded"
        for side in sides:
            if self.processor.image_token_id in side.input_ids[self.max_length :]:
                return "the cut would fall in image tokens"
            if all(label == IGNORE_INDEX for label in side.labels[: self.max_length]):
                return "the cut would remove an answer"
        chosen, rejected = ((side.input_ids[: self.max_length], side.labels[: self.max_length]) for side in sides)
        if chosen == rejected:  # no preference left to learn: the DPO term would stay at log 2 without a gradient
            return "chosen and rejected differ only after the cut"
        return None

    def attach_reference(self, values: Sequence[tuple[float, float]]) -> None:
        """Give every pair its reference log-probabilities ``(chosen, rejected)``, in dataset order."""
        if len(values) != len(self.records):
            raise ValueError(f"{len(values)} reference values for {len(self.records)} pairs")
        self.reference = list(values)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            chosen, rejected = self._encode(record)
        except (ValueError, OSError) as err:
            source = self.sources[index]
            raise RecordError(str(err), path=source.path, line=source.line, record_id=record.get("id")) from None
        chosen, rejected = (
            Encoded(side.input_ids[: self.max_length], side.labels[: self.max_length], side.pixel_values)
            for side in (chosen, rejected)
        )
        item = {"id": str(record["id"]), "chosen": chosen, "rejected": rejected}
        if self.reference is not None:
            item["reference"] = self.reference[index]
        return item


class PairCollator:
    """Pad pairs into one batch: the chosen rows first, then the rejected rows in the same order.

    Keeps the pair ids under ``ids`` and, when the items carry them, the reference log-probabilities
    under ``reference_chosen_logps`` / ``reference_rejected_logps`` (lists of floats).
    """

    def __init__(self, processor: SicogProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[dict] | FailedFetch) -> dict | FailedFetch:
        if isinstance(items, FailedFetch):  # raised by the trainer, outside the DataLoader worker (see FailedFetch)
            return items
        rows = [item["chosen"] for item in items] + [item["rejected"] for item in items]
        batch = self.processor.collate(rows, padding_side="right")
        batch["ids"] = [item["id"] for item in items]
        if all("reference" in item for item in items):
            # Python floats, not a tensor: the Trainer casts a batch's float tensors to DeepSpeed's dtype, and bf16
            # keeps 3 digits of a log-probability summed over a reply (-420.7 -> -420.0).
            batch["reference_chosen_logps"] = [float(item["reference"][0]) for item in items]
            batch["reference_rejected_logps"] = [float(item["reference"][1]) for item in items]
        return batch
