"""`SicogProcessor`: images + conversations -> model inputs, the same way for training and inference."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerBase, ProcessorMixin

from .configuration import SicogConfig
from .image_io import ImageError
from .image_processing import SETTINGS, SicogImageProcessor, flat_images
from .layout import image_token_count, image_token_ids
from .slicing import SlicePlan
from .tokens import IMAGE_TOKEN

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
ROLE_OF = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# The tokenizers' spellings of ``padding`` that this processor supports: none, or to the batch's longest prompt.
PADDING = {False: False, "do_not_pad": False, True: True, "longest": True}


class ConversationError(ValueError):
    """A conversation that cannot be encoded (roles, placeholder counts, template disagreement)."""


# What encoding one record can raise for that record alone: callers report the record and go on with the others.
ENCODE_ERRORS = (ImageError, ConversationError, Image.DecompressionBombError)


@dataclass
class Encoded:
    """One encoded sample: token ids, labels (training only) and its image views in placeholder order.

    ``in_reply`` (training only): whether each position holds assistant-reply text or its end marker,
    whatever ``label_masking`` supervises besides; a sample cut short must keep one such labelled position.
    """

    input_ids: list[int]
    labels: list[int] | None = None
    pixel_values: list[torch.Tensor] = field(default_factory=list)
    in_reply: list[bool] | None = None


def context_size(processor: SicogProcessor) -> int:
    """The LLM's context in tokens: its text config's ``max_position_embeddings``."""
    return processor.config.text_config.max_position_embeddings


def prompt_limit(context: int, new_tokens: int = 0) -> int:
    """The most tokens a prompt (images included) may hold in a ``context`` of that many and leave ``new_tokens``
    to generate (at least 1): generate's default ``--max-prompt-tokens``, and eval's and image-use's limit."""
    return max(context - new_tokens, 1)


def image_first(text: str) -> str:
    """A turn's text with its one ``<image>`` moved in front, on a line of its own.

    LLaVA-style training (the published ``preprocess_multimodal``) rewrites every turn holding exactly one
    placeholder that does not already start with it: the placeholder is removed, the rest stripped and
    put after ``"<image>\n"`` (``"How many?\n<image>"`` -> ``"<image>\nHow many?"``; one in the middle
    leaves its two neighbouring spaces). Turns with no or several placeholders are left as written.
    """
    if text.count(IMAGE_TOKEN) != 1 or text.startswith(IMAGE_TOKEN):
        return text
    rest = text.replace(IMAGE_TOKEN, "").strip()
    return f"{IMAGE_TOKEN}\n{rest}" if rest else IMAGE_TOKEN


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


