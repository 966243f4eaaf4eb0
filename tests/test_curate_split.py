"""Curation with the embeddings computed apart (the NV-Embed-v2 route): the same scores as in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_curate_pipeline import caption_record

from sicog.cli import main
from sicog.curate.embed import packaged_minilm_path
from sicog.data.jsonl import load_records, write_jsonl

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [
    "A red circle sits left of a blue square on a white table.",
    "On a white table, a red circle is to the left of a blue square.",
    "A blue square and a red circle lie on a white table, the circle on the left.",
    "Two green birds fly over a dark lake at night.",
]


def generated(path: Path) -> Path:
    records = [caption_record(f"r{i}", CAPTIONS[i % 2:] + CAPTIONS[: i % 2]) for i in range(3)]
    records.append({"id": "broken", "image": "x.png"})  # no candidates: an error either way
    write_jsonl(path, records)
    return path


def test_split_path_scores_exactly_like_one_process(tmp_path, capsys, monkeypatch):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = generated(tmp_path / "gen.jsonl")
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "one"),
                 "--threshold", "0.5"]) == 0
    assert main(["curate", "texts", "captions", "--input", str(source), "--output", str(tmp_path / "texts.jsonl")]) == 0
    # The embedding half runs as its own process (as it would in NV-Embed-v2's environment).
    embed = subprocess.run([sys.executable, "-m", "sicog.curate.embed_file", "--texts", str(tmp_path / "texts.jsonl"),
                            "--output", str(tmp_path / "emb.npy"), "--encoder", packaged_minilm_path(),
                            "--device", "cpu"], capture_output=True, text=True, cwd=REPO,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert embed.returncode == 0, embed.stderr
    capsys.readouterr()
    # Encoder options beside --embeddings change nothing: said, not silently dropped (the scripts pass the exported
    # ENCODER_* variables whichever route the embeddings took, so it is no refusal).
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "split"),
                 "--threshold", "0.5", "--embeddings", str(tmp_path / "emb.npy"), "--encoder", "nvidia/NV-Embed-v2",
                 "--batch-size", "3"]) == 0
    assert "warning: --encoder, --batch-size ignored: --embeddings" in capsys.readouterr().err
    one, split = load_records(tmp_path / "one" / "scored.jsonl"), load_records(tmp_path / "split" / "scored.jsonl")
    assert [r["scores"] for r in split] == [r["scores"] for r in one] and len(one) == 3
    for name in ("curated.jsonl", "pairs.jsonl", "errors.jsonl"):
        assert (tmp_path / "split" / name).read_text() == (tmp_path / "one" / name).read_text()
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["encoder"]["name_or_path"] == packaged_minilm_path()
    # Scoring made embeddings loads no encoder: the packaged one need not be installed (an install for NV-Embed-v2).
    import sicog.curate.embed

    def not_installed() -> str:
        raise sicog.curate.embed.EncoderNotFound("the default CPU encoder is not installed")

    monkeypatch.setattr(sicog.curate.embed, "packaged_minilm_path", not_installed)
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "bare"),
                 "--threshold", "0.5", "--embeddings", str(tmp_path / "emb.npy")]) == 0
    assert (tmp_path / "bare" / "scored.jsonl").read_text() == (tmp_path / "split" / "scored.jsonl").read_text()
    # Launched with torchrun (as the cycle launches curation), only rank 0 scores and writes, under its lock.
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "rank1"),
                 "--threshold", "0.5", "--embeddings", str(tmp_path / "emb.npy")]) == 0
    assert not list(tmp_path.glob("rank1/*"))  # not even its folder need exist


def test_texts_longer_than_the_encoder_reads_are_counted_and_said_on_either_route(tmp_path, capsys):
    """MiniLM reads 256 tokens: texts that differ only past that scored as one, and nothing said so."""
    from transformers import AutoTokenizer

    source = generated(tmp_path / "gen.jsonl")
    limit = ["--max-length", "18", "--device", "cpu"]
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "one"),
                 "--threshold", "0.5", *limit]) == 0
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_path())
    longer = sum(len(tokenizer(text)["input_ids"]) > 18 for text in set(CAPTIONS))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert 0 < longer < len(CAPTIONS) and one["truncated_texts"] == longer
    said = f"{longer} of the {len(CAPTIONS)} compared texts are longer than the encoder reads (18 tokens)"
    assert one["warnings"][0].startswith(said) and said in (tmp_path / "one" / "report.md").read_text()
    assert main(["curate", "texts", "captions", "--input", str(source), "--output", str(tmp_path / "texts.jsonl")]) == 0
    embed = subprocess.run([sys.executable, "-m", "sicog.curate.embed_file", "--texts", str(tmp_path / "texts.jsonl"),
                            "--output", str(tmp_path / "emb.npy"), "--encoder", packaged_minilm_path(), *limit],
                           capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert embed.returncode == 0, embed.stderr
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "split"),
                 "--threshold", "0.5", "--embeddings", str(tmp_path / "emb.npy")]) == 0
    split = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert (split["truncated_texts"], split["warnings"]) == (one["truncated_texts"], one["warnings"])


def test_embeddings_of_other_texts_are_refused(tmp_path, capsys):
    source = generated(tmp_path / "gen.jsonl")
    write_jsonl(tmp_path / "texts.jsonl", [{"text": "something else"}])
    import numpy as np

    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embed_file import read_texts, save_embeddings

    save_embeddings(tmp_path / "emb.npy", np.ones((1, 4), np.float32), read_texts(tmp_path / "texts.jsonl"),
                    EncoderSettings("x"))
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--embeddings", str(tmp_path / "emb.npy")]) == 2
    assert "embeddings of other texts (1 texts)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no embeddings file"):
        from sicog.curate.embed_file import load_embeddings

        load_embeddings(tmp_path / "nothing.npy", [])


def test_embeddings_made_for_the_other_task_are_refused(tmp_path, capsys):
    """`sicog toy embed reasoning` compares answers: caption texts embedded so were scored by the wrong facts, at
    the reasoning threshold."""
    import numpy as np

    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embed_file import read_texts, save_embeddings

    source = generated(tmp_path / "gen.jsonl")
    assert main(["curate", "texts", "captions", "--input", str(source), "--output", str(tmp_path / "texts.jsonl")]) == 0
    texts = read_texts(tmp_path / "texts.jsonl")
    save_embeddings(tmp_path / "emb.npy", np.ones((len(texts), 4), np.float32), texts,
                    EncoderSettings("toy-facts:reasoning"))
    assert main(["curate", "captions", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--embeddings", str(tmp_path / "emb.npy")]) == 2
    assert "made by toy-facts:reasoning, for reasoning, not for captions" in capsys.readouterr().err
    assert not (tmp_path / "out" / "scored.jsonl").exists()


def test_a_second_embedding_run_on_one_output_stops_at_once(tmp_path, capsys):
    """Two runs on one output (srun tasks without torchrun, each its own rank 0) embedded the same chunks, and each
    removed the other's folder of them: one ended in a traceback, the other blamed a chunk file."""
    from sicog.curate.embed_file import main as embed_main
    from sicog.data.lock import lock_path, output_lock

    write_jsonl(tmp_path / "texts.jsonl", [{"text": text} for text in CAPTIONS])
    output = tmp_path / "emb.npy"
    with output_lock(output):
        code = embed_main(["--texts", str(tmp_path / "texts.jsonl"), "--output", str(output), "--encoder",
                           packaged_minilm_path(), "--device", "cpu"])
    assert code == 2
    holder = f"pid {os.getpid()} on host {os.uname().nodename}; lock file {lock_path(output)}"
    assert capsys.readouterr().err == (f"embed_file: error: {output} is in use by another run ({holder}); wait for it "
                                       "to finish, or delete the lock file if that run is gone\n")
    assert not output.exists() and not (tmp_path / "emb.npy.chunks").exists()
