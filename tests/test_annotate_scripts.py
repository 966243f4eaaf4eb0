"""training_data_annotation/revise_cod.sh and revise_cot.sh: the seed README's variables, from any directory."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sicog.data.jsonl import load_records, write_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "training_data_annotation"
COD_VARS = ("ORIGINAL_CAPTION_FILE", "IMAGE_DIR", "OUTPUT_COD_DIR", "OUTPUT_DD_DIR")
COT_VARS = ("ORIGINAL_COT_FILE", "OUTPUT_COT_DIR", "OUTPUT_SHORT_DIR")


def run_script(name: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in COD_VARS + COT_VARS}
    base.update({"SICOG_PYTHON": sys.executable, "PYTHONPATH": str(REPO), "NPROC_PER_NODE": "1", **env})
    return subprocess.run(["bash", str(SCRIPTS / name), *args], cwd=cwd, env=base, capture_output=True, text=True,
                          timeout=60)


def printed_command(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["revise_cod.sh", "revise_cot.sh"])
def test_scripts_follow_the_wrapper_rules(name):
    text = (SCRIPTS / name).read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert 'source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"' in text
    assert "pip install" not in text and "/work" not in text and " /data" not in text


def test_cod_script_names_every_missing_variable(tmp_path):
    result = run_script("revise_cod.sh", cwd=tmp_path)
    assert result.returncode == 2
    assert "ORIGINAL_CAPTION_FILE IMAGE_DIR OUTPUT_COD_DIR OUTPUT_DD_DIR" in result.stderr
    result = run_script("revise_cot.sh", cwd=tmp_path, ORIGINAL_COT_FILE="x.jsonl")
    assert result.returncode == 2 and "OUTPUT_COT_DIR OUTPUT_SHORT_DIR" in result.stderr


def test_cod_script_passes_the_exported_variables(tmp_path):
    env = dict(zip(COD_VARS, ("caps.jsonl", "imgs", "out cod", "out dd")))
    result = run_script("revise_cod.sh", "--dry-run", "--limit", "5", cwd=tmp_path, ANNOTATION_MODEL="qwen-vl",
                        ANNOTATION_CONCURRENCY="4", **env)
    assert printed_command(result) == [
        sys.executable, "-m", "sicog", "annotate", "cod", "--input", "caps.jsonl", "--image-folder", "imgs",
        "--cod-dir", "out cod", "--dd-dir", "out dd", "--model", "qwen-vl", "--concurrency", "4", "--limit", "5"]


@pytest.mark.parametrize("name", ["revise_cod.sh", "revise_cot.sh"])
def test_annotation_is_one_process_whatever_process_counts_are_exported(name, tmp_path):
    """Copies of an annotation run would race for one output: the training scripts' process counts do not apply."""
    env = dict(zip(COD_VARS + COT_VARS, ("caps.jsonl", "imgs", "cod", "dd", "cot.jsonl", "cot", "short")))
    result = run_script(name, "--dry-run", cwd=tmp_path, **{**env, "NPROC_PER_NODE": "8", "NNODES": "4"})
    assert printed_command(result)[:5] == [sys.executable, "-m", "sicog", "annotate", name[7:10]]


def test_positional_arguments_fill_in_but_never_blank_an_exported_variable(tmp_path):
    env = dict(zip(COD_VARS, ("caps.jsonl", "imgs", "cod", "dd")))
    result = run_script("revise_cod.sh", "", "other_imgs", "", "", "--dry-run", cwd=tmp_path, **env)
    command = printed_command(result)
    assert command[command.index("--input") + 1] == "caps.jsonl"
    assert command[command.index("--image-folder") + 1] == "other_imgs"
    result = run_script("revise_cot.sh", "a.jsonl", "c", "s", "--dry-run", cwd=tmp_path)
    assert printed_command(result)[3:] == ["annotate", "cot", "--input", "a.jsonl", "--cot-dir", "c",
                                           "--short-dir", "s"]


def test_cot_script_converts_from_inside_its_folder(tmp_path):
    source = tmp_path / "llava cot.jsonl"
    answer = "<SUMMARY>s</SUMMARY>\n<CAPTION>c</CAPTION>\n<REASONING>r</REASONING>\n<CONCLUSION>B</CONCLUSION>"
    write_jsonl(source, [{"id": "1", "image": "1.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhich? Answer the question using a single word or phrase."},
        {"from": "gpt", "value": answer}]}])
    result = run_script("revise_cot.sh", cwd=SCRIPTS, ORIGINAL_COT_FILE=str(source),
                        OUTPUT_COT_DIR=str(tmp_path / "cot"), OUTPUT_SHORT_DIR=str(tmp_path / "short"))
    assert result.returncode == 0, result.stderr
    cot = load_records(tmp_path / "cot" / "cot.jsonl")[0]
    assert cot["conversations"][0]["value"] == "<image>\nWhich? Answer the question step-by-step."
    assert load_records(tmp_path / "short" / "short_answer.jsonl")[0]["conversations"][1]["value"] == "B"
