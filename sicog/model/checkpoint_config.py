"""A SICOG checkpoint's ``config.json``, read and checked before transformers is given the folder."""

from __future__ import annotations

import copy
import inspect
import json
import os
import types
import typing
from pathlib import Path

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

from sicog.model.configuration import SicogConfig
from sicog.model.release_format import ConversionError, first_line, read_json_object

# model_type of a checkpoint in the published LLaVA format (sicog.convert.release reads and writes it).
RELEASE_MODEL_TYPE = "llava_qwen"

# How messages name the JSON value a Python type stands for: one of them, several of them.
_JSON_NAMES = {
    bool: ("true or false", "true/false values"),
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
}


def read_checkpoint_config(checkpoint: str | os.PathLike) -> dict:
    """The fields of ``checkpoint/config.json``, a SICOG checkpoint's; :class:`ConversionError` (a ``ValueError``),
    one line naming the folder or file, when there is no such file, it holds no JSON object, its ``model_type``
    is not SICOG's, a field has the wrong JSON type (``field 'vision_config': expected an object or null, got 5``) or
    the settings do not work together. An ``OSError`` reading it (no permission) is left to the caller.

    transformers reads any other model's config (a plain Qwen2 or CLIP folder, a published ``llava_qwen``
    checkpoint) into SicogConfig's defaults with only a warning: a 7B model that is not there. A field of the wrong
    type fails deep inside it ("'int' object has no attribute 'get'") without naming the field or the file.
    """
    if Path(checkpoint).is_file():
        raise ConversionError(f"{checkpoint} is a file; give the checkpoint folder that holds it")
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
    problem = _type_problem(fields, SicogConfig) or _sub_config_problem(fields)
    if problem:
        raise ConversionError(f"{path}: {problem}")
    try:
        # The class's own checks (sizes, choices, the sub-configs' validators), on a copy: the sub-configs fill in
        # their defaults in place.
        SicogConfig.from_dict(copy.deepcopy(fields))
    except StrictDataclassError as error:
        # The validators' message spans several lines around its cause, which alone says what is wrong.
        raise ConversionError(f"{path}: {first_line(error.__cause__ or error)}") from None
    except (ValueError, TypeError) as error:
        raise ConversionError(f"{path}: {first_line(error)}") from None
    return fields


def _type_problem(fields: dict, config_class: type[PreTrainedConfig], prefix: str = "") -> str | None:
    """What is wrong with the first of ``fields`` whose JSON type does not fit ``config_class``'s annotation of it;
    None when all fit. Only the fields the class itself declares are checked (those of PreTrainedConfig, which
    SICOG does not use, are left to transformers)."""
    # SicogConfig's annotations are strings (postponed evaluation), which its strict dataclass never checks.
    for name, annotation in inspect.get_annotations(config_class, eval_str=True).items():
        if name in fields and not _fits(fields[name], annotation):
            return f"field '{prefix}{name}': expected {_describe(annotation)}, got {json.dumps(fields[name])}"
    return None


def _sub_config_problem(fields: dict) -> str | None:
    """What is wrong with a field of the vision or language sub-config (an object of its own model type's config
    class), as :func:`_type_problem` says it; None when nothing is."""
    for name, spec in SicogConfig.sub_configs_defaults.items():
        sub_fields = fields.get(name)
        if not isinstance(sub_fields, dict):
            continue  # null: the defaults
        model_type = sub_fields.get("model_type", spec.model_type)
        if not isinstance(model_type, str):
            return f"field '{name}.model_type': expected a string, got {json.dumps(model_type)}"
        try:
            config_class = spec.get_config_class(model_type)
        except ValueError:  # its message lists every model type transformers knows
            return f"field '{name}.model_type': unknown model type {json.dumps(model_type)}"
        problem = _type_problem(sub_fields, config_class, prefix=f"{name}.")
        if problem:
            return problem
    return None


def _fits(value: object, annotation: object) -> bool:
    """Whether a JSON ``value`` is of the annotated type (a JSON list for a list or tuple, an object for a dict or
    config; an integer is a number, ``true`` is no integer)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(item, args[0]) for item in value)
    if _is_object(annotation):
        return isinstance(value, dict)
    if annotation in (int, float):
        return isinstance(value, int if annotation is int else (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True  # a type JSON cannot hold is left to the config class


def _describe(annotation: object) -> str:
    """The JSON value(s) ``annotation`` stands for, as a message says it: ``an integer or null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arg) for arg in args))  # dict and a config are both "an object"
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(arg) for arg in args)
    if origin in (list, tuple) or annotation in (list, tuple):
        if not args:
            return "a list"
        count = f"{len(args)} " if origin is tuple and args[-1] is not Ellipsis else ""
        return f"a list of {count}{_JSON_NAMES.get(args[0], ('', 'values'))[1]}"
    if _is_object(annotation):
        return "an object"
    return _JSON_NAMES.get(annotation, (getattr(annotation, "__name__", str(annotation)),))[0]


def _is_object(annotation: object) -> bool:
    """Whether ``annotation`` is read from a JSON object: a dict, a TypedDict, or a config class."""
    if typing.get_origin(annotation) is dict or annotation is dict or typing.is_typeddict(annotation):
        return True
    return isinstance(annotation, type) and issubclass(annotation, PreTrainedConfig)
