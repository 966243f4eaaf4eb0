"""Named crash points: how the kill tests stop a run at an exact place of its save path.

A run with ``SICOG_CRASH_AT=NAME`` kills itself with SIGKILL (no cleanup, no ``finally``, like a lost
node or the OOM killer) the first time it reaches ``crash_point(NAME)``; ``NAME:N`` waits for the N-th
time. Without the variable a crash point does nothing. The points are listed where they are used:
``checkpoint-weights``, ``checkpoint-optimizer``, ``checkpoint-trainer-state``, ``checkpoint-unmarked``
(sicog/train/trainer.py), ``train-results`` (sicog/train/run.py), ``merge-output-written``, ``merge-written``
(sicog/data/sharding.py), ``curate-written`` (sicog/curate/pipeline.py).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_ENV = "SICOG_CRASH_AT"
_reached: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL when ``SICOG_CRASH_AT`` names this point (and its count is reached)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _reached[name] += 1
    if _reached[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
