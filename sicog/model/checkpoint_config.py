"""A SICOG checkpoint's ``config.json``, read and checked before transformers is given the folder."""

from __future__ import annotations

import os
from pathlib import Path

from sicog.model.configuration import SicogConfig
from sicog.model.release_format import ConversionError, read_json_object

# model_type of a checkpoint in the published LLaVA format (sicog.convert.release reads and writes it).
RELEASE_MODEL_TYPE = "llava_qwen"


def read_checkpoint_config(checkpoint: str | os.PathLike) -> dict:
    """The fields of ``checkpoint/config.json``, a SICOG checkpoint's; :class:`ConversionError` (a ``ValueError``),
    one line naming the folder or file, when there is no such file, it holds no JSON object, or its ``model_type``
    is not SICOG's. An ``OSError`` reading it (no permission) is left to the caller.

    transformers reads any other model's config (a plain Qwen2 or CLIP folder, a published ``llava_qwen``
    checkpoint) into SicogConfig's defaults with only a warning: a 7B model that is not there.
    """
    path = Path(checkpoint) / "config.json"
    if not path.is_file():  # else a mistyped folder would be looked up as a Hub id
        raise ConversionError(f"no SICOG checkpoint at {checkpoint} (config.json missing)")
    fields = read_json_object(path)
    found = fields.get("model_type")
    if found != SicogConfig.model_type:
        published = found == RELEASE_MODEL_TYPE
        hint = " but a published one: convert it with `sicog convert from-release`" if published else ""
        raise ConversionError(f"{path}: not a SICOG checkpoint (model_type {found!r}, not {SicogConfig.model_type!r})"
                              + hint)
    return fields
