"""`SicogProcessor`: images + conversations -> model inputs, the same way for training and inference."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from sicog.model.configuration import SicogConfig
from sicog.model.image_io import load_image
from sicog.model.layout import image_token_count, image_token_ids
from sicog.model.slicing import SlicePlan, fit_long_side, plan_slices, slice_image
from sicog.model.tokens import IMAGE_TOKEN

IGNORE_INDEX = -100
ROLE_OF = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


class ConversationError(ValueError):
    """A conversation that cannot be encoded (roles, placeholder counts, template disagreement)."""


@dataclass
class Encoded:
    """One encoded sample: token ids, labels (training only) and its image views in placeholder order."""

    input_ids: list[int]
    labels: list[int] | None = None
    pixel_values: list[torch.Tensor] = field(default_factory=list)


def separator_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The tokenizer's own single-token ids of "," and "\\n" (raises if either is several tokens)."""
    ids = []
    for text in (",", "\n"):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"separator {text!r} is {len(encoded)} tokens {encoded} in this tokenizer; need exactly one"
            )
        ids.append(encoded[0])
    return ids[0], ids[1]


class SicogProcessor:
    """Turn images and LLaVA conversations into ``input_ids``, ``labels`` and ``pixel_values``.

    Each ``<image>`` becomes the placeholder and separator ids of ``config.image_layout``
    (:mod:`sicog.model.layout`): exactly the positions :class:`SicogForConditionalGeneration` fills.
    The separator ids are the config's (the published checkpoints' LLaMA ids, or the tokenizer's own).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: SicogConfig) -> None:
        if config.image_token_id is None or tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_id:
            raise ValueError(
                f"tokenizer id of {IMAGE_TOKEN} ({tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}) differs from "
                f"config.image_token_id ({config.image_token_id})"
            )
        if tokenizer.chat_template is None:
            raise ValueError("tokenizer has no chat template")
        self.tokenizer = tokenizer
        self.config = config
        self.image_token_id = config.image_token_id
        if config.slice_comma_id is None or config.slice_newline_id is None:
            raise ValueError("config has no slice separator ids (slice_comma_id, slice_newline_id)")
        self.comma_id, self.newline_id = config.slice_comma_id, config.slice_newline_id
        self._mean = np.asarray(config.image_mean, dtype=np.float32)
        self._std = np.asarray(config.image_std, dtype=np.float32)

    # ----- images -----------------------------------------------------------------------------------
    def _to_tensor(self, image: Image.Image) -> torch.Tensor:
        array = (np.asarray(image, dtype=np.float32) / 255.0 - self._mean) / self._std
        return torch.from_numpy(array.transpose(2, 0, 1).copy())

    def plan(self, width: int, height: int, *, never_split: bool = False) -> SlicePlan:
        """How an image of ``width x height`` pixels (after any inference resize) is sliced."""
        return plan_slices(
            width,
            height,
            scale_resolution=self.config.scale_resolution,
            patch_size=self.config.patch_size,
            max_slice_nums=self.config.max_slice_nums,
            never_split=never_split,
        )

    def inference_size(self, width: int, height: int) -> tuple[int, int]:
        """Size an image is resized to before slicing at inference: long side ``config.inference_long_side``
        (the published generation scripts use 1024), aspect ratio kept; unchanged when that is unset."""
        side = self.config.inference_long_side
        return (width, height) if side is None else fit_long_side(width, height, side)

    def image_token_count(self, width: int, height: int, *, never_split: bool = False, inference: bool = False) -> int:
        """Sequence positions an image of this size takes, without reading its pixels."""
        if inference:
            width, height = self.inference_size(width, height)
        plan = self.plan(width, height, never_split=never_split)
        return image_token_count(plan.grid, self.config.resampler_num_queries, self.config.image_layout)

    def process_image(
        self, image: str | os.PathLike | Image.Image, *, never_split: bool = False, inference: bool = False
    ) -> tuple[list[torch.Tensor], list[int]]:
        """Views (a ``(rows, cols, 3, h, w)`` slice grid if sliced, then the global view) and their ids.

        ``inference``: resize first as :meth:`inference_size` says (generation and evaluation).
        """
        image = load_image(image)
        if inference and (size := self.inference_size(image.width, image.height)) != image.size:
            image = image.resize(size, Image.Resampling.BICUBIC)
        plan = self.plan(image.width, image.height, never_split=never_split)
        source, slices = slice_image(image, plan)
        config = self.config
        ids = image_token_ids(
            plan.grid, config.resampler_num_queries, self.image_token_id, self.comma_id, self.newline_id,
            config.image_layout,
        )
        views = [self._to_tensor(source)]
        if plan.grid is not None:
            cols, rows = plan.grid
            stacked = torch.stack([self._to_tensor(s) for s in slices])
            views.insert(0, stacked.reshape(rows, cols, *stacked.shape[1:]))
        return views, ids

    # ----- text ---------------------------------------------------------------------------------------
    @staticmethod
    def to_messages(conversations: Sequence[dict]) -> list[dict]:
        """LLaVA turns ``{"from", "value"}`` (or chat messages ``{"role", "content"}``) -> chat messages."""
        messages = []
        for index, turn in enumerate(conversations):
            role = turn.get("from", turn.get("role"))
            content = turn.get("value", turn.get("content"))
            if role not in ROLE_OF or not isinstance(content, str):
                raise ConversationError(f"turn {index}: unknown role {role!r} or non-string text")
            messages.append({"role": ROLE_OF[role], "content": content})
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _supervised_spans(self, messages: list[dict], text: str, masking: str) -> list[tuple[int, int]]:
        """Character spans of the supervised text of each assistant turn, checked against the full text.

        ``label_masking="replies"``: the reply and its end marker. ``"release"`` (the published
        ``preprocess_qwen``): the whole rendered turn, role header and trailing newline included.
        """
        end_marker = self.tokenizer.eos_token
        whole_turn = masking == "release"
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], add_generation_prompt=not whole_turn)
            through = self._render(messages[: index + 1], add_generation_prompt=False)
            if whole_turn:
                end = len(through)
            else:
                has_marker = bool(end_marker) and end_marker in through
                end = through.rfind(end_marker) + len(end_marker) if has_marker else len(through)
            if not (text.startswith(before) and text.startswith(through[:end]) and end > len(before)):
                raise ConversationError(
                    f"chat template renders turn {index} differently in context; cannot mask labels"
                )
            spans.append((len(before), end))
        return spans

    def encode(
        self,
        conversations: Sequence[dict],
        images: Sequence[str | os.PathLike | Image.Image] = (),
        *,
        train: bool = True,
        never_split: bool = False,
        label_masking: str | None = None,
    ) -> Encoded:
        """Encode a conversation. ``train``: the whole dialogue with labels as ``label_masking`` (default
        ``config.label_masking``) says; otherwise the dialogue up to its last user turn plus the
        generation prompt, images resized as at inference (:meth:`inference_size`)."""
        masking = label_masking or self.config.label_masking
        messages = self.to_messages(conversations)
        if not train and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        n_placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in messages)
        if n_placeholders != len(images):
            raise ConversationError(
                f"conversation has {n_placeholders} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s)"
            )
        if train and not any(m["role"] == "assistant" for m in messages):
            raise ConversationError("no assistant turn to learn from")
        text = self._render(messages, add_generation_prompt=not train)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=train)
        token_ids = encoding["input_ids"]
        token_labels = None
        if train:
            spans = self._supervised_spans(messages, text, masking)
            token_labels = self._labels(token_ids, encoding["offset_mapping"], spans)
            if masking == "release":
                always = self._always_supervised()
                token_labels = [t if t in always else label for t, label in zip(token_ids, token_labels)]
        input_ids: list[int] = []
        labels: list[int] | None = [] if train else None
        views: list[torch.Tensor] = []
        image_iter = iter(images)
        for position, token in enumerate(token_ids):
            if token == self.image_token_id:
                image_views, ids = self.process_image(next(image_iter), never_split=never_split, inference=not train)
                views += image_views
                input_ids += ids
                if labels is not None:
                    labels += [IGNORE_INDEX] * len(ids)
            else:
                input_ids.append(token)
                if labels is not None:
                    labels.append(token_labels[position])
        return Encoded(input_ids, labels, views)

    def _always_supervised(self) -> set[int]:
        """Ids the published ``preprocess_qwen`` supervises wherever they stand, system and user turns
        included: the newline token and the chat markers ``<|im_start|>`` / ``<|im_end|>``."""
        ids = set(self.tokenizer.encode("\n", add_special_tokens=False)[:1])
        for marker in ("<|im_start|>", "<|im_end|>"):
            if marker in self.tokenizer.get_vocab():
                ids.add(self.tokenizer.convert_tokens_to_ids(marker))
        return ids

    @staticmethod
    def _labels(token_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
        labels = []
        for token, (start, end) in zip(token_ids, offsets):
            inside = any(s <= start and end <= e for s, e in spans)
            straddles = any(start < s < end or start < e < end for s, e in spans)
            if straddles:
                raise ConversationError(f"token {token} at characters {start}-{end} crosses an assistant-turn boundary")
            labels.append(token if inside else IGNORE_INDEX)
        return labels

    # ----- batches ------------------------------------------------------------------------------------
    def collate(self, samples: Sequence[Encoded], padding_side: str = "right") -> dict:
        """Pad a batch: ``input_ids``, ``attention_mask``, ``labels`` (if any) and the flat ``pixel_values``."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("tokenizer has no pad token")
        width = max(len(s.input_ids) for s in samples)
        batch_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        with_labels = all(s.labels is not None for s in samples)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long) if with_labels else None
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            cols = slice(0, n) if padding_side == "right" else slice(width - n, width)
            batch_ids[row, cols] = torch.tensor(sample.input_ids, dtype=torch.long)
            mask[row, cols] = 1
            if labels is not None:
                labels[row, cols] = torch.tensor(sample.labels, dtype=torch.long)
        batch = {"input_ids": batch_ids, "attention_mask": mask}
        if labels is not None:
            batch["labels"] = labels
        views = [v for s in samples for v in s.pixel_values]
        if views:
            batch["pixel_values"] = views
        return batch

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of generated ids, special tokens removed."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    # ----- persistence --------------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the tokenizer (the image settings live in the model's config)."""
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: SicogConfig | None = None) -> SicogProcessor:
        """Load from a checkpoint directory holding the tokenizer and ``config.json``."""
        config = config or SicogConfig.from_pretrained(path)
        return cls(AutoTokenizer.from_pretrained(Path(path)), config)
