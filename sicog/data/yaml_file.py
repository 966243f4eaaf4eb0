"""Reading a YAML file (a cycle config, a data mixture, a benchmark suite, a `sicog train` config) with one error
line naming the file, line and column of what is wrong."""

from __future__ import annotations

import os
import re

import yaml

from sicog.data.jsonl import RecordError, read_text

# What YAML counts as a line break (the YAML 1.1 spec PyYAML follows), so a file with old Mac line endings
# gets the same line numbers as PyYAML's marks give it.
LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")

# The tag of a ``<<`` key, which merges another mapping's keys rather than being a key of its own.
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives the same key twice (PyYAML keeps the last value).

    The keys are compared as each mapping is composed: by construction time the merges (``<<``) of another
    mapping may already have been folded into its node, where a key that overrides a merged one would
    look like a repeat.
    """

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            # Only scalar keys: a sequence or mapping key is unhashable, which construction reports itself.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first_line[key]})", key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return node


class YamlError(RecordError):
    """A file that is not valid YAML: ``FILE:LINE:COLUMN: not valid YAML: problem``, in one line (PyYAML's own
    message spans several, with a copy of the bad line). A :class:`RecordError` (a ``ValueError``), so that
    commands report it as they report a bad record; ``line`` and ``column`` are 1-based, None where unknown."""

    def __init__(self, problem: str, *, path: str | os.PathLike, line: int | None, column: int | None) -> None:
        super().__init__(f"not valid YAML: {problem}", path=path, line=line)
        self.column = column
        if line is not None and column is not None:
            # RecordError writes FILE:LINE; the column joins them as a compiler's FILE:LINE:COLUMN does.
            self.args = (f"{self.path}:{line}:{column}: {self.reason}",)


def read_yaml(path: str | os.PathLike) -> object:
    """The YAML document in ``path`` (None for an empty file), read as UTF-8 (a leading BOM dropped).

    Raises :class:`YamlError` for invalid YAML, a mapping with the same key twice included (a silently ignored
    first value is a setting the user believes in), and :class:`RecordError` (naming the line) for bytes that are
    not UTF-8; an ``OSError`` (no such file, a folder, no permission) is left to the caller.
    """
    text = read_text(path)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only, as safe_load
    except yaml.reader.ReaderError as err:
        # A character YAML does not allow (a control character): PyYAML gives its offset in the text, not a mark.
        breaks = list(LINE_BREAK.finditer(text, 0, err.position))
        start = breaks[-1].end() if breaks else 0
        raise YamlError(f"unacceptable character #x{err.character:04x}: {err.reason}", path=path,
                        line=len(breaks) + 1, column=err.position - start + 1) from None
    except yaml.YAMLError as err:  # the scanner's, parser's, composer's or constructor's, with a mark
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise YamlError(problem, path=path, line=None if mark is None else mark.line + 1,
                        column=None if mark is None else mark.column + 1) from None
