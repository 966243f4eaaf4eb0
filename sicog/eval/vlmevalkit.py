"""A SICOG checkpoint as a VLMEvalKit model (see docs/evaluation.md for registering it).

VLMEvalKit drives a model through ``use_custom_prompt(dataset)``, ``build_prompt(line, dataset)``,
``set_dump_image(fn)`` and ``generate(message, dataset)``, where a message is a list of
``{"type": "image" | "text", "value": ...}`` items (image values are file paths). This class provides
that interface without importing VLMEvalKit, which is needed only to ask a dataset's type
(``vlmeval.dataset.DATASET_TYPE``). For multiple-choice datasets it builds the prompt the built-in
runner builds, so both harnesses ask a SICOG model the same question.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable
from typing import Any

from sicog.eval.generation import encode_item, generate_replies, load_for_eval
from sicog.eval.prompts import PROMPT_STYLES, build_prompt
from sicog.eval.tsv import MULTIPLE_CHOICE, is_missing

MESSAGE_TYPES = ("image", "text")


def dataset_type(dataset: str | None) -> str | None:
    """VLMEvalKit's type of a dataset ("MCQ", "Y/N", "VQA", ...), from VLMEvalKit itself."""
    if dataset is None:
        return None
    from vlmeval.dataset import DATASET_TYPE  # only available inside a VLMEvalKit installation

    return DATASET_TYPE(dataset)


def _as_message(message: Any) -> list[dict]:
    """VLMEvalKit's accepted message forms (a string, one item, strings, items) as a list of items."""
    if isinstance(message, str):
        return [{"type": "text", "value": message}]
    if isinstance(message, dict):
        message = [message]
    if not isinstance(message, (list, tuple)) or not message:
        raise ValueError(f"a message is a string or a non-empty list of items, got {type(message).__name__}")
    items = []
    for position, item in enumerate(message):
        if isinstance(item, str):
            # As VLMEvalKit does: a string naming an image file is an image, anything else is text.
            mime = mimetypes.guess_type(item)[0] or ""
            kind = "image" if mime.startswith("image/") and os.path.isfile(item) else "text"
            item = {"type": kind, "value": item}
        if not isinstance(item, dict) or "type" not in item or "value" not in item:
            raise ValueError(f"message item {position} is not {{'type', 'value'}}: {item!r}")
        if item["type"] not in MESSAGE_TYPES:
            raise ValueError(
                f"message item {position} has type {item['type']!r}; this model takes {', '.join(MESSAGE_TYPES)}"
            )
        items.append(item)
    return items


class SicogVLM:
    """A SICOG checkpoint behind VLMEvalKit's model interface.

    ``prompt``: "direct" or "cot" (how multiple-choice questions are asked); ``max_new_tokens``: the
    reply budget; ``device``/``dtype``: as for ``sicog eval`` (auto: the current GPU, bfloat16).
    """

    INTERLEAVE = False
    is_api = False
    allowed_types = list(MESSAGE_TYPES)

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        prompt: str = "direct",
        max_new_tokens: int = 1024,
        device: str = "auto",
        dtype: str = "auto",
        model=None,
        processor=None,
    ) -> None:
        if prompt not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {prompt!r}; choose from {', '.join(PROMPT_STYLES)}")
        if (model is None) != (processor is None) or (model is None) == (model_path is None):
            raise ValueError("give either model_path, or an already loaded model and processor")
        if model is None:
            model, processor = load_for_eval(model_path, device, dtype)
        self.model, self.processor = model, processor
        self.prompt_style = prompt
        self.max_new_tokens = max_new_tokens
        self.dump_image_func: Callable[[Any], Any] | None = None

    def set_dump_image(self, dump_image_func: Callable[[Any], Any]) -> None:
        """VLMEvalKit hands over its dataset's function that writes a row's images to files."""
        self.dump_image_func = dump_image_func

    def dump_image(self, line: Any, dataset: str | None = None) -> list[str]:
        """The file paths of a row's images (written by the dataset's dump function)."""
        if self.dump_image_func is None:
            raise RuntimeError("no image dump function: VLMEvalKit calls set_dump_image(dataset.dump_image) first")
        paths = self.dump_image_func(line)
        return [paths] if isinstance(paths, str) else list(paths)

    def use_custom_prompt(self, dataset: str | None) -> bool:
        """Multiple-choice datasets get SICOG's own prompt; the others keep the dataset's."""
        return dataset_type(dataset) == "MCQ"

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict]:
        """The message for one multiple-choice row (a pandas Series or a dict): its images, then the text."""
        if not self.use_custom_prompt(dataset):
            raise ValueError(f"build_prompt serves multiple-choice datasets; {dataset!r} is {dataset_type(dataset)!r}")
        row = {str(k): "" if is_missing(v) else str(v) for k, v in dict(line).items()}
        text = build_prompt(row, MULTIPLE_CHOICE, self.prompt_style)
        return [{"type": "image", "value": path} for path in self.dump_image(line, dataset)] + [
            {"type": "text", "value": text}
        ]

    def generate(self, message: Any, dataset: str | None = None) -> str:
        """Check and normalise a message, then answer it (VLMEvalKit's entry point)."""
        return self.generate_inner(_as_message(message), dataset)

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """Answer one message: its images in order, its text items joined by new lines."""
        images = [item["value"] for item in message if item["type"] == "image"]
        text = "\n".join(str(item["value"]) for item in message if item["type"] == "text")
        encoded = encode_item(self.processor, text, images)
        return generate_replies(self.model, self.processor, [encoded], max_new_tokens=self.max_new_tokens)[0]