class SicogProcessor(ProcessorMixin):
    """Turn images and conversations into ``input_ids``, ``labels`` and ``pixel_values``.

    A transformers processor (image processor + tokenizer): ``processor(text=..., images=...)``,
    ``apply_chat_template`` (plain-string content or content parts ``{"type": "image"}`` /
    ``{"type": "text", "text": ...}``), ``batch_decode``, ``save_pretrained`` / ``from_pretrained``.
    Each ``<image>`` becomes the placeholder and separator ids of ``config.image_layout``
    (:mod:`sicog.model.layout`): exactly the positions :class:`SicogForConditionalGeneration` fills.
    The separator ids are the config's (the published checkpoints' LLaMA ids, or the tokenizer's own).
    Every setting comes from the model's :class:`SicogConfig`, which travels with the processor.
    """

    def __init__(
        self,
        image_processor: SicogImageProcessor,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        *,
        config: SicogConfig,
    ) -> None:
        if config.image_token_id is None or tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != config.image_token_id:
            raise ValueError(
                f"tokenizer id of {IMAGE_TOKEN} ({tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}) differs from "
                f"config.image_token_id ({config.image_token_id})"
            )
        chat_template = chat_template or tokenizer.chat_template
        if chat_template is None:
            raise ValueError("tokenizer has no chat template")
        if config.slice_comma_id is None or config.slice_newline_id is None:
            raise ValueError("config has no slice separator ids (slice_comma_id, slice_newline_id)")
        super().__init__(image_processor, tokenizer, chat_template=with_content_parts(chat_template))
        self.config = config
        self.image_token = IMAGE_TOKEN
        self.image_token_id = config.image_token_id
        self.comma_id, self.newline_id = config.slice_comma_id, config.slice_newline_id

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, config: SicogConfig) -> SicogProcessor:
        """The processor of a model with ``config`` around ``tokenizer`` (its chat template included)."""
        return cls(SicogImageProcessor.from_config(config), tokenizer, config=config)

    # ----- images -----------------------------------------------------------------------------------
    def plan(self, width: int, height: int, *, never_split: bool = False) -> SlicePlan:
        """How an image of ``width x height`` pixels (after any inference resize) is sliced."""
        return self.image_processor.plan(width, height, never_split=never_split)

    def inference_size(self, width: int, height: int) -> tuple[int, int]:
        """Size an image is resized to before slicing at inference (``config.inference_long_side``)."""
        return self.image_processor.inference_size(width, height)

    def image_ids(self, grid: tuple[int, int] | None) -> list[int]:
        """Placeholder and separator ids standing for one image sliced on ``grid`` (None: unsliced)."""
        config = self.config
        return image_token_ids(
            grid, config.resampler_num_queries, self.image_token_id, self.comma_id, self.newline_id,
            config.image_layout,
        )

    def image_token_count(self, width: int, height: int, *, never_split: bool = False, inference: bool = False) -> int:
        """Sequence positions an image of this size takes, without reading its pixels.

        The one count used everywhere (length filters, batching plans, parity checks); it is the
        length of the ids :meth:`process_image` writes.
        """
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
        views, grid = self.image_processor.process(image, never_split=never_split, inference=inference)
        return views, self.image_ids(grid)

    # ----- text ---------------------------------------------------------------------------------------
    @staticmethod
    def to_messages(conversations: Sequence[dict]) -> list[dict]:
        """LLaVA turns ``{"from", "value"}`` (or chat messages ``{"role", "content"}``) -> chat messages.

        A turn's single ``<image>`` is moved in front as :func:`image_first` says, for training and
        inference alike, so a model sees its images where it was trained to.
        """
        messages = []
        for index, turn in enumerate(conversations):
            role = turn.get("from", turn.get("role"))
            content = turn.get("value", turn.get("content"))
            if role not in ROLE_OF or not isinstance(content, str):
                raise ConversationError(f"turn {index}: unknown role {role!r} or non-string text")
            messages.append({"role": ROLE_OF[role], "content": image_first(content)})
        return messages

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _assistant_spans(
        self, messages: list[dict], text: str, whole_turns: bool
    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Character spans in ``text`` of each assistant turn, in order, checked against the text: its reply
        (the reply and its end marker) and, with ``whole_turns``, the whole rendered turn (role header and
        trailing newline included; else no turn spans, sparing a render per turn on every record)."""
        end_marker = self.tokenizer.eos_token
        replies, turns = [], []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:index], add_generation_prompt=True)
            through = self._render(messages[: index + 1], add_generation_prompt=False)
            header = self._render(messages[:index], add_generation_prompt=False) if whole_turns else ""
            has_marker = bool(end_marker) and end_marker in through
            end = through.rfind(end_marker) + len(end_marker) if has_marker else len(through)
            if not (all(map(text.startswith, (header, prompt, through))) and len(header) <= len(prompt) < end):
                raise ConversationError(
                    f"chat template renders turn {index} differently in context; cannot mask labels"
                )
            replies.append((len(prompt), end))
            if whole_turns:
                turns.append((len(header), len(through)))
        return replies, turns

    def encode_text(
        self, conversations: Sequence[dict], *, train: bool = True, label_masking: str | None = None
    ) -> Encoded:
        """The text part of :meth:`encode`: one image placeholder id per ``<image>`` (no image is read),
        labels and ``in_reply`` as :meth:`encode` gives them.

        Cheap enough to run on every record before training, so that a conversation whose labels cannot
        be built raises :class:`ConversationError` then, not when a training step reaches it.
        """
        masking = label_masking or self.config.label_masking
        messages = self.to_messages(conversations)
        if not train and messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if train and not any(m["role"] == "assistant" for m in messages):
            raise ConversationError("no assistant turn to learn from")
        text = self._render(messages, add_generation_prompt=not train)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=train)
        token_ids = encoding["input_ids"]
        if not train:
            return Encoded(token_ids)
        replies, turns = self._assistant_spans(messages, text, whole_turns=masking == "release")
        offsets = encoding["offset_mapping"]
        in_reply = self._inside(token_ids, offsets, replies)
        supervised = self._inside(token_ids, offsets, turns) if masking == "release" else in_reply
        labels = [token if inside else IGNORE_INDEX for token, inside in zip(token_ids, supervised)]
        if masking == "release":
            always = self._always_supervised()
            labels = [t if t in always else label for t, label in zip(token_ids, labels)]
        return Encoded(token_ids, labels, in_reply=in_reply)

    def encode(
        self,
        conversations: Sequence[dict],
        images: Sequence[str | os.PathLike | Image.Image] = (),
        *,
        train: bool = True,
        never_split: bool = False,
        label_masking: str | None = None,
        inference_images: bool | None = None,
    ) -> Encoded:
        """Encode a conversation. ``train``: the whole dialogue with labels as ``label_masking`` (default
        ``config.label_masking``) says; otherwise the dialogue up to its last user turn plus the
        generation prompt, images resized as at inference (:meth:`inference_size`). ``inference_images``
        chooses the images' geometry apart from ``train`` (default: as ``train`` says): a reply scored as the model
        would answer sees the images as generation does."""
        text = self.encode_text(conversations, train=train, label_masking=label_masking)
        n_placeholders = text.input_ids.count(self.image_token_id)
        if n_placeholders != len(images):
            raise ConversationError(
                f"conversation has {n_placeholders} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s)"
            )
        inference = not train if inference_images is None else inference_images
        return self._expand(text, images, never_split=never_split, inference=inference)

    def _expand(self, text: Encoded, images: Sequence, *, never_split: bool, inference: bool) -> Encoded:
        """Replace each image placeholder id of ``text`` by that image's ids (unsupervised, not reply) and
        collect its views."""
        input_ids: list[int] = []
        labels: list[int] | None = None if text.labels is None else []
        in_reply: list[bool] | None = None if text.in_reply is None else []
        views: list[torch.Tensor] = []
        image_iter = iter(images)
        for position, token in enumerate(text.input_ids):
            if token == self.image_token_id:
                image_views, ids = self.process_image(next(image_iter), never_split=never_split, inference=inference)
                views += image_views
                input_ids += ids
                if labels is not None:
                    labels += [IGNORE_INDEX] * len(ids)
                if in_reply is not None:
                    in_reply += [False] * len(ids)
            else:
                input_ids.append(token)
                if labels is not None:
                    labels.append(text.labels[position])
                if in_reply is not None:
                    in_reply.append(text.in_reply[position])
        return Encoded(input_ids, labels, views, in_reply)

    def _always_supervised(self) -> set[int]:
        """Ids the published ``preprocess_qwen`` supervises wherever they stand, system and user turns
        included: the newline token and the chat markers ``<|im_start|>`` / ``<|im_end|>``."""
        ids = set(self.tokenizer.encode("\n", add_special_tokens=False)[:1])
        for marker in ("<|im_start|>", "<|im_end|>"):
            # A marker the vocabulary lacks maps to the unknown token (or None), which maps back to another name.
            # Not `marker in get_vocab()`: that builds Qwen2's 152K-entry vocabulary, twice for every record.
            token_id = self.tokenizer.convert_tokens_to_ids(marker)
            if token_id is not None and self.tokenizer.convert_ids_to_tokens(token_id) == marker:
                ids.add(token_id)
        return ids

    @staticmethod
    def _inside(token_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
        """Whether each token lies within one of ``spans``.

        A token running from before a span into it is outside: Qwen2's pre-tokenizer merges the role
        header's newline with a reply's leading newlines into one token, which is part prompt, so it stays
        unsupervised and the rest of the reply is learned (the published ``preprocess_qwen`` tokenizes
        each turn alone, header and reply together, and meets no such boundary). A token running out of a
        span raises: the text after a turn's end marker is never the model's to write.
        """
        inside, current = [], 0
        for token, (start, end) in zip(token_ids, offsets):
            # Spans come in text order and do not overlap: only the first one not ended before the token
            # can hold it or be crossed by it (one pass, not every span for every token).
            while current < len(spans) and spans[current][1] <= start:
                current += 1
            if current == len(spans):
                inside.append(False)
                continue
            span_start, span_end = spans[current]
            if start < span_end < end:
                raise ConversationError(f"token {token} at characters {start}-{end} runs past the end of an "
                                        "assistant turn")
            inside.append(span_start <= start and end <= span_end)
        return inside

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

    def __call__(
        self,
        images=None,
        text: str | Sequence[str] | None = None,
        videos=None,
        audio=None,
        *,
        padding: bool | str = False,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        never_split: bool = False,
        inference: bool = True,
        **kwargs,
    ) -> BatchFeature:
        """Model inputs for rendered prompt(s) ``text`` holding one ``<image>`` per image.

        ``images``: one image, a flat list in placeholder order, or one list per prompt (paths, URLs,
        PIL images or arrays). Returns ``input_ids``, ``attention_mask`` and, with images, the flat
        ``pixel_values`` list the model takes. ``inference`` (default): images are resized as
        :meth:`inference_size` says, as in generation; pass False for the training geometry.
        ``padding`` pads a batch (on ``padding_side``, default the tokenizer's); ``return_tensors="pt"``
        gives tensors. Other tokenizer options are not supported and raise.
        """
        if videos is not None or audio is not None:
            raise ValueError(f"{type(self).__name__} takes images and text only")
        if text is None:
            raise ValueError(f"{type(self).__name__} needs text holding one {IMAGE_TOKEN} per image")
        unsupported = {k for k, v in kwargs.items() if v not in (None, False)} - {"add_special_tokens"}
        if unsupported:
            raise TypeError(f"{type(self).__name__} does not support {sorted(unsupported)}")
        prompts = [text] if isinstance(text, str) else list(text)
        n_placeholders = [prompt.count(IMAGE_TOKEN) for prompt in prompts]
        per_prompt = (isinstance(images, (list, tuple)) and len(images) == len(prompts) > 1
                      and all(isinstance(entry, (list, tuple)) for entry in images))
        for number, (entry, count) in enumerate(zip(images if per_prompt else [], n_placeholders)):
            # Flattened, images of one prompt would go to another whenever only the totals agree.
            if len(flat_images(entry)) != count:
                raise ConversationError(f"prompt {number} has {count} {IMAGE_TOKEN} placeholder(s) but its list "
                                        f"holds {len(flat_images(entry))} image(s)")
        flat = [load_url(image) for image in flat_images(images)]
        if sum(n_placeholders) != len(flat):
            raise ConversationError(
                f"text has {sum(n_placeholders)} {IMAGE_TOKEN} placeholder(s) but {len(flat)} image(s) were given"
            )
        samples, start = [], 0
        for prompt, count in zip(prompts, n_placeholders):
            token_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            samples.append(self._expand(Encoded(token_ids), flat[start : start + count],
                                        never_split=never_split, inference=inference))
            start += count
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' or None")
        if padding not in PADDING:
            raise ValueError(f"padding={padding!r}: only {', '.join(map(repr, PADDING))}")
        padding = PADDING[padding]
        lengths = {len(sample.input_ids) for sample in samples}
        if return_tensors == "pt" or padding:
            if len(lengths) > 1 and not padding:
                raise ValueError("prompts of different lengths need padding=True to become one tensor")
            data = self.collate(samples, padding_side=padding_side or self.tokenizer.padding_side)
            if return_tensors is None:
                data = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in data.items()}
        else:
            data = {"input_ids": [s.input_ids for s in samples],
                    "attention_mask": [[1] * len(s.input_ids) for s in samples]}
            views = [view for s in samples for view in s.pixel_values]
            if views:
                data["pixel_values"] = views
        return BatchFeature(data, skip_tensor_conversion=["pixel_values"])

    def decode(self, token_ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True, **kwargs) -> str:
        """Text of generated ids: special tokens removed (by default), surrounding whitespace stripped."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs).strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """:meth:`decode` of every row of a batch."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in sequences]

    # ----- persistence --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The processor's saved settings; the model and image settings it uses are the checkpoint's ``config.json``
        (a copy of the image processor's here would be read by nothing)."""
        output = super().to_dict()
        output.pop("config", None)
        output.pop("image_processor", None)
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str] | None:
        """Save as transformers processors do (see :meth:`to_dict`); warns when the image processor's settings
        differ from the config's, which the checkpoint keeps."""
        changed = self.image_processor.differences(self.config)
        if changed:
            logger.warning("the checkpoint keeps config.json's image settings, not this processor's %s: set them on "
                           "the model's config to keep them", ", ".join(changed))
        return super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, config: SicogConfig | None = None, **kwargs
    ) -> SicogProcessor:
        """Load from a checkpoint holding the tokenizer and ``config.json`` (the settings' one source).

        As transformers processors do, ``chat_template=`` replaces the saved template, an image setting
        (:data:`IMAGE_OVERRIDES`, e.g. ``max_slice_nums=9``) replaces the config's for this processor, and the other
        keyword arguments go to the tokenizer (``padding_side="left"`` for batched generation, hub options,
        ``trust_remote_code``); the config is read with the hub options alone.
        """
        kwargs.pop("_from_auto", None)
        chat_template = kwargs.pop("chat_template", None)
        image_settings = {name: kwargs.pop(name) for name in IMAGE_OVERRIDES if name in kwargs}
        hub = {k: kwargs[k] for k in HUB_OPTIONS if kwargs.get(k) is not None}
        folder = Path(pretrained_model_name_or_path)
        if config is None and folder.is_dir() and not (folder / hub.get("subfolder", "") / "config.json").is_file():
            # transformers would read the folder as a config of SicogConfig's defaults (a 7B model's) and fail
            # later on a mismatch that does not say why.
            raise OSError(f"{folder}: no config.json; a SICOG processor reads its settings from its model's "
                          "config.json: save it beside the model (or pass config=)")
        config = config or SicogConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **kwargs)
        return cls(SicogImageProcessor.from_config(config, **image_settings), tokenizer, chat_template, config=config)


