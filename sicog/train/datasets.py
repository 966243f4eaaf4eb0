"""The supervised training dataset: LLaVA records -> encoded samples, lazily, with exact lengths.

Construction reads every record once (validation, image headers, token counts, text labels) so that
lengths are exact for length-grouped batching, and over-long samples and conversations whose labels cannot
be built are found before training starts. Training decodes images and builds their tokens only in
``__getitem__``; ``sicog data check`` also decodes every image in full at construction (``decode_images``),
which finds the truncated and corrupt files that a header does not show.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import TrainingArguments

from sicog.data.jsonl import RecordError, write_jsonl
from sicog.data.mixture import DEFAULT_SEED, Source, load_mixture
from sicog.data.problems import (
    TOO_LONG,
    ImageProblem,
    Problem,
    default_decode_workers,
    located_problem,
    undecodable_images,
    undecodable_problem,
)
from sicog.data.schema import EMPTY_ANSWER, check_llava_record, record_images, resolve_image
from sicog.data.sharding import gather_shares, shard
from sicog.model.image_io import load_image, shown_path
from sicog.model.processing import IGNORE_INDEX, ConversationError, Encoded, SicogProcessor
from sicog.train.arguments import AUGMENT_CHOICES
from sicog.train.augment import release_augment

logger = logging.getLogger(__name__)
T = TypeVar("T")



def measure(record: dict, processor: SicogProcessor, image_folder, never_split: bool) -> int:
    """Exact token length of ``record`` once encoded (reads image headers only, not pixels).

    The text is encoded with its labels, so a conversation that cannot be trained on (no assistant turn,
    a token running past a turn's end) raises :class:`ConversationError` here, before training. An image
    that cannot be used raises :class:`ImageProblem`.
    """
    length = len(processor.encode_text(record["conversations"], train=True).input_ids)
    for name in record_images(record):
        path = resolve_image(name, image_folder)
        try:
            with Image.open(path) as image:
                size = image.size
        except FileNotFoundError:
            raise ImageProblem(f"image file not found: {shown_path(path)}", "missing image") from None
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise ImageProblem(f"cannot read image {shown_path(path)}: {err}", "unreadable image") from None
        if size[0] == 0 or size[1] == 0:
            raise ImageProblem(f"image {shown_path(path)} has zero size", "zero-size image")
        length += processor.image_token_count(*size, never_split=never_split) - 1
    return length


def measure_in_shares(loaded: Sequence[tuple[dict, Source]], outcome: Callable[[dict, Source], T], desc: str,
                      show_progress: bool) -> list[T]:
    """``outcome(record, source)`` of every loaded record, in order. Under an initialised process group each rank
    measures every world-th record and the ranks exchange their results: a million records take each of 32 ranks a
    32nd of the time, not the whole of it."""
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    indices = shard(range(len(loaded)), rank, world)
    share = {index: outcome(*loaded[index]) for index in tqdm(indices, desc=desc, unit="record",
                                                               disable=not show_progress)}
    outcomes = gather_shares(share)
    return [outcomes[index] for index in range(len(loaded))]


# What measuring a record gives: its length, and unless it is simply usable, how it is listed (see usable).
Outcome = tuple[int, tuple[str, Problem] | None]


def usable(loaded: Sequence[tuple[dict, Source]], outcomes: Sequence[Outcome],
           lists: dict[str, list[Problem]]) -> Iterator[tuple[dict, Source, int]]:
    """The records to train on, with their lengths, from their :data:`Outcome`; each listed record is appended to
    ``lists[kind]`` ("problem", "skipped", or "truncated": still trained on)."""
    for (record, source), (length, listed) in zip(loaded, outcomes, strict=True):
        if listed is not None:
            kind, problem = listed
            lists[kind].append(problem)
            if kind != "truncated":
                continue
        yield record, source, length



def record_problem(err: ValueError, rid: object, source: Source, conversation_field: str | None) -> Problem:
    """The problem a record's validation or measurement raised, with its category and field (a conversation
    whose labels cannot be built is ``conversation_field``'s)."""
    if isinstance(err, ConversationError):
        return located_problem(rid, source, str(err), "labels cannot be built", conversation_field)
    if isinstance(err, ImageProblem):
        return located_problem(rid, source, str(err), err.category, "image")
    if isinstance(err, RecordError):
        return Problem(rid, source, str(err), err.kind or "invalid record", err.field)
    # any other reason the processor cannot encode it
    return located_problem(rid, source, str(err), "invalid record", None)


class FailedFetch:
    """A DataLoader batch whose record could not be built: the :class:`RecordError` it raised, carried as data.

    Raised inside a DataLoader worker, the error would reach the trainer rebuilt by torch around the worker's whole
    traceback ("Caught RecordError in DataLoader worker process 0. Original Traceback ..."), and ``sicog train``
    would print all of that as its one-line error. Returned instead (:meth:`RecordErrorsAsData.__getitems__`, passed
    on by the collators), it is raised as the dataset raised it once the trainer takes the batch
    (:func:`unless_failed`), with or without workers.
    """

    def __init__(self, error: RecordError) -> None:
        self.error = error


def unless_failed(batch: object) -> object:
    """``batch`` itself; the error of a :class:`FailedFetch`, raised."""
    if isinstance(batch, FailedFetch):
        raise batch.error
    return batch


class RecordErrorsAsData:
    """A dataset mixin: a DataLoader's batch fetch returns a :class:`FailedFetch` where indexing raises."""

    def __getitems__(self, indices: Sequence[int]) -> list[dict] | FailedFetch:
        """The items at ``indices`` (torch's DataLoader fetches a batch this way), or the :class:`FailedFetch` of
        the first that cannot be built."""
        try:
            return [self[index] for index in indices]
        except RecordError as err:
            return FailedFetch(err)


class SupervisedDataset(RecordErrorsAsData, Dataset):
    """LLaVA conversation records for stages 0, 1, 1.5 and 2.

    ``problems`` lists invalid records (bad schema, unreadable image, labels that cannot be built);
    ``skipped`` lists records that cannot fit ``max_length`` without cutting image tokens or losing every
    supervised reply token, and those with an empty answer; ``truncated`` lists the usable records that will be
    cut at ``max_length`` (answer text only). ``lengths`` are the trained lengths (at most ``max_length``),
    ``token_counts`` the samples' whole lengths. With ``decode_images`` every image is decoded in full
    (``decode_workers`` threads), so a truncated or corrupt image is a problem here rather than an error at
    the step reaching it.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        processor: SicogProcessor,
        *,
        image_folder: str | os.PathLike | None = None,
        max_length: int = 4096,
        never_split: bool = False,
        seed: int = DEFAULT_SEED,
        augment: str = "none",
        show_progress: bool = True,
        decode_images: bool = False,
        decode_workers: int | None = None,
    ) -> None:
        if augment not in AUGMENT_CHOICES:
            raise ValueError(f"augment={augment!r} is not one of {AUGMENT_CHOICES}")
        self.augment = augment
        self.seed = seed
        # In shared memory: DataLoader workers read it, and persistent ones (--dataloader_persistent_workers) keep
        # the copy of the dataset they started with, so a plain attribute set later would never reach them.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.processor = processor
        self.image_folder = image_folder
        self.max_length = max_length
        self.never_split = never_split
        self.records: list[dict] = []
        self.sources: list[Source] = []
        self.lengths: list[int] = []
        self.token_counts: list[int] = []
        self.problems: list[Problem] = []
        self.skipped: list[Problem] = []
        self.truncated: list[Problem] = []
        loaded = load_mixture(data_path, seed=seed)
        undecodable = undecodable_images(loaded, image_folder, workers=decode_workers or default_decode_workers(),
                                         show_progress=show_progress) if decode_images else {}
        outcomes = measure_in_shares(loaded, lambda record, source: self._outcome(record, source, undecodable),
                                     "measuring samples", show_progress)
        lists = {"problem": self.problems, "skipped": self.skipped, "truncated": self.truncated}
        for record, source, length in usable(loaded, outcomes, lists):
            self.records.append(record)
            self.sources.append(source)
            self.lengths.append(min(length, max_length))
            self.token_counts.append(length)

    def _outcome(self, record: dict, source: Source, undecodable: dict[Path, str]) -> Outcome:
        """A record's whole token length (0 when unusable) and, when it is not simply usable, how it is listed:
        ``("problem" | "skipped" | "truncated", Problem)``; a truncated record is still trained on."""
        rid = record.get("id")
        try:
            check_llava_record(record, path=source.path, line=source.line)
            length = measure(record, self.processor, self.image_folder, self.never_split)
        except ValueError as err:
            problem = record_problem(err, rid, source, "conversations")
            # An empty answer teaches nothing but the end marker: skipped and listed like an over-long sample
            # (public SFT sets hold a few), not a reason to stop the run.
            return 0, ("skipped" if problem.category == EMPTY_ANSWER else "problem", problem)
        if problem := undecodable_problem(record, source, self.image_folder, undecodable):
            return 0, ("problem", problem)
        if length <= self.max_length:
            return length, None
        if not self._truncatable(record, length):
            reason = f"{length} tokens > max_length {self.max_length} and the cut would fall in image tokens or " \
                     "remove every answer"
            return 0, ("skipped", Problem(str(rid), source, reason, TOO_LONG))
        reason = f"{length} tokens > max_length {self.max_length}: its last {length - self.max_length} tokens are cut"
        return length, ("truncated", Problem(str(rid), source, reason, "truncated"))

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

    @property
    def epoch(self) -> int:
        """The epoch whose augmentations are drawn (see :meth:`set_epoch`)."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of epoch ``epoch`` (called by the trainer before each epoch), in this process and
        in every DataLoader worker of this dataset, persistent ones too."""
        self._epoch.fill_(epoch)

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


def repeated_ids(records: Sequence[dict], sources: Sequence[Source]) -> tuple[list[Problem], list[Problem]]:
    """The records whose id an earlier record already has, each naming both places: ``(copies, others)``.

    A copy (the same record again) almost always means that a file was concatenated or listed twice. A
    repeated id with other content can be deliberate: published instruction mixtures reuse an image's id for
    several conversations on it; training accepts both kinds.
    """
    # Per id, the index of each distinct content, keyed by a digest of its canonical JSON: an id used a thousand
    # times is not compared a million times, and a million records are not held twice.
    earlier: dict[str, dict[bytes, int]] = {}
    copies: list[Problem] = []
    others: list[Problem] = []
    for index, (record, source) in enumerate(zip(records, sources)):
        rid = str(record["id"])
        contents = earlier.setdefault(rid, {})
        # The id as every command reads it (7 and "7" are one id): a copy that wrote it as a string is a copy.
        canonical = json.dumps({**record, "id": rid}, sort_keys=True)
        key = hashlib.blake2b(canonical.encode(), digest_size=16).digest()
        if key in contents:
            same = sources[contents[key]]
            copies.append(located_problem(rid, source, f"the same record as {same.path}:{same.line} (a file read "
                                                       "twice?)", "duplicate record", "id"))
            continue
        if contents:
            first = sources[next(iter(contents.values()))]
            others.append(located_problem(rid, source, f"id also at {first.path}:{first.line}, with other content",
                                          "repeated id", "id"))
        contents[key] = index
    return copies, others


class SupervisedCollator:
    """Pad a list of dataset items into a model batch; keeps the sample ids under ``ids``."""

    def __init__(self, processor: SicogProcessor) -> None:
        self.processor = processor

    def __call__(self, items: Sequence[dict] | FailedFetch) -> dict | FailedFetch:
        if isinstance(items, FailedFetch):  # raised by the trainer, outside the DataLoader worker (see FailedFetch)
            return items
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
            logger.warning("skipped %d samples, over-long or with an empty answer (listed in %s)", len(dataset.skipped),
                           skipped_file)
        else:
            skipped_file.unlink(missing_ok=True)
    if dataset.problems:
        first = "; ".join(p.message for p in dataset.problems[:3])
        raise DataProblemsError(
            f"{len(dataset.problems)} invalid training records (all in {output / 'data_errors.jsonl'}); first: {first}"
        )
    if not len(dataset):
        raise DataProblemsError(f"no usable training records in {data_path}")
    one_batch_each = args.per_device_train_batch_size * args.world_size
    if args.dataloader_drop_last and len(dataset) < one_batch_each:
        # Every process's first batch would be incomplete and dropped: the run would train no step and save its
        # starting weights (with --max_steps), or fail inside the Trainer (with epochs).
        raise DataProblemsError(
            f"{len(dataset)} usable training records in {data_path}, fewer than one batch of every process "
            f"({args.per_device_train_batch_size} per device x {args.world_size} processes) with "
            "--dataloader_drop_last: lower the batch size or the process count"
        )
    return dataset
