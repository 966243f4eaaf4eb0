"""Does a model use the image? Its loss on reference answers with their own images vs with other images.

A model that ignores the picture scores the same either way (a gap near 0), and then no pre-training
data can change what it answers about images. The reference is each record's last assistant reply (its
text and end marker); earlier turns, answers included, are context it is asked in. Images are swapped only
between records whose images cut into the same views, so every input keeps its exact token layout, and only
between different pictures (instruction data asks several questions about one picture): a record whose
layout no other picture shares is not compared (and counted as such).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sicog.data.jsonl import RecordError, iter_records
from sicog.data.mixture import Source
from sicog.data.problems import Problem
from sicog.data.schema import check_llava_record, record_images, resolve_image
from sicog.eval.batch_size import IMAGE_USE_BATCH_SIZE
from sicog.eval.generation import over_context
from sicog.eval.pairing import blind_partners
from sicog.model.image_io import ImageError
from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.processing import IGNORE_INDEX, ConversationError, Encoded, SicogProcessor, context_size

PAIRING_SEED = 0  # the pairing is fixed: a rerun compares the same records


@torch.no_grad()
def answer_losses(
    model: SicogForConditionalGeneration,
    processor: SicogProcessor,
    encoded: Sequence[Encoded],
    batch_size: int = IMAGE_USE_BATCH_SIZE,
    desc: str | None = None,
) -> list[tuple[float, int]]:
    """Summed negative log-likelihood of each item's supervised tokens, and how many there are.

    ``desc``: show a progress bar with this label.
    """
    results: list[tuple[float, int]] = []
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, disable=desc is None):
        batch = processor.collate(list(encoded[start : start + batch_size]), padding_side="right")
        labels = batch.pop("labels").to(model.device)
        inputs = {k: v.to(model.device) for k, v in batch.items() if k != "pixel_values"}
        logits = model(**inputs, pixel_values=batch.get("pixel_values")).logits.float()
        targets = labels[:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
        counts = (targets != IGNORE_INDEX).sum(dim=1)
        results += [(float(total), int(n)) for total, n in zip(nll.sum(dim=1), counts)]
    return results


def last_reply_only(item: Encoded) -> Encoded:
    """``item`` with only its last assistant reply supervised (text and end marker, the tokens ``in_reply``
    marks), whatever the training labels supervise besides: earlier replies and, under release masking,
    role headers and chat markers."""
    if not item.in_reply or not any(item.in_reply):
        raise ConversationError("no assistant reply to measure")
    end = len(item.in_reply) - item.in_reply[::-1].index(True)
    start = end
    while start > 0 and item.in_reply[start - 1]:
        start -= 1
    labels = [token if start <= position < end else IGNORE_INDEX for position, token in enumerate(item.input_ids)]
    return replace(item, labels=labels)


def swap_partners(encoded: Sequence[Encoded], pictures: Sequence[str]) -> dict[int, int]:
    """For each item that has one, the item whose images it borrows: another picture of the same view layout.

    ``pictures[i]`` names item ``i``'s picture (its resolved path): items showing one picture are never paired,
    however they lie in the data. Within a layout the pairing is the blind baseline's of ``sicog eval
    --blind-seed`` (:func:`~sicog.eval.pairing.blind_partners`, with a fixed seed), so while no picture holds
    more than half of a layout's items, each lends its images exactly once. A layout with a single picture has
    no partners.
    """
    groups: dict[tuple, dict[str, str]] = defaultdict(dict)
    for index, (item, picture) in enumerate(zip(encoded, pictures, strict=True)):
        groups[tuple(tuple(view.shape) for view in item.pixel_values)][str(index)] = picture
    partners = {}
    for members in groups.values():
        if len(set(members.values())) > 1:
            partners.update({int(k): int(v) for k, v in blind_partners(members, PAIRING_SEED).items()})
    return partners


def _measured_record(processor: SicogProcessor, record: dict, image_folder: str | os.PathLike | None, path: str,
                     line: int, first_line: dict[str, int]) -> tuple[Encoded, str]:
    """One record encoded with only its last reply supervised, and its picture (the image's resolved path).

    Raises :class:`RecordError` naming the field at fault, also for an id measured before (``first_line``: id ->
    its line): counted twice, one record would weigh double in both losses; and for a conversation longer than the
    model's context.
    """
    def fail(message: str, field: str) -> RecordError:
        return RecordError(message, path=path, line=line, record_id=record.get("id"), field=field)

    check_llava_record(record, path=path, line=line)
    if str(record["id"]) in first_line:
        raise fail(f"duplicate id (first seen on line {first_line[str(record['id'])]})", "id")
    images = [resolve_image(name, image_folder) for name in record_images(record)]
    if len(images) != 1:
        raise fail(f"needs exactly one image, has {len(images)}", "image")
    try:
        item = last_reply_only(processor.encode(record["conversations"], images, train=True))
    except ConversationError as err:
        raise fail(str(err), "conversations") from None
    except (ImageError, OSError) as err:  # an image missing, unreadable or not decodable
        raise fail(str(err), "image") from None
    too_long = over_context("conversation", len(item.input_ids), context_size(processor))
    if too_long is not None:
        raise fail(too_long, "conversations")
    return item, os.path.realpath(images[0])  # "a.png", "./a.png" and links to it are one picture


def image_use(
    model: SicogForConditionalGeneration,
    processor: SicogProcessor,
    data: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    batch_size: int = IMAGE_USE_BATCH_SIZE,
    progress: bool = True,
) -> dict:
    """Per-token loss on the records' answers with their own images and with swapped images.

    ``data``: LLaVA conversation records with one image each, measured on their last assistant reply.
    Records that cannot be read or encoded, or are longer than the model's context, and any record whose id came
    before (its first record is measured), are listed under ``errors`` (file, line, id, field, reason); the others
    are measured.
    """
    encoded: list[Encoded] = []
    pictures: list[str] = []
    errors: list[dict] = []
    first_line: dict[str, int] = {}
    for line, record in iter_records(data):
        if limit is not None and len(encoded) + len(errors) >= limit:
            break
        try:
            item, picture = _measured_record(processor, record, image_folder, str(data), line, first_line)
        except RecordError as err:
            errors.append(Problem(record.get("id"), Source(str(data), line), str(err), field=err.field).to_json())
            continue
        first_line[str(record["id"])] = line
        encoded.append(item)
        pictures.append(picture)
    partners = swap_partners(encoded, pictures)
    compared = sorted(partners)
    own = [encoded[i] for i in compared]
    swapped = [replace(encoded[i], pixel_values=encoded[partners[i]].pixel_values) for i in compared]
    totals = {}
    for name, items in (("own", own), ("other", swapped)):
        losses = answer_losses(model, processor, items, batch_size, desc=f"{name} images" if progress else None)
        tokens = sum(n for _, n in losses)
        totals[name] = sum(total for total, _ in losses) / tokens if tokens else None
    gap = None if totals["own"] is None else totals["other"] - totals["own"]
    return {
        "data": str(Path(data)),
        "records": len(encoded) + len(errors),
        "compared": len(compared),
        "without_partner": len(encoded) - len(compared),
        "loss_own_images": totals["own"],
        "loss_other_images": totals["other"],
        "gap": gap,
        "errors": errors,
    }

