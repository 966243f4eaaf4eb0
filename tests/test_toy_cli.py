"""`sicog toy`: an output that cannot be written is one error line naming it (exit 2), never a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sicog.cli import main  # noqa: E402
from sicog.data.jsonl import write_jsonl  # noqa: E402
from sicog.toy.build import build_world  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "world"
    build_world(out, seed=0, size="tiny")
    return out


# sub-command, its arguments ({world}, {texts}, {folder}: an existing folder, {file}: an existing file), what the
# error line says after the output's name. Each failed with a traceback (IsADirectoryError, NotADirectoryError,
# FileExistsError), `toy parts` after minutes of training.
CASES = {
    "synonyms into a folder": ("synonyms", "--output {folder}", "{folder}: is a folder, not a file"),
    "synonyms under a file": ("synonyms", "--output {file}/x.json",
                              "{file}/x.json: cannot be written ({file} is a file)"),
    "embed into a folder": ("embed", "captions --texts {texts} --output {folder}", "{folder}: is a folder, not a file"),
    "embed under a file": ("embed", "captions --texts {texts} --output {file}/x.npy",
                           "{file}/x.npy: cannot be written ({file} is a file)"),
    "references under a file": ("references", "--world {world} --output {file}/r.jsonl",
                                "{file}/r.jsonl: cannot be written ({file} is a file)"),
    "parts into a file": ("parts", "--world {world} --out {file}", "{file}: is a file, not a folder"),
    "parts under a file": ("parts", "--world {world} --out {file}/p",
                           "{file}/p: cannot be made a folder ({file} is a file)"),
    "build under a file": ("build", "--size tiny --out {file}/w", "{file}/w: cannot be written ({file} is a file)"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_unwritable_output_is_one_line_naming_it(world: Path, tmp_path: Path, capsys, case: str) -> None:
    command, arguments, says = CASES[case]
    names = {"world": world, "texts": tmp_path / "texts.jsonl", "folder": tmp_path / "folder",
             "file": tmp_path / "afile"}
    write_jsonl(names["texts"], [{"id": "a", "text": "A red circle in the top left."}])
    names["folder"].mkdir()
    names["file"].write_text("in the way\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["toy", command, *arguments.format(**names).split()]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"sicog toy {command}: error: {says.format(**names)}\n"
    assert sorted(tmp_path.rglob("*")) == before and names["file"].read_text() == "in the way\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where nothing can be created")
def test_build_names_an_output_the_system_refuses(capsys) -> None:
    assert main(["toy", "build", "--size", "tiny", "--out", "/proc/toy"]) == 2
    line = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after the progress bar it had started
    assert line.startswith("sicog toy build: error: /proc/toy: cannot be written (/proc/.toy.building-")
    assert line.count("\n") == 1


def _fake_cache(root: Path, dir_mode: int, file_mode: int) -> tuple[Path, Path]:
    """Cached parts (vision/, llm/ with a file each, parts.json) whose folders and files have the given modes."""
    from sicog.toy.model import PARTS_RECORD

    parts = []
    for name in ("vision", "llm"):
        (root / name / "sub").mkdir(parents=True)
        for file in (root / name / "config.json", root / name / "sub" / "weights.bin"):
            file.write_text(f"{name}\n")
            file.chmod(file_mode)
        for folder in (root / name / "sub", root / name):
            folder.chmod(dir_mode)
        parts.append(root / name)
    (root / PARTS_RECORD).write_text('{"reading": 0.4}\n')
    (root / PARTS_RECORD).chmod(file_mode)
    root.chmod(dir_mode)
    return parts[0], parts[1]


def _modes(folder: Path) -> set[int]:
    return {path.stat().st_mode & 0o777 for path in (folder, *folder.rglob("*"))}


@pytest.mark.parametrize(("cache_modes", "umask", "expected"), [
    ((0o700, 0o600), 0o022, {0o755, 0o644}),  # a cache built under umask 077 gave private parts to a shared run
    ((0o755, 0o644), 0o077, {0o700, 0o600}),  # and a shared cache gave readable parts to a private one
])
def test_parts_get_the_modes_of_the_current_umask(world: Path, tmp_path: Path, monkeypatch, capsys,
                                                  cache_modes: tuple[int, int], umask: int,
                                                  expected: set[int]) -> None:
    sources = _fake_cache(tmp_path / "cache", *cache_modes)
    monkeypatch.setattr("sicog.toy.pretrain.pretrained_parts", lambda world_dir: sources)
    previous = os.umask(umask)
    try:
        assert main(["toy", "parts", "--world", str(world), "--out", str(tmp_path / "p")]) == 0
    finally:
        os.umask(previous)
    assert _modes(tmp_path / "p") == expected
    assert (tmp_path / "p" / "llm" / "sub" / "weights.bin").read_text() == "llm\n"
    assert (tmp_path / "p" / "parts.json").read_text() == '{"reading": 0.4}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cache", "p"]


@pytest.mark.parametrize("earlier", [False, True])
def test_a_failed_parts_copy_leaves_no_partial_output(world: Path, tmp_path: Path, monkeypatch, capsys,
                                                      earlier: bool) -> None:
    """A copy that stops half way left a --out with the vision part and half the LLM; now the --out is absent,
    or still holds the earlier parts whole."""
    import shutil

    sources = _fake_cache(tmp_path / "cache", 0o755, 0o644)
    monkeypatch.setattr("sicog.toy.pretrain.pretrained_parts", lambda world_dir: sources)
    out = tmp_path / "p"
    if earlier:
        assert main(["toy", "parts", "--world", str(world), "--out", str(out)]) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    copy, calls = shutil.copyfile, []

    def fails_on_the_third(source, target, **kwargs):
        calls.append(source)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(target))
        return copy(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", fails_on_the_third)
    assert main(["toy", "parts", "--world", str(world), "--out", str(out)]) == 2
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == (["cache", "p"] if earlier else ["cache"])


def test_build_into_a_link_writes_the_world_into_its_target(tmp_path: Path, capsys) -> None:
    """Replacing what the target held, the link was renamed aside (.L.replaced-PID) and rmtree refused it: an
    error, the link hidden and a real folder at L."""
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    (target / "old").write_text("an earlier world\n")
    link.symlink_to(target)
    assert main(["toy", "build", "--size", "tiny", "--force", "--out", str(link)]) == 0
    assert link.is_symlink() and link.readlink() == target
    assert (target / "manifest.json").is_file() and not (target / "old").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link", "target"]


def test_references_name_a_caption_image_without_ground_truth(world: Path, tmp_path: Path, capsys) -> None:
    """A KeyError traceback before."""
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    bench = copy / "bench_caption.jsonl"
    lines = bench.read_text().splitlines()
    record = {**json.loads(lines[0]), "id": "stray", "image": "images/none.png"}
    bench.write_text("\n".join([*lines, json.dumps(record)]) + "\n")
    output = tmp_path / "r.jsonl"
    assert main(["toy", "references", "--world", str(copy), "--output", str(output)]) == 2
    assert capsys.readouterr().err == (
        f"sicog toy references: error: {bench}:{len(lines) + 1} id='stray' field 'image': image "
        f"'images/none.png' is not in {copy / 'ground_truth.jsonl'}\n")
    assert not output.exists() and not list(tmp_path.glob(".r.jsonl*"))


def test_references_into_a_json_name_are_one_json_array(world: Path, tmp_path: Path) -> None:
    """As every .json output of the project: the published loader reads .json files with json.load."""
    assert main(["toy", "references", "--world", str(world), "--output", str(tmp_path / "r.json")]) == 0
    assert main(["toy", "references", "--world", str(world), "--output", str(tmp_path / "r.jsonl")]) == 0
    records = json.loads((tmp_path / "r.json").read_text())
    assert records == [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()] and records


@pytest.mark.parametrize("command", [["build", "--size", "tiny", "--out", "", "--force"],
                                     ["parts", "--world", "w", "--out", ""]])
def test_an_empty_output_is_refused_not_taken_for_the_working_folder(command: list[str], tmp_path: Path,
                                                                    monkeypatch, capsys) -> None:
    """`--out "$WORLD"` with WORLD unset: with --force a build replaced what the working folder held."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exited:
        main(["toy", *command])
    assert exited.value.code == 2 and "--out: is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name", ["ground_truth.jsonl", "bench_caption.jsonl", "manifest.json"])
