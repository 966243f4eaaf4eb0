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
    records.write_text("".join(json.dumps({"id": f"r{i}", "conversations": []}) + "\n" for i in range(3)))
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
