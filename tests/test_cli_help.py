"""`sicog <command> --help` answers without importing torch (heavy imports wait until a command runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sicog.cli import COMMANDS

# `sicog train`'s flags are transformers' TrainingArguments fields: building its parser imports
# transformers.training_args, which imports torch.
NEEDS_TORCH_FOR_HELP = {"train"}

PROBE = """
import sys
from sicog.cli import main
try:
    main([sys.argv[1], "--help"])
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print(sorted(m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules))
"""


@pytest.mark.parametrize("command", sorted(set(COMMANDS) - NEEDS_TORCH_FOR_HELP))
def test_help_imports_no_torch(command):
    result = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage: sicog " + command in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
