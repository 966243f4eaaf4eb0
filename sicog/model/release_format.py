"""Names and files of the published ``llava_qwen`` format, and the tensor-for-tensor mapping to ours.

The LLM sits under ``model.`` and ``lm_head.``, the resampler under ``model.mm_projector.``, the CLIP
tower under ``model.vision_tower.vision_tower.vision_model.``. The resampler's ``pos_embed`` is our
``query_pos`` and its ``proj`` matrix (applied as ``x @ proj``) is our ``proj`` Linear's weight,
transposed. Used by :mod:`sicog.convert.release` and by the projector loader.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

PROJECTOR_BIN = "mm_projector.bin"
# The published builder's projector types and the query count each hard-codes.
PROJECTOR_TYPES = {"adapt_spatial_resampler_v1": 144, "uhd_v1_query64": 64}
VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
PROJECTOR_PREFIX = "model.mm_projector."
# Resampler names that differ: release -> ours. ``proj`` is a matrix applied as ``x @ proj``; ours is a Linear.
RESAMPLER_RENAMES = {"pos_embed": "query_pos", "proj": "proj.weight"}
TRANSPOSED = {"proj.weight"}
# What the published resampler computes: every query sees only its own cell, sampled with RoIAlign bins.
RELEASE_RESAMPLER_SETTINGS = {"resampler_attention": "cell", "resampler_pooling": "roi_align"}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted without losing or inventing something."""


def read_json_object(path: str | os.PathLike) -> dict:
    """The JSON object in ``path``; :class:`ConversionError` naming the file when it is not one."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _index_files(index: Path) -> list[str]:
    """The weight files a shard index names (its ``weight_map`` values)."""
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise ConversionError(f"{index}: no 'weight_map' object of tensor name -> file name")
    return sorted(set(weight_map.values()))


def read_weights(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a directory's ``model*.safetensors`` or ``pytorch_model*.bin`` files (index or single file)."""
    directory = Path(directory)
    layouts = (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    )
    for index_name, single in layouts:
        index = directory / index_name
        if index.is_file():
            files = _index_files(index)
        elif (directory / single).is_file():
            files = [single]
        else:
            continue
        state: dict[str, torch.Tensor] = {}
        holder: dict[str, str] = {}  # tensor name -> the file it was read from
        for name in files:
            for key, value in read_tensor_file(directory / name).items():
                if key in holder:
                    # Which copy is meant is unknown: taking either could convert the wrong values without a word.
                    raise ConversionError(f"{directory}: tensor {key} is stored twice, in {holder[key]} and {name}")
                holder[key] = name
                state[key] = value
        return state
    raise ConversionError(f"{directory}: no model.safetensors, pytorch_model.bin or their shard index")


def read_tensor_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of one ``.safetensors`` file or one torch pickle (``.bin``, loaded with ``weights_only``)."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK") or path.suffix in (".bin", ".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as error:
            # Truncated or corrupt archives surface as any of these, depending on where the bytes stop.
            raise ConversionError(f"{path}: not a readable torch file ({first_line(error)})") from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(f"{path}: a torch file that is not a flat name -> tensor mapping")
        return state
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as error:
        raise ConversionError(f"{path}: not a readable safetensors file ({first_line(error)})") from None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's messages run over several lines)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def resampler_from_release(state: dict[str, torch.Tensor], prefix: str = PROJECTOR_PREFIX) -> dict[str, torch.Tensor]:
    """Our ``resampler`` state (without prefix) from a release state's ``model.mm_projector.*`` tensors."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            raise ConversionError(f"{key} is not a projector weight (expected the prefix {prefix!r})")
        name = RESAMPLER_RENAMES.get(key[len(prefix) :], key[len(prefix) :])
        out[name] = value.t().contiguous() if name in TRANSPOSED else value
    return out


def release_key(key: str) -> str:
    """The release name of one of our state-dict keys (raises for keys with no release counterpart)."""
    if key.startswith("vision_tower."):
        return VISION_PREFIX + key[len("vision_tower.") :]
    if key.startswith("resampler."):
        name = key[len("resampler.") :]
        inverse = {v: k for k, v in RESAMPLER_RENAMES.items()}
        return PROJECTOR_PREFIX + inverse.get(name, name)
    if key.startswith("language_model.model."):
        return "model." + key[len("language_model.model.") :]
    if key.startswith("language_model.lm_head."):
        return key[len("language_model.") :]
    raise ConversionError(f"{key} has no counterpart in the published format")


def to_release_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> release names (the resampler's output matrix transposed back)."""
    out = {}
    for key, value in state.items():
        transposed = key.startswith("resampler.") and key[len("resampler.") :] in TRANSPOSED
        out[release_key(key)] = value.t().contiguous() if transposed else value
    return out


def state_problems(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], unknown: Sequence[str] = ()
) -> list[str]:
    """What keeps ``state`` from loading into a model whose state is ``expected`` (both under the names of the file
    ``state`` was read from): keys ``unknown`` to the model, missing keys and shape mismatches (``key (shape in the
    file) != (shape the model needs)``), each kind one item."""
    if state and all(tensor.numel() == 0 for tensor in state.values()):
        # What DeepSpeed ZeRO-3 saves without gathering the parameters: every shape would be listed as wrong.
        return ["every tensor in it is empty (saved under ZeRO-3 without gathering the weights; rebuild them with "
                "the zero_to_fp32.py script DeepSpeed writes beside its checkpoint)"]
    missing = sorted(set(expected) - set(state))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
             for k in sorted(state) if k in expected and state[k].shape != expected[k].shape]
    problems = []
    if unknown:
        problems.append(f"unknown keys {_first_of(sorted(unknown))}")
    if missing:
        problems.append(f"missing keys {_first_of(missing)}")
    if wrong:
        problems.append(f"shape mismatches {_first_of(wrong)}")
    return problems


def _first_of(items: list[str], shown: int = 10) -> str:
    """``items`` as a list, cut after ``shown`` with the count of the rest (a 7B model has hundreds of keys)."""
    rest = len(items) - shown
    return str(items[:shown]) + (f" and {rest} more" if rest > 0 else "")


def from_release_state(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """Release state -> our names, checked against ``expected`` (our model's state): one error for all problems,
    naming ``source`` (where ``state`` was read) and every key and shape as the release stores it."""
    expected_release = to_release_state(expected)  # names and shapes as the release stores them (proj transposed)
    unknown = [k for k in state if k not in expected_release]
    known = {k: v for k, v in state.items() if k in expected_release}
    problems = state_problems(known, expected_release, unknown)
    if problems:
        raise ConversionError(f"{source}: release checkpoint does not match the model: " + "; ".join(problems))
    reverse = {release_key(key): key for key in expected}
    out = {}
    for key, value in state.items():
        ours = reverse[key]
        transposed = ours.startswith("resampler.") and ours[len("resampler.") :] in TRANSPOSED
        out[ours] = value.t().contiguous() if transposed else value
    return out
