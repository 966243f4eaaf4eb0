"""The arms of the cycle as one table: what each trains on in stage 1.5 and what the report compares it with.

Adding an arm is one entry: a letter, a name, how its own stage-1.5 data is made from the run's
:class:`ArmSources`, and the arms it is expected to beat (the report checks those comparisons).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sicog.cycle.engine import Arg

TASKS = ("captions", "reasoning")


class ArmSources(Protocol):
    """What an arm's data can be made of (the plan adds the steps that make it on first use)."""

    def world(self, key: str) -> Arg:
        """A dataset of the world (``unlabeled_web``, ``oracle_captions``, ...)."""

    def curated(self, task: str) -> Arg:
        """The curated records of a task (captions or reasoning)."""

    def random(self, task: str) -> Arg:
        """One candidate per record, drawn at random (seeded), of a task."""


@dataclass(frozen=True)
class Arm:
    """One arm: ``data`` is None for the base model (no stage 1.5); ``needs`` are world keys it requires."""

    letter: str
    name: str
    data: Callable[[ArmSources], list[Arg]] | None
    beats: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


ARMS: dict[str, Arm] = {arm.letter: arm for arm in (
    Arm("A", "base model", None),
    Arm("B", "baseline pre-training (short captions + annotated data)", lambda s: [s.world("unlabeled_web")],
        needs=("unlabeled_web",)),
    Arm("C", "self-training without curation (one random candidate)", lambda s: [s.random(t) for t in TASKS]),
    Arm("D", "SICOG (curated self-generated data)", lambda s: [s.curated(t) for t in TASKS], beats=("A", "B", "C")),
    Arm("E", "oracle (ground-truth CoD/CoT for the same data)",
        lambda s: [s.world("oracle_captions"), s.world("oracle_reasoning")],
        needs=("oracle_captions", "oracle_reasoning")),
)}
# Arm F is not a stage-1.5 arm: it continues D's final model with DPO on D's curation pairs (--dpo).
DPO_ARM = Arm("F", "SICOG + DPO on its curation pairs (--dpo)", None)


def arm_name(letter: str) -> str:
    """The name of an arm (a later round's arm, e.g. ``round2_D``, is named after its letter)."""
    letter = letter.split("_")[-1]
    return DPO_ARM.name if letter == DPO_ARM.letter else ARMS[letter].name
