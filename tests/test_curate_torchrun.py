"""Curation under torchrun: two ranks share the embedding work and write the same outputs as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

from sicog.data.prompts import COT_STEPS, reasoning_prompt
from sicog.data.steps import format_steps

ROOT = Path(__file__).resolve().parents[1]
CONCLUSIONS = ["There are three cubes. The answer is 3.", "The answer is 5.", "I count three, so the answer is three.",
               "Answer: 3", "Five cubes. The answer is 5.", "Three cubes are visible. The answer is 3."]


def curate_command(nproc: int, input_path: Path, out: Path) -> list[str]:
    launcher = [sys.executable, "-m", "sicog"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "sicog"]
    return launcher + ["curate", "reasoning", "--input", str(input_path), "--output-dir", str(out),
                       "--threshold", "0.5", "--chunk-size", "4", "--device", "cpu"]


@pytest.mark.slow
def test_two_ranks_embed_a_texts_file_as_one_process(tmp_path: Path) -> None:
    """embed_file under torchrun (NV-Embed-v2 on every GPU of its own environment): the ranks share the chunks."""
    import numpy as np

    from sicog.curate.embed import packaged_minilm_path

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": f"In picture {i}: {c}"}) + "\n"
                             for i in range(3) for c in CONCLUSIONS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    embed = ["-m", "sicog.curate.embed_file", "--texts", str(texts), "--encoder", packaged_minilm_path(),
             "--device", "cpu", "--chunk-size", "4"]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(free_port())]
    for launcher, name in (([sys.executable], "single"), (ranks, "ranks")):
        result = subprocess.run([*launcher, *embed, "--output", str(tmp_path / f"{name}.npy")], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("embedding (rank 1/2)" in result.stderr) == (name == "ranks")
    single, ranked = np.load(tmp_path / "single.npy"), np.load(tmp_path / "ranks.npy")
    assert single.shape == (18, 384) and np.array_equal(single, ranked)
    described = [json.loads((tmp_path / f"{name}.npy.json").read_text()) for name in ("single", "ranks")]
    assert described[0] == described[1]
    assert not list(tmp_path.glob("*.chunks"))


@pytest.mark.slow
def test_two_ranks_write_the_same_outputs_as_one_process(tmp_path: Path) -> None:
    records = []
    for i in range(8):  # 48 distinct compared texts -> 12 chunks of 4, six per rank
        conclusions = CONCLUSIONS[i % 6 :] + CONCLUSIONS[: i % 6]
        question = f"How many cubes are in picture {i}?"
        records.append({
            "id": f"q{i}", "image": f"{i}.jpg", "question": question,
            "candidates": [format_steps(COT_STEPS, ["Count.", f"Picture {i}.", "Counting.", f"In picture {i}: {c}"])
                           for c in conclusions],
            "generation": {"model": "m", "prompt_type": "cot-default",
                           "prompt": reasoning_prompt("cot-default", question), "temperature": 0.7},
        })
    input_path = tmp_path / "gen.jsonl"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for nproc, name in ((1, "single"), (2, "ranks")):
        result = subprocess.run(curate_command(nproc, input_path, tmp_path / name), cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    for name in ("scored.jsonl", "curated.jsonl", "pairs.jsonl", "errors.jsonl", "report.md"):
        assert (tmp_path / "ranks" / name).read_text() == (tmp_path / "single" / name).read_text(), name
    scored = [json.loads(line) for line in (tmp_path / "ranks" / "scored.jsonl").read_text().splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    assert all(r["majority_answer"] == "3" for r in scored)
