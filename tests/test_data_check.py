"""`sicog data check`: what it catches before a launch (truncated images, empty answers, copies, cut samples), the
records it checks (those training reads), its summary, its exit codes, and `sicog data head`'s outputs."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import pytest
import yaml
from PIL import Image
from test_datasets import rec

from sicog.cli import main
from sicog.data.mixture import DEFAULT_SEED, load_mixture


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model_factory) -> str:
    from sicog.model.builders import save_pretrained

    folder = tmp_path_factory.mktemp("check_model") / "model"
    save_pretrained(*tiny_model_factory(), folder)
    return str(folder)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A whole image, and a JPEG cut to a third of its bytes: its header is whole, its pixels are not."""
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(folder / "ok.png")
    noise = random.Random(0).randbytes(96 * 96 * 3)
    Image.frombytes("RGB", (96, 96), noise).save(folder / "full.jpg", quality=95)
    data = (folder / "full.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 3])
    return folder


def check(data: Path | str, model: str, images: Path | None, *extra: str) -> int:
    argv = ["data", "check", str(data), "--model", model, *extra]
    return main(argv + (["--image-folder", str(images)] if images else []))


def summary_of(out: str) -> dict:
    """The JSON summary that `data check` prints first."""
    return json.JSONDecoder().raw_decode(out[out.index("{"):])[0]


def test_a_truncated_image_is_found_by_decoding_it(tmp_path, model, images, capsys):
    data = write(tmp_path / "d.jsonl", [rec("ok", image="ok.png"), rec("cut", image="cut.jpg")])
    report = tmp_path / "report.jsonl"
    assert check(data, model, images, "--report", str(report)) == 1
    out = capsys.readouterr().out
    assert summary_of(out)["usable"] == 1 and summary_of(out)["invalid"] == 1
    assert "d.jsonl:2 id='cut' field 'image'" in out and "truncated" in out
    [line] = [json.loads(x) for x in report.read_text().splitlines()]
    assert (line["id"], line["line"], line["field"], line["category"]) == ("cut", 2, "image", "unreadable image")
    # Reading headers only, as training does before it starts, the cut file looks whole.
    assert check(data, model, images, "--no-decode-images", "--workers", "1") == 0


def test_a_yaml_mixture_is_drawn_with_the_seed_training_uses(tmp_path, model, images, capsys):
    """`random:` draws with --seed; without it, with sicog train's default, so the records checked are the
    records trained on."""
    from transformers import TrainingArguments

    from sicog.train.arguments import SicogTrainingArguments

    assert DEFAULT_SEED == TrainingArguments.seed == SicogTrainingArguments.seed
    pool = [rec(f"p{i}", image="ok.png") for i in range(10)]
    write(tmp_path / "pool.jsonl", pool)
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump({"datasets": [{"path": "pool.jsonl", "sampling": "random:5"}]}))
    trained = {r["id"] for r, _ in load_mixture(tmp_path / "mix.yaml", seed=DEFAULT_SEED)}
    other = {r["id"] for r, _ in load_mixture(tmp_path / "mix.yaml", seed=0)}
    broken = sorted(trained - other)[0]  # drawn by training, not by seed 0
    pool[int(broken[1:])]["image"] = "missing.png"
    write(tmp_path / "pool.jsonl", pool)
    assert check(tmp_path / "mix.yaml", model, images) == 1
    assert f"id='{broken}'" in capsys.readouterr().out
    assert check(tmp_path / "mix.yaml", model, images, "--seed", "0") == 0


def test_empty_answers_are_invalid(tmp_path, model, images, capsys):
    data = write(tmp_path / "d.jsonl", [rec("ok"), rec("empty", answer=""), rec("blank", answer="  \n ")])
    assert check(data, model, images) == 1
    out = capsys.readouterr().out
    assert summary_of(out)["problems_by_category"] == [["empty answer", 2]]
    # training skips them as it skips samples too long, and the summary counts each kind apart
    assert (summary_of(out)["skipped_empty_answer"], summary_of(out)["skipped_too_long"]) == (2, 0)
    assert "d.jsonl:2 id='empty' field 'conversations[1].value': empty answer" in out


