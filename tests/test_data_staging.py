"""A folder staged under a hidden name beside its target: made with the umask's mode, and nothing of it left
behind, whether the block put it in place, kept the existing target, or failed."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from zombies import zombie

from sicog.data.jsonl import atomic_file
from sicog.data.staging import staged_folder, staging_path


def test_a_folder_renamed_into_place_is_complete_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out"  # its parent is made too
    with staged_folder(target) as staging:
        assert staging.is_dir() and not target.exists()
        (staging / "a.txt").write_text("a")
        os.replace(staging, target)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out"]
    assert (target / "a.txt").read_text() == "a"


def test_what_the_block_leaves_is_removed_after_success_or_failure(tmp_path: Path) -> None:
    with staged_folder(tmp_path / "out") as staging:  # kept the existing target: the staged copy is dropped
        (staging / "a.txt").write_text("a")
    assert not staging.exists()
    with pytest.raises(KeyboardInterrupt), staged_folder(tmp_path / "out") as staging:
        (staging / "half").mkdir()
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_leftover_of_the_same_name_is_removed_first(tmp_path: Path) -> None:
    """A killed earlier process that had this pid left it: its files must not end up in the new folder."""
    staging = staging_path(tmp_path / "out", "building")
    (staging / "old").mkdir(parents=True)
    with staged_folder(tmp_path / "out"):
        assert list(staging.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_the_staging_folder_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """The folder is renamed into place as it is: its mode becomes the target's."""
    previous = os.umask(umask)
    try:
        with staged_folder(tmp_path / "out") as staging:
            assert stat.S_IMODE(staging.stat().st_mode) == mode
    finally:
        os.umask(previous)


def test_stale_folders_of_dead_processes_go_and_a_folder_that_cannot_be_listed_is_left(tmp_path: Path,
                                                                                      monkeypatch) -> None:
    import subprocess
    import sys

    from sicog.data.staging import remove_stale_staging

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    target = tmp_path / "out"
    dead = tmp_path / f".out.converting-{socket.gethostname()}-{finished.pid}"
    mine = staging_path(target, "converting")
    for folder in (dead, mine):
        folder.mkdir()
    original = Path.iterdir

    def drop_box(path: Path):
        if path == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return original(path)

    monkeypatch.setattr(Path, "iterdir", drop_box)
    remove_stale_staging(tmp_path, "out")  # a folder that may be written to but not read: nothing found, no error
    assert dead.is_dir()
    monkeypatch.setattr(Path, "iterdir", original)
    remove_stale_staging(tmp_path, "out")
    assert not dead.exists() and mine.is_dir()  # this process runs: its folder stays


def test_the_staging_folder_of_a_writer_that_exited_unreaped_goes(tmp_path: Path) -> None:
    """A killed conversion's staging folder (a whole checkpoint) stayed while its process was a zombie, and a rerun
    into the same folder refused before anything removed it."""
    from sicog.data.staging import remove_stale_staging

    with zombie() as pid:
        left = tmp_path / f".out.converting-{socket.gethostname()}-{pid}"
        left.mkdir()
        remove_stale_staging(tmp_path, "out")
        assert not left.exists()


def test_a_target_whose_name_is_near_the_file_name_limit_is_staged_and_its_stale_folders_found(tmp_path: Path) -> None:
    """A file name has at most 255 bytes: the staging name adds a kind, host and pid, so it shortens the target's
    name, and two long names with the same start still get staging folders of their own."""
    import subprocess
    import sys

    from sicog.data.staging import remove_stale_staging

    first, second = (tmp_path / ("é" * 120 + end) for end in ("a", "b"))  # 241 bytes each
    with staged_folder(first) as staging:
        assert staging.parent == tmp_path and staging_path(second, "building") != staging
        (staging / "done").write_text("x")
        staging.rename(first)
    assert (first / "done").read_text() == "x"
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = {target: staging_path(target, "building").name.replace(f"-{os.getpid()}", f"-{finished.pid}")
            for target in (first, second)}
    for name in dead.values():
        (tmp_path / name).mkdir()
    remove_stale_staging(tmp_path, first.name)
    assert not (tmp_path / dead[first]).exists() and (tmp_path / dead[second]).is_dir()


def test_a_file_a_killed_writer_left_goes_with_the_next_write_and_a_live_writers_stays(tmp_path: Path) -> None:
    """atomic_file: each copy a killed writer left is as large as the file; nothing removed it."""
    target = tmp_path / "out.jsonl"
    killed = subprocess.run([sys.executable, "-c", "import os, signal\nfrom sicog.data.jsonl import atomic_file\n"
                             f"with atomic_file({str(target)!r}) as handle:\n"
                             "    handle.write('half')\n    handle.flush()\n    os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.returncode == -9
    [left] = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(f".out.jsonl.writing-{socket.gethostname()}-") and left.endswith(".tmp")
    with atomic_file(target) as outer:
        outer.write("outer")
        with atomic_file(target) as inner:  # this live process's own copy in the making stays
            inner.write("inner")
        assert len(list(tmp_path.glob(".out.jsonl.*.tmp"))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"] and target.read_text() == "outer"
