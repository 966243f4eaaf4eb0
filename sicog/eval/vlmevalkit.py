"""A SICOG checkpoint as a VLMEvalKit model, and a launcher that runs VLMEvalKit's ``run.py`` with it.

VLMEvalKit drives a model through ``use_custom_prompt(dataset)``, ``build_prompt(line, dataset)``,
``set_dump_image(fn)`` and ``generate(message, dataset)``, where a message is a list of
``{"type": "image" | "text", "value": ...}`` items (image values are file paths). :class:`SicogVLM`
provides that interface without importing VLMEvalKit, which is needed only to ask a dataset's type
(``vlmeval.dataset.DATASET_TYPE``). For multiple-choice datasets it builds the prompt the built-in
runner builds, so both harnesses ask a SICOG model the same question.

VLMEvalKit knows its models from the dict ``vlmeval.config.supported_VLM``. ``python -m
sicog.eval.vlmevalkit --sicog-model CKPT RUN_PY_ARGS`` adds ``sicog`` to that dict in its own process
and then runs VLMEvalKit's ``run.py`` with the remaining arguments, so VLMEvalKit needs no edit
(see docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import mimetypes
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sicog.data.argtypes import os_error_text, positive_int
from sicog.eval.generation import chat_turns, encode_item, generate_replies, load_for_eval, placed_images
from sicog.eval.prompts import (
    DEFAULT_PROMPT_STYLE,
    FRAMEWORK_MAX_NEW_TOKENS,
    OPEN_QUESTION,
    PROMPT_STYLES,
    build_prompt,
)
from sicog.eval.tsv import MULTIPLE_CHOICE, YES_NO, is_missing, row_options
from sicog.model.checkpoint_config import read_checkpoint_config
from sicog.model.device import DTYPES
from sicog.model.image_io import load_image

MESSAGE_TYPES = ("image", "text")
MODEL_NAME = "sicog"


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
        prompt: str = DEFAULT_PROMPT_STYLE,
        max_new_tokens: int = FRAMEWORK_MAX_NEW_TOKENS,
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
        """Multiple-choice datasets get SICOG's own prompt; the others keep the dataset's.

        VLMEvalKit calls every custom TSV multiple choice, options or not: :meth:`build_prompt` asks
        the rows without options as yes/no or open questions.
        """
        return dataset_type(dataset) == "MCQ"

    def build_prompt(self, line: Any, dataset: str | None = None) -> list[dict]:
        """The message for one row of a multiple-choice dataset (a pandas Series or a dict): its images,
        then the text.

        A row with options gets the built-in runner's multiple-choice prompt; a row without them (a custom
        TSV of open or yes/no questions) is not told to answer with a letter: it gets the yes/no prompt
        when its answer is yes or no, else its hint and question as written.
        """
        if not self.use_custom_prompt(dataset):
            raise ValueError(f"build_prompt serves multiple-choice datasets; {dataset!r} is {dataset_type(dataset)!r}")
        row = {str(k): _cell(v) for k, v in dict(line).items()}
        if len(row_options(row)) >= 2:
            kind = MULTIPLE_CHOICE
        elif row.get("answer", "").strip().lower() in ("yes", "no"):
            kind = YES_NO
        else:
            kind = OPEN_QUESTION
        text = build_prompt(row, kind, self.prompt_style)
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
        # VLMEvalKit passes images as items of their own: a "<image>" in the text may place none of them.
        encoded = encode_item(self.processor, placed_images(text, len(images)), images)
        return generate_replies(self.model, self.processor, [encoded], max_new_tokens=self.max_new_tokens)[0]


    def chat(self, messages: list[dict], dataset: str | None = None) -> str:
        """Check and normalise a conversation, then answer its last user turn (VLMEvalKit's entry point for
        its multi-turn datasets, such as MMDU). ``messages``: ``{"role", "content"}`` turns, each content a
        message as :meth:`generate` takes it (earlier replies are strings)."""
        turns = []
        for number, turn in enumerate(messages):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise ValueError(f"turn {number} is not {{'role', 'content'}}: {turn!r}")
            turns.append({"role": turn["role"], "content": _as_message(turn["content"])})
        return self.chat_inner(turns, dataset)

    def chat_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """Answer a normalised conversation: every turn in order, each image an ``<image>`` line where it
        stands (see :func:`~sicog.eval.generation.chat_turns`)."""
        turns, images = chat_turns([(turn["role"], [(item["type"], item["value"]) for item in turn["content"]])
                                    for turn in message])
        encoded = self.processor.encode(turns, [load_image(image) for image in images], train=False)
        return generate_replies(self.model, self.processor, [encoded], max_new_tokens=self.max_new_tokens)[0]


def _cell(value: Any) -> str:
    """A TSV cell from the value pandas read: VLMEvalKit reads a numeric column with an empty cell as floats,
    and "3" would be asked as "3.0" where `sicog eval`, reading text, asks "3". (What pandas changed beyond
    that, "1.50" read as 1.5, cannot be told from the value: docs/evaluation.md.)"""
    if is_missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def register(
    model_path: str | os.PathLike,
    name: str = MODEL_NAME,
    **settings: Any,
) -> None:
    """Add ``name`` (a SICOG checkpoint with ``settings``: prompt, max_new_tokens, device, dtype) to
    VLMEvalKit's ``supported_VLM`` in this process."""
    from vlmeval.config import supported_VLM  # only available inside a VLMEvalKit installation

    supported_VLM[name] = partial(SicogVLM, model_path=str(Path(model_path).resolve()), **settings)


