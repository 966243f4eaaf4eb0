"""`sicog eval` as users run it: a saved checkpoint on the toy benchmark, bad input, torchrun with 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port

from sicog.cli import main
from sicog.data.checkpoint_files import checkpoint_signature
from sicog.data.jsonl import load_records
from sicog.model.builders import save_pretrained
from sicog.toy.build import build_world, load_manifest
from sicog.toy.datasets import read_bench_tsv
from sicog.toy.score import score_mc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory) -> dict:
    """A saved tiny checkpoint and the tiny toy world."""
    root = tmp_path_factory.mktemp("eval_cli")
    model, processor = tiny_model_factory(seed=5)
    save_pretrained(model, processor, root / "model")
    build_world(root / "world", seed=0, size="tiny")
    return {"root": root, "model": root / "model", **load_manifest(root / "world")}


def eval_args(setup: dict, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(setup["model"]), "--benchmark", str(setup["bench_mc"]), "--output-dir", str(out),
            "--max-new-tokens", "6", "--batch-size", "4", "--no-progress", *extra]


def test_command_evaluates_a_checkpoint(setup, tmp_path, capsys) -> None:
    assert main(eval_args(setup, tmp_path)) == 0
    out = capsys.readouterr().out
    predictions = {r["id"]: r["prediction"] for r in load_records(tmp_path / "predictions.jsonl")}
    assert sorted(predictions, key=int) == [str(i) for i in range(10)]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["total"] == results["scored"] == 10 and results["errors"] == 0
    assert results["accuracy"] == score_mc(predictions, read_bench_tsv(setup["bench_mc"]))["accuracy"]
    assert f"accuracy {results['accuracy']:.4f} ({results['correct']}/10 scored rows)" in out
    assert "math:" in out and "results.xlsx" in out
    record = load_records(tmp_path / "predictions.jsonl")[0]
    assert record["settings"] == {"model": str(setup["model"]), "prompt_style": "direct", "max_new_tokens": 6,
                                  "mc_scoring": "generate", "blind_seed": None, "short_answer": True}
    assert json.loads((tmp_path / "checkpoint.json").read_text()) == {
        "model": str(setup["model"].resolve()), "weights": checkpoint_signature(setup["model"])}
    assert record["prompt"].endswith("Answer with the option's letter from the given choices directly.")


def test_a_resumed_run_knows_its_checkpoint_by_folder_and_weights(setup, tmp_path, capsys, monkeypatch) -> None:
    """The same folder typed relative to elsewhere resumes; weights retrained into it are another model."""
    model = tmp_path / "model"
    shutil.copytree(setup["model"], model)
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = eval_args(setup, out)
    args[args.index("--model") + 1] = "model"
    assert main(args) == 0
    predictions = (out / "predictions.jsonl").read_bytes()
    lines = predictions.splitlines(keepends=True)
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:4]))  # as a run killed after 4 rows left it
    (out / "results.json").unlink()
    monkeypatch.chdir(setup["root"])
    args[args.index("--model") + 1] = str(model)
    assert main(args) == 0 and (out / "predictions.jsonl").read_bytes() == predictions
    (out / "predictions.jsonl").write_bytes(b"".join(lines[:4]))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # retrained in place: the same name, a new file
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} holds runs of another weights (" in err and len(err.strip().splitlines()) == 1
    assert (out / "predictions.jsonl").read_bytes() == b"".join(lines[:4])


def test_command_reports_bad_input(setup, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\n0\tWhat?\n")
    args = eval_args(setup, tmp_path / "a")
    args[args.index("--benchmark") + 1] = str(bad)
    assert main(args) == 2
    assert "bad.tsv:1: missing columns: image or image_path" in capsys.readouterr().err
    args = eval_args(setup, tmp_path / "b")
    args[args.index("--model") + 1] = str(tmp_path / "no_model")
    assert main(args) == 2
    assert "sicog eval: error:" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("device, says", [
    ("gpu", "--device gpu: Expected one of"),
    pytest.param("cuda:0", "--device cuda:0: no CUDA device is available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
    pytest.param("mps", "--device mps: no MPS device is available here",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="an MPS device is there")),
    ("meta", "--device meta: a meta device holds no weights to run"),
])
def test_an_unusable_device_is_one_line(setup, tmp_path, capsys, device, says) -> None:
    """A typo or a GPU that is not there ended in torch's traceback (RuntimeError, AssertionError), exit 1."""
    assert main(eval_args(setup, tmp_path / "a", "--device", device)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sicog eval: error: {says}") and len(err.splitlines()) == 1, err


def test_command_refuses_an_output_dir_that_is_a_file(setup, tmp_path, capsys, monkeypatch) -> None:
    import sicog.eval.generation

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sicog.eval.generation, "load_for_eval", no_load)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    assert main(eval_args(setup, taken)) == 2
    assert capsys.readouterr().err == f"sicog eval: error: --output-dir {taken} is a file, not a folder\n"
    assert main(eval_args(setup, taken / "sub")) == 2
    inside = f"sicog eval: error: --output-dir {taken / 'sub'} cannot be made a folder ({taken} is a file)\n"
    assert capsys.readouterr().err == inside


