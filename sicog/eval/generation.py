"""Answering prompts about images with a SICOG model: encoding one item, and batched generation.

Shared by the built-in runner and the VLMEvalKit and lmms-eval adapters, so that every way of
evaluating a checkpoint feeds it the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from sicog.data.prompts import IMAGE_TOKEN, user_turn
from sicog.model.builders import load_pretrained
from sicog.model.device import resolve_device
from sicog.model.image_io import load_image
from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.processing import Encoded, SicogProcessor, prompt_limit

# A literal "<image>" of a prompt that places no image, as the model is asked it.
LITERAL_IMAGE = "[image]"


def load_for_eval(
    path: str | os.PathLike, device: str = "auto", dtype: str = "auto"
) -> tuple[SicogForConditionalGeneration, SicogProcessor]:
    """Load a checkpoint onto ``device`` in eval mode (see :func:`resolve_device`)."""
    torch_device, torch_dtype = resolve_device(device, dtype)
    model, processor = load_pretrained(path, dtype=torch_dtype)
    return model.to(torch_device).eval(), processor


def over_context(what: str, num_tokens: int, context: int, new_tokens: int = 0) -> str | None:
    """Why ``what``, ``num_tokens`` long encoded (images included), does not fit a ``context`` of that many tokens
    with ``new_tokens`` still to generate after it; None when it fits.

    The limit is ``sicog generate``'s default ``--max-prompt-tokens``
    (:func:`~sicog.model.processing.prompt_limit`), and the wording opens as its does, so that a row too long for
    the model is reported the same way everywhere, rather than running out of memory or being scored at positions
    the model has no place for.
    """
    limit = prompt_limit(context, new_tokens)
    if num_tokens <= limit:
        return None
    less = f" less {new_tokens} new tokens" if new_tokens else ""
    return (f"{what} is {num_tokens} tokens (images included), over the limit of {limit} (the model's context of "
            f"{context}{less})")


def placed_images(text: str, count: int) -> str:
    """``text`` as the prompt of ``count`` images given apart from it: its ``<image>`` placeholders are their
    places when there are as many, else each is the text :data:`LITERAL_IMAGE` (MUIRBench's questions and
    egothink's prompts name pictures so), rather than a count that stops the item."""
    return text if text.count(IMAGE_TOKEN) in (0, count) else text.replace(IMAGE_TOKEN, LITERAL_IMAGE)


def chat_turns(messages: Sequence[tuple[str, Sequence[tuple[str, object]]]]) -> tuple[list[dict], list]:
    """Chat messages, each ``(role, [(kind, value), ...])`` with kind "text" or "image", -> SICOG turns
    (``{"role", "content"}``) and the images in order. Each image is ``<image>`` on its own line where it
    stands, as the training data writes it; the texts are joined as written. The images are items of their
    own, so a ``<image>`` typed in a text places none: it is asked as :data:`LITERAL_IMAGE`."""
    turns, images = [], []
    for role, items in messages:
        parts = []
        for kind, value in items:
            if kind == "image":
                images.append(value)
                parts.append(f"{IMAGE_TOKEN}\n")
            else:
                parts.append(str(value).replace(IMAGE_TOKEN, LITERAL_IMAGE))
        turns.append({"role": role, "content": "".join(parts)})
    return turns, images


def encode_item(processor: SicogProcessor, prompt: str, images: Sequence[str | Image.Image] = (),
                system: str | None = None) -> Encoded:
    """Encode one user turn: one ``<image>`` per image in front of ``prompt`` unless the prompt places them
    (a single placeholder is still moved in front, as in training: :func:`~sicog.model.processing.image_first`),
    after a ``system`` turn when one is given.

    Raises :class:`ImageError` or :class:`ConversationError` for an item that cannot be encoded.
    """
    loaded = [load_image(image) for image in images]
    text = prompt if IMAGE_TOKEN in prompt else user_turn(prompt, len(loaded))
    turns = [{"from": "system", "value": system}] if system else []
    return processor.encode([*turns, {"from": "human", "value": text}], loaded, train=False)


@torch.no_grad()
def generate_replies(
    model: torch.nn.Module,
    processor: SicogProcessor,
    encoded: Sequence[Encoded],
    *,
    max_new_tokens: int,
    **generate_kwargs,
) -> list[str]:
    """One reply per encoded item (greedy unless ``generate_kwargs`` say otherwise), in input order.

    The items form one left-padded batch; call it with as many as fit in memory.
    """
    if not encoded:
        return []
    batch = processor.collate(list(encoded), padding_side="left")
    inputs = {key: batch[key].to(model.device) for key in ("input_ids", "attention_mask")}
    if "pixel_values" in batch:
        inputs["pixel_values"] = batch["pixel_values"]
    settings = {"do_sample": False, **generate_kwargs}
    # A generated image placeholder would have no image feature to take its place; the tokenizer lets a
    # checkpoint's stop_strings apply.
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, suppress_tokens=[processor.image_token_id],
        tokenizer=processor.tokenizer, **settings,
    )
    prompt_len = inputs["input_ids"].shape[1]
    return [processor.decode(out[row, prompt_len:]) for row in range(len(encoded))]