def find_run_script(vlmevalkit: str | os.PathLike | None = None) -> Path:
    """VLMEvalKit's ``run.py``: in ``vlmevalkit`` when given, else in the current folder, else beside the
    installed ``vlmeval`` package (an editable install of a checkout)."""
    places = [Path(vlmevalkit)] if vlmevalkit is not None else [Path.cwd()]
    if vlmevalkit is None and not (Path.cwd() / "run.py").is_file():
        import vlmeval  # only available inside a VLMEvalKit installation

        places.append(Path(vlmeval.__file__).resolve().parents[1])
    for place in places:
        if (place / "run.py").is_file():
            return place / "run.py"
    raise FileNotFoundError(f"no VLMEvalKit run.py in {', '.join(str(p) for p in places)} (give --vlmevalkit DIR)")


def build_parser() -> argparse.ArgumentParser:
    """The launcher's own options; every other argument goes to VLMEvalKit's run.py."""
    parser = argparse.ArgumentParser(
        prog="python -m sicog.eval.vlmevalkit",
        description="Run VLMEvalKit's run.py with a SICOG checkpoint registered as a model. Arguments not listed "
        "here go to run.py, e.g. --model sicog --data MMStar AI2D_TEST --work-dir outputs.",
        allow_abbrev=False,  # run.py's own options must never be taken for abbreviations of these
    )
    parser.add_argument("--sicog-model", required=True, type=Path, help="SICOG checkpoint folder")
    parser.add_argument("--sicog-name", default=MODEL_NAME,
                        help="the model name to give run.py's --model (default: %(default)s)")
    parser.add_argument("--sicog-prompt", default=DEFAULT_PROMPT_STYLE, choices=PROMPT_STYLES,
                        help="how multiple-choice questions are asked (default: %(default)s)")
    parser.add_argument("--sicog-max-new-tokens", type=positive_int, default=FRAMEWORK_MAX_NEW_TOKENS,
                        help="longest reply (default: %(default)s)")
    parser.add_argument("--sicog-device", default="auto",
                        help="auto (one GPU per process when available, else cpu), cpu, cuda:0, ...")
    parser.add_argument("--sicog-dtype", default="auto", choices=("auto", *DTYPES),
                        help="model weights (auto: bfloat16 on GPU, float32 on CPU)")
    parser.add_argument("--vlmevalkit", type=Path,
                        help="VLMEvalKit checkout holding run.py (default: the current folder, else the checkout "
                             "of the installed vlmeval package)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Register the checkpoint, then run VLMEvalKit's run.py with the other arguments (as ``python run.py``)."""
    parser = build_parser()
    args, run_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    prog = parser.prog
    try:
        read_checkpoint_config(args.sicog_model)  # here, not after VLMEvalKit's set-up inside run.py
        run_script = find_run_script(args.vlmevalkit)
        sys.path.insert(0, str(run_script.parent))  # what `python run.py` puts first on the path
        register(args.sicog_model, args.sicog_name, prompt=args.sicog_prompt,
                 max_new_tokens=args.sicog_max_new_tokens, device=args.sicog_device, dtype=args.sicog_dtype)
    except ImportError as err:
        parser.exit(2, f"{prog}: error: VLMEvalKit cannot be imported here ({err})\n")
    except ValueError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    except OSError as err:
        parser.exit(2, f"{prog}: error: {os_error_text(err)}\n")
    sys.argv = [str(run_script), *run_args]
    runpy.run_path(str(run_script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
