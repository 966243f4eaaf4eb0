"""`sicog train --stage 0|1|1.5|2|dpo ...`: HF TrainingArguments flags plus SICOG's model and data flags."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
from collections.abc import Sequence

import yaml
from transformers import HfArgumentParser

from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments, UsageError


def build_parser() -> HfArgumentParser:
    """The parser of ``sicog train``'s flags (also what ``sicog cycle`` checks its planned training lines with)."""
    return HfArgumentParser((ModelArguments, DataArguments, SicogTrainingArguments), prog="sicog train",
                            description=__doc__)


def main(argv: Sequence[str]) -> int:
    """Parse the flags (or a single .json/.yaml file of them) and run the stage."""
    parser = build_parser()
    argv = list(argv)
    config = argv[0] if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")) else None
    try:
        if config:
            loader = parser.parse_json_file if config.endswith(".json") else parser.parse_yaml_file
            model_args, data_args, training_args = loader(config)
        else:
            model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    # A config file that is missing, unparsable or has unknown keys, or settings that TrainingArguments refuses
    # (argparse itself already reports a bad flag in one line with exit 2).
    except (OSError, ValueError, yaml.YAMLError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())
        print(f"sicog train: error: {config + ': ' if config else ''}{reason}", file=sys.stderr)
        return 2
    except TypeError as err:  # a config file without a required key: the argument dataclass cannot be built
        if not config:
            raise
        names = re.findall(r"'(\w+)'", str(err)) if "missing" in str(err) else []
        reason = f"missing required key(s): {', '.join(names)}" if names else str(err)
        print(f"sicog train: error: {config}: {reason}", file=sys.stderr)
        return 2
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if training_args.process_index == 0 else logging.WARNING,
        stream=sys.stderr,
    )
    from sicog.data.jsonl import RecordError
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