def test_copies_are_errors_and_other_records_with_a_used_id_warnings(tmp_path, model, images, capsys):
    """A copy means a file was read twice; published mixtures reuse an image's id for several conversations."""
    data = write(tmp_path / "d.jsonl", [rec("a"), rec("b"), rec("b", answer="Blue."), rec("c")])
    report = tmp_path / "report.jsonl"
    assert check(data, model, images, "--report", str(report)) == 0
    out = capsys.readouterr().out
    assert summary_of(out)["repeated_ids"] == 1 and "id also at " + str(data) + ":2" in out
    assert check(f"{data},{data}", model, images, "--report", str(report)) == 1
    summary = summary_of(capsys.readouterr().out)
    assert (summary["duplicate_records"], summary["repeated_ids"]) == (4, 1)
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert {(x["category"], x["line"]) for x in lines if x["id"] == "a"} == {("duplicate record", 1)}
    assert f"the same record as {data}:1" in next(x["reason"] for x in lines if x["id"] == "a")
    # 7 and "7" are one id: the same record with its id written either way is a copy.
    numbered = write(tmp_path / "n.jsonl", [{**rec("7"), "id": 7}, rec("7")])
    assert check(numbered, model, images) == 1
    assert summary_of(capsys.readouterr().out)["duplicate_records"] == 1


def test_samples_that_will_be_cut_are_listed_with_their_whole_length(tmp_path, model, images, capsys):
    data = write(tmp_path / "d.jsonl", [rec("short"), rec("long", answer="word " * 300)])
    report = tmp_path / "report.json"
    assert check(data, model, images, "--max-length", "120", "--report", str(report)) == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["truncated"] == 1 and summary["tokens"]["max"] > 300 and summary["max_length"] == 120
    [line] = json.loads(report.read_text())  # a .json report is a JSON array
    assert line["id"] == "long" and line["category"] == "truncated" and "tokens are cut" in line["reason"]


def test_problems_are_grouped_by_category_and_located_once(tmp_path, model, images, capsys):
    records = [rec(f"m{i}", image=f"missing{i}.png") for i in range(3)]
    records += [rec("extra", image="ok.png", question="<image> two?"), rec("user")]
    records[-1]["conversations"][0]["from"] = "user"
    data = write(tmp_path / "d.jsonl", records)
    assert check(data, model, images) == 1
    out = capsys.readouterr().out
    assert summary_of(out)["problems_by_category"] == [["missing image", 3], ["placeholder count", 1],
                                                       ["role order", 1]]
    line = next(x for x in out.splitlines() if "id='extra'" in x)
    assert line.count(str(data)) == 1 and line.startswith("error (placeholder count): ")


def test_an_image_name_with_a_character_that_does_not_show_is_quoted(tmp_path, model, images, capsys):
    """A newline in the name broke the problem's line in two; a trailing space could not be seen."""
    data = write(tmp_path / "d.jsonl", [rec("ok", image="ok.png"), rec("nl", image="ok.png\n"),
                                        rec("space", image="ok.png ")])
    assert check(data, model, images) == 1
    lines = [x for x in capsys.readouterr().out.splitlines() if "image file not found" in x]
    assert len(lines) == 2
    assert lines[0].endswith(repr(str(images / "ok.png\n"))) and lines[1].endswith(repr(str(images / "ok.png ")))


