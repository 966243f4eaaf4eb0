"""A SICOG checkpoint as an lmms-eval model (``lmms-eval --model sicog --model_args pretrained=PATH``).

lmms-eval (0.7 and later) finds plugin models through the Python entry-point group
``lmms_eval.models``; :func:`manifest` is the payload to register there (see docs/evaluation.md).
Without the entry point, ``python -m sicog.eval.lmms_eval ARGS`` registers the model and runs
lmms-eval's own command line with ``ARGS``.

``--model sicog`` is the chat model (:class:`SicogLMMsChat`): each request carries the task's messages
(``doc_to_messages``: images and text in order, as lmms-eval builds them from the task's own prompt).
The "simple" model (:class:`SicogLMMs`, lmms-eval's ``--force_simple``) takes the prompt text and a
function giving the document's images instead. Both generate greedily unless the task asks for
sampling, batch requests with the same settings (``batch_size=auto``: the largest batch that fits,
halved on out-of-memory) and put each process on its own GPU (cuda:LOCAL_RANK).
Importing this module needs lmms-eval installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from PIL import Image
from tqdm import tqdm

try:
    from lmms_eval.api.model import lmms
except ImportError as err:
    if __name__ == "__main__":  # the launcher (docs/evaluation.md): one line, as the VLMEvalKit launcher gives
        print(f"python -m sicog.eval.lmms_eval: error: lmms-eval cannot be imported here ({err}); install it beside "
              "SICOG (docs/evaluation.md)", file=sys.stderr)
        sys.exit(2)
    raise ImportError("sicog.eval.lmms_eval needs lmms-eval: pip install lmms-eval") from err

from sicog.data.sharding import rank_and_world
from sicog.eval.batch_size import parse_batch_size
from sicog.eval.generation import chat_turns, encode_item, generate_replies, load_for_eval, placed_images
from sicog.eval.prompts import FRAMEWORK_MAX_NEW_TOKENS
from sicog.eval.tsv import decode_image
from sicog.model.image_io import ImageError, load_image
from sicog.model.processing import Encoded

MODEL_ID = "sicog"
CLASS_PATH = "sicog.eval.lmms_eval.SicogLMMs"
CHAT_CLASS_PATH = "sicog.eval.lmms_eval.SicogLMMsChat"


def manifest():
    """The lmms-eval model manifest of SICOG (the ``lmms_eval.models`` entry point's payload): the chat
    model, and the simple one for ``--force_simple``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, chat_class_path=CHAT_CLASS_PATH)


