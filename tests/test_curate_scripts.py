"""The quality-evaluation wrappers: environment variables -> `sicog curate ...`, from any directory."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "captions": ROOT / "quality_evaluation" / "scripts" / "recaption_quality_eval.sh",
    "reasoning": ROOT / "quality_evaluation" / "scripts" / "reasoning_quality_eval.sh",
}
VARIABLES = ("RAW_DATASET", "MODEL_NAME_OR_PATH", "TEMPERATURE", "ENCODER_MODEL_NAME_OR_PATH", "THRESHOLD",
             "OUTPUT_DIR", "MIN_AGREEMENT", "NPROC_PER_NODE", "ENCODER_TRUST_REMOTE_CODE", "ENCODER_APPEND_EOS",
             "ENCODER_MAX_LENGTH", "ENCODER_QUERY_PREFIX", "ENCODER_DTYPE", "BATCH_SIZE", "SEED", "ENCODER_PYTHON",
             "ENCODER_PADDING_SIDE")


def run_script(task: str, cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(variables, SICOG_PYTHON=sys.executable, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        ["bash", str(SCRIPTS[task]), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("task", ["captions", "reasoning"])
def test_missing_dataset_is_named(task: str, tmp_path: Path) -> None:
    result = run_script(task, tmp_path)
    assert result.returncode == 2 and "RAW_DATASET" in result.stderr


@pytest.mark.parametrize("task", ["captions", "reasoning"])
def test_dry_run_prints_the_resolved_command(task: str, tmp_path: Path) -> None:
    result = run_script(
        task, tmp_path, "--dry-run", "--seed", "4",
        RAW_DATASET="gen/candidates.jsonl", MODEL_NAME_OR_PATH="ckpt/stage0", TEMPERATURE="0.7",
        ENCODER_MODEL_NAME_OR_PATH="nvidia/NV-Embed-v2", ENCODER_TRUST_REMOTE_CODE="1", ENCODER_APPEND_EOS="1",
        ENCODER_MAX_LENGTH="32768", THRESHOLD="0.9", MIN_AGREEMENT="0.6",
    )
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout.strip())
    assert command[1:5] == ["-m", "sicog", "curate", task]
    joined = " ".join(command)
    for expected in ("--input gen/candidates.jsonl", "--output-dir gen/candidates_curated",
                     "--model-name-or-path ckpt/stage0",
                     "--temperature 0.7", "--encoder nvidia/NV-Embed-v2", "--trust-remote-code", "--append-eos",
                     "--max-length 32768", "--threshold 0.9", "--seed 4"):
        assert expected in joined
    assert ("--min-agreement 0.6" in joined) == (task == "reasoning")
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("task", ["captions", "reasoning"])
def test_an_encoder_in_its_own_environment_embeds_there_and_curation_reads_its_embeddings(task, tmp_path) -> None:
    """NV-Embed-v2's code needs transformers 4.42: with ENCODER_PYTHON the scripts run docs/curation.md's three
    commands (they ran the encoder in this environment, where it cannot load)."""
    variables = {"RAW_DATASET": "gen/candidates.jsonl", "ENCODER_MODEL_NAME_OR_PATH": "nvidia/NV-Embed-v2",
                 "ENCODER_TRUST_REMOTE_CODE": "1", "ENCODER_APPEND_EOS": "1", "ENCODER_MAX_LENGTH": "1024",
                 "ENCODER_DTYPE": "float32", "ENCODER_PADDING_SIDE": "right", "THRESHOLD": "0.85", "SEED": "4"}
    result = run_script(task, tmp_path, "--dry-run", ENCODER_PYTHON="/envs/nvembed/bin/python", **variables)
    assert result.returncode == 0, result.stderr
    texts, embed, curate = (shlex.split(line) for line in result.stdout.strip().splitlines())
    assert texts[1:] == ["-m", "sicog", "curate", "texts", task, "--input", "gen/candidates.jsonl",
                         "--output", "gen/candidates_curated.texts.jsonl"]
    assert embed == ["env", f"PYTHONPATH={ROOT}:{ROOT}", "/envs/nvembed/bin/python", "-m", "sicog.curate.embed_file",
                     "--texts", "gen/candidates_curated.texts.jsonl", "--output", "gen/candidates_curated.emb.npy",
                     "--encoder", "nvidia/NV-Embed-v2", "--max-length", "1024", "--padding-side", "right",
                     "--dtype", "float32", "--trust-remote-code", "--append-eos"]
    assert curate[1:] == ["-m", "sicog", "curate", task, "--input", "gen/candidates.jsonl", "--output-dir",
                          "gen/candidates_curated", "--threshold", "0.85", "--seed", "4",
                          "--embeddings", "gen/candidates_curated.emb.npy"]
    # Each output its own texts and embeddings: two runs over one dataset with other encoder settings mixed theirs.
    other = run_script(task, tmp_path, "--dry-run", ENCODER_PYTHON="/envs/nvembed/bin/python", **variables,
                       OUTPUT_DIR="runs/short/")
    assert shlex.split(other.stdout.splitlines()[1])[5:9] == ["--texts", "runs/short.texts.jsonl", "--output",
                                                               "runs/short.emb.npy"]
    without = run_script(task, tmp_path, "--dry-run", RAW_DATASET="g.jsonl", ENCODER_PYTHON="/envs/nvembed/bin/python")
    assert without.returncode == 2 and "ENCODER_MODEL_NAME_OR_PATH" in without.stderr
    # Ranks share the embedding, in that environment's torchrun; scoring the embeddings made is one process's.
    ranks = run_script(task, tmp_path, "--dry-run", ENCODER_PYTHON="/envs/nvembed/bin/python", NPROC_PER_NODE="2",
                       **variables)
    texts, embed, curate = (shlex.split(line) for line in ranks.stdout.strip().splitlines())
    assert embed[2:9] == ["/envs/nvembed/bin/python", "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--standalone", "-m"]
    assert curate[1:3] == ["-m", "sicog"]
    # On several nodes every node's ranks embed; the texts and the scoring are the first node's (every node wrote
    # both, and each embedded the whole file on its own).
    nodes = {"NNODES": "2", "MASTER_ADDR": "node0", "NPROC_PER_NODE": "2"}
    first = run_script(task, tmp_path, "--dry-run", ENCODER_PYTHON="/envs/nvembed/bin/python", NODE_RANK="0",
                       **nodes, **variables)
    texts, embed, curate = (shlex.split(line) for line in first.stdout.strip().splitlines())
    assert embed[2:14] == ["/envs/nvembed/bin/python", "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--nnodes", "2", "--node_rank", "0", "--master_addr", "node0", "--master_port"]
    assert texts[1:5] == ["-m", "sicog", "curate", "texts"] and curate[1:4] == ["-m", "sicog", "curate"]
    second = run_script(task, tmp_path, "--dry-run", ENCODER_PYTHON="/envs/nvembed/bin/python", NODE_RANK="1",
                        **nodes, **variables)
    assert second.returncode == 0, second.stderr
    (embed,) = (shlex.split(line) for line in second.stdout.strip().splitlines())
    assert embed[2:4] == ["/envs/nvembed/bin/python", "-m"] and embed[9:11] == ["--node_rank", "1"]


def write_counting_record(path: Path) -> None:
    """One reasoning record, three of its four candidates answering 3 (a JSON array, as the published scripts read)."""
    candidates = [f"Step 4: Counting again. The answer is {n}." for n in (3, 3, 3, 5)]
    record = {"id": "q", "image": "q.jpg", "candidates": candidates,
              "generation": {"prompt_type": "cot-default", "prompt": "How many? Answer the question step-by-step."}}
    path.write_text(json.dumps([record]))


@pytest.mark.slow
def test_an_encoder_run_in_another_python_curates_as_in_this_one(tmp_path: Path) -> None:
    from sicog.curate.embed import packaged_minilm_path

    write_counting_record(tmp_path / "gen.json")
    variables = {"RAW_DATASET": "gen.json", "ENCODER_MODEL_NAME_OR_PATH": packaged_minilm_path(), "THRESHOLD": "0.5"}
    here = run_script("reasoning", tmp_path, "--device", "cpu", OUTPUT_DIR="here", **variables)
    assert here.returncode == 0, here.stderr[-2000:]
    apart = run_script("reasoning", tmp_path, OUTPUT_DIR="apart", ENCODER_PYTHON=sys.executable, **variables)
    assert apart.returncode == 0, apart.stderr[-2000:]
    assert (tmp_path / "apart.emb.npy").is_file() and (tmp_path / "apart.texts.jsonl").is_file()
    # Two nodes on this machine, the second started first: its ranks wait at the rendezvous for the first node's
    # texts; the first node scores.
    nodes = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(variables | nodes, OUTPUT_DIR="nodes", ENCODER_PYTHON=sys.executable, SICOG_PYTHON=sys.executable,
               HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    launched = [subprocess.Popen(["bash", str(SCRIPTS["reasoning"])], cwd=tmp_path, env={**env, "NODE_RANK": rank},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in ("1", "0")]
    for node in launched:
        stderr = node.communicate(timeout=300)[1]
        assert node.returncode == 0, stderr[-2000:]
    for name in ("scored.jsonl", "curated.jsonl", "pairs.jsonl"):
        assert (tmp_path / "apart" / name).read_text() == (tmp_path / "here" / name).read_text()
        assert (tmp_path / "nodes" / name).read_text() == (tmp_path / "here" / name).read_text()


@pytest.mark.parametrize(("value", "on"), [("true", True), ("True", True), ("1", True), ("false", False), ("", False)])
def test_encoder_switches_read_as_every_switch(value: str, on: bool, tmp_path: Path) -> None:
    result = run_script("captions", tmp_path, "--dry-run", RAW_DATASET="g.jsonl", ENCODER_TRUST_REMOTE_CODE=value,
                        ENCODER_APPEND_EOS=value)
    assert result.returncode == 0, result.stderr
    assert ("--trust-remote-code" in result.stdout, "--append-eos" in result.stdout) == (on, on)


def test_an_encoder_switch_that_is_neither_on_nor_off_stops_the_script(tmp_path: Path) -> None:
    result = run_script("captions", tmp_path, "--dry-run", RAW_DATASET="g.jsonl", ENCODER_APPEND_EOS="yes")
    assert result.returncode == 2 and "ENCODER_APPEND_EOS must be true or false" in result.stderr


@pytest.mark.parametrize(("variable", "value"),
                         [("THRESHOLD", "0.9x"), ("TEMPERATURE", "warm"), ("MIN_AGREEMENT", "6/10")])
def test_a_number_that_is_none_stops_the_script_naming_it(variable: str, value: str, tmp_path: Path) -> None:
    """A typo reached `sicog curate`, whose error named its flag after its usage, not the variable."""
    result = run_script("reasoning", tmp_path, "--dry-run", RAW_DATASET="g.jsonl", **{variable: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {variable} must be a number (got '{value}')"]


def test_torchrun_when_several_processes(tmp_path: Path) -> None:
    result = run_script("captions", tmp_path, "--dry-run", RAW_DATASET="g.jsonl", NPROC_PER_NODE="2")
    assert "sicog.launch --nproc_per_node 2" in result.stdout


@pytest.mark.slow
def test_script_runs_from_another_directory(tmp_path: Path) -> None:
    record = {"id": "q", "image": "q.jpg", "candidates": ["Step 4: The answer is 3.", "Step 4: The answer is 3."],
              "generation": {"prompt_type": "cot-default", "prompt": "How many? Answer the question step-by-step."}}
    (tmp_path / "gen.json").write_text(json.dumps([record]))
    result = run_script("reasoning", tmp_path, RAW_DATASET="gen.json", THRESHOLD="0.9")
    assert result.returncode == 0, result.stderr[-2000:]
    curated = [json.loads(line) for line in (tmp_path / "gen_curated" / "curated.jsonl").read_text().splitlines()]
    assert [r["id"] for r in curated] == ["q"]


@pytest.mark.slow
def test_script_with_the_papers_encoder_scores_as_the_published_scripts(tmp_path: Path) -> None:
    # NV-Embed-v2's embeddings, computed apart and passed on: its defaults are the paper's threshold on the
    # published formula (self-similarity included).
    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embed_file import save_embeddings
    from sicog.curate.pipeline import compared_texts_and_errors

    write_counting_record(tmp_path / "gen.json")
    texts = compared_texts_and_errors(tmp_path / "gen.json", "reasoning")[0]
    save_embeddings(tmp_path / "emb.npy", np.eye(len(texts), 4, dtype=np.float32), texts,
                    EncoderSettings("/models/NV-Embed-v2", trust_remote_code=True, max_length=512))
    result = run_script("reasoning", tmp_path, "--embeddings", "emb.npy", RAW_DATASET="gen.json")
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads((tmp_path / "gen_curated" / "summary.json").read_text())["settings"]
    assert (settings["threshold"], settings["include_self"]) == (0.85, True)


@pytest.mark.parametrize("task", ["captions", "reasoning"])
def test_wrapper_conventions(task: str) -> None:
    text = SCRIPTS[task].read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/_common.sh"' in text
    assert not re.search(r"(^|[\s=\"'])/(?!dev/)[A-Za-z]", text.replace("#!/usr/bin/env bash", ""))
    assert "pip install" not in text and "apt-get" not in text
