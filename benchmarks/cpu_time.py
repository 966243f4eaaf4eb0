"""CPU seconds (user+sys) for the benchmarks, and a stopwatch of wall and CPU seconds of a block of code.

On a shared machine other processes disturb CPU time far less than wall time, so the benchmarks report
both. What counts as the benchmark's CPU time is always named by ``scope``:

- ``"process"``: this process, every thread (``time.process_time``); child processes are not counted.
- ``"children"``: this process's children (``RUSAGE_CHILDREN``) and not the process itself; for a script
  that times ``subprocess.run`` of another interpreter.
- ``"process+children"``: both; for work shared with worker processes (DataLoader workers).

A child's time counts only once it has ended and been waited for (``subprocess.run`` waits; an exhausted
DataLoader iterator joins its workers), and includes its own descendants that it waited for. So a
measurement that counts children must end after they are reaped, and one that starts while a child runs
gets all of that child's time, not the part since the start.

Sibling scripts import it as ``from cpu_time import stopwatch``. Run as ``python benchmarks/bench_x.py``, a
script has its own folder first on ``sys.path``; code that loads a benchmark by file path (importlib) puts
``benchmarks/`` on ``sys.path`` first, as the tests do (tests/test_bench_cpu_time.py).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

Scope = Literal["process", "children", "process+children"]
SCOPES: tuple[str, ...] = get_args(Scope)


def cpu_seconds(scope: Scope) -> float:
    """User+sys CPU seconds used so far by what ``scope`` names (see the module's docstring); only differences
    between two readings of the same scope mean anything."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    seconds = time.process_time() if scope != "children" else 0.0
    if scope != "process":
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        seconds += children.ru_utime + children.ru_stime
    return seconds


@dataclass
class Timing:
    """Wall and CPU seconds of one measured block; NaN until the block has ended."""

    wall_s: float = math.nan
    cpu_s: float = math.nan


@contextmanager
def stopwatch(*, scope: Scope) -> Iterator[Timing]:
    """Time the ``with`` block: the ``Timing`` it yields gets the block's wall seconds (``time.perf_counter``)
    and the CPU seconds of ``scope`` (``cpu_seconds``) when the block ends. Work that runs asynchronously (a
    GPU's) counts in the wall time only if the block waits for it, e.g. ends with ``torch.cuda.synchronize()``.

        with stopwatch(scope="process") as clock:
            work()
        print(clock.wall_s, clock.cpu_s)
    """
    timing = Timing()
    cpu_start = cpu_seconds(scope)
    start = time.perf_counter()
    yield timing
    timing.wall_s = time.perf_counter() - start
    timing.cpu_s = cpu_seconds(scope) - cpu_start
