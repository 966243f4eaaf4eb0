"""One run per output: a second `sicog generate` on the same output stops at once naming the holder; a lock
left by a killed run is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from zombies import zombie

from sicog.data.jsonl import load_records, write_jsonl
from sicog.data.lock import OutputLocked, lock_path, output_lock
from sicog.model.builders import save_pretrained

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    model, processor = tiny_model_factory(seed=4)
    save_pretrained(model, processor, root / "model")
    (root / "images").mkdir()
    records = []
    for i in range(4):
        Image.new("RGB", (32, 32 + 8 * i), (60 * i, 80, 200)).save(root / "images" / f"{i}.png")
        records.append({"id": f"q{i}", "image": f"{i}.png", "question": f"What is shape {i}?"})
    write_jsonl(root / "questions.jsonl", records)
    return root


def command(root: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "sicog", "generate", "reasoning", "--model", str(root / "model"), "--data",
            str(root / "questions.jsonl"), "--image-folder", str(root / "images"), "--output", str(output),
            "--num-candidates", "2", "--max-new-tokens", "6", "--batch-size", "2", "--no-progress"]


def env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SICOG_CRASH_AT")},
            "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def start_and_freeze(root: Path, output: Path) -> subprocess.Popen:
    """Start a run and stop it (SIGSTOP) as soon as it holds the output's lock."""
    first = subprocess.Popen(command(root, output), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (lock_path(output).exists() and f"{first.pid}\n" in lock_path(output).read_text()):
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    first.send_signal(signal.SIGSTOP)
    return first


@pytest.mark.slow
def test_second_run_on_one_output_stops_at_once_and_a_stale_lock_is_taken_over(setup, tmp_path):
    output = tmp_path / "gen.jsonl"
    first = start_and_freeze(setup, output)
    try:
        second = subprocess.run(command(setup, output), env=env(), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    message = second.stderr.strip().splitlines()
    assert len(message) == 1 and f"pid {first.pid} on host" in message[0] and "in use by another run" in message[0]
    assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    assert sorted(r["id"] for r in load_records(output)) == ["q0", "q1", "q2", "q3"]
    assert not lock_path(output).exists()

    killed = start_and_freeze(setup, tmp_path / "other.jsonl")
    killed.kill()  # SIGKILL: the lock file stays, naming a dead process
    killed.wait()
    assert lock_path(tmp_path / "other.jsonl").exists()
    rerun = subprocess.run(command(setup, tmp_path / "other.jsonl"), env=env(), capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert load_records(tmp_path / "other.jsonl") == load_records(output)


def test_a_folder_lock_is_exclusive_and_released(tmp_path):
    with output_lock(tmp_path, folder=True):
        assert str(os.getpid()) == lock_path(tmp_path, folder=True).read_text().splitlines()[0]
        with pytest.raises(OutputLocked, match=rf"pid {os.getpid()} on host"):
            with output_lock(tmp_path, folder=True):
                pass
    assert not lock_path(tmp_path, folder=True).exists()
    with output_lock(tmp_path, folder=True, enabled=False):
        assert not lock_path(tmp_path, folder=True).exists()


@pytest.mark.parametrize("command", ["train", "eval", "curate"])
def test_train_eval_and_curate_stop_at_once_on_a_locked_output_folder(command, setup, tmp_path, capsys):
    from sicog.cli import main

    out = tmp_path / "out"
    (setup / "bench.tsv").write_text("index\timage_path\tquestion\tA\tB\tanswer\n1\t0.png\tWhich?\tred\tblue\tA\n")
    (setup / "train.jsonl").write_text(json.dumps({"id": "t1", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\nWhich?"}, {"from": "gpt", "value": "Red."}]}) + "\n")
    (setup / "gen.jsonl").write_text(json.dumps({"id": "c1", "candidates": ["a", "b"], "generation": {}}) + "\n")
    argv = {
        "train": ["train", "--stage", "2", "--model_name_or_path", str(setup / "model"), "--data_path",
                  str(setup / "train.jsonl"), "--image_folder", str(setup / "images"), "--output_dir", str(out),
                  "--max_steps", "1", "--use_cpu", "--report_to", "none"],
        "eval": ["eval", "--model", str(setup / "model"), "--benchmark", str(setup / "bench.tsv"), "--image-root",
                 str(setup / "images"), "--output-dir", str(out), "--no-progress"],
        "curate": ["curate", "captions", "--input", str(setup / "gen.jsonl"), "--output-dir", str(out)],
    }[command]
    with output_lock(out, folder=True):
        assert main(argv) == 2
    message = [line for line in capsys.readouterr().err.splitlines() if "in use by another run" in line]
    assert len(message) == 1 and f"pid {os.getpid()} on host" in message[0]
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written next to the other run's files


def test_an_empty_lock_file_is_taken_over_only_once_it_is_stale(tmp_path):
    """A run killed between creating the lock file and writing its pid leaves it empty: a fresh one may be a
    run taking it now and is respected; one unchanged for the grace period is taken over."""
    from sicog.data.lock import RECORDLESS_GRACE_S

    path = lock_path(tmp_path, folder=True)
    path.touch()
    with pytest.raises(OutputLocked, match="a run that is just taking it"):
        with output_lock(tmp_path, folder=True):
            pass
    old = time.time() - RECORDLESS_GRACE_S - 1
    os.utime(path, (old, old))
    with output_lock(tmp_path, folder=True):
        assert str(os.getpid()) == path.read_text().splitlines()[0]
    assert not path.exists()


def test_a_lock_whose_holder_exited_unreaped_is_taken_over_and_a_live_holders_is_not(tmp_path):
    """filelock counts a zombie as alive: a run killed under a parent that never waits (or orphaned where nothing
    reaps) stopped every rerun of generate, curate, eval, train and annotate as "in use by another run"."""
    output = tmp_path / "gen.jsonl"
    with zombie(holding_lock_of=output) as pid:
        assert lock_path(output).read_text().splitlines()[0] == str(pid)
        with output_lock(output):
            assert lock_path(output).read_text().splitlines()[0] == str(os.getpid())
    live = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom sicog.data.lock import output_lock\n"
                             f"held = output_lock({str(output)!r})\nheld.__enter__()\nprint(flush=True)\n"
                             "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        live.stdout.readline()
        with pytest.raises(OutputLocked, match=f"pid {live.pid} on host"):
            with output_lock(output):
                pass
    finally:
        live.kill()
        live.wait()


def test_a_lock_that_cannot_be_created_is_one_line_naming_the_path_at_fault(tmp_path, monkeypatch):
    """A file where a folder must be, or a folder the run may not write in: the lock names the output and what is in
    the way (the OSError's own message names only the path it tried), so every command that locks says so."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for output, folder, says in (
        (afile / "x.jsonl", False, f"{afile / 'x.jsonl'} cannot be written ({afile} is a file)"),
        (afile / "sub" / "x.jsonl", False, f"{afile / 'sub' / 'x.jsonl'} cannot be written ({afile} is a file)"),
        (afile / "sub", True, f"{afile / 'sub'} cannot be made a folder ({afile} is a file)"),
        (afile, True, f"{afile} is a file, not a folder"),
    ):
        with pytest.raises(OutputLocked) as refused:
            with output_lock(output, folder=folder):
                pass
        assert str(refused.value) == says
    monkeypatch.chdir(tmp_path)  # named as the user spelled it: "afile" was "afile cannot be written (/.../afile ...)"
    for output, says in (("afile", "afile is a file, not a folder"),
                         ("afile/sub", "afile/sub cannot be made a folder (afile is a file)")):
        with pytest.raises(OutputLocked) as refused:
            with output_lock(output, folder=True):
                pass
        assert str(refused.value) == says

    def denied(self):  # what creating the lock file in a folder without write permission raises (root may write)
        raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr("sicog.data.lock._OutputFileLock._acquire", denied)
    output = tmp_path / "ro" / "g.jsonl"
    with pytest.raises(OutputLocked) as refused:
        with output_lock(output):
            pass
    assert str(refused.value) == f"{output} cannot be written ({lock_path(output)}: Permission denied)"


def test_an_environment_whose_filelock_lacks_the_takeover_is_told_what_to_install(tmp_path, monkeypatch):
    """`python -m sicog.curate.embed_file` runs in the encoder's own environment: a filelock there from before the
    soft lock's stale-marker takeover failed with an AttributeError (4.0) or never took over a stale lock (3.x)."""
    import filelock

    monkeypatch.setattr(filelock, "__version__", "3.13.1")
    with pytest.raises(OutputLocked, match=r"^this environment's filelock 3\.13\.1 is older than 4\.3, which the "
                                           r"output locks need: pip install 'filelock>=4\.3'$"):
        with output_lock(tmp_path / "x.npy"):
            pass
    assert not lock_path(tmp_path / "x.npy").exists()


def test_a_lock_of_a_run_on_another_host_is_not_taken_over(tmp_path):
    """On a folder shared between nodes, a pid that runs nowhere here may run there."""
    output = tmp_path / "out.jsonl"
    lock_path(output).write_text("4000000\nother-node\n1\n")
    with pytest.raises(OutputLocked, match="pid 4000000 on host other-node"):
        with output_lock(output):
            pass


def test_a_process_that_cannot_be_checked_counts_as_running(monkeypatch):
    """Another user's process (no permission to signal it), or a system without /proc: its lock is not taken over."""
    from sicog.data import processes

    def denied(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    def no_proc(path, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(os, "kill", denied)
        assert processes.running(1)
    with monkeypatch.context() as patch:
        patch.setattr(Path, "read_text", no_proc)
        assert processes.running(os.getpid())
