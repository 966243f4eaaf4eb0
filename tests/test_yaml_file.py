"""sicog.data.yaml_file.read_yaml: every YAML file SICOG reads (cycle configs, mixtures, benchmark suites, `sicog
train` configs) fails in one line naming the file, line and column."""

from __future__ import annotations

import re

import pytest

from sicog.data.jsonl import RecordError
from sicog.data.yaml_file import YamlError, read_yaml


def test_a_yaml_file_is_read_as_utf8_without_its_byte_order_mark(tmp_path) -> None:
    path = tmp_path / "a.yaml"
    path.write_bytes("\ufeffname: café\nsteps: [1, 2]\n".encode())
    assert read_yaml(path) == {"name": "café", "steps": [1, 2]}
    path.write_text("")
    assert read_yaml(str(path)) is None


@pytest.mark.parametrize(("text", "line", "column", "problem"), [
    ("benchmarks:\n  - name: A\n    lmms_eval: a: b\n", 3, 17, "mapping values are not allowed here"),
    ("name: toy\narms: [A, D\n", 3, 1, "expected ',' or ']', but got '<stream end>'"),
    ("a: !!python/object:os.system x\n", 1, 4, "could not determine a constructor for the tag "
                                            "'tag:yaml.org,2002:python/object:os.system'"),
    # PyYAML gives no mark for a character it refuses, only its offset in the text.
    ("a: 1\nb: x\x07y\n", 2, 5, "unacceptable character #x0007: special characters are not allowed"),
    # ... counted in YAML's line breaks, as its marks are
    ("a: 1\r\nb: 2\rc: x\x07y\r", 3, 5, "unacceptable character #x0007: special characters are not allowed"),
    ("a: 1\u2028b: 2\x85c: x\x07y\n", 3, 5, "unacceptable character #x0007: special characters are not allowed"),
    ("a: 1\rb: [x\r", 3, 1, "expected ',' or ']', but got '<stream end>'"),
])
def test_invalid_yaml_is_one_line_naming_file_line_and_column(tmp_path, text, line, column, problem) -> None:
    """PyYAML's own messages span several lines, with a copy of the bad line."""
    path = tmp_path / "bad.yaml"
    path.write_text(text, newline="")
    with pytest.raises(YamlError) as caught:
        read_yaml(path)
    assert str(caught.value) == f"{path}:{line}:{column}: not valid YAML: {problem}"
    assert (caught.value.path, caught.value.line, caught.value.column) == (str(path), line, column)
    # What the commands catch: a bad record's error, and ValueError.
    assert isinstance(caught.value, RecordError) and isinstance(caught.value, ValueError)


def test_bytes_that_are_not_utf8_name_the_line_and_a_missing_file_is_left_to_the_caller(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(RecordError, match=f"^{re.escape(str(path))}:2: not UTF-8 text"):
        read_yaml(path)
    with pytest.raises(FileNotFoundError):
        read_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(("text", "line", "column", "key", "first"), [
    # a data mixture: the second sampling would silently replace the first
    ("datasets:\n  - path: ll.jsonl\n    sampling: all\n    sampling: first:1\n", 4, 5, "'sampling'", 3),
    ("stage1_steps: 3\nstage1_steps: 5\n", 2, 1, "'stage1_steps'", 1),
    ("{a: 1, b: 2, a: 3}\n", 1, 14, "'a'", 1),
    # keys equal once read, as the dict would hold them, though spelled otherwise
    ("1: a\n0x1: b\n", 2, 1, "1", 1),
])
def test_a_key_given_twice_names_it_and_its_first_line(tmp_path, text, line, column, key, first) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(YamlError) as caught:
        read_yaml(path)
    assert str(caught.value) == f"{path}:{line}:{column}: not valid YAML: duplicate key {key} (first on line {first})"


def test_merged_keys_may_be_overridden_and_are_no_repeat(tmp_path) -> None:
    """``<<`` merges another mapping's keys, which the mapping's own keys override: that is no key given twice."""
    path = tmp_path / "merge.yaml"
    path.write_text("base: &base {lr: 1, steps: 2}\n"
                    "outer: {inner: &mid {<<: *base, lr: 3}}\n"
                    "later: {<<: *mid, steps: 4}\n")
    assert read_yaml(path) == {"base": {"lr": 1, "steps": 2}, "outer": {"inner": {"lr": 3, "steps": 2}},
                               "later": {"lr": 3, "steps": 4}}


def test_duplicate_key_checks_keep_loading_safe(tmp_path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("a: !!python/name:os.system\n")
    with pytest.raises(YamlError, match="could not determine a constructor"):
        read_yaml(path)
