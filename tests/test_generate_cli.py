"""`sicog generate` as users run it: the command, the recap scripts, SIGKILL + rerun, torchrun with 2 ranks."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from sicog.cli import main
from sicog.data.jsonl import load_records, write_jsonl
from sicog.data.sharding import shard_path
from sicog.model.builders import save_pretrained

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "recap_scripts"
SCRIPT_VARS = ("EXPERIMENT_NAME", "MODEL_PATH", "DATA_PATH", "SPLIT", "TEMPERATURE", "BEAMS", "TOP_P", "PROMPT",
               "AUGMENT_METHODS", "IMAGE_FOLDER", "NUM_CANDIDATES", "MAX_NEW_TOKENS", "OUTPUT_DIR", "BATCH_SIZE",
               "SEED", "NPROC_PER_NODE", "NNODES")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory):
    """A saved tiny checkpoint and 12 image-question records (one image missing)."""
    root = tmp_path_factory.mktemp("gen_cli")
    model, processor = tiny_model_factory(seed=2)
    save_pretrained(model, processor, root / "model")
    (root / "images").mkdir()
    records = []
    for i in range(12):
        Image.new("RGB", (24 + 6 * i, 40), (20 * i, 90, 255 - 20 * i)).save(root / "images" / f"{i}.png")
        records.append({"id": f"q{i}", "image": f"{i}.png", "question": f"Which shape is number {i}?"})
    records[7]["image"] = "missing.png"
    write_jsonl(root / "questions_train.jsonl", records)
    return root


def cli_args(root: Path, output: Path, *extra: str, data: str = "questions_train.jsonl") -> list[str]:
    return ["generate", "reasoning", "--model", str(root / "model"), "--data", str(root / data),
            "--image-folder", str(root / "images"), "--output", str(output), "--num-candidates", "2",
            "--max-new-tokens", "8", "--batch-size", "2", "--no-progress", *extra]


def subprocess_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS + ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", SICOG_PYTHON=sys.executable, **extra)
    return env


def test_command_writes_outputs_and_errors(setup, tmp_path, capsys):
    output = tmp_path / "gen.jsonl"
    assert main(cli_args(setup, output, "--corrupt", "color_jitter,mask", "--corrupt-all", "--temperature", "0.5")) == 0
    records = load_records(output)
    assert [r["id"] for r in records] == [f"q{i}" for i in range(12) if i != 7]
    assert all(len(r["candidates"]) == 2 and r["generation"]["temperature"] == 0.5 for r in records)
    assert [c["method"] for c in records[0]["generation"]["corruption"]] == ["color_jitter", "mask"]
    (error,) = load_records(tmp_path / "gen.errors.jsonl")
    assert error["id"] == "q7" and "missing.png" in error["reason"]
    assert "11 records with candidates" in capsys.readouterr().err


def test_a_datasets_folder_generates_what_its_jsonl_does(setup, tmp_path, capsys):
    """`--data` a folder written by `Dataset.save_to_disk`: same outputs as the JSONL; errors name the row."""
    datasets = pytest.importorskip("datasets", reason="datasets is part of the 'train' extra")
    datasets.Dataset.from_list(load_records(setup / "questions_train.jsonl")).save_to_disk(tmp_path / "questions")
    assert main(cli_args(setup, tmp_path / "from_json.jsonl")) == 0
    args = cli_args(setup, tmp_path / "from_dataset.jsonl")
    args[args.index("--data") + 1] = str(tmp_path / "questions")
    assert main(args) == 0
    from_json, from_dataset = load_records(tmp_path / "from_json.jsonl"), load_records(tmp_path / "from_dataset.jsonl")
    assert [r["candidates"] for r in from_dataset] == [r["candidates"] for r in from_json] and len(from_json) == 11
    (error,) = load_records(tmp_path / "from_dataset.errors.jsonl")
    assert (error["id"], error["file"], error["line"]) == ("q7", str(tmp_path / "questions"), 8)


def test_failed_records_are_tried_again_on_a_rerun_unless_skipped(setup, tmp_path, capsys):
    shutil.copytree(setup / "images", tmp_path / "images")
    records = load_records(setup / "questions_train.jsonl")
    write_jsonl(tmp_path / "questions.jsonl", records)
    output = tmp_path / "gen.jsonl"
    args = ["generate", "reasoning", "--model", str(setup / "model"), "--data", str(tmp_path / "questions.jsonl"),
            "--image-folder", str(tmp_path / "images"), "--output", str(output), "--num-candidates", "2",
            "--max-new-tokens", "8", "--batch-size", "2", "--no-progress"]
    assert main(args) == 0
    assert [r["id"] for r in load_records(tmp_path / "gen.errors.jsonl")] == ["q7"]  # its image is missing
    (tmp_path / "images" / "0.png").rename(tmp_path / "images" / "missing.png")  # q7's image appears, q0's goes
    assert main([*args, "--skip-failed"]) == 0
    assert [r["id"] for r in load_records(tmp_path / "gen.errors.jsonl")] == ["q7"]  # kept as failed, q0 kept done
    capsys.readouterr()
    assert main(args) == 0
    assert "retrying 1 records that failed in an earlier run" in capsys.readouterr().err
    assert load_records(tmp_path / "gen.errors.jsonl") == []
    assert sorted(r["id"] for r in load_records(output)) == sorted(r["id"] for r in records)


def test_the_outputs_own_errors_file_as_data_is_refused_before_anything_is_read(setup, tmp_path, capsys):
    """Retrying the failures clears the errors file: given as --data, the input was lost."""
    output = tmp_path / "gen.jsonl"
    assert main(cli_args(setup, output)) == 0
    errors = tmp_path / "gen.errors.jsonl"
    before = errors.read_bytes()
    args = cli_args(setup, output)
    args[args.index("--data") + 1] = str(errors)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"is the same file as --data {errors}" in err
    assert errors.read_bytes() == before


def test_kept_failures_of_another_input_are_refused_before_the_model_loads(setup, tmp_path, capsys, monkeypatch):
    """Found by the merge, after every record was generated, and on every rerun after."""
    import sicog.model.builders

    output = tmp_path / "gen.jsonl"
    assert main(cli_args(setup, output)) == 0  # q7 fails: its image is missing
    write_jsonl(tmp_path / "fewer.jsonl", [r for r in load_records(setup / "questions_train.jsonl") if r["id"] != "q7"])

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sicog.model.builders, "load_pretrained", no_load)
    capsys.readouterr()
    assert main(cli_args(setup, output, "--skip-failed", data=str(tmp_path / "fewer.jsonl"))) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'gen.errors.jsonl'}:1 id='q7' field 'id': not a record of this run's input" in err


def test_a_finished_output_runs_no_batch_again_for_an_image_that_fails(setup, tmp_path, capsys):
    """A batch whose other records were done was sampled again for the one whose image fails to decode."""
    shutil.copytree(setup / "images", tmp_path / "images")
    (tmp_path / "images" / "1.png").write_bytes((tmp_path / "images" / "1.png").read_bytes()[:60])  # cut off
    args = cli_args(setup, tmp_path / "gen.jsonl")
    args[args.index("--image-folder") + 1] = str(tmp_path / "images")
    assert main(args) == 0
    first = (tmp_path / "gen.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args) == 0
    assert "(0 batches run)" in capsys.readouterr().err and (tmp_path / "gen.jsonl").read_bytes() == first


def test_failures_of_a_run_with_other_settings_are_not_kept_as_this_runs(setup, tmp_path, capsys):
    """--skip-failed kept the failures of a run with another prompt type (or temperature, ...) as this run's own,
    with their reasons: every record of a cod-conv run without questions failed, and a default run skipped them."""
    output = tmp_path / "gen.jsonl"
    images_only = [{"id": f"i{i}", "image": f"{i}.png"} for i in range(3)]
    write_jsonl(tmp_path / "images.jsonl", images_only)
    args = ["generate", "captions", "--model", str(setup / "model"), "--data", str(tmp_path / "images.jsonl"),
            "--image-folder", str(setup / "images"), "--output", str(output), "--num-candidates", "2",
            "--max-new-tokens", "4", "--no-progress"]
    assert main([*args, "--prompt", "cod-conv"]) == 1
    errors = load_records(tmp_path / "gen.errors.jsonl")
    assert len(errors) == 3 and all(e["generation"]["prompt_type"] == "cod-conv" for e in errors)
    capsys.readouterr()
    assert main([*args, "--prompt", "default", "--skip-failed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'gen.errors.jsonl'}:1 id='i0'" in err
    assert "failed in a run with other settings" in err and "'prompt_type': ('cod-conv', 'default')" in err
    assert len(load_records(tmp_path / "gen.errors.jsonl")) == 3 and load_records(output) == []
    # The same settings keep them; without --skip-failed they are tried again with this run's settings.
    assert main([*args, "--prompt", "cod-conv", "--skip-failed"]) == 1
    assert main([*args, "--prompt", "default"]) == 0
    assert len(load_records(output)) == 3 and load_records(tmp_path / "gen.errors.jsonl") == []


def test_a_run_where_every_record_fails_exits_non_zero(setup, tmp_path, capsys):
    records = [{"id": f"x{i}", "image": "nowhere.png", "question": "What?"} for i in range(3)]
    write_jsonl(tmp_path / "bad.jsonl", records)
    code = main(["generate", "reasoning", "--model", str(setup / "model"), "--data", str(tmp_path / "bad.jsonl"),
                 "--image-folder", str(setup / "images"), "--output", str(tmp_path / "gen.jsonl"), "--no-progress"])
    assert code == 1
    assert "every one of the 3 records failed" in capsys.readouterr().err
    assert len(load_records(tmp_path / "gen.errors.jsonl")) == 3


def test_command_reports_bad_arguments_and_input(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(cli_args(setup, tmp_path / "a.jsonl", "--corrupt", "blur"))
    assert stop.value.code == 2
    assert "argument --corrupt: unknown corruption(s) ['blur']" in capsys.readouterr().err
    bad = tmp_path / "dup.jsonl"
    write_jsonl(bad, [{"id": "a", "image": "0.png", "question": "?"}, {"id": "a", "image": "1.png", "question": "?"}])
    args = cli_args(setup, tmp_path / "b.jsonl")
    args[args.index("--data") + 1] = str(bad)
    assert main(args) == 2
    assert "dup.jsonl:2 id='a' field 'id': duplicate id" in capsys.readouterr().err
    args = cli_args(setup, tmp_path / "c.jsonl")
    args[args.index("--model") + 1] = str(tmp_path / "no_model")
    assert main(args) == 2
    assert "no SICOG checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "captions", "--model", "m", "--data", "d", "--output", "o", "--prompt", "cot-default"])


def test_model_and_image_folder_are_settings_of_the_output_however_they_are_spelled(setup, tmp_path, capsys,
                                                                                    monkeypatch):
    """The records name the model and image folders as absolute paths: a rerun from another working folder
    resumes instead of refusing; another image folder means other images, so a rerun with it is refused."""
    output = tmp_path / "gen.jsonl"
    monkeypatch.chdir(setup)
    args = cli_args(setup, output)
    args[args.index("--model") + 1], args[args.index("--image-folder") + 1] = "model", "images"
    assert main(args) == 0
    written = output.read_bytes()
    generation = json.loads(written.splitlines()[0])["generation"]
    assert (generation["model"], generation["image_folder"]) == (str(setup / "model"), str(setup / "images"))
    monkeypatch.chdir(tmp_path)
    assert main(cli_args(setup, output)) == 0 and output.read_bytes() == written
    shutil.copytree(setup / "images", tmp_path / "other_images")
    args[args.index("--model") + 1] = str(setup / "model")
    args[args.index("--image-folder") + 1] = str(tmp_path / "other_images")
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "written by a run with other settings" in err and "'image_folder'" in err
    assert output.read_bytes() == written


def test_other_decoding_settings_of_the_checkpoint_are_recorded_and_a_changed_one_refuses_a_rerun(setup, tmp_path,
                                                                                                  capsys):
    """generate applies every setting of generation_config.json, not only the sampling ones."""
    plain = tmp_path / "plain.jsonl"
    assert main(cli_args(setup, plain, "--temperature", "0")) == 0
    assert all(r["generation"]["other_settings"] == {} for r in load_records(plain))
    # Greedy decoding with two candidates writes two copies: said, since curation then compares nothing.
    assert "warning: temperature 0 decodes greedily: each record's 2 candidates are copies" in capsys.readouterr().err
    one = cli_args(setup, tmp_path / "one.jsonl", "--temperature", "0")
    one[one.index("--num-candidates") + 1] = "1"
    assert main(one) == 0 and "decodes greedily" not in capsys.readouterr().err
    model = tmp_path / "model"
    shutil.copytree(setup / "model", model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "no_repeat_ngram_size": 2}))
    output = tmp_path / "gen.jsonl"
    args = cli_args(setup, output, "--temperature", "0")
    args[args.index("--model") + 1] = str(model)
    assert main(args) == 0
    records = load_records(output)
    assert {json.dumps(r["generation"]["other_settings"]) for r in records} == {'{"no_repeat_ngram_size": 2}'}
    # Greedy replies of the random tiny model repeat themselves; the setting stops that, so they change.
    assert [r["candidates"] for r in records] != [r["candidates"] for r in load_records(plain)]
    (model / "generation_config.json").write_text(json.dumps({**config, "no_repeat_ngram_size": 3}))
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "written by a run with other settings" in err and "'other_settings'" in err


def test_a_checkpoints_stop_strings_end_the_replies(setup, tmp_path):
    """stop_strings need the tokenizer passed to generate (without it transformers raises)."""
    plain = tmp_path / "plain.jsonl"
    assert main(cli_args(setup, plain, "--temperature", "0")) == 0
    first = load_records(plain)[0]["candidates"][0]
    # A plain word that ends before the reply does (a byte-fallback character would not match the tokens' text).
    stop = next(w for w in first.split() if w.isascii() and w.isalpha() and first.index(w) + len(w) < len(first))
    model = tmp_path / "model"
    shutil.copytree(setup / "model", model)
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "stop_strings": [stop]}))
    output = tmp_path / "gen.jsonl"
    args = cli_args(setup, output, "--temperature", "0")
    args[args.index("--model") + 1] = str(model)
    assert main(args) == 0
    record = load_records(output)[0]
    assert record["generation"]["other_settings"] == {"stop_strings": [stop]}
    cut = record["candidates"][0]
    assert stop in cut and first.startswith(cut) and len(cut) < len(first)


def test_an_output_that_is_not_a_jsonl_file_is_refused(setup, tmp_path, capsys):
    """x.json and x.jsonl would share x.errors.jsonl (a rerun of one clears the other's errors)."""
    assert main(cli_args(setup, tmp_path / "gen.json")) == 2
    err = capsys.readouterr().err
    assert "give the path of a .jsonl file (its errors go to gen.errors.jsonl beside it)" in err
    assert list(tmp_path.iterdir()) == []


def test_a_refused_rerun_leaves_a_finished_output_and_its_errors_as_they_were(setup, tmp_path, capsys, monkeypatch):
    output = tmp_path / "gen.jsonl"
    assert main(cli_args(setup, output)) == 0
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(files) == {"gen.jsonl", "gen.errors.jsonl"}
    capsys.readouterr()
    assert main(cli_args(setup, output, "--seed", "1")) == 2  # other settings: the run stops before any change
    assert "written by a run with other settings" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files  # q7 still in the errors file, no shards
    # Another input (the next SPLIT): refused at the start, not at the merge after generating all of it.
    other = tmp_path.parent / f"{tmp_path.name}-other.jsonl"
    lines = (setup / "questions_train.jsonl").read_text().splitlines()
    other.write_text("\n".join(lines[1:]) + "\n")
    args = cli_args(setup, output)
    args[args.index("--data") + 1] = str(other)
    assert main(args) == 2
    assert "field 'id': not a record of this run's input" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files

    def no_model(*args, **kwargs):
        raise RuntimeError("weights unreadable")

    monkeypatch.setattr("sicog.model.builders.load_pretrained", no_model)
    with pytest.raises(RuntimeError, match="weights unreadable"):
        main(cli_args(setup, output))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_an_output_that_is_not_a_generated_file_is_refused(setup, tmp_path, capsys):
    """`--output` another stage's file: its records have no candidates, so none of them counts as done; the input
    itself is refused before it is read."""
    data = tmp_path / "questions.jsonl"
    shutil.copy(setup / "questions_train.jsonl", data)
    before = data.read_bytes()
    args = cli_args(setup, data)
    args[args.index("--data") + 1] = str(data)
    assert main(args) == 2
    assert f"--output {data} is the same file as --data {data}" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    shutil.copy(data, other)
    assert main(cli_args(setup, other)) == 2
    assert f"{other}:1 id='q0' field 'generation': not a generated record" in capsys.readouterr().err
    assert data.read_bytes() == before == other.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.jsonl", "questions.jsonl"]


def test_unusable_output_model_and_sampling_arguments_stop_with_one_line(setup, tmp_path, capsys):
    (tmp_path / "folder.jsonl").mkdir()
    assert main(cli_args(setup, tmp_path / "folder.jsonl")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "folder.jsonl is a folder; give the path of a .jsonl file" in err
    model = tmp_path / "model"
    shutil.copytree(setup / "model", model)
    config = model / "generation_config.json"
    config.write_bytes(config.read_bytes()[:10])  # cut short, as by a failed copy
    args = cli_args(setup, tmp_path / "a.jsonl")
    args[args.index("--model") + 1] = str(model)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{config}: cannot be read" in err
    # ranges in the flags' types, so that `sicog cycle` refuses them when it reads its config
    for flag, value in (("--temperature", "nan"), ("--temperature", "-1"), ("--top-p", "nan"), ("--top-p", "0"),
                        ("--top-k", "-3"), ("--repetition-penalty", "inf"), ("--repetition-penalty", "-1"),
                        ("--max-aspect-ratio", "0.5"), ("--max-aspect-ratio", "nan"), ("--seed", "-1")):
        with pytest.raises(SystemExit) as stop:
            main(cli_args(setup, tmp_path / "b.jsonl", flag, value))
        assert stop.value.code == 2
        assert f"argument {flag}: must be" in capsys.readouterr().err
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()


def test_a_config_field_of_the_wrong_type_stops_with_one_line_naming_it(setup, tmp_path, capsys):
    """transformers failed on it inside SicogConfig with a traceback (exit 1), after the input was read."""
    model = tmp_path / "model"
    shutil.copytree(setup / "model", model)
    config = json.loads((model / "config.json").read_text())
    for field, value, expected in (("vision_config", 5, "an object or null"),
                                   ("resampler_num_queries", "many", "an integer")):
        (model / "config.json").write_text(json.dumps({**config, field: value}))
        args = cli_args(setup, tmp_path / "a.jsonl")
        args[args.index("--model") + 1] = str(model)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == [f"sicog generate reasoning: error: {model / 'config.json'}: field '{field}': "
                                    f"expected {expected}, got {json.dumps(value)}"], err
    assert not (tmp_path / "a.jsonl").exists()


def test_corrupt_all_without_corrupt_is_refused(setup, tmp_path, capsys):
    """It was silently ignored: a run meant to corrupt every image corrupted none."""
    assert main(cli_args(setup, tmp_path / "a.jsonl", "--corrupt-all")) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sicog generate reasoning: error: --corrupt-all applies every --corrupt method to each record: give them with "
        "--corrupt METHOD[,METHOD]"]
    assert main(cli_args(setup, tmp_path / "a.jsonl", "--corrupt", "none", "--corrupt-all")) == 2
    assert not (tmp_path / "a.jsonl").exists()


def test_an_unreadable_input_or_unwritable_output_stops_with_one_line(setup, tmp_path, capsys, monkeypatch):
    """`--data` the run may not read, `--output` under a file or in a folder it may not write: one line naming the
    path and the cause, exit 2, nothing written (root reads and writes everything: the refusals are simulated)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    data = tmp_path / "locked.jsonl"
    shutil.copy(setup / "questions_train.jsonl", data)
    real_open = Path.open

    def refuse_data(self, *args, **kwargs):
        if self == data:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    def refuse_lock(self):
        raise PermissionError(13, "Permission denied", self.lock_file)

    def refused(argv: list[str], says: str) -> None:
        assert main(argv) == 2, says
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [f"sicog generate reasoning: error: {says}"], err

    refused(cli_args(setup, afile / "x.jsonl"), f"{afile / 'x.jsonl'} cannot be written ({afile} is a file)")
    monkeypatch.setattr(Path, "open", refuse_data)
    refused(cli_args(setup, tmp_path / "a.jsonl", data=str(data)), f"{data}: Permission denied")
    monkeypatch.setattr("sicog.data.lock._OutputFileLock._acquire", refuse_lock)
    output = tmp_path / "ro" / "g.jsonl"
    refused(cli_args(setup, output), f"{output} cannot be written ({output}.lock: Permission denied)")
    assert sorted(p.name for p in tmp_path.rglob("*.jsonl")) == ["locked.jsonl"]


@pytest.mark.parametrize("name", ["recap_inference.sh", "reasoning_inference.sh"])
def test_scripts_follow_the_wrapper_rules_and_name_missing_variables(name, tmp_path):
    text = (SCRIPTS / name).read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"' in text
    assert "pip install" not in text and "/work" not in text and " /data" not in text
    result = subprocess.run(["bash", str(SCRIPTS / name)], cwd=tmp_path, env=subprocess_env(DATA_PATH="x"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "EXPERIMENT_NAME MODEL_PATH" in result.stderr and "DATA_PATH" not in result.stderr


def dry_run(name: str, cwd: Path, *args: str, **env: str) -> list[str]:
    result = subprocess.run(["bash", str(SCRIPTS / name), "--dry-run", *args], cwd=cwd, env=subprocess_env(**env),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("TEMPERATURE", "0.7x", "TEMPERATURE must be a number (got '0.7x')"),
    ("TOP_P", "high", "TOP_P must be a number (got 'high')"),
    ("BEAMS", "one", "BEAMS must be a whole number above 0 (got 'one')")])
def test_a_number_that_is_none_stops_the_script_naming_it(variable, value, says, tmp_path):
    """A typo reached `sicog generate`, whose error named its flag after its usage, not the variable."""
    env = subprocess_env(EXPERIMENT_NAME="job", MODEL_PATH="ckpt", DATA_PATH="d.jsonl", **{variable: value})
    result = subprocess.run(["bash", str(SCRIPTS / "recap_inference.sh"), "--dry-run"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {says}"


def test_an_input_in_a_folder_with_a_comma_writes_beside_it(tmp_path):
    """sicog reads such a path whole; the script cut it at the comma and wrote the output a folder up."""
    folder = tmp_path / "my,set"
    folder.mkdir()
    (folder / "records.jsonl").write_text("")
    words = dry_run("recap_inference.sh", tmp_path, EXPERIMENT_NAME="exp", MODEL_PATH="ckpt",
                    DATA_PATH=str(folder / "records.jsonl"))
    assert words[words.index("--output") + 1] == str(folder / "exp.jsonl")


def test_scripts_pass_the_readme_variables(tmp_path):
    readme = dict(EXPERIMENT_NAME="recaption_job_cod", MODEL_PATH="ckpt/perception", DATA_PATH="data/unlabeled.jsonl",
                  TEMPERATURE="0.7", BEAMS="1", TOP_P="0.9", PROMPT="cod-default")
    assert dry_run("recap_inference.sh", tmp_path, **readme) == [
        sys.executable, "-m", "sicog", "generate", "captions", "--model", "ckpt/perception", "--data",
        "data/unlabeled.jsonl", "--output", "data/recaption_job_cod.jsonl", "--prompt", "cod-default",
        "--temperature", "0.7", "--top-p", "0.9", "--num-beams", "1"]
    # A SPLIT exported for the README's reasoning jobs is not the caption job's: the published caption script
    # reads none.
    captions = dry_run("recap_inference.sh", tmp_path, SPLIT="part1", **readme)
    assert captions[captions.index("--data") + 1] == "data/unlabeled.jsonl"
    noisy = dict(EXPERIMENT_NAME="noisy", MODEL_PATH="ckpt/reasoning", DATA_PATH="data/pairs", SPLIT="part1",
                 AUGMENT_METHODS="gaussian_blur,mask", PROMPT="cot-default", IMAGE_FOLDER="imgs", OUTPUT_DIR="out dir",
                 NUM_CANDIDATES="4", MAX_NEW_TOKENS="256", BATCH_SIZE="16", SEED="3")
    assert dry_run("reasoning_inference.sh", tmp_path, "--top-k", "20", **noisy) == [
        sys.executable, "-m", "sicog", "generate", "reasoning", "--model", "ckpt/reasoning", "--data",
        "data/pairs_part1.json", "--output", "out dir/noisy_part1.jsonl", "--image-folder", "imgs", "--prompt",
        "cot-default", "--num-candidates", "4", "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "256",
        "--batch-size", "16", "--seed", "3", "--corrupt", "gaussian_blur,mask", "--top-k", "20"]
    for on in ("1", "true", "True"):
        every = dry_run("reasoning_inference.sh", tmp_path, AUGMENT_ALL=on, **noisy)
        assert every[every.index("--corrupt"):] == ["--corrupt", "gaussian_blur,mask", "--corrupt-all"]
    assert "--corrupt-all" not in dry_run("reasoning_inference.sh", tmp_path, AUGMENT_ALL="false", **noisy)
    # A value that is no switch was read as off: one method per record, without a word.
    refused = subprocess.run(["bash", str(SCRIPTS / "reasoning_inference.sh"), "--dry-run"], cwd=tmp_path,
                             env=subprocess_env(AUGMENT_ALL="yes", **noisy), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.strip() == "error: AUGMENT_ALL must be true or false (got yes)"
    command = dry_run("reasoning_inference.sh", REPO / "docs", NPROC_PER_NODE="4", **noisy)
    assert command[:3] == [sys.executable, "-m", "sicog.launch"] and "--nproc_per_node" in command
    assert command[command.index("-m", 3):][:4] == ["-m", "sicog", "generate", "reasoning"]


@pytest.mark.parametrize("name", ["recap_inference.sh", "reasoning_inference.sh"])
def test_several_inputs_write_beside_the_first(name, tmp_path):
    """`sicog generate --data a.jsonl,b.jsonl`: the output goes beside the first input, not into a folder named
    after the whole list."""
    words = dry_run(name, tmp_path, EXPERIMENT_NAME="job", MODEL_PATH="ckpt", DATA_PATH="d1/a.jsonl,d2/b.jsonl")
    assert words[words.index("--output") + 1] == "d1/job.jsonl"


@pytest.mark.parametrize("name", ["recap_inference.sh", "reasoning_inference.sh"])
def test_scripts_pass_the_documented_sampling_when_unset(name, tmp_path):
    """As the published recap scripts, the scripts always pass temperature and top_p: unset, they are `sicog
    generate`'s defaults (the paper's), never what the checkpoint's generation_config.json holds."""
    from sicog.generate.settings import SamplingSettings

    assert f"TEMPERATURE ({SamplingSettings.temperature}), TOP_P ({SamplingSettings.top_p})" in (
        SCRIPTS / name).read_text()
    words = dry_run(name, tmp_path, EXPERIMENT_NAME="job", MODEL_PATH="ckpt", DATA_PATH="data.jsonl")
    assert words[words.index("--temperature") + 1] == str(SamplingSettings.temperature)
    assert words[words.index("--top-p") + 1] == str(SamplingSettings.top_p)
    words = dry_run(name, tmp_path, EXPERIMENT_NAME="job", MODEL_PATH="ckpt", DATA_PATH="data.jsonl",
                    TEMPERATURE="1.0", TOP_P="0.8")
    assert (words.count("--temperature"), words.count("--top-p")) == (1, 1)
    assert words[words.index("--temperature") + 1] == "1.0" and words[words.index("--top-p") + 1] == "0.8"


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_rerun_gives_the_uninterrupted_output(setup, tmp_path):
    env = subprocess_env(EXPERIMENT_NAME="reference", MODEL_PATH=str(setup / "model"),
                         DATA_PATH=str(setup / "questions"), SPLIT="train", IMAGE_FOLDER=str(setup / "images"),
                         OUTPUT_DIR=str(tmp_path), NUM_CANDIDATES="2", MAX_NEW_TOKENS="8", BATCH_SIZE="2")
    # The published layout names the input ${DATA_PATH}_${SPLIT}.json: a JSON array works as well as JSON Lines.
    (setup / "questions_train.json").write_text((setup / "questions_train.jsonl").read_text())
    result = subprocess.run(["bash", str(SCRIPTS / "reasoning_inference.sh"), "--no-progress"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "reference_train.jsonl"  # one output per split

    output = tmp_path / "killed" / "gen.jsonl"
    part = shard_path(output, 0, 1)
    kill_after = random.Random(5).randint(1, 9)  # records on disk when the kill comes
    command = [sys.executable, "-m", "sicog", *cli_args(setup, output, data="questions_train.json")]
    process = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if part.exists() and part.read_bytes().count(b"\n") >= kill_after:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert process.wait(timeout=60) == -signal.SIGKILL, process.stderr.read().decode()
    assert not output.exists() and part.exists()

    rerun = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stderr
    assert output.read_bytes() == reference.read_bytes()
    killed_errors = (tmp_path / "killed" / "gen.errors.jsonl").read_bytes()
    assert killed_errors == (tmp_path / "reference_train.errors.jsonl").read_bytes()
    errors = load_records(tmp_path / "killed" / "gen.errors.jsonl")
    ids = [r["id"] for r in load_records(output)] + [e["id"] for e in errors]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))


