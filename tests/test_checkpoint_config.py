"""sicog.model.checkpoint_config: the one check that a folder is a SICOG checkpoint (its config.json), used by `sicog
info`, `sicog convert to-release` and the loader of every command."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sicog.model.builders import CheckpointError, load_pretrained, tiny_text_config  # noqa: E402
from sicog.model.checkpoint_config import read_checkpoint_config  # noqa: E402
from sicog.model.release_format import ConversionError  # noqa: E402


def test_a_sicog_config_is_read(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "sicog", "max_slice_nums": 4}')
    assert read_checkpoint_config(tmp_path) == {"model_type": "sicog", "max_slice_nums": 4}


@pytest.mark.parametrize(("content", "says"), [
    (None, "no SICOG checkpoint at {ck} (config.json missing)"),
    ("[1]", "{ck}/config.json: expected a JSON object, got list"),
    ('{"model_type": "qwen2"}', "{ck}/config.json: not a SICOG checkpoint (model_type 'qwen2', not 'sicog')"),
    ("{}", "{ck}/config.json: not a SICOG checkpoint (model_type None, not 'sicog')"),
    ('{"model_type": "llava_qwen"}', "{ck}/config.json: not a SICOG checkpoint (model_type 'llava_qwen', not 'sicog') "
                                     "but a published one: convert it with `sicog convert from-release`"),
])
def test_anything_else_is_one_line_naming_the_file_and_field(tmp_path, content, says) -> None:
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConversionError) as caught:
        read_checkpoint_config(tmp_path)
    assert str(caught.value) == says.format(ck=tmp_path)


def test_the_loader_refuses_another_models_folder(tmp_path) -> None:
    """A plain Qwen2 folder (given as --model_name_or_path for --language_model) loaded as SicogConfig's defaults,
    a 7B model, with only a warning."""
    tiny_text_config(64).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        load_pretrained(tmp_path)
    assert str(caught.value) == f"{tmp_path}/config.json: not a SICOG checkpoint (model_type 'qwen2', not 'sicog')"


@pytest.mark.parametrize(("fields", "says"), [
    ({"vision_config": 5}, "field 'vision_config': expected an object or null, got 5"),
    ({"resampler_num_queries": "many"}, "field 'resampler_num_queries': expected an integer, got \"many\""),
    ({"max_slice_nums": True}, "field 'max_slice_nums': expected an integer, got true"),
    ({"inference_long_side": 1.5}, "field 'inference_long_side': expected an integer or null, got 1.5"),
    ({"tie_word_embeddings": "no"}, "field 'tie_word_embeddings': expected true or false, got \"no\""),
    ({"resampler_pooling": "max"},
     "field 'resampler_pooling': expected one of \"roi_align\", \"average\", got \"max\""),
    ({"image_mean": [0.5, "x", 0.5]},
     "field 'image_mean': expected a list of 3 numbers or a list of numbers, got [0.5, \"x\", 0.5]"),
    ({"text_config": {"hidden_size": "64"}}, "field 'text_config.hidden_size': expected an integer, got \"64\""),
    ({"vision_config": {"patch_size": [8, "8"]}}, "field 'vision_config.patch_size': expected an integer or a list of "
                                                  "integers or a list of 2 integers or null, got [8, \"8\"]"),
    ({"text_config": {"model_type": 2}}, "field 'text_config.model_type': expected a string, got 2"),
    ({"text_config": {"model_type": "nope"}}, "field 'text_config.model_type': unknown model type \"nope\""),
    # Of the right type, but settings that cannot work together: the config class's own check, in one line.
    ({"resampler_num_queries": 143}, "invalid SicogConfig: resampler_num_queries=143 is not a perfect square"),
])
def test_a_field_of_the_wrong_type_is_one_line_naming_the_file_and_field(tmp_path, fields, says) -> None:
    """transformers failed on these inside SicogConfig ("'int' object has no attribute 'get'"), and every command
    but `sicog info` showed its traceback."""
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sicog", **fields}))
    with pytest.raises(ConversionError) as caught:
        read_checkpoint_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}/config.json: {says}"


def test_json_spellings_of_the_annotated_types_are_accepted(tmp_path) -> None:
    """JSON has lists, not tuples, and may write a whole number where a float is annotated."""
    fields = {"model_type": "sicog", "image_mean": [0, 1, 0.5], "image_std": [1, 1, 1], "vision_config": None,
              "text_config": {"model_type": "qwen2", "hidden_size": 64, "rope_parameters": {"rope_type": "default"}},
              "inference_long_side": None, "resampler_attention": "global", "extra_field_of_a_later_version": [1]}
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert read_checkpoint_config(tmp_path) == fields


def test_the_loader_reports_a_field_of_the_wrong_type_in_one_line(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "sicog", "vision_config": 5}')
    with pytest.raises(CheckpointError) as caught:
        load_pretrained(tmp_path)
    assert str(caught.value) == f"{tmp_path}/config.json: field 'vision_config': expected an object or null, got 5"


def test_a_mistyped_path_is_no_folder_and_a_hub_like_name_is_said_to_be_looked_up(tmp_path, monkeypatch) -> None:
    """A missing path reached the Hub client, whose message was about the form of repo ids (lmms-eval's pretrained=,
    eval and generate through the loader; a training run's parts)."""
    from sicog.model.builders import build_from_parts

    typo = tmp_path / "checkpoint-typo"
    with pytest.raises(CheckpointError) as caught:
        load_pretrained(typo)
    assert str(caught.value) == f"no SICOG checkpoint at {typo} (no such folder)"
    with pytest.raises(OSError) as caught:
        build_from_parts(tmp_path, typo)
    assert str(caught.value) == f"{typo}: no such folder"
    monkeypatch.chdir(tmp_path)  # a relative owner/name that is no folder here can be a Hub id
    with pytest.raises(CheckpointError) as caught:
        load_pretrained("model_weight/stage-typo")
    assert str(caught.value).startswith("no folder model_weight/stage-typo, and as a Hugging Face Hub id: ")
