"""`sicog curate` killed while writing its outputs finishes on one rerun with the uninterrupted outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_curate_pipeline import CONTRADICTION, PARAPHRASES, caption_record, write_jsonl

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("scored.jsonl", "curated.jsonl", "pairs.jsonl", "errors.jsonl", "summary.json", "report.md")


def curate(path: Path, out: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SICOG_CRASH_AT"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if crash_at:
        env["SICOG_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "sicog", "curate", "captions", "--input", str(path), "--output-dir",
                           str(out), "--threshold", "0.5"], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_kill_while_writing_outputs_then_rerun_gives_the_uninterrupted_outputs(tmp_path):
    records = [caption_record(f"r{i}", PARAPHRASES[i:] + [CONTRADICTION]) for i in range(3)]
    records.append({"id": "bad", "candidates": "not a list"})
    path = write_jsonl(tmp_path / "gen.jsonl", records)
    reference = curate(path, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    killed = curate(path, out, crash_at="curate-written")
    assert killed.returncode == -9, killed.stderr
    assert (out / "curated.jsonl").exists() and not (out / "summary.json").exists()
    rerun = curate(path, out)
    assert rerun.returncode == 0, rerun.stderr
    for name in OUTPUTS:
        theirs = (tmp_path / "reference" / name).read_text().replace(str(tmp_path / "reference"), "OUT")
        assert (out / name).read_text().replace(str(out), "OUT") == theirs, name
    assert not list(out.glob(".*.tmp"))
