"""Argument types and checks shared by the command-line parsers."""

from __future__ import annotations

import argparse
import math


def path_text(text: str) -> str:
    """A path that is not empty (argparse type): "" is what ``--out "$DIR"`` gives with DIR unset, and would
    resolve to the working folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (an unset variable?)")
    return text


def positive_int(text: str) -> int:
    """An ``int`` of at least 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An ``int`` of at least 0 (argparse type)."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite ``float`` greater than 0 (argparse type)."""
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def finite_float(text: str) -> float:
    """A finite ``float`` (argparse type): ``nan`` would pass every range check and silently change a run."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def fraction(text: str) -> float:
    """A ``float`` in (0, 1] (argparse type), e.g. a nucleus sampling mass."""
    value = finite_float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def at_least_one_float(text: str) -> float:
    """A ``float`` of at least 1, ``inf`` (no limit) included (argparse type), e.g. a ratio of a longer side to a
    shorter one."""
    value = float(text)
    if not value >= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite ``float`` of 0 or more (argparse type), e.g. a temperature where 0 means greedy."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def os_error_text(err: OSError) -> str:
    """``PATH: reason`` for an ``OSError`` (``Permission denied``, ``Not a directory``, ...): one line naming the
    file, without Python's ``[Errno N]``."""
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror or err}"


def option_flags(parser: argparse.ArgumentParser) -> dict[str, tuple[str | None, str | None] | None]:
    """Each option of ``parser`` by its name (``dest``): for a switch, the flag that turns it on and the one that
    turns it off (None where only its default stands for that: ``--x`` of store_true has no off flag, and
    ``--no-x`` of store_false no on flag); None for an option that takes a value."""
    flags: dict[str, tuple[str | None, str | None] | None] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            on = next(flag for flag in action.option_strings if not flag.startswith("--no-"))
            flags[action.dest] = (on, next(flag for flag in action.option_strings if flag.startswith("--no-")))
        elif action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
            flag = action.option_strings[-1]
            flags[action.dest] = (flag, None) if action.const else (None, flag)
        else:
            flags[action.dest] = None
    return flags
