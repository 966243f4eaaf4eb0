"""Every command line a cycle config plans, parsed by its own command's parser when a run reads the config
(:func:`load_checked`).

The settings passed on by name (``train``, ``model``, ``generate``, ``curate``) become flags of commands that
may run hours into a cycle; their values are checked here by the parser that will read them (argparse's types
and choices, HfArgumentParser's for `sicog train`), so a bad value fails before anything runs and the check
can never disagree with the command. A refused command line is traced back to the setting whose flags make
it refused, and reported as that config key.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import io
from pathlib import Path

from sicog.cycle.config import ConfigError, CycleConfig, config_path, load_config
from sicog.cycle.engine import Arg, Input, Joined, Out, Ref, Step

# The config keys whose settings become flags by name.
PASSED_ON = ("train", "model", "generate", "curate")


@functools.cache
def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser ``sicog <command>`` reads its flags with (as :func:`sicog.cli.main` builds it), or, for a module
    a step runs as a program (``sicog.curate.embed_file``), that module's ``build_parser()``."""
    from sicog.cli import COMMANDS

    if command.startswith("sicog."):
        return importlib.import_module(command).build_parser()
    if command == "train":  # `sicog train` parses its dataclasses itself
        from sicog.train.cli import build_parser

        return build_parser()
    module_name, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"sicog {command}", description=help_text)
    importlib.import_module(module_name).add_arguments(parser)
    return parser


def parse_problem(argv: list[str]) -> str | None:
    """What the command's parser says about ``argv`` (``[command, flags...]``), or None when it takes it."""
    messages = io.StringIO()
    try:
        with contextlib.redirect_stderr(messages), contextlib.redirect_stdout(io.StringIO()):
            command_parser(argv[0]).parse_args(argv[1:])
    except SystemExit:
        last = (messages.getvalue().strip().splitlines() or ["refused"])[-1]
        return last.split(": error: ", 1)[-1]
    return None


def _text(arg: Arg) -> str:
    """An argument as a path-like placeholder: the parsers check forms, never whether files exist."""
    if isinstance(arg, Joined):
        return arg.separator.join(_text(a) for a in arg.parts)
    if isinstance(arg, Input):
        return arg.path
    if isinstance(arg, Ref):
        return str(Path(arg.step) / arg.path)
    if isinstance(arg, Out):
        return str(Path("out") / arg.path)
    return arg


def _commands(config: CycleConfig, dpo: bool) -> dict[str, list[str]]:
    """Every step of seed 0's plan (round 1; with ``dpo``, arm F) as its ``sicog`` argv, by step name; a step run as
    a program (``... -m sicog.curate.embed_file``) as its module and arguments."""
    from sicog.cycle.plan import plan_seed
    from sicog.cycle.world import make_world

    # The toy world's paths only (nothing is built): placeholders are enough to parse.
    world = make_world(config, Path("world-not-built"), build=False)
    steps: dict[str, Step] = plan_seed(config, world, 0, dpo=dpo).plan.steps
    return {name: [*step.program[-1:], *(_text(arg) for arg in step.argv)] for name, step in steps.items()}


def command_problems(config: CycleConfig, dpo: bool = False) -> list[str]:
    """One line per setting passed on by name whose value a planned command's parser refuses (``key
    'generate': setting 'compile': unrecognized arguments: maybe``); a refusal no such setting explains is
    named by its step. Empty when every planned command line parses."""
    refused = {name: problem for name, argv in _commands(config, dpo).items() if (problem := parse_problem(argv))}
    if not refused:
        return []
    bare = dataclasses.replace(config, **{key: {} for key in PASSED_ON})
    # Refused without any setting passed on: the cycle's own flags (named by step below), no setting's doing.
    unexplained = {name for name, argv in _commands(bare, dpo).items() if name in refused and parse_problem(argv)}
    problems, explained = [], set()
    for key in PASSED_ON:
        for setting, value in getattr(config, key).items():
            alone = _commands(dataclasses.replace(bare, **{key: {setting: value}}), dpo)
            failing = [name for name in refused if name not in unexplained and parse_problem(alone[name])]
            if failing:
                problem, command = parse_problem(alone[failing[0]]), alone[failing[0]][0]
                reader = f"python -m {command}" if command.startswith("sicog.") else f"sicog {command}"
                problems.append(f"key {key!r}: setting {setting!r}: {problem} (as `{reader}` reads it)")
            explained.update(failing)
    return problems + [f"step {name!r}: {problem}" for name, problem in refused.items() if name not in explained]


def load_checked(spec: str, dpo: bool = False) -> CycleConfig:
    """:func:`~sicog.cycle.config.load_config`, then :func:`command_problems`: what a run loads, so that no bad
    value is found hours into it. Raises :class:`~sicog.cycle.config.ConfigError`, one line per problem, each
    naming the file."""
    config = load_config(spec, dpo)
    try:
        problems = command_problems(config, dpo)
    except ValueError as err:  # a plan that cannot be made (a real config's data lacking a dataset)
        problems = [str(err).removeprefix("cycle config: ")]
    if problems:
        raise ConfigError("\n".join(f"{config_path(spec)}: {problem}" for problem in problems))
    return config
