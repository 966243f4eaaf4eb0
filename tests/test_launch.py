"""`python -m sicog.launch`: torchrun whose failure is one line after the processes' own, with their exit status."""

import subprocess
import sys

import pytest


def launch(script: str) -> subprocess.CompletedProcess:
    """Two local processes running ``bash -c script`` (LOCAL_RANK set by torchrun)."""
    return subprocess.run([sys.executable, "-m", "sicog.launch", "--standalone", "--nproc_per_node", "2", "--no-python",
                           "bash", "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("script", "status"), [
    ('echo "sicog x: error: bad input" >&2; exit 2', 2),  # a usage error on every rank keeps its status
    ("exit $((LOCAL_RANK + 2))", 1),  # ranks that disagree
    ("kill -9 $$", 1),  # killed by a signal
])
def test_a_failed_process_is_one_line_and_its_exit_status(script, status):
    result = launch(script)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("torchrun: ")
    assert "their errors are above" in result.stderr.strip().splitlines()[-1]


def test_processes_that_succeed_exit_0():
    result = launch('echo "rank $LOCAL_RANK"')
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split("\n")[:-1]) == ["rank 0", "rank 1"]
