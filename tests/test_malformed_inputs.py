"""Malformed inputs across the commands: each gives one error line naming the file, the line (or key) and
the field; exit 2 when the run cannot go on, an errors-file entry when it can; never a traceback, never a
half-written output."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from test_curate_pipeline import PARAPHRASES, caption_record

from sicog.cli import main
from sicog.model.builders import save_pretrained

GOOD_Q = {"id": "g1", "image": "ok.png", "question": "What is it?"}
GOOD_LLAVA = {"id": "g1", "image": "ok.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red square."}]}
GOOD_CURATE = caption_record("g1", PARAPHRASES[:3])
TSV_HEAD = "index\timage_path\tquestion\tA\tB\tanswer\n"
TSV_GOOD = "1\tok.png\tWhich colour?\tred\tblue\tA\n"


def jsonl(*records: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


@dataclass
class Case:
    """One malformed input: the command, the file it reads, and what must come out."""

    name: str
    command: str  # generate | curate | eval | cod | cot | check | cycle
    data: bytes
    code: int
    says: tuple[str, ...]  # substrings of the one error line (exit 2) or of the errors-file reason
    errors_file: str | None = None  # where the record goes when the run goes on
    errors_field: str | None = None
    extra: tuple[str, ...] = field(default_factory=tuple)
    input_name: str | None = None  # another name than the command's usual input


CASES = [
    # sicog generate reasoning (input data.jsonl)
    Case("generate-invalid-json", "generate", jsonl(GOOD_Q, b'{"id": "g2",'), 2, ("data.jsonl:2", "invalid JSON")),
    Case("generate-not-utf8", "generate", jsonl(GOOD_Q, b'{"id": "g2", "question": "caf\xe9?"}'), 2,
         ("data.jsonl:2", "not UTF-8", "column 30")),
    # A byte order mark is no column: the same byte at the same place as without one.
    Case("generate-not-utf8-after-a-bom", "generate",
         jsonl(b'\xef\xbb\xbf{"id": "g1", "image": "ok.png", "question": "caf\xe9?"}'), 2,
         ("data.jsonl:1", "not UTF-8", "byte b'\\xe9' at column 49")),
    Case("generate-huge-integer", "generate", jsonl(GOOD_Q, b'{"id": ' + b"9" * 5000 + b"}"), 2,
         ("data.jsonl:2", "invalid JSON", "integer string conversion")),
    Case("generate-nested-too-deeply", "generate", jsonl(GOOD_Q, b'{"id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         2, ("data.jsonl:2", "invalid JSON: nested too deeply")),
    Case("generate-not-an-object", "generate", jsonl(GOOD_Q, b'"just text"'), 2,
         ("data.jsonl:2", "expected an object")),
    Case("generate-missing-id", "generate", jsonl(GOOD_Q, {"image": "ok.png", "question": "Q?"}), 2,
         ("data.jsonl:2", "field 'id'")),
    Case("generate-duplicate-id", "generate", jsonl(GOOD_Q, GOOD_Q), 2, ("data.jsonl:2", "duplicate id", "field 'id'")),
    Case("generate-image-not-a-path", "generate", jsonl(GOOD_Q, {**GOOD_Q, "id": "g2", "image": 7}), 0,
         ("not a path",), "gen.errors.jsonl", "image"),
    Case("generate-image-missing", "generate", jsonl(GOOD_Q, {**GOOD_Q, "id": "g2", "image": "nope.png"}), 0,
         ("nope.png",), "gen.errors.jsonl", "image"),
    Case("generate-image-a-folder", "generate", jsonl(GOOD_Q, {**GOOD_Q, "id": "g2", "image": "album"}), 0,
         ("is a folder, not an image file", "album"), "gen.errors.jsonl", "image"),
    Case("generate-image-not-an-image", "generate", jsonl(GOOD_Q, {**GOOD_Q, "id": "g2", "image": "junk.png"}), 0,
         ("junk.png",), "gen.errors.jsonl", "image"),
    Case("generate-no-question", "generate", jsonl(GOOD_Q, {"id": "g2", "image": "ok.png"}), 0,
         ("needs a question",), "gen.errors.jsonl", "question"),
    Case("generate-conversations-not-a-list", "generate", jsonl(GOOD_Q, {"id": "g2", "image": "ok.png",
                                                                          "conversations": 5}), 0,
         ("'conversations' is int",), "gen.errors.jsonl", "conversations"),
    Case("generate-image-name-too-long", "generate", jsonl(GOOD_Q, {**GOOD_Q, "id": "g2", "image": "x" * 300}), 0,
         ("cannot read image",), "gen.errors.jsonl", "image"),
    Case("generate-lone-surrogate", "generate",
         jsonl(GOOD_Q, b'{"id": "g2", "image": "ok.png", "question": "\\ud800?"}'), 2,
         ("data.jsonl:2", "id='g2'", "field 'question'", "\\ud800")),
    # sicog curate captions (input gen.jsonl)
    Case("curate-invalid-json", "curate", jsonl(GOOD_CURATE, b"{oops"), 2, ("gen.jsonl:2", "invalid JSON")),
    Case("curate-not-utf8", "curate", jsonl(GOOD_CURATE, b'{"id": "\xff"}'), 2, ("gen.jsonl:2", "not UTF-8")),
    Case("curate-candidates-not-a-list", "curate", jsonl(GOOD_CURATE, {**GOOD_CURATE, "id": "g2", "candidates": "x"}),
         0, ("gen.jsonl:2", "field 'candidates'"), "errors.jsonl", "candidates"),
    Case("curate-candidate-not-text", "curate", jsonl(GOOD_CURATE, {**GOOD_CURATE, "id": "g2", "candidates": [1, 2]}),
         0, ("gen.jsonl:2", "candidates"), "errors.jsonl", None),
    Case("curate-duplicate-id", "curate", jsonl(GOOD_CURATE, GOOD_CURATE), 0,
         ("gen.jsonl:2", "duplicate id", "field 'id'"), "errors.jsonl", "id"),
    Case("curate-task-not-a-task", "curate", jsonl(GOOD_CURATE, {**GOOD_CURATE, "id": "g2", "generation": {
        **GOOD_CURATE["generation"], "task": None}}), 0, ("gen.jsonl:2", "None is no task of `sicog generate`"),
        "errors.jsonl", "generation.task"),
    Case("curate-no-records", "curate", b"\n", 2, ("gen.jsonl: holds no records",)),
    Case("curate-no-generation", "curate", jsonl(GOOD_CURATE, {"id": "g2", "candidates": ["a", "b"]}), 0,
         ("gen.jsonl:2", "generation"), "errors.jsonl", None),
    Case("curate-lone-surrogate", "curate", jsonl(GOOD_CURATE, b'{"id": "g2", "candidates": ["\\udfff", "b"]}'), 2,
         ("gen.jsonl:2", "field 'candidates'", "\\udfff")),
    # sicog eval (input bench.tsv)
    Case("eval-missing-column", "eval", b"index\timage_path\tA\tB\tanswer\n1\tok.png\tred\tblue\tA\n", 2,
         ("bench.tsv:1", "missing columns: question")),
    Case("eval-not-utf8", "eval", (TSV_HEAD + TSV_GOOD).encode() + b"2\tok.png\tcolour\xff?\tred\tblue\tB\n", 2,
         ("bench.tsv:3", "not UTF-8")),
    Case("eval-empty-index", "eval", (TSV_HEAD + TSV_GOOD + "\tok.png\tQ?\tred\tblue\tA\n").encode(), 2,
         ("bench.tsv:3", "field 'index'")),
    Case("eval-repeated-index", "eval", (TSV_HEAD + TSV_GOOD + TSV_GOOD).encode(), 2,
         ("bench.tsv:3", "index repeats line 2", "field 'index'")),
    Case("eval-extra-cells", "eval", (TSV_HEAD + TSV_GOOD + "2\tok.png\tQ?\tred\tblue\tA\tB\n").encode(), 2,
         ("bench.tsv:3", "more cells than columns")),
    Case("eval-no-rows", "eval", TSV_HEAD.encode(), 2, ("bench.tsv: holds no rows under its header",)),
    Case("eval-image-missing", "eval", (TSV_HEAD + TSV_GOOD + "2\tnope.png\tQ?\tred\tblue\tB\n").encode(), 0,
         ("nope.png",), "errors.jsonl", "image"),
    Case("eval-answer-not-an-option", "eval", (TSV_HEAD + TSV_GOOD + "2\tok.png\tQ?\tred\tblue\tE\n").encode(), 0,
         ("'E' is not one of the options",), "errors.jsonl", "answer"),
    Case("eval-no-checkpoint", "eval", (TSV_HEAD + TSV_GOOD).encode(), 2, ("no SICOG checkpoint at", "nowhere"),
         extra=("--model", "nowhere")),
    # sicog annotate cod (input captions.jsonl; nothing reaches the API)
    Case("cod-invalid-json", "cod", jsonl(b'{"id": 1'), 2, ("captions.jsonl:1", "invalid JSON")),
    Case("cod-missing-id", "cod", jsonl({"image": "ok.png"}), 2, ("captions.jsonl:1", "field 'id'")),
    Case("cod-image-not-a-path", "cod", jsonl({**GOOD_LLAVA, "image": 5}), 1,
         ("captions.jsonl:1", "field 'image'"), "failures.jsonl", None),
    Case("cod-image-outside-folder", "cod", jsonl({**GOOD_LLAVA, "image": "../secret.png"}), 1,
         ("captions.jsonl:1", "field 'image'", "leads outside the image folder"), "failures.jsonl", None),
    Case("cod-no-caption", "cod", jsonl({**GOOD_LLAVA, "conversations": []}), 1,
         ("captions.jsonl:1", "field 'conversations'"), "failures.jsonl", None),
    # sicog annotate cot (input cot_in.jsonl)
    Case("cot-not-utf8", "cot", jsonl(b'{"id": "c1", "image": "\xc3("}'), 2, ("cot_in.jsonl:1", "not UTF-8")),
    Case("cot-no-conversations", "cot", jsonl({"id": "c1", "image": "ok.png"}), 1,
         ("cot_in.jsonl:1", "field 'conversations'"), "errors.jsonl", None),
    # sicog data check (input train.jsonl)
    Case("check-invalid-json", "check", jsonl(GOOD_LLAVA, b"{"), 2, ("train.jsonl:2", "invalid JSON")),
    Case("check-not-utf8", "check", jsonl(GOOD_LLAVA, b'{"id": "\xfe"}'), 2, ("train.jsonl:2", "not UTF-8")),
    Case("check-mixture-invalid-yaml", "check", b"datasets: [\n", 2, ("mix.yaml:2:1: not valid YAML",),
         input_name="mix.yaml"),
    Case("check-no-checkpoint", "check", jsonl(GOOD_LLAVA), 2, ("no SICOG checkpoint at", "nowhere"),
         extra=("--model", "nowhere")),
    Case("check-no-answer", "check", jsonl(GOOD_LLAVA, {**GOOD_LLAVA, "id": "g2", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}]}), 1,
         ("train.jsonl:2", "field 'conversations'", "no gpt turn"), "report.jsonl", None),
    # sicog cycle --config (input cycle.yaml)
    Case("cycle-wrong-type", "cycle", b"batch_size: eight\n", 2, ("cycle.yaml", "key 'batch_size'", "integer")),
    Case("cycle-negative-steps", "cycle", b"stage1_steps: -3\n", 2, ("cycle.yaml", "key 'stage1_steps'", "at least 1")),
    Case("cycle-unknown-key", "cycle", b"stage1_step: 3\n", 2, ("cycle.yaml", "key 'stage1_step'", "unknown")),
    Case("cycle-not-a-mapping", "cycle", b"- a\n- b\n", 2, ("cycle.yaml", "expected a mapping")),
    Case("cycle-invalid-yaml", "cycle", b"name: toy\narms: [A, D\n", 2, ("cycle.yaml:3:1: not valid YAML",)),
    Case("cycle-unknown-arm", "cycle", b"arms: [A, D, X]\n", 2, ("cycle.yaml", "key 'arms'", "'X'")),
    Case("cycle-out-of-range", "cycle", b"top_p: 1.5\n", 2, ("cycle.yaml", "key 'top_p'", "between 0 and 1")),
    Case("cycle-unknown-toy-size", "cycle", b"toy_size: huge\n", 2, ("cycle.yaml", "key 'toy_size'", "'huge'")),
    Case("cycle-not-utf8", "cycle", b"name: \xff\n", 2, ("cycle.yaml:1", "not UTF-8")),
]
INPUT_NAMES = {"generate": "data.jsonl", "curate": "gen.jsonl", "eval": "bench.tsv", "cod": "captions.jsonl",
               "cot": "cot_in.jsonl", "check": "train.jsonl", "cycle": "cycle.yaml"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_factory) -> Path:
    root = tmp_path_factory.mktemp("malformed")
    model, processor = tiny_model_factory(seed=6)
    save_pretrained(model, processor, root / "model")
    (root / "images").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(root / "images" / "ok.png")
    (root / "images" / "junk.png").write_bytes(b"not an image at all")
    (root / "images" / "album").mkdir()
    Image.new("RGB", (32, 32)).save(root / "secret.png")
    return root


def argv(case: Case, world: Path, data: Path, out: Path) -> list[str]:
    model = str(world / "model")
    images = str(world / "images")
    commands = {
        "generate": ["generate", "reasoning", "--model", model, "--data", str(data), "--image-folder", images,
                     "--output", str(out / "gen.jsonl"), "--num-candidates", "1", "--max-new-tokens", "2",
                     "--no-progress"],
        "curate": ["curate", "captions", "--input", str(data), "--output-dir", str(out), "--threshold", "0.5"],
        "eval": ["eval", "--model", model, "--benchmark", str(data), "--image-root", images, "--output-dir", str(out),
                 "--max-new-tokens", "2", "--no-progress"],
        "cod": ["annotate", "cod", "--input", str(data), "--image-folder", images, "--output-dir", str(out),
                "--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0", "--no-progress"],
        "cot": ["annotate", "cot", "--input", str(data), "--output-dir", str(out), "--no-progress"],
        "check": ["data", "check", str(data), "--model", model, "--image-folder", images, "--report",
                  str(out / "report.jsonl")],
        "cycle": ["cycle", "--config", str(data), "--out", str(out)],
    }
    args = commands[case.command]
    for flag, value in zip(case.extra[::2], case.extra[1::2]):
        args[args.index(flag) + 1] = str(world / value)
    return args


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / (case.input_name or INPUT_NAMES[case.command])
    data.write_bytes(case.data)
    out = tmp_path / "out"
    code = main(argv(case, world, data, out))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code == case.code, err
    if case.errors_file is None:
        lines = [line for line in err.splitlines() if "error" in line.lower()]
        assert len(lines) == 1, err
        assert all(part in lines[0] for part in case.says), lines[0]
        # Nothing half-written: a run that cannot go on leaves no output behind.
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.name != "report.jsonl"]
    else:
        entries = [json.loads(line) for line in (out / case.errors_file).read_text().splitlines()]
        assert len(entries) == 1, entries
        entry = entries[0]
        assert all(part in entry["reason"] for part in case.says), entry
        if case.errors_field is not None:
            assert entry["field"] == case.errors_field, entry
    assert not list(tmp_path.rglob("*.tmp"))


def test_there_are_at_least_25_cases_over_every_command():
    assert len(CASES) >= 25
    assert {c.command for c in CASES} == set(INPUT_NAMES)
