"""Outputs get the permissions of the user's umask (atomic writes go through a private temporary file)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, umask, mode):
    records = tmp_path / "curated.jsonl"
    # Two invalid records (for the errors file) and a valid one: a mix of nothing but invalid records exits 1.
    valid = {"id": "ok", "conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]}
    lines = [{"id": f"r{i}", "conversations": []} for i in range(2)] + [valid]
    records.write_text("".join(json.dumps(record) + "\n" for record in lines))
    script = (
        "import sys\n"
        "from sicog.cli import main\n"
        f"code = main(['curate', 'mix', '--inputs', {str(records)!r}, '--output', {str(tmp_path / 'mix.jsonl')!r}])\n"
        "from sicog.data.jsonl import write_json\n"
        f"write_json({str(tmp_path / 'doc.json')!r}, {{'a': 1}})\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: os.umask(umask), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ("mix.jsonl", "mix.errors.jsonl", "doc.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664)])
def test_saved_weights_follow_the_umask(tmp_path, tokenizer, umask, mode):
    """safetensors writes weights private (0600) whatever the umask; a checkpoint on a shared disk must not be."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    script = (
        "from transformers import AutoTokenizer\n"
        "from sicog.model.builders import new_model, save_pretrained, save_projector, tiny_config\n"
        f"tok = AutoTokenizer.from_pretrained({str(tmp_path / 'tokenizer')!r})\n"
        "model, processor = new_model(tiny_config(tok), tok)\n"
        f"save_pretrained(model, processor, {str(tmp_path / 'model')!r})\n"
        f"save_projector(model, {str(tmp_path / 'projector')!r})\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: os.umask(umask), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = [p for folder in ("model", "projector") for p in (tmp_path / folder).iterdir()]
    assert {p.name for p in written} >= {"model.safetensors", "projector.safetensors", "config.json"}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name
