"""sicog.model.checkpoint_config: the one check that a folder is a SICOG checkpoint (its config.json), used by `sicog
info`, `sicog convert to-release` and the loader of every command."""

from __future__ import annotations

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
