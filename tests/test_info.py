"""`sicog info --checkpoint`: a SICOG checkpoint's numbers; any other or damaged config.json is one error line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sicog.cli import main  # noqa: E402
from sicog.model.builders import tiny_text_config, tiny_vision_config  # noqa: E402
from sicog.model.configuration import SicogConfig  # noqa: E402


def _tiny_sicog_config() -> SicogConfig:
    return SicogConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(64), scale_resolution=64,
                       max_slice_nums=4, resampler_num_queries=16, resampler_num_heads=2)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("sicog info: error: "), captured.err
    return lines[0]


def test_a_sicog_checkpoint_is_described(tmp_path: Path, capsys) -> None:
    _tiny_sicog_config().save_pretrained(tmp_path)
    assert main(["info", "--checkpoint", str(tmp_path), "--image-size", "64x64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert 0 < info["parameters"] < 10**7 and info["tokens_per_slice"] == 16


@pytest.mark.parametrize("model", ["qwen2", "clip_vision_model", "no model_type"])
def test_another_models_checkpoint_is_refused(tmp_path: Path, capsys, model: str) -> None:
    """model_weight/ holds plain LLM and CLIP folders: read as SicogConfig they gave a 12.4B-parameter model."""
    if model == "qwen2":
        tiny_text_config(64).save_pretrained(tmp_path)
    elif model == "clip_vision_model":
        tiny_vision_config().save_pretrained(tmp_path)
    else:
        (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    found = None if model == "no model_type" else model
    assert line == (f"sicog info: error: {tmp_path / 'config.json'}: not a SICOG checkpoint "
                    f"(model_type {found!r}, not 'sicog')")


def test_a_published_checkpoint_is_refused_with_the_way_to_convert_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llava_qwen"}')
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == (f"sicog info: error: {tmp_path / 'config.json'}: not a SICOG checkpoint "
                                       "(model_type 'llava_qwen', not 'sicog') but a published one: convert it with "
                                       "`sicog convert from-release`")


@pytest.mark.parametrize(("content", "says"), [
    ("{bad", "not valid JSON"),
    ("[]", "expected a JSON object, got list"),
    ('{"model_type": "sicog", "max_slice_nums": "x"}', "field 'max_slice_nums': expected an integer, got \"x\""),
    ('{"model_type": "sicog", "text_config": {"hidden_size": "x"}}',
     "field 'text_config.hidden_size': expected an integer, got \"x\""),
    ('{"model_type": "sicog", "text_config": 5}', "field 'text_config': expected an object or null, got 5"),
    ('{"model_type": "sicog", "resampler_num_queries": 143}', "resampler_num_queries=143 is not a perfect square"),
    # Passed validation and failed building the model: a RuntimeError traceback from torch.
    ('{"model_type": "sicog", "text_config": {"hidden_size": -3}}', "text_config.hidden_size=-3 must be >= 1"),
    ('{"model_type": "sicog", "vision_config": {"patch_size": 0}}', "vision_config.patch_size=0 must be >= 1"),
])
def test_a_damaged_config_is_one_line_naming_it(tmp_path: Path, capsys, content: str, says: str) -> None:
    (tmp_path / "config.json").write_text(content)
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"sicog info: error: {tmp_path / 'config.json'}: ") and says in line, line


def test_an_unreadable_config_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "sicog"}')
    (tmp_path / "config.json").chmod(0)
    if os.access(tmp_path / "config.json", os.R_OK):
        pytest.skip("running as root: permissions do not apply")
    assert main(["info", "--checkpoint", str(tmp_path)]) == 2
    assert _one_error_line(capsys) == f"sicog info: error: {tmp_path / 'config.json'}: Permission denied"


def test_an_empty_checkpoint_or_its_config_file_is_one_line(tmp_path: Path, capsys) -> None:
    """`--checkpoint "$CKPT"` with CKPT unset described the paper's 8B model (exit 0); naming the config.json itself
    said that config.json was missing."""
    assert main(["info", "--checkpoint", ""]) == 2
    assert _one_error_line(capsys).endswith("--checkpoint is empty: give a checkpoint folder, or leave the flag out "
                                            "for the paper's model")
    _tiny_sicog_config().save_pretrained(tmp_path)
    assert main(["info", "--checkpoint", str(tmp_path / "config.json")]) == 2
    assert _one_error_line(capsys).endswith(f"{tmp_path / 'config.json'} is a file; give the checkpoint folder that "
                                            "holds it")
