"""`sicog train --stage 0|1|1.5|2|dpo ...`: HF TrainingArguments flags plus SICOG's model and data flags."""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import re
import sys
from collections.abc import Sequence

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from sicog.data.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from sicog.data.jsonl import RecordError, read_text
from sicog.data.yaml_file import read_yaml
from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments, UsageError

# TrainingArguments' counts, which transformers types as any int: 0 (or -1 workers) would pass and fail only once the
# model is loaded, in the DataLoader or the step arithmetic. Their flags take these types instead, in the one parser
# that the command line, config files (:func:`read_config`) and `sicog cycle` all go through.
COUNT_TYPES = {
    "per_device_train_batch_size": positive_int,
    "per_device_eval_batch_size": positive_int,
    "gradient_accumulation_steps": positive_int,
    "eval_accumulation_steps": positive_int,
    "dataloader_num_workers": non_negative_int,
    # transformers reads a limit of 0 or less as none: every checkpoint kept, a full disk on a 7B run. Steps below 0
    # (a ratio of the run when under 1) never save or log.
    "save_total_limit": positive_int,
    "save_steps": positive_float,
    "logging_steps": positive_float,
    "eval_steps": positive_float,
    # And this package's sizes, rates and ranks, which would otherwise fail (or, for a negative length or a
    # negative vision learning rate, train wrongly without a word) only once the model is built.
    "model_max_length": positive_int,
    "resampler_num_queries": positive_int,
    "scale_resolution": positive_int,
    "max_slice_nums": positive_int,
    "inference_long_side": positive_int,
    "lora_r": non_negative_int,
    "learning_rate": non_negative_float,
    "vision_tower_lr": non_negative_float,
    # A NaN or infinite DPO weight trained to NaN weights with exit 0; a negative beta towards the rejected answers.
    "dpo_beta": positive_float,
    "dpo_alpha": non_negative_float,
    "dpo_gamma": non_negative_float,
}
# What a value of a flag's type is, in a config file's error message.
EXPECTED = {int: "an integer", positive_int: "an integer", non_negative_int: "an integer", float: "a number",
            non_negative_float: "a number", positive_float: "a number", str: "a string",
            string_to_bool: "true or false"}


def build_parser() -> HfArgumentParser:
    """The parser of ``sicog train``'s flags (also what ``sicog cycle`` checks its planned training lines with)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, SicogTrainingArguments), prog="sicog train",
                              description=__doc__)
    for action in parser._actions:
        if action.dest in COUNT_TYPES:
            action.type = COUNT_TYPES[action.dest]
    return parser


def read_config(parser: HfArgumentParser, config: str) -> tuple:
    """The argument dataclasses from a ``.json`` or ``.yaml`` file of flags (names without the dashes).

    Each value is converted as the command line converts its flag's text: YAML reads ``1e-4`` as a string, which
    the dataclasses would keep and AdamW refuse once the model is loaded. Raises ``ValueError`` (``key 'x':
    expected ...``) for a value the command line would refuse, and for null where the flag has a default; keys
    that name no flag are left to the parser, which lists them.
    """
    if config.endswith(".json"):  # read as YAML files are: a BOM dropped, a repeated key refused
        settings = json.loads(read_text(config), object_pairs_hook=_once_each)
    else:
        settings = read_yaml(config)
    if not isinstance(settings, dict):
        raise ValueError("expected a mapping of flag names to values")
    actions = {action.dest: action for action in parser._actions if action.type is not None}
    typed = {key: _typed(key, value, actions[key]) if key in actions else value for key, value in settings.items()}
    return parser.parse_dict(typed)


def _once_each(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object whose keys are all different: a repeated one would silently keep its last value."""
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {key!r}: given twice (the first would be silently dropped)")
        seen[key] = value
    return seen


def _typed(key: str, value: object, action: argparse.Action) -> object:
    """One config value as its flag's type (see :func:`read_config`)."""
    expected = (f"one of {', '.join(map(str, action.choices))}" if action.choices
                else EXPECTED.get(action.type, f"a {getattr(action.type, '__name__', 'valid')} value"))
    if isinstance(value, list) and action.nargs in ("+", "*"):
        return [_typed(key, item, action) for item in value]
    if value is None:
        if action.default is None and not action.required:
            return None
        raise ValueError(f"key {key!r}: expected {expected}, got null")
    if isinstance(value, (dict, list)):
        if action.type in (str, dict) and not action.choices:  # deepspeed, report_to: TrainingArguments reads them
            return value
        raise ValueError(f"key {key!r}: expected {expected}, got {value!r}")
    try:
        typed = action.type(str(value))
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"key {key!r}: {err}") from None
    except (TypeError, ValueError):
        raise ValueError(f"key {key!r}: expected {expected}, got {value!r}") from None
    if action.choices and typed not in action.choices:
        hint = " (YAML reads an unquoted no, off, yes or on as a boolean: quote it)" if isinstance(value, bool) else ""
        raise ValueError(f"key {key!r}: expected {expected}, got {value!r}{hint}")
    return typed


def main(argv: Sequence[str]) -> int:
    """Parse the flags (or a single .json/.yaml file of them) and run the stage."""
    parser = build_parser()
    argv = list(argv)
    config = argv[0] if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) else None
    try:
        if config:
            model_args, data_args, training_args = read_config(parser, config)
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # A config file that is missing, unparsable, has unknown keys or a value of the wrong type, or settings that
    # TrainingArguments refuses (argparse itself already reports a bad flag in one line with exit 2).
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        if not config:
            where = ""
        elif isinstance(err, RecordError) and err.path == config:  # invalid YAML, or bytes that are not UTF-8
            where = "config "  # its message starts with the file and line already
        else:
            where = f"config {config}: "
        print(f"sicog train: error: {where}{reason}", file=sys.stderr)
        return 2
    except TypeError as err:  # a config file without a required key: the argument dataclass cannot be built
        if not config:
            raise
        names = re.findall(r"'(\w+)'", str(err)) if "missing" in str(err) else []
        reason = f"missing required key(s): {', '.join(names)}" if names else str(err)
        print(f"sicog train: error: config {config}: {reason}", file=sys.stderr)
        return 2
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
        stream=sys.stderr,
    )
    from sicog.data.lock import OutputLocked
    from sicog.train.checkpoints import ForeignCheckpointError, IncompleteCheckpointError
    from sicog.train.datasets import DataProblemsError
    from sicog.train.fast_paths import FastPathError
    from sicog.train.hub import PushError
    from sicog.train.run import train

    try:
        train(model_args, data_args, training_args)
    except (UsageError, DataProblemsError, RecordError, IncompleteCheckpointError, ForeignCheckpointError,
            OutputLocked, FastPathError) as err:
        print(f"sicog train: error: {err}", file=sys.stderr)
        return 2
    except PushError as err:
        print(f"sicog train: error: {err}", file=sys.stderr)
        return 1
    if training_args.world_size > 1:
        # Everything is saved and the process group is closed. Under torchrun with DeepSpeed ZeRO-3 on gloo,
        # interpreter teardown can still abort a rank ("terminate called without an active exception",
        # seen in about one 2-rank CPU run in three), which would fail a finished run; leave at once instead.
        # os._exit skips the exit handlers, where trackers finish their run (wandb writes and uploads its
        # history there: transformers' WandbCallback never calls wandb.finish()), so run them first.
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
