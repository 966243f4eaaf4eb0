"""Ctrl-C: one line and exit status 130, not a traceback through whatever was running; a rerun finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def as_in_a_terminal() -> None:
    """Ctrl-C's default action in the child, as an interactive shell gives it: tests run in the background (a
    shell's `&`, as CI may start them) ignore SIGINT, and a child inheriting that installs no KeyboardInterrupt
    handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# What a shell reports as status 130 (128 + SIGINT): an exit with 130, or death by SIGINT (seen once, under load:
# the one line printed, then the interpreter ended by SIGINT on its way out).
STATUS_130 = (130, -signal.SIGINT)


def interrupted(argv: list[str], started: str) -> tuple[int, str]:
    """Run ``python -m sicog argv`` in a process group of its own and send the group SIGINT, as a terminal's Ctrl-C
    does, once ``started`` shows in its stderr; its exit status and whole stderr."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sicog", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=as_in_a_terminal)
    err, deadline = b"", time.monotonic() + 300
    while started.encode() not in err:
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk and time.monotonic() < deadline, f"ended before {started!r} showed: {err.decode()[-2000:]}"
        err += chunk
    os.killpg(process.pid, signal.SIGINT)
    err += process.stderr.read()
    return process.wait(timeout=120), err.decode()


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "world"
    code, err = interrupted(["toy", "build", "--out", str(out), "--size", "demo"], started="toy ")
    assert code in STATUS_130 and "Traceback" not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "sicog: interrupted; run the same command again to resume"
    rerun = subprocess.run([sys.executable, "-m", "sicog", "toy", "build", "--out", str(out), "--size", "demo"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


ENGINE = """
import sys
from pathlib import Path

from sicog.cycle.engine import Engine, Out, Plan, Step

plan = Plan([Step("quick", ("toy", "synonyms", "--output", Out("synonyms.json"))),
             Step("slow", ("toy", "build", "--out", Out("world"), "--size", "demo"))])
try:
    Engine(Path(sys.argv[1]), jobs=2).run(plan)
except KeyboardInterrupt:
    print("run interrupted", file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.slow
def test_ctrl_c_stops_a_cycles_steps_without_a_traceback_from_its_workers(tmp_path):
    """The cycle's worker processes get the terminal's Ctrl-C too: an idle one (here the one that ran the quick
    step) printed a traceback of its own, and the step a busy one runs must stop (its log says where), not run to
    its end."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", ENGINE, str(tmp_path / "run")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=as_in_a_terminal)
    log, deadline = tmp_path / "run" / "slow" / "log.txt", time.monotonic() + 300
    while not ((tmp_path / "run" / "quick" / "synonyms.json").exists()
               and "toy align" in (log.read_text() if log.exists() else "")):  # one worker idle, one busy
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) in STATUS_130 and "Traceback" not in err, err[-3000:]
    assert "KeyboardInterrupt" in log.read_text() and not (tmp_path / "run" / "slow" / "world").exists()


@pytest.mark.slow
def test_a_cycle_started_ignoring_ctrl_c_finishes_its_steps(tmp_path):
    """A script's `sicog cycle ... &` starts with SIGINT ignored: its steps must ignore it too, not fail."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", ENGINE, str(tmp_path / "run")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log, deadline = tmp_path / "run" / "slow" / "log.txt", time.monotonic() + 300
    while "toy align" not in (log.read_text() if log.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, err[-3000:]
    assert "KeyboardInterrupt" not in log.read_text() and (tmp_path / "run" / "slow" / "world").is_dir()
