"""Batched sampling: N candidates per record from one ``generate`` call per batch.

Each record's images are encoded once (the model computes the prompt embeddings before decoding and
reuses them for all ``num_return_sequences`` samples); records of similar length share a batch with
left padding; decoding runs on the KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from sicog.generate.corrupt import chosen_methods, corrupt, record_rng
from sicog.generate.inputs import GenerationTask
from sicog.generate.settings import SamplingSettings
from sicog.model.image_io import load_image
from sicog.model.processing import Encoded, SicogProcessor


def encode_task(
    processor: SicogProcessor,
    task: GenerationTask,
    corruptions: Sequence[str] = (),
    seed: int = 0,
    corrupt_all: bool = False,
) -> tuple[Encoded, list[dict] | None]:
    """Load (and corrupt) the task's images and encode its prompt; return the encoding and what was corrupted.

    ``corruptions``: one of them per record, drawn from the record's stream, or all in order with
    ``corrupt_all`` (:func:`~sicog.generate.corrupt.chosen_methods`); each image of the record gets them.
    Raises :class:`ImageError` or :class:`ConversationError` for a record that cannot be encoded.
    """
    images: list[Image.Image] = []
    applied: list[dict] | None = None
    if corruptions:
        rng = record_rng(seed, task.id)
        methods = chosen_methods(corruptions, rng, corrupt_all)
        applied = []
        for path in task.images:
            image, done = corrupt(load_image(path), methods, rng)
            images.append(image)
            applied += done
    else:
        images = [load_image(path) for path in task.images]
    return processor.encode(task.conversation(), images, train=False), applied


@torch.no_grad()
def sample_candidates(
    model: torch.nn.Module,
    processor: SicogProcessor,
    encoded: Sequence[Encoded],
    settings: SamplingSettings,
    seed: int,
) -> list[list[str]]:
    """``settings.num_candidates`` decoded candidates for each encoded prompt, in input order.

    The random state is set from ``seed`` right before the call, so a batch's candidates depend only
    on the batch and its seed.
    """
    if not encoded:
        return []
    batch = processor.collate(list(encoded), padding_side="left")
    device = model.device
    inputs = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}
    if "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"]
    torch.manual_seed(seed)
    # The tokenizer lets a checkpoint's stop_strings (generation_config.json) apply.
    out = model.generate(**inputs, tokenizer=processor.tokenizer, **settings.generate_kwargs())
    prompt_len = inputs["input_ids"].shape[1]
    per = settings.sequences_per_record
    texts = [processor.decode(out[row, prompt_len:]) for row in range(out.shape[0])]
    grouped = [texts[i * per:(i + 1) * per] for i in range(len(encoded))]
    return grouped if settings.sampling else [group * settings.num_candidates for group in grouped]
