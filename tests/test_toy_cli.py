"""`sicog toy`: an output that cannot be written is one error line naming it (exit 2), never a traceback."""

from __future__ import annotations

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
    "synonyms under a file": ("synonyms", "--output {file}/x.json", "{file}/x.json: cannot be made ({file} is a file)"),
    "embed into a folder": ("embed", "captions --texts {texts} --output {folder}", "{folder}: is a folder, not a file"),
    "embed under a file": ("embed", "captions --texts {texts} --output {file}/x.npy",
                           "{file}/x.npy: cannot be made ({file} is a file)"),
    "references under a file": ("references", "--world {world} --output {file}/r.jsonl",
                                "{file}/r.jsonl: cannot be made ({file} is a file)"),
    "parts into a file": ("parts", "--world {world} --out {file}", "{file}: is a file, not a folder"),
    "parts under a file": ("parts", "--world {world} --out {file}/p", "{file}/p: cannot be made ({file} is a file)"),
    "build under a file": ("build", "--size tiny --out {file}/w", "{file}/w: cannot be made ({file} is a file)"),
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
