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
