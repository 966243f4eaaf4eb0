"""Each encoder's default curation threshold, `--threshold` over it, and the kept share `sicog curate` prints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_curate_split import generated

from sicog.cli import main
from sicog.curate.embed import EncoderSettings, packaged_minilm_path
from sicog.curate.embed_file import save_embeddings
from sicog.curate.pipeline import ENCODER_THRESHOLDS, CurationSettings, compared_texts, default_threshold


def test_default_threshold_by_encoder_name() -> None:
    minilm = ENCODER_THRESHOLDS["all-MiniLM-L6-v2"]
    assert default_threshold(packaged_minilm_path()) == (minilm, "the default for all-MiniLM-L6-v2")
    assert default_threshold("sentence-transformers/all-MiniLM-L6-v2")[0] == minilm
    for name in ("nvidia/NV-Embed-v2", "/models/nv-embed-v2/"):
        assert default_threshold(name) == (0.85, "the default for NV-Embed-v2")  # the paper's setting
    assert default_threshold("BAAI/bge-small-en") == (0.85, "no measured default for bge-small-en: the paper's, "
                                                             "for NV-Embed-v2")
    assert minilm < 0.85  # MiniLM scores paraphrases lower than NV-Embed-v2's setting assumes


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
    minilm = ENCODER_THRESHOLDS["all-MiniLM-L6-v2"]
    assert summary["settings"]["threshold"] == minilm
    kept, scored = summary["kept"], summary["scored"]
    assert f"kept {kept} of {scored} scored records ({kept / scored:.1%}) at threshold {minilm} " \
           "(the default for all-MiniLM-L6-v2)" in out
    out, summary = run_curate(capsys, "--input", source, "--output-dir", str(tmp_path / "given"), "--threshold", "0")
    assert summary["settings"]["threshold"] == 0.0 and summary["kept"] == summary["scored"] == 3
    assert "kept 3 of 3 scored records (100.0%) at threshold 0.0 (--threshold)" in out

    # Embeddings computed apart: the default follows the encoder named in their description.
    texts = compared_texts(source, "captions")
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


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, capsys) -> None:
    source = str(generated(tmp_path / "gen.jsonl"))
    (tmp_path / "afile").write_text("x\n")
    assert main(["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "afile")]) == 2
    assert capsys.readouterr().err == f"error: --output-dir {tmp_path / 'afile'}: exists and is not a folder\n"
    # Below a file no folder can be made: the operating system's refusal is reported on one line too.
    assert main(["curate", "captions", "--input", source, "--output-dir", str(tmp_path / "afile" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "afile" in err
