"""Data paths that name several sources (comma lists and the published train.py's brace patterns), and the one
writer of record files (a `.json` name is a JSON array), whose errors name the user's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sicog.cli import main
from sicog.data.jsonl import RecordError, blocked_reason, iter_records, write_records
from sicog.data.mixture import load_mixture
from sicog.data.sources import iter_input_records, split_data_path


def write(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    return path


def test_brace_patterns_and_comma_lists_expand_in_order() -> None:
    assert split_data_path("/d/{a,b,c}.json") == ["/d/a.json", "/d/b.json", "/d/c.json"]
    assert split_data_path("/d/{a,b}.json, /e/c.jsonl,") == ["/d/a.json", "/d/b.json", "/e/c.jsonl"]
    assert split_data_path("part{1..3}.jsonl") == ["part1.jsonl", "part2.jsonl", "part3.jsonl"]
    assert split_data_path("x/{a,b/{c,d}}.json") == ["x/a.json", "x/b/c.json", "x/b/d.json"]
    assert split_data_path("owner/name:train") == ["owner/name:train"]
    assert split_data_path(r"C:\data\a.json") == [r"C:\data\a.json"]  # a backslash is no escape
    with pytest.raises(RecordError, match="unbalanced braces"):
        split_data_path("/d/{a,b.json")


def test_a_file_whose_name_holds_a_comma_or_braces_is_one_source(tmp_path: Path) -> None:
    """It was split at the comma ("llava: file not found"), though other commands read the file."""
    for name in ("llava,part1.jsonl", "llava{1,2}.jsonl"):
        write(tmp_path / name, ["a"])
        assert split_data_path(tmp_path / name) == [str(tmp_path / name)]
        assert [r["id"] for r, _ in load_mixture(str(tmp_path / name))] == ["a"]


def test_training_reads_every_file_of_a_pattern(tmp_path: Path) -> None:
    write(tmp_path / "a.json", ["a1", "a2"])
    write(tmp_path / "b.json", ["b1"])
    loaded = load_mixture(f"{tmp_path}/{{a,b}}.json")
    assert [(r["id"], s.path, s.line) for r, s in loaded] == [
        ("a1", f"{tmp_path}/a.json", 1), ("a2", f"{tmp_path}/a.json", 2), ("b1", f"{tmp_path}/b.json", 1)]


def test_a_mixture_entry_may_be_a_pattern_sampled_as_one_source(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", ["a1", "a2"])
    write(tmp_path / "b.jsonl", ["b1", "b2"])
    spec = {"datasets": [{"json_path": "{a,b}.jsonl", "sampling_strategy": "first:3"}]}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    assert [r["id"] for r, _ in load_mixture(tmp_path / "mix.yaml")] == ["a1", "a2", "b1"]


@pytest.mark.parametrize(("read", "name", "what"), [
    (lambda path: list(iter_records(path)), "in.jsonl", "file"),
    (lambda path: list(iter_input_records(path)), "in.json", "file"),
    (load_mixture, "in.jsonl", "file"),
    (load_mixture, "mix.yaml", "mixture file"),
], ids=["iter_records", "iter_input_records", "data-path", "mixture"])
def test_a_folder_given_as_an_input_file_is_called_a_folder(tmp_path: Path, read, name, what) -> None:
    """A folder exists: "not found" would send the user looking for it. A missing file is still not found."""
    (tmp_path / name).mkdir()
    with pytest.raises(RecordError) as caught:
        read(tmp_path / name)
    assert str(caught.value) == f"{tmp_path / name}: is a folder, not a {what}"
    with pytest.raises(RecordError) as caught:
        read(tmp_path / "missing" / name)
    assert str(caught.value) == f"{tmp_path / 'missing' / name}: {what} not found"


@pytest.mark.parametrize("command", [
    "curate texts captions --input {folder} --output {out}.jsonl",
    "curate random --input {folder} --output {out}.jsonl",
    "curate mix --inputs {folder} --output {out}.jsonl",
    "toy embed captions --texts {folder} --output {out}.npy",
    "annotate cot --input {folder} --output-dir {out} --no-progress",
], ids=["curate-texts", "curate-random", "curate-mix", "toy-embed", "annotate-cot"])
def test_commands_say_an_input_folder_is_a_folder(tmp_path: Path, capsys, command: str) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    argv = command.format(folder=folder, out=tmp_path / "out").split()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith(f"{folder}: is a folder, not a file\n")


@pytest.mark.parametrize("name", ["out.json", "out.JSON", "out.Json"])
def test_a_json_name_gets_a_json_array(tmp_path: Path, name: str) -> None:
    records = [{"id": "a", "text": "é"}, {"id": "b"}]
    assert write_records(tmp_path / name, iter(records)) == 2
    assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == records
    assert write_records(tmp_path / name, []) == 0 and json.loads((tmp_path / name).read_text()) == []


def test_other_names_get_json_lines(tmp_path: Path) -> None:
    write_records(tmp_path / "out.jsonl", [{"id": "a"}, {"id": "b"}])
    assert (tmp_path / "out.jsonl").read_text() == '{"id": "a"}\n{"id": "b"}\n'
    assert [r["id"] for _, r in iter_records(tmp_path / "out.jsonl")] == ["a", "b"]


def test_an_output_that_cannot_be_written_is_named_not_its_temporary_file(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        write_records(tmp_path / "folder", [{"id": "a"}])
    assert caught.value.filename == str(tmp_path / "folder")
    (tmp_path / "file").write_text("")
    for output in (tmp_path / "file" / "out.jsonl", tmp_path / "file" / "sub" / "out.jsonl"):
        with pytest.raises(OSError) as caught:
            write_records(output, [{"id": "a"}])  # a file where a folder must be: named, not mkdir's "File exists"
        assert caught.value.filename == str(output)
        assert caught.value.strerror == f"cannot be written ({tmp_path / 'file'} is a file)"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_a_file_in_the_way_of_an_output_is_worded_one_way(tmp_path: Path, monkeypatch) -> None:
    """The one wording every command puts after the output's name: the file in the way named as the user spelled
    the path, nothing to say where a folder can be (or is) there."""
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("")
    Path("folder").mkdir()
    for path, folder, says in (
        ("afile", True, "is a file, not a folder"),
        ("afile/sub/deeper", True, "cannot be made a folder (afile is a file)"),
        (tmp_path / "afile" / "sub", True, f"cannot be made a folder ({tmp_path / 'afile'} is a file)"),
        ("afile/x.jsonl", False, "cannot be written (afile is a file)"),
        ("afile/sub/x.jsonl", False, "cannot be written (afile is a file)"),
        ("folder", True, None), ("folder/new/sub", True, None), ("new", True, None),
        ("x.jsonl", False, None), ("afile", False, None), ("folder/new/x.jsonl", False, None),
    ):
        assert blocked_reason(path, folder=folder) == says, (path, folder)



@pytest.mark.parametrize(("spec", "field", "allowed"), [
    ({"datasets": [{"path": "a.jsonl"}, {"path": "a.jsonl", "sampling_stratgy": "first:1"}]},
     "datasets[1].sampling_stratgy", "path, json_path, sampling, sampling_strategy"),
    ({"datasets": [{"json_path": "a.jsonl", "sample": "first:1"}]}, "datasets[0].sample",
     "path, json_path, sampling, sampling_strategy"),
    ({"datasets": [{"path": "a.jsonl"}], "dataset": [{"path": "b.jsonl"}]}, "dataset", "datasets"),
])
def test_a_mixture_key_that_nothing_reads_is_refused(tmp_path: Path, spec: dict, field: str, allowed: str) -> None:
    """A misspelt sampling rule must not leave the entry at `all` (the whole file trained on, exit 0)."""
    write(tmp_path / "a.jsonl", ["a1", "a2", "a3"])
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(RecordError) as caught:
        load_mixture(tmp_path / "mix.yaml")
    assert str(caught.value) == f"{tmp_path / 'mix.yaml'} field '{field}': unknown key (allowed: {allowed})"


def test_data_check_stops_on_a_misspelt_mixture_key(tmp_path: Path, tiny_model_factory, capsys) -> None:
    from sicog.cli import main
    from sicog.model.builders import save_pretrained

    save_pretrained(*tiny_model_factory(), tmp_path / "model")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": f"a{i}", "conversations": [
        {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]}) + "\n" for i in range(3)))
    (tmp_path / "mix.yaml").write_text("datasets:\n  - path: a.jsonl\n    sampling_stratgy: first:2\n")
    capsys.readouterr()  # saving's progress bar
    assert main(["data", "check", str(tmp_path / "mix.yaml"), "--model", str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        f"sicog data check: error: {tmp_path / 'mix.yaml'} field 'datasets[0].sampling_stratgy': unknown key "
        "(allowed: path, json_path, sampling, sampling_strategy)"]