# The image settings a keyword argument of `from_pretrained` may replace (the patch size is the vision tower's).
IMAGE_OVERRIDES = tuple(name for name in SETTINGS if name != "patch_size")
HUB_OPTIONS = ("cache_dir", "force_download", "local_files_only", "revision", "subfolder", "token")

# Put in front of a chat template, so that every path renders a turn as `encode` does: each message's
# content parts become plain text (an image part "<image>\n", the placeholder and newline LLaVA-style
# data puts before the question, a text part its text), then a turn holding one placeholder anywhere but
# in front is rewritten as `image_first` says. Messages without content pass through unchanged.
# Every version of the rendering below starts and ends with these two (a saved one is found by them).
CONTENT_PARTS_START = "{%- set sicog_parts = namespace(messages=[]) -%}"
CONTENT_PARTS_END = "{%- set messages = sicog_parts.messages -%}{{ '' }}"
CONTENT_PARTS = CONTENT_PARTS_START + (
    "{%- for message in messages -%}"
    "{%- if message['content'] is none -%}"
    "{%- set sicog_parts.messages = sicog_parts.messages + [message] -%}"
    "{%- else -%}"
    "{%- set sicog_text = namespace(value='') -%}"
    "{%- if message['content'] is string -%}{%- set sicog_text.value = message['content'] -%}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set sicog_text.value = sicog_text.value + '" + IMAGE_TOKEN + "\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set sicog_text.value = sicog_text.value + part['text'] -%}"
    "{%- else -%}{{- raise_exception('unsupported content part type: ' + part['type']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if sicog_text.value.count('" + IMAGE_TOKEN + "') == 1"
    " and not sicog_text.value.startswith('" + IMAGE_TOKEN + "') -%}"
    "{%- set sicog_rest = sicog_text.value.replace('" + IMAGE_TOKEN + "', '').strip() -%}"
    "{%- set sicog_text.value = '" + IMAGE_TOKEN + "' + ('\n' + sicog_rest if sicog_rest else '') -%}"
    "{%- endif -%}"
    "{%- set sicog_parts.messages = sicog_parts.messages + [dict(message, content=sicog_text.value)] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
) + CONTENT_PARTS_END


def with_content_parts(chat_template: str) -> str:
    """``chat_template`` extended to content parts: this version's rendering put in front, in place of the one an
    earlier version saved with a checkpoint (so loading and saving never stack two)."""
    if chat_template.startswith(CONTENT_PARTS_START) and CONTENT_PARTS_END in chat_template:
        chat_template = chat_template.split(CONTENT_PARTS_END, 1)[1]
    return CONTENT_PARTS + chat_template


URL_TIMEOUT_S = 60


def load_url(image):
    """An image given by http(s) URL, fetched with the HTTP client transformers uses and opened as stored; any other
    input as it is. Not transformers' load_image: it turns a photo by its EXIF orientation, which neither a local
    path here nor the published code does, so the same picture would be sliced on another grid."""
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        from huggingface_hub.utils import httpx

        response = httpx.get(image, timeout=URL_TIMEOUT_S, follow_redirects=True)
        response.raise_for_status()
        return Image.open(BytesIO(response.content))
    return image


if __name__.startswith("sicog."):  # copies saved with a checkpoint are found through its auto_map instead
    AutoProcessor.register(SicogConfig, SicogProcessor, exist_ok=True)
