"""The shard merge of `generate` and `eval` finishes on rerun after a kill at any point of it, and a stale
shard left beside a finished output does not block reruns."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sicog.data.jsonl import RecordError, load_records, write_jsonl
from sicog.data.sharding import merge_shard_files, shard_files, shard_path, written_records
from sicog.model.builders import save_pretrained
from sicog.toy.build import build_world, load_manifest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_factory) -> dict:
    """A saved tiny checkpoint, 6 image-question records (one image missing) and the tiny toy benchmark."""
    root = tmp_path_factory.mktemp("merge_crash")
    model, processor = tiny_model_factory(seed=3)
    save_pretrained(model, processor, root / "model")
    (root / "images").mkdir()
    records = []
    for i in range(6):
        Image.new("RGB", (24 + 8 * i, 40), (30 * i, 90, 255 - 30 * i)).save(root / "images" / f"{i}.png")
        records.append({"id": f"q{i}", "image": f"{i}.png", "question": f"Which shape is number {i}?"})
    records[3]["image"] = "missing.png"
    write_jsonl(root / "questions.jsonl", records)
    build_world(root / "world", seed=0, size="tiny")
    return {"root": root, **load_manifest(root / "world")}


def sicog(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SICOG_CRASH_AT")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    if crash_at:
        env["SICOG_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "sicog", *args], env=env, capture_output=True, text=True, timeout=300)


def generate_args(setup: dict, output: Path) -> list[str]:
    root = setup["root"]
    return ["generate", "reasoning", "--model", str(root / "model"), "--data", str(root / "questions.jsonl"),
            "--image-folder", str(root / "images"), "--output", str(output), "--num-candidates", "2",
            "--max-new-tokens", "6", "--batch-size", "2", "--no-progress"]


def eval_args(setup: dict, out: Path) -> list[str]:
    return ["eval", "--model", str(setup["root"] / "model"), "--benchmark", str(setup["bench_mc"]),
            "--output-dir", str(out), "--max-new-tokens", "4", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def generated(setup) -> Path:
    output = setup["root"] / "reference" / "gen.jsonl"
    result = sicog(*generate_args(setup, output))
    assert result.returncode == 0, result.stderr
    return output


@pytest.mark.slow
@pytest.mark.parametrize("point", ["merge-output-written", "merge-written"])
def test_generate_killed_inside_the_merge_finishes_on_rerun(setup, generated, point, tmp_path):
    output = tmp_path / "gen.jsonl"
    killed = sicog(*generate_args(setup, output), crash_at=point)
    assert killed.returncode == -9, killed.stderr
    assert output.exists() and shard_files(output)  # merged output written, shards still there
    rerun = sicog(*generate_args(setup, output))
    assert rerun.returncode == 0, rerun.stderr
    assert output.read_bytes() == generated.read_bytes()
    errors = tmp_path / "gen.errors.jsonl"
    assert errors.read_bytes() == (generated.parent / "gen.errors.jsonl").read_bytes()
    assert not shard_files(output) and not shard_files(errors)


@pytest.mark.slow
def test_generate_rerun_with_a_stale_shard_after_a_finished_run(setup, generated, tmp_path):
    output = tmp_path / "gen.jsonl"
    shutil.copy(generated, output)
    shutil.copy(generated.parent / "gen.errors.jsonl", tmp_path / "gen.errors.jsonl")
    shutil.copy(generated, shard_path(output, 0, 1))  # left behind by a run killed before removing it
    rerun = sicog(*generate_args(setup, output))
    assert rerun.returncode == 0, rerun.stderr
    assert output.read_bytes() == generated.read_bytes() and not shard_files(output)


@pytest.mark.slow
def test_eval_killed_inside_the_merge_finishes_on_rerun(setup, tmp_path):
    reference = sicog(*eval_args(setup, tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    killed = sicog(*eval_args(setup, out), crash_at="merge-written")
    assert killed.returncode == -9, killed.stderr
    assert shard_files(out / "predictions.jsonl")
    rerun = sicog(*eval_args(setup, out))
    assert rerun.returncode == 0, rerun.stderr
    for name in ("predictions.jsonl", "errors.jsonl", "results.json"):
        theirs = (tmp_path / "reference" / name).read_text().replace(str(tmp_path / "reference"), "OUT")
        assert (out / name).read_text().replace(str(out), "OUT") == theirs, name
    assert not shard_files(out / "predictions.jsonl")


def test_a_stale_shard_that_disagrees_with_the_merged_output_still_fails(tmp_path):
    output, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    write_jsonl(output, [{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    write_jsonl(shard_path(output, 0, 1), [{"id": "a", "v": 1}])  # a copy: not counted again
    assert merge_shard_files(output, errors, ["a", "b"]) == (2, 0)
    assert load_records(output) == [{"id": "a", "v": 1}, {"id": "b", "v": 2}] and not shard_files(output)
    write_jsonl(shard_path(output, 0, 1), [{"id": "a", "v": 9}])  # another answer for "a": two runs mixed
    with pytest.raises(RecordError, match=r"1 duplicated \['a'\]"):
        merge_shard_files(output, errors, ["a", "b"])


def test_a_last_line_without_its_newline_is_not_counted_as_written(tmp_path):
    """`written_records` and the merge agree: a whole record that lacks only its newline is cut, so not done."""
    part = shard_path(tmp_path / "out.jsonl", 0, 2)
    part.write_bytes(b'{"id": "a"}\n{"id": "b"}')
    assert [r["id"] for _, r in written_records(part)] == ["a"]
    part.write_bytes(b'{"id": "a"}\n{"id": "b"')  # cut inside the record
    assert [r["id"] for _, r in written_records(part)] == ["a"]
    with pytest.raises(RecordError, match="is not a file"):
        list(written_records(tmp_path))
