"""Running named steps once: a manifest records each finished step's settings hash, outputs and time.

A step whose hash matches a finished entry is skipped. A step that was interrupted keeps its folder,
so its own resume logic (trainer checkpoints, generation shards, embedding chunks) continues where it
stopped. A step that must run again for other reasons (changed settings, ``--from``) starts from an
empty folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from sicog.data.jsonl import write_json

logger = logging.getLogger(__name__)


def settings_hash(spec: object) -> str:
    """A short stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StepRunner:
    """Runs the cycle's steps in order under ``root``; ``rerun_from`` forces that step and all after it."""

    def __init__(self, root: Path, rerun_from: str | None = None, launcher: list[str] | None = None) -> None:
        self.root = root
        self.manifest_path = root / "manifest.json"
        self.manifest: dict = json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {"steps": {}}
        self.rerun_from = rerun_from
        self.forcing = False
        self.launcher = launcher or []
        self.hashes: dict[str, str] = {}

    def folder(self, name: str) -> Path:
        """The step's own output folder."""
        return self.root / name

    def run(self, name: str, spec: dict, work: Callable[[Path], dict], after: tuple[str, ...] = ()) -> dict:
        """Run ``work(folder)`` unless an identical finished run exists; return the step's outputs."""
        if name == self.rerun_from:
            self.forcing = True
        digest = settings_hash({"spec": spec, "after": [self.hashes[a] for a in after]})
        self.hashes[name] = digest
        entry = self.manifest["steps"].get(name)
        folder = self.folder(name)
        if entry and entry["hash"] == digest and entry["status"] == "done" and not self.forcing:
            logger.info("step %s: done before, skipped", name)
            return entry["outputs"]
        if entry and (entry["hash"] != digest or self.forcing or entry["status"] == "done"):
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        self._record(name, {"hash": digest, "status": "running", "outputs": {}, "seconds": None})
        logger.info("step %s: running", name)
        started = time.perf_counter()
        outputs = work(folder)
        self._record(name, {"hash": digest, "status": "done", "outputs": outputs, "seconds": round(time.perf_counter() - started, 1)})
        return outputs

    def _record(self, name: str, entry: dict) -> None:
        self.manifest["steps"][name] = entry
        write_json(self.manifest_path, self.manifest)

    def seconds(self) -> dict[str, float]:
        """Wall time of every finished step."""
        return {k: v["seconds"] for k, v in self.manifest["steps"].items() if v["status"] == "done"}

    def sicog(self, argv: list[str]) -> None:
        """Run one `sicog` command: in this process, or through the configured launcher (e.g. torchrun)."""
        if self.launcher:
            command = [*self.launcher, "-m", "sicog", *argv]
            logger.info("running %s", " ".join(command))
            subprocess.run(command, check=True)
            return
        from sicog.cli import main

        code = main(argv)
        if code:
            raise RuntimeError(f"sicog {' '.join(argv[:2])} failed with exit code {code}")


def python_launcher() -> list[str]:
    """The current interpreter (a launcher prefix for `-m sicog`)."""
    return [sys.executable]