@pytest.mark.slow
def test_torchrun_two_processes_cover_every_id_once_like_one_process(setup, tmp_path):
    single = tmp_path / "single.jsonl"
    result = subprocess.run([sys.executable, "-m", "sicog", *cli_args(setup, single)], env=subprocess_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    double = tmp_path / "double.jsonl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "sicog", *cli_args(setup, double)]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rank 0/2:" in result.stderr and "rank 1/2:" in result.stderr
    ids = [r["id"] for r in load_records(double)] + [e["id"] for e in load_records(tmp_path / "double.errors.jsonl")]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))
    assert double.read_bytes() == single.read_bytes()  # batches and seeds do not depend on the world size
    assert not list(tmp_path.glob("*.rank*"))


def test_no_shared_prefill_prefills_per_candidate_and_writes_the_same_candidates(setup, tmp_path, monkeypatch):
    from sicog.model.modeling import SicogForConditionalGeneration

    calls = []
    original = SicogForConditionalGeneration._prefill_once

    def counted(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(SicogForConditionalGeneration, "_prefill_once", counted)
    assert main(cli_args(setup, tmp_path / "shared.jsonl", "--seed", "3")) == 0
    shared_calls = len(calls)
    assert main(cli_args(setup, tmp_path / "plain.jsonl", "--seed", "3", "--no-shared-prefill")) == 0
    assert shared_calls == 6 and len(calls) == shared_calls  # one per batch of 2 records; none with the flag
    candidates = {name: [(r["id"], r["candidates"]) for r in load_records(tmp_path / f"{name}.jsonl")]
                  for name in ("shared", "plain")}
    assert candidates["shared"] == candidates["plain"] and len(candidates["shared"]) == 11