def register() -> None:
    """Make ``--model sicog`` known to lmms-eval in this process (needed only without the entry point)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


def _images(visuals: Any) -> list[Image.Image | str]:
    """The images of a document: lmms-eval gives a list (possibly nested) of PIL images or paths."""
    if visuals is None:
        return []
    if isinstance(visuals, (Image.Image, str)):
        return [visuals]
    found = []
    for visual in visuals:
        found += _images(visual)
    return found


def conversation_of(messages: Sequence[dict]) -> tuple[list[dict], list[Image.Image | str]]:
    """lmms-eval chat messages (``{"role", "content": [{"type": "text" | "image", ...}]}``) -> SICOG
    turns and the images in order (see :func:`~sicog.eval.generation.chat_turns`)."""
    read = []
    for number, message in enumerate(messages):
        content = message.get("content")
        items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        found = []
        for item in items:
            kind = item.get("type")
            if kind not in ("text", "image"):
                raise ValueError(f"message {number} holds a {kind!r} item; SICOG models take text and images")
            found.append((kind, item.get("text", "") if kind == "text" else _image_of(item.get("url"))))
        read.append((message.get("role"), found))
    return chat_turns(read)


def _image_of(url: object) -> object:
    """An image item's ``url`` as given (a path or an image), or the image a ``data:`` URI holds (lmms-eval's
    MME-SCI tasks send base64 PNGs)."""
    if not (isinstance(url, str) and url.startswith("data:")):
        return url
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise ValueError(f"an image data URI that is not base64 ({header[:40]})")
    try:
        return decode_image(data)
    except ImageError as err:
        raise ValueError(f"cannot read the image of a data URI ({header[:40]}): {err}") from None


def _system_text(value: str) -> str:
    """A ``system_prompt`` model argument as lmms-eval's chat models read it: a file's text or the text itself,
    with ``\\n`` (what a --model_args value can hold) as a new line."""
    value = str(value).replace("\\n", "\n")
    return Path(value).read_text(encoding="utf-8").strip() if os.path.isfile(value) else value


# The stop string lmms-eval gives every generation task that names none (TaskConfig). SICOG's step-by-step replies
# hold it between their steps, and lmms-eval's own Qwen models drop it too: a reply cut there loses its answer.
DEFAULT_STOP = "\n\n"


def _cut_at_stop(text: str, until: Sequence[str]) -> str:
    """The reply up to the first stop string the task gave, :data:`DEFAULT_STOP` aside."""
    for stop in until:
        if stop and stop != DEFAULT_STOP:
            text = text.split(stop, 1)[0]
    return text


class SicogLMMs(lmms):
    """lmms-eval's "simple" model interface around a SICOG checkpoint.

    ``pretrained``: the checkpoint folder; ``batch_size``: requests per generate call (N, or ``auto``:
    see :func:`parse_batch_size`); ``max_new_tokens``: the reply budget when the task sets none;
    ``device``/``dtype`` as for ``sicog eval`` (auto: cuda:LOCAL_RANK, bfloat16); ``system_prompt``: a system
    turn before every request (the text, or a file holding it, as lmms-eval's own chat models take it; in the
    chat model it replaces a task's own system turn). ``model``/``processor`` take an already loaded model
    instead of ``pretrained``.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        max_new_tokens: int | str = FRAMEWORK_MAX_NEW_TOKENS,
        max_batch_size: int | str | None = None,
        system_prompt: str | None = None,
        model=None,
        processor=None,
    ) -> None:
        super().__init__()
        if (model is None) != (processor is None) or (model is None) == (pretrained is None):
            raise ValueError("give either pretrained=PATH, or an already loaded model and processor")
        self.batch_size, self.auto_batch = parse_batch_size(batch_size, max_batch_size)
        if model is None:
            model, processor = load_for_eval(pretrained, device or "auto", dtype)
        self.model, self.processor = model.eval(), processor
        self.max_new_tokens = int(max_new_tokens)
        # lmms-eval passes "\n" in a --model_args value as the two characters.
        self.system_prompt = _system_text(system_prompt) if system_prompt else None
        self._rank, self._world_size = rank_and_world()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.model.device

    def _doc_images(self, doc_to_visual, doc_id, task: str, split: str) -> list[Image.Image | str]:
        if doc_to_visual is None:
            return []
        return _images(doc_to_visual(self.task_dict[task][split][doc_id]))

    @staticmethod
    def _request_settings(args: tuple) -> dict:
        """The generation settings of a simple request ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``."""
        return dict(args[1] or {})

    def _encode_request(self, args: tuple) -> Encoded:
        """The prompt of a simple request: its images, then the task's context text."""
        context, _, doc_to_visual, doc_id, task, split = args
        return self._encode_context(context, doc_to_visual, doc_id, task, split)

    def _encode_context(self, context: str, doc_to_visual, doc_id, task: str, split: str) -> Encoded:
        """A task's context text with the document's images (a ``<image>`` that places none is text)."""
        images = self._doc_images(doc_to_visual, doc_id, task, split)
        return encode_item(self.processor, placed_images(context, len(images)), images, system=self.system_prompt)

    def generate_until(self, requests) -> list[str]:
        """Answer each request, in order.

        Requests with the same generation settings share a batch; a request whose images cannot be
        used raises, naming the task and document.
        """
        replies: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(repr(sorted(self._request_settings(request.args).items())), []).append(position)
        bar = tqdm(total=len(requests), desc="sicog answering", disable=self.rank != 0)
        for positions in groups.values():
            start = 0
            while start < len(positions):
                chunk = positions[start : start + self.batch_size]
                try:
                    texts = self._generate_chunk([requests[p].args for p in chunk])
                except RuntimeError as err:
                    if not (self.auto_batch and len(chunk) > 1 and should_reduce_batch_size(err)):
                        raise
                    # batch_size=auto: this batch did not fit; try it again at half the size, and keep that size.
                    self.batch_size = len(chunk) // 2
                    clear_device_cache(garbage_collection=True)
                    continue
                for position, text in zip(chunk, texts, strict=True):
                    replies[position] = text
                bar.update(len(chunk))
                start += len(chunk)
        bar.close()
        return replies

    def _generate_chunk(self, args: list[tuple]) -> list[str]:
        settings = self._request_settings(args[0])
        until = settings.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new_tokens = int(settings.pop("max_new_tokens", self.max_new_tokens))
        temperature = float(settings.pop("temperature", 0) or 0)
        kwargs: dict[str, Any] = {"num_beams": int(settings.pop("num_beams", 1) or 1)}
        if temperature > 0 and settings.pop("do_sample", True):
            kwargs.update(do_sample=True, temperature=temperature)
            if settings.get("top_p") is not None:
                kwargs["top_p"] = float(settings["top_p"])
        encoded = []
        for request in args:
            try:
                encoded.append(self._encode_request(request))
            except ValueError as err:
                doc_id, task, split = request[-3:]
                raise ValueError(f"task {task!r} split {split!r} doc {doc_id}: {err}") from err
        texts = generate_replies(self.model, self.processor, encoded, max_new_tokens=max_new_tokens, **kwargs)
        return [_cut_at_stop(text, until) for text in texts]

    @torch.no_grad()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Log-probability of each continuation after its context (and images), and whether greedy
        decoding would produce it (``(context, doc_to_target, doc_to_visual, doc_id, task, split)``)."""
        results = []
        for context, target, doc_to_visual, doc_id, task, split in tqdm(
            [request.args for request in requests], desc="sicog scoring", disable=self.rank != 0
        ):
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            prompt = self._encode_context(context, doc_to_visual, doc_id, task, split)
            cont_ids = self.processor.tokenizer.encode(continuation, add_special_tokens=False)
            if not cont_ids:
                results.append((0.0, True))
                continue
            ids = torch.tensor([prompt.input_ids + cont_ids], device=self.device)
            pixel_values = prompt.pixel_values or None
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values).logits
            # Position t predicts token t + 1: the continuation is predicted from its previous positions.
            predicting = logits[0, len(prompt.input_ids) - 1 : -1].float().log_softmax(-1)
            wanted = torch.tensor(cont_ids, device=predicting.device)
            logprob = predicting.gather(-1, wanted[:, None]).sum().item()
            greedy = bool((predicting.argmax(-1) == wanted).all())
            results.append((logprob, greedy))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        """Multi-round tasks (interactive video and search agents) are beyond a single-image SICOG model."""
        raise NotImplementedError(
            "SICOG models answer single-turn image questions; multi-round tasks are not supported"
        )


class SicogLMMsChat(SicogLMMs):
    """lmms-eval's chat model interface around a SICOG checkpoint (what ``--model sicog`` loads).

    A request is ``(context, doc_to_messages, gen_kwargs, doc_id, task, split)``: the document's messages
    give the images and text in order (see :func:`conversation_of`). Arguments as :class:`SicogLMMs`.
    lmms-eval's chat tasks only generate; log-likelihood tasks run on the simple model (``--force_simple``).
    """

    is_simple = False

    @staticmethod
    def _request_settings(args: tuple) -> dict:
        return dict(args[2] or {})

    def _encode_request(self, args: tuple) -> Encoded:
        """The prompt of a chat request: the document's messages as SICOG turns, with their images."""
        _, doc_to_messages, _, doc_id, task, split = args
        messages: Callable | list = doc_to_messages
        if callable(messages):
            messages = messages(self.task_dict[task][split][doc_id])
        if self.system_prompt:  # in place of the task's own system turn, if any
            messages = [{"role": "system", "content": self.system_prompt},
                        *(m for m in messages if m.get("role") != "system")]
        turns, images = conversation_of(messages)
        return self.processor.encode(turns, [load_image(image) for image in images], train=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Register SICOG, then run lmms-eval's command line (``python -m sicog.eval.lmms_eval --model sicog ...``)."""
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    register()
    sys.argv = ["lmms-eval", *(sys.argv[1:] if argv is None else argv)]
    lmms_eval_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
