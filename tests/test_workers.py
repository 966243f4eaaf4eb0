"""Pool workers do not outlive the process that started them (sicog.data.workers)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARENT = '''
import concurrent.futures, multiprocessing, os, sys, time
from sicog.data.workers import exit_with_parent

def task():
    print(os.getpid(), flush=True)
    time.sleep(600)

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=exit_with_parent,
                                                initargs=(os.getpid(),)) as pool:
        pool.submit(task)
        time.sleep(600)
'''


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped by its new parent, does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_a_worker_dies_with_its_killed_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert running(worker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 120  # a liveness bound, not a speed: the kernel signals at once
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(worker)


LAUNCHER = '''
import os, pathlib, signal, sys, time
pid_file = pathlib.Path(sys.argv[1])

def stop(signum, frame):  # a launcher that stops its processes on SIGTERM (as torchrun does) says so
    pid_file.with_suffix(".stopped").write_text(signal.Signals(signum).name)
    sys.exit(1)

signal.signal(signal.SIGTERM, stop)
pid_file.write_text(str(os.getpid()))
time.sleep(600)
'''

WORKER = '''
import sys
from sicog.cycle.engine import _run_step
_run_step(["train"], sys.argv[1], [sys.executable, sys.argv[2], sys.argv[3]])
'''


@pytest.mark.skipif(sys.platform != "linux", reason="the kernel's parent-death signal is Linux's")
def test_a_launched_step_is_stopped_when_its_cycle_worker_is_killed(tmp_path):
    """A cycle step run through a launcher (torchrun) gets SIGTERM, which the launcher passes on to the
    processes it started, when the cycle's worker running the step dies."""
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "worker.py").write_text(WORKER)
    pid_file = tmp_path / "launcher.pid"
    worker = subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "log.txt"),
                               str(tmp_path / "launcher.py"), str(pid_file)])
    deadline = time.monotonic() + 120  # liveness bounds, not speeds
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    launched = int(pid_file.read_text())
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    while running(launched) and time.monotonic() < deadline + 120:
        time.sleep(0.1)
    assert not running(launched)
    assert pid_file.with_suffix(".stopped").read_text() == "SIGTERM"
