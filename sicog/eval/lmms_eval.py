"""A SICOG checkpoint as an lmms-eval model (``lmms-eval --model sicog --model_args pretrained=PATH``).

lmms-eval (0.7 and later) finds plugin models through the Python entry-point group
``lmms_eval.models``; :func:`manifest` is the payload to register there (see docs/evaluation.md).
Without the entry point, ``python -m sicog.eval.lmms_eval ARGS`` registers the model and runs
lmms-eval's own command line with ``ARGS``.

The class is a "simple" lmms-eval model: each request carries the task's prompt text (which already
holds the benchmark's instruction, e.g. "Answer with the option's letter ...") and a function giving
the document's images; replies are generated greedily unless the task asks for sampling.
Importing this module needs lmms-eval installed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

try:
    from lmms_eval.api.model import lmms
except ImportError as err:
    raise ImportError("sicog.eval.lmms_eval needs lmms-eval: pip install lmms-eval") from err

from sicog.data.sharding import rank_and_world
from sicog.eval.generation import encode_item, generate_replies, load_for_eval

MODEL_ID = "sicog"
CLASS_PATH = "sicog.eval.lmms_eval.SicogLMMs"


def manifest():
    """The lmms-eval model manifest of SICOG (the ``lmms_eval.models`` entry point's payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH)


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


def _cut_at_stop(text: str, until: Sequence[str]) -> str:
    """The reply up to the first stop string the task gave."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class SicogLMMs(lmms):
    """lmms-eval's model interface around a SICOG checkpoint.

    ``pretrained``: the checkpoint folder; ``batch_size``: requests per generate call;
    ``max_new_tokens``: the reply budget when the task sets none; ``device``/``dtype`` as for
    ``sicog eval`` (auto: cuda:LOCAL_RANK, bfloat16). ``model``/``processor`` take an already loaded
    model instead of ``pretrained``.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | os.PathLike | None = None,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str | None = 1,
        max_new_tokens: int | str = 1024,
        max_batch_size: int | str | None = None,
        model=None,
        processor=None,
    ) -> None:
        super().__init__()
        if (model is None) != (processor is None) or (model is None) == (pretrained is None):
            raise ValueError("give either pretrained=PATH, or an already loaded model and processor")
        if model is None:
            model, processor = load_for_eval(pretrained, device or "auto", dtype)
        self.model, self.processor = model.eval(), processor
        self.batch_size = int(batch_size or 1)
        if max_batch_size is not None:
            self.batch_size = min(self.batch_size, int(max_batch_size))
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.max_new_tokens = int(max_new_tokens)
        self._rank, self._world_size = rank_and_world()

    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return self.model.device

    def _doc_images(self, doc_to_visual, doc_id, task: str, split: str) -> list[Image.Image | str]:
        if doc_to_visual is None:
            return []
        return _images(doc_to_visual(self.task_dict[task][split][doc_id]))

    def generate_until(self, requests) -> list[str]:
        """Answer each request (``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``), in order.

        Requests with the same generation settings share a batch; a request whose images cannot be
        used raises, naming the task and document.
        """
        replies: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for position, request in enumerate(requests):
            groups.setdefault(repr(sorted(dict(request.args[1] or {}).items())), []).append(position)
        bar = tqdm(total=len(requests), desc="sicog answering", disable=self.rank != 0)
        for positions in groups.values():
            for start in range(0, len(positions), self.batch_size):
                chunk = positions[start : start + self.batch_size]
                texts = self._generate_chunk([requests[p].args for p in chunk])
                for position, text in zip(chunk, texts, strict=True):
                    replies[position] = text
                bar.update(len(chunk))
        bar.close()
        return replies

    def _generate_chunk(self, args: list[tuple]) -> list[str]:
        settings = dict(args[0][1] or {})
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
        for context, _, doc_to_visual, doc_id, task, split in args:
            try:
                images = self._doc_images(doc_to_visual, doc_id, task, split)
                encoded.append(encode_item(self.processor, context, images))
            except ValueError as err:
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
            prompt = encode_item(self.processor, context, self._doc_images(doc_to_visual, doc_id, task, split))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Register SICOG, then run lmms-eval's command line (``python -m sicog.eval.lmms_eval --model sicog ...``)."""
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    register()
    sys.argv = ["lmms-eval", *(sys.argv[1:] if argv is None else argv)]
    lmms_eval_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