def test_no_usable_record_exits_1(tmp_path, model, images, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert check(empty, model, images) == 1
    assert "no usable training records" in capsys.readouterr().err


def test_brace_patterns_name_several_files(tmp_path, model, images, capsys):
    write(tmp_path / "a.json", [rec("a1")])
    write(tmp_path / "b.json", [rec("b1"), rec("b2")])
    assert check(f"{tmp_path}/{{a,b}}.json", model, images) == 0
    assert summary_of(capsys.readouterr().out)["usable"] == 3


def test_a_config_field_of_the_wrong_type_is_one_line_naming_it(tmp_path, model, capsys):
    """It failed inside transformers with a traceback (exit 1)."""
    import shutil

    damaged = tmp_path / "model"
    shutil.copytree(model, damaged)
    config = json.loads((damaged / "config.json").read_text())
    (damaged / "config.json").write_text(json.dumps({**config, "vision_config": 5}))
    assert check(write(tmp_path / "d.jsonl", [rec("a")]), str(damaged), None) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sicog data check: error: {damaged / 'config.json'}: field 'vision_config': expected an object or null, got 5"]


def test_stage_must_be_one_training_knows(tmp_path, model, capsys):
    from sicog.data.cli import DEFAULT_STAGE, MAX_LENGTH, SFT_STAGES
    from sicog.train.arguments import STAGES, DataArguments, SicogTrainingArguments

    assert set(SFT_STAGES) == set(STAGES) - {"dpo"} and MAX_LENGTH == DataArguments.model_max_length
    assert DEFAULT_STAGE == SicogTrainingArguments.stage
    with pytest.raises(SystemExit) as stop:
        check(write(tmp_path / "d.jsonl", [rec("a")]), model, None, "--stage", "bogus")
    assert stop.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, model, capsys):
    data = write(tmp_path / "d.jsonl", [rec("a"), rec("b")])
    (tmp_path / "folder").mkdir()
    assert main(["data", "head", "--input", str(data), "--output", str(tmp_path / "folder"), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--output {tmp_path / 'folder'}: is a folder" in err
    assert main(["data", "head", "--input", str(data), "--output", "/proc/sicog/x.jsonl", "--limit", "1"]) == 2
    assert "/proc/sicog/x.jsonl" in capsys.readouterr().err and not list(tmp_path.rglob("*.tmp"))
    assert check(data, model, None, "--report", str(tmp_path / "folder")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--report" in err and "is a folder" in err


def test_head_writes_a_json_array_for_a_json_name_and_reads_brace_patterns(tmp_path, capsys):
    write(tmp_path / "a.jsonl", [rec("a1"), rec("a2")])
    write(tmp_path / "b.jsonl", [rec("b1")])
    for name in ("head.json", "head.JSON"):
        assert main(["data", "head", "--input", f"{tmp_path}/{{a,b}}.jsonl", "--output", str(tmp_path / name),
                     "--limit", "3"]) == 0
        assert [r["id"] for r in json.loads((tmp_path / name).read_text())] == ["a1", "a2", "b1"]
    assert main(["data", "head", "--input", str(tmp_path / "a.jsonl"), "--output", str(tmp_path / "h.jsonl"),
                 "--limit", "1"]) == 0
    assert json.loads((tmp_path / "h.jsonl").read_text())["id"] == "a1"


def test_head_refuses_an_output_that_is_its_input_and_keeps_the_input(tmp_path, capsys):
    data = write(tmp_path / "h.jsonl", [rec(f"r{i}") for i in range(4)])
    (tmp_path / "link.jsonl").symlink_to(data)
    kept = data.read_bytes()
    for given, output in ((data, data), (f"{tmp_path}/{{a,h}}.jsonl", tmp_path / "." / "h.jsonl"),
                          (tmp_path / "link.jsonl", data)):
        assert main(["data", "head", "--input", str(given), "--output", str(output), "--limit", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--output {output} is the same file as --input " in err
        assert data.read_bytes() == kept
    assert check(data, "no-model-needed", None, "--report", str(data)) == 2
    assert f"--report {data} is the same file as data_path {data}" in capsys.readouterr().err
    assert data.read_bytes() == kept
    # A file a mixture lists is read as much as a file named itself.
    (tmp_path / "mix.yaml").write_text("datasets:\n  - json_path: h.jsonl\n    sampling_strategy: all\n")
    assert check(tmp_path / "mix.yaml", "no-model-needed", None, "--report", str(data)) == 2
    assert f"--report {data} is the same file as data_path {tmp_path / 'h.jsonl'}" in capsys.readouterr().err
    assert data.read_bytes() == kept


def test_head_blames_an_input_it_cannot_read_not_the_output(tmp_path, capsys, monkeypatch):
    data = write(tmp_path / "d.jsonl", [rec("a")])
    opened = Path.open

    def unreadable(path, *args, **kwargs):
        if path == data:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return opened(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", unreadable)
    assert main(["data", "head", "--input", str(data), "--output", str(tmp_path / "o.jsonl"), "--limit", "1"]) == 2
    assert capsys.readouterr().err == f"sicog data head: error: cannot read --input {data}: Permission denied\n"
    assert not (tmp_path / "o.jsonl").exists()