@pytest.mark.parametrize(("benchmark", "extra", "says"), [
    ("index\timage_path\tquestion\tanswer\n0\ta.png\tA cat?\tyes\n1\tb.png\tA dog?\tno\n",
     ("--mc-scoring", "likelihood"), "likelihood scoring needs a multiple-choice benchmark, not yes/no"),
    ("index\timage_path\tquestion\tA\tB\tanswer\n0\ta.png\tColour?\tred\tblue\tA\n"
     "1\ta.png\tShape?\tsquare\tcircle\tB\n", ("--blind-seed", "0"),
     "the blind baseline needs at least two distinct images"),
    # A reply length for a scoring that generates none was ignored without a word.
    ("index\timage_path\tquestion\tA\tB\tanswer\n0\ta.png\tColour?\tred\tblue\tA\n", ("--mc-scoring", "likelihood"),
     "--max-new-tokens 6: likelihood scoring generates no reply (leave it out)"),
])
def test_a_scoring_the_benchmark_cannot_take_stops_before_the_model_loads(setup, tmp_path, capsys, monkeypatch,
                                                                         benchmark, extra, says) -> None:
    """Found after the load, each cost a whole model load and left checkpoint.json claiming the folder."""
    import sicog.eval.generation

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(sicog.eval.generation, "load_for_eval", no_load)
    (tmp_path / "bench.tsv").write_text(benchmark)
    args = eval_args(setup, tmp_path / "out", *extra)
    args[args.index("--benchmark") + 1] = str(tmp_path / "bench.tsv")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sicog eval: error:") and says in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _drop_tensors(path: Path, prefix: str) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(path).items() if not k.startswith(prefix)}, path, metadata={"format": "pt"})


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "says"), [
    (lambda ck: _cut(ck / "model.safetensors"),
     "{ck}/model.safetensors: not a readable safetensors file (Error while deserializing header: incomplete metadata"),
    (lambda ck: (ck / "model.safetensors").unlink(),
     "Error no file named model.safetensors, or pytorch_model.bin, found in directory {ck}"),
    (lambda ck: _cut(ck / "config.json"), "{ck}/config.json: not valid JSON ("),
    (lambda ck: (ck / "config.json").write_text("[1, 2]"), "{ck}/config.json: expected a JSON object, got list"),
    (lambda ck: _cut(ck / "tokenizer.json"), "{ck}/tokenizer.json: not valid JSON ("),
    # Loaded with those tensors drawn at random, it evaluated (trained, generated) from noise and succeeded.
    (lambda ck: _drop_tensors(ck / "model.safetensors", "language_model.model.layers.0."),
     "{ck}: its weights lack 12 of the model's tensors (language_model.model.layers.0."),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(setup, tmp_path, capsys, damage, says) -> None:
    """What a run killed while saving leaves: one error line naming the file, exit 2, no output folder."""
    checkpoint = tmp_path / "ck"
    shutil.copytree(setup["model"], checkpoint)
    damage(checkpoint)
    args = eval_args(setup, tmp_path / "out")
    args[args.index("--model") + 1] = str(checkpoint)
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sicog eval: error:")]  # not the progress bar
    assert "Traceback" not in err and len(errors) == 1, err
    assert errors[0].startswith("sicog eval: error: " + says.format(ck=checkpoint)), err
    assert not (tmp_path / "out").exists()
    # One type for every such problem, caught by commands that catch either OSError or ValueError.
    from sicog.model.builders import CheckpointError, load_pretrained

    with pytest.raises(CheckpointError) as caught:
        load_pretrained(checkpoint)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)


def test_image_use_refuses_a_folder_that_is_no_checkpoint(tmp_path, capsys) -> None:
    data, typo = tmp_path / "refs.jsonl", tmp_path / "ckpt_typo"
    data.write_text("")
    assert main(["image-use", "--model", str(typo), "--data", str(data), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"sicog image-use: error: no SICOG checkpoint at {typo} (config.json missing)\n"


def test_a_checkpoints_config_file_given_as_the_model_says_to_give_its_folder(setup, tmp_path, capsys) -> None:
    """eval and image-use said "config.json missing" of a config.json that is there, as no other command does."""
    config = setup["model"] / "config.json"
    args = eval_args(setup, tmp_path / "out")
    args[args.index("--model") + 1] = str(config)
    assert main(args) == 2
    said = capsys.readouterr().err
    assert said == f"sicog eval: error: {config} is a file; give the checkpoint folder that holds it\n"
    (tmp_path / "refs.jsonl").write_text("")
    assert main(["image-use", "--model", str(config), "--data", str(tmp_path / "refs.jsonl"),
                 "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"sicog image-use: error: {config} is a file; give the checkpoint folder that "
                                       "holds it\n")


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(setup, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # One row per generate call, so that both runs compute every reply identically.
    args = eval_args(setup, tmp_path / "OUT", "--batch-size", "1")[1:]
    single = [sys.executable, "-m", "sicog", "eval", *args]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port()), "-m", "sicog", "eval", *args]
    for name, command in (("single", single), ("ranks", ranks)):
        command = [str(tmp_path / name) if part == str(tmp_path / "OUT") else part for part in command]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    for name in ("predictions.jsonl", "errors.jsonl", "results.json"):
        single_text = (tmp_path / "single" / name).read_text().replace(str(tmp_path / "single"), "DIR")
        ranks_text = (tmp_path / "ranks" / name).read_text().replace(str(tmp_path / "ranks"), "DIR")
        assert ranks_text == single_text, name
    assert not list((tmp_path / "ranks").glob("*.rank*"))


def test_a_gpu_index_past_the_visible_ones_is_refused(monkeypatch) -> None:
    """cuda:3 on a one-GPU machine failed at the first tensor moved there, after the model was read."""
    from sicog.model.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"--device cuda:3: only 1 CUDA device\(s\) are visible here"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0")[0] == torch.device("cuda:0")