def test_references_refuse_to_write_over_the_worlds_files(world: Path, tmp_path: Path, capsys, name: str) -> None:
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(world, copy)
    kept = (copy / name).read_bytes()
    assert main(["toy", "references", "--world", str(copy), "--output", str(copy / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {copy / name} is the same file as the world's " in err
    assert (copy / name).read_bytes() == kept


def test_embed_refuses_to_write_over_its_texts(tmp_path: Path, capsys) -> None:
    texts = tmp_path / "texts.jsonl"
    write_jsonl(texts, [{"id": "a", "text": "A red circle in the top left."}])
    before = texts.read_bytes()
    assert main(["toy", "embed", "captions", "--texts", str(texts), "--output", str(texts)]) == 2
    assert capsys.readouterr().err == (
        f"sicog toy embed: error: --output {texts} is the same file as --texts {texts}; writing it would replace "
        "the input: choose another --output\n")
    assert texts.read_bytes() == before and sorted(tmp_path.iterdir()) == [texts]


SIGTERM_IN_PROCESS = """
import argparse, os, signal, time
from sicog.toy import cli

def command(args):
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
    finally:
        print("cleaned", flush=True)

cli._COMMANDS["synonyms"] = command
try:
    cli.run(argparse.Namespace(toy_command="synonyms"))
except SystemExit:  # what an in-process caller does, such as the cycle's pool worker
    print("lived on", flush=True)
"""


def test_sigterm_still_ends_the_process_after_the_cleanup_when_the_caller_catches_systemexit() -> None:
    """The cycle runs toy commands inside a pool worker that catches SystemExit: a SIGTERM turned into one would
    leave that worker alive, orphaned, once the cycle's main process died."""
    import signal
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SIGTERM_IN_PROCESS], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["cleaned"] and done.returncode == -signal.SIGTERM
