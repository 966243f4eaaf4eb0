"""What a VLMEvalKit or lmms-eval run produced for each benchmark, read from the framework's own output files.

Neither framework's exit status says whether its benchmarks ran: VLMEvalKit's ``run.py`` logs a dataset that
fails and goes on to the next, and lmms-eval catches any error of the evaluation, logs it and exits 0. So
``sicog eval-suite`` reads what the run wrote. The layouts are those of the commits docs/evaluation.md names:

- VLMEvalKit keeps one folder per run, ``WORK_DIR/<model>/<eval_id>/`` (``eval_id``: ``T%Y%m%d-%H%M%S``), whose
  ``status.json`` holds ``datasets[<name>]``: ``status`` (pending, infer, eval, done), ``error_message`` when the
  dataset raised, ``skip_reason`` when it was not scored, and ``metrics``, the table its ``evaluate`` returned
  (the ``_acc.csv`` / ``_score.csv`` file) flattened to ``{key: number}``: a row's text cells as ``column=value``
  before the numeric column's name, ``|``-separated (``split=none|Overall``, ``perception``).
- lmms-eval writes ``OUTPUT_PATH/<model>/<%Y%m%d_%H%M%S>_results.json`` once every task is scored, with
  ``results[<task>]`` (and ``groups[<group>]``) holding ``{"<metric>,<filter>": value}``; when the evaluation
  fails it writes no such file.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DONE, FAILED, MISSING = "done", "failed", "missing"
VLMEVALKIT, LMMS_EVAL = "vlmevalkit", "lmms-eval"
STATUS_FILE = "status.json"
RUN_ID = re.compile(r"T\d{8}-\d{6}")  # VLMEvalKit's build_eval_id
RESULTS_FILE = re.compile(r"\d{8}_\d{6}_results\.json")  # lmms-eval's aggregated results (not its submissions)
# The one skip that is what the user asked for: predictions without scores.
INFER_ONLY = "mode_infer"
REASON_LENGTH = 300  # a framework's error message can be a whole traceback; the table keeps one line of it


@dataclass(frozen=True)
class Outcome:
    """One benchmark in one run: ``state`` (done, failed, missing), why when it is not done (or has no scores),
    the numbers the framework recorded for it and the file they were read from."""

    task: str
    state: str
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    source: str = ""


@dataclass(frozen=True)
class Headline:
    """Where a benchmark's headline number lies in a framework's metrics: ``metric``, a key in which ``*`` stands for
    any text within one ``|``- or ``,``-separated part (``split=*|Overall``: whatever the split is called), and
    ``scale``, the factor that puts it on the paper's scale (100 for a fraction)."""

    metric: str
    scale: float = 1.0

    def find(self, metrics: Mapping[str, Any]) -> tuple[str, float]:
        """The matching key and its value times ``scale``; ``ValueError`` unless exactly one key matches and
        holds a number."""
        pattern = re.compile("[^|,]*".join(re.escape(part) for part in self.metric.split("*")))
        keys = [key for key in metrics if pattern.fullmatch(key)]
        if len(keys) != 1:
            found = "none" if not keys else ", ".join(keys)
            raise ValueError(f"{len(keys)} metrics match {self.metric!r} (exactly one is needed): {found}")
        value = metrics[keys[0]]
        if not is_number(value):
            raise ValueError(f"metric {keys[0]!r} is {value!r}, not a number")
        return keys[0], value * self.scale


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool (JSON's true is no score)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def vlmevalkit_work_dir(work_dir: str | os.PathLike) -> Path:
    """Where VLMEvalKit's run.py writes: ``$MMEVAL_ROOT`` when that is set (run.py then ignores ``--work-dir``),
    else ``work_dir``."""
    return Path(os.environ["MMEVAL_ROOT"] if "MMEVAL_ROOT" in os.environ else work_dir)


def result_files(framework: str, output_dir: str | os.PathLike, model: str) -> set[Path]:
    """The result files of every run of ``framework`` in ``output_dir``: VLMEvalKit's ``<model>/<eval_id>/status.json``
    (``model``: run.py's ``--model``), lmms-eval's ``<model>/<date>_results.json``. Listed before and after a run,
    the difference is that run's."""
    if framework == VLMEVALKIT:
        root = vlmevalkit_work_dir(output_dir) / model
        runs = root.iterdir() if root.is_dir() else ()
        return {run / STATUS_FILE for run in runs if RUN_ID.fullmatch(run.name) and (run / STATUS_FILE).is_file()}
    if framework == LMMS_EVAL:
        return {path for path in Path(output_dir).glob("*/*_results.json") if RESULTS_FILE.fullmatch(path.name)}
    raise ValueError(f"unknown framework {framework!r}; choose from {VLMEVALKIT}, {LMMS_EVAL}")


def read_outcomes(framework: str, tasks: Sequence[str], files: Iterable[Path]) -> dict[str, Outcome]:
    """Each task's :class:`Outcome` in ``files`` (a run's :func:`result_files`; where several hold a task, the
    newest, by name, counts). A task that no file names is missing; an unreadable file counts as absent."""
    files = sorted(files, key=str)
    found: dict[str, Outcome] = {}
    read = []
    for path in files:
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a run killed while writing; its tasks stay missing
        if not isinstance(loaded, dict):
            continue
        read.append(path)
        entries = _entries(framework, loaded)
        for task in tasks:
            if isinstance(entries.get(task), dict):
                found[task] = _outcome(framework, task, entries[task], path)
    if read:
        absent = f"not in {', '.join(str(p) for p in read)}"
    elif framework == VLMEVALKIT:
        absent = f"the run wrote no <work dir>/<model>/<eval_id>/{STATUS_FILE} (its log names the error)"
    else:
        absent = "the run wrote no <output dir>/<model>/<date>_results.json (its log names the error)"
    return {task: found.get(task, Outcome(task, MISSING, absent)) for task in tasks}


def _entries(framework: str, loaded: dict) -> dict:
    """Task name -> its record in one result file."""
    if framework == VLMEVALKIT:
        datasets = loaded.get("datasets")
        return datasets if isinstance(datasets, dict) else {}
    entries = {}
    for section in ("groups", "results"):  # a task's own line wins over a group of the same name
        if isinstance(loaded.get(section), dict):
            entries.update(loaded[section])
    return entries


def _outcome(framework: str, task: str, entry: dict, path: Path) -> Outcome:
    """The state of one task from its record in a result file."""
    source = str(path)
    if framework == LMMS_EVAL:
        # lmms-eval writes a task only once it is scored; its numbers are the "<metric>,<filter>" keys.
        return Outcome(task, DONE, metrics={k: v for k, v in entry.items() if "," in k}, source=source)
    metrics = entry.get("metrics") if isinstance(entry.get("metrics"), dict) else {}
    if "error_message" in entry:  # run.py caught an exception (its message may be empty, e.g. NotImplementedError)
        message = " ".join(str(entry["error_message"]).split())[:REASON_LENGTH] or "an error without a message"
        return Outcome(task, FAILED, f"VLMEvalKit: {message}", metrics, source)
    skip = entry.get("skip_reason")
    if skip == INFER_ONLY:
        return Outcome(task, DONE, "predictions only (--mode infer)", metrics, source)
    if skip:
        return Outcome(task, FAILED, f"not scored: {skip}", metrics, source)
    if entry.get("status") != "done":
        return Outcome(task, FAILED, f"the run ended during its {entry.get('status')!r} stage", metrics, source)
    return Outcome(task, DONE, metrics=metrics, source=source)
