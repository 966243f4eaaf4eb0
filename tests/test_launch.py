"""`python -m sicog.launch`: torchrun whose failure is one line after the processes' own, with their exit status."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def launch(script: str) -> subprocess.CompletedProcess:
    """Two local processes running ``bash -c script`` (LOCAL_RANK set by torchrun)."""
    return subprocess.run([sys.executable, "-m", "sicog.launch", "--standalone", "--nproc_per_node", "2", "--no-python",
                           "bash", "-c", script], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("script", "status"), [
    ('echo "sicog x: error: bad input" >&2; exit 2', 2),  # a usage error on every rank keeps its status
    ("exit $((LOCAL_RANK + 2))", 1),  # ranks that disagree
    ("kill -9 $$", 1),  # killed by a signal
    # rank 0's usage error (another run holds the output): torchrun kills rank 1, whose signal does not count
    ('if [ "$LOCAL_RANK" = 0 ]; then echo "sicog x: error: in use" >&2; exit 2; fi; sleep 600', 2),
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


def test_a_stopped_launcher_passes_the_signal_on_and_exits_128_plus_it(tmp_path):
    """scancel or a time limit sends SIGTERM: one line and 143, not torchrun's traceback and 1."""
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "sicog.launch", "--standalone", "--nproc_per_node", "2", "--no-python", "bash", "-c",
         f'trap "echo rank $LOCAL_RANK got TERM >&2; exit 143" TERM; touch {ready}-$LOCAL_RANK; '
         "while true; do sleep 0.1; done"],
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # a liveness bound, not a speed
    while not all(Path(f"{ready}-{rank}").exists() for rank in (0, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "rank 0 got TERM" in stderr and "rank 1 got TERM" in stderr and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "torchrun: stopped by SIGTERM, passed on to the processes"
