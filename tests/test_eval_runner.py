"""The built-in runner on the toy benchmark: toy-scorer agreement, broken images, the sheet, resume, ranks."""

from __future__ import annotations

import base64
import csv
import json
import random
from pathlib import Path

import pytest
from openpyxl import load_workbook

import sicog.eval.runner as runner
from sicog.data.jsonl import RecordError, load_records
from sicog.data.prompts import COT_STEPS
from sicog.data.sharding import shard_path
from sicog.data.steps import format_steps
from sicog.eval.prompts import build_prompt
from sicog.eval.runner import ERRORS, PREDICTIONS, EvalSettings, evaluate, merge_and_score, run_rank
from sicog.eval.tsv import read_benchmark, row_hash
from sicog.toy.build import build_world, load_manifest
from sicog.toy.datasets import read_bench_tsv
from sicog.toy.score import score_mc

SRC = Path(__file__).resolve().parents[1] / "sicog" / "eval"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """The tiny toy world (its bench_mc.tsv has 10 rows in five categories)."""
    root = tmp_path_factory.mktemp("toy_eval") / "world"
    build_world(root, seed=0, size="tiny")
    return load_manifest(root)


@pytest.fixture(scope="module")
def tiny(tiny_model_factory):
    return tiny_model_factory(seed=3)


def scripted_replies(rows: list[dict]) -> dict[str, str]:
    """A reply per row in turn: right in five formats, then wrong or unreadable; 6 of 10 are right."""
    replies = {}
    for i, row in enumerate(rows):
        right, text = row["answer"], row[row["answer"]]
        wrong = next(letter for letter in "ABCD" if letter != right)
        bodies = ["Find it.", "I see shapes.", f"Option {wrong} is not it.", f"The answer is {right}."]
        cot = format_steps(COT_STEPS, bodies)
        formats = [right, f"({right})", f"the answer is {right.lower()}.", text, cot, wrong, f"{right} or {wrong}",
                   "I cannot tell.", f"{right}. {text}", f"Answer: {wrong}"]
        replies[row["index"]] = formats[i % len(formats)]
    return replies


class Scripted:
    """Stands in for generation: answers each encoded prompt with the reply scripted for its row."""

    def __init__(self, bench, replies: dict[str, str]) -> None:
        self.by_prompt = {build_prompt(row, bench.kind): replies[row["index"]] for row in bench.rows}
        self.calls = 0

    def __call__(self, model, processor, encoded, *, max_new_tokens, **kwargs) -> list[str]:
        self.calls += len(encoded)
        texts = [processor.tokenizer.decode([t for t in e.input_ids if t != processor.image_token_id]) for e in encoded]
        return [next(reply for prompt, reply in self.by_prompt.items() if prompt in text) for text in texts]


def test_runner_accuracy_equals_the_toy_scorer(toy, tiny, tmp_path, monkeypatch) -> None:
    bench = read_benchmark(toy["bench_mc"])
    rows = read_bench_tsv(toy["bench_mc"])
    replies = scripted_replies(rows)
    monkeypatch.setattr(runner, "generate_replies", Scripted(bench, replies))
    model, processor = tiny
    results = evaluate(model, processor, toy["bench_mc"], tmp_path, batch_size=3)
    predictions = {r["id"]: r["prediction"] for r in load_records(tmp_path / PREDICTIONS)}
    assert predictions == replies
    toy_score = score_mc(predictions, rows)
    assert results["accuracy"] == toy_score["accuracy"] == 0.6
    assert (results["correct"], results["scored"], results["errors"]) == (toy_score["correct"], 10, 0)
    for category, stats in toy_score["by_category"].items():
        assert results["by_category"][category]["accuracy"] == stats["accuracy"]
    assert json.loads((tmp_path / "results.json").read_text())["accuracy"] == 0.6


def copy_with_broken_images(source: Path, target: Path) -> None:
    with source.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns, rows = reader.fieldnames, list(reader)
    rows[3]["image"] = "%%% this is not base64 %%%" * 4
    rows[5]["image"] = base64.b64encode(random.Random(1).randbytes(200)).decode()
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_broken_images_are_reported_and_the_rest_scored(toy, tiny, tmp_path, monkeypatch) -> None:
    broken = tmp_path / "broken.tsv"
    copy_with_broken_images(toy["bench_mc"], broken)
    bench = read_benchmark(broken)
    replies = {row["index"]: row["answer"] for row in bench.rows}  # always right
    monkeypatch.setattr(runner, "generate_replies", Scripted(bench, replies))
    results = evaluate(*tiny, broken, tmp_path / "out", batch_size=4)
    assert (results["errors"], results["scored"], results["correct"], results["accuracy"]) == (2, 8, 8, 1.0)
    reasons = {row["index"]: row["reason"] for row in results["error_rows"]}
    assert set(reasons) == {"3", "5"}
    assert "not valid base64" in reasons["3"] and "cannot read the decoded image" in reasons["5"]
    errors = load_records(tmp_path / "out" / ERRORS)
    assert [(e["id"], e["field"], e["file"]) for e in errors] == [("3", "image", str(broken)),
                                                                  ("5", "image", str(broken))]
    assert "image" not in errors[0]["record"] and errors[0]["record"]["question"]
    assert [r["id"] for r in load_records(tmp_path / "out" / PREDICTIONS)] == ["0", "1", "2", "4", "6", "7", "8", "9"]

    sheet = load_workbook(tmp_path / "out" / "results.xlsx")
    header, *lines = [[cell.value for cell in row] for row in sheet["predictions"].iter_rows()]
    assert len(lines) == 10
    column = {name: header.index(name) for name in ("index", "prediction", "extracted", "correct", "error", "A")}
    assert [line[column["index"]] for line in lines] == [str(i) for i in range(10)]
    assert [line[column["correct"]] for line in lines] == [True] * 3 + [None] + [True] + [None] + [True] * 4
    assert lines[3][column["prediction"]] is None and "not valid base64" in lines[3][column["error"]]
    assert lines[0][column["prediction"]] == lines[0][column["extracted"]] == bench.rows[0]["answer"]
    assert lines[0][column["A"]] == bench.rows[0]["A"]
    accuracy = [[cell.value for cell in row] for row in sheet["accuracy"].iter_rows()]
    assert accuracy[1] == ["overall", "all", 8, 8, 1.0]
    assert {line[1] for line in accuracy[2:]} == set(results["by_category"])


def test_resume_skips_done_rows_and_refuses_other_settings(toy, tiny, tmp_path, monkeypatch) -> None:
    bench = read_benchmark(toy["bench_mc"])
    replies = scripted_replies(bench.rows)
    scripted = Scripted(bench, replies)
    monkeypatch.setattr(runner, "generate_replies", scripted)
    # A killed run: four rows answered, a fifth half written.
    settings = {"model": "m", "prompt_style": "direct", "max_new_tokens": 64}
    part = shard_path(tmp_path / PREDICTIONS, 0, 1)
    lines = [json.dumps({"id": str(i), "prompt": "p", "prediction": replies[str(i)],
                         "row_hash": row_hash(bench, bench.by_index[str(i)]), "settings": settings})
             for i in range(4)]
    part.write_text("\n".join(lines) + '\n{"id": "4", "predic')
    results = evaluate(*tiny, bench, tmp_path, model_name="m")
    assert scripted.calls == 6 and results["accuracy"] == 0.6
    assert [r["id"] for r in load_records(tmp_path / PREDICTIONS)] == bench.indices
    assert not part.exists()
    # Everything done: nothing is generated again, the results stay.
    again = evaluate(*tiny, bench, tmp_path, model_name="m")
    assert scripted.calls == 6 and again == results
    with pytest.raises(RecordError, match=r"predictions.jsonl:1 id='0' field 'settings': answered with other settings"):
        evaluate(*tiny, bench, tmp_path, prompt="cot", model_name="m")
    with pytest.raises(RecordError, match="answered with other settings"):
        evaluate(*tiny, bench, tmp_path, model_name="another checkpoint")


def write_tsv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_resume_refuses_the_rows_of_another_benchmark(toy, tiny, tmp_path, monkeypatch) -> None:
    """Benchmarks number their rows alike: a folder answered for one is not reused for another."""
    first = read_benchmark(toy["bench_mc"])
    rows = [dict(row) for row in first.rows]
    rows[3]["image"] = "not an image"  # an error record, checked as predictions are
    first = read_benchmark(write_tsv(tmp_path / "first.tsv", rows))
    replies = {row["index"]: row["answer"] for row in first.rows}
    monkeypatch.setattr(runner, "generate_replies", Scripted(first, replies))
    out = tmp_path / "out"
    assert evaluate(*tiny, first, out, model_name="m")["errors"] == 1
    # Same indices, another question for each row.
    second = read_benchmark(write_tsv(tmp_path / "second.tsv", [{**row, "question": f"Really? {row['question']}"}
                                                                 for row in rows]))
    with pytest.raises(RecordError, match=r"predictions.jsonl:1 id='0' field 'row_hash': row_hash '[0-9a-f]{16}' is "
                                          r"not '[0-9a-f]{16}': written for the row with this index in .*second.tsv"):
        evaluate(*tiny, second, out, model_name="m")
    # A line without a row_hash cannot be told to be for this row.
    lines = (out / PREDICTIONS).read_text().splitlines()
    (out / PREDICTIONS).write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "row_hash"})
                                           + "\n" for line in lines))
    with pytest.raises(RecordError, match=r"id='0' field 'row_hash': no row_hash: not known to be for the row"):
        evaluate(*tiny, first, out, model_name="m")
    # A changed image is another row as well; so is an index the benchmark does not have.
    (out / PREDICTIONS).unlink()
    with pytest.raises(RecordError, match=r"errors.jsonl:1 id='3' field 'row_hash'"):
        evaluate(*tiny, write_tsv(tmp_path / "third.tsv", [{**row, "image": rows[0]["image"]} for row in rows]),
                 out, model_name="m")
    with pytest.raises(RecordError, match=r"errors.jsonl:1 id='3' field 'id': .*fourth.tsv has no row with this index"):
        evaluate(*tiny, write_tsv(tmp_path / "fourth.tsv", rows[:3]), out, model_name="m")
    # Started over: the same benchmark again reuses everything.
    (out / ERRORS).unlink()
    scripted = Scripted(first, replies)
    monkeypatch.setattr(runner, "generate_replies", scripted)
    evaluate(*tiny, first, out, model_name="m")
    assert scripted.calls == 9
    assert evaluate(*tiny, first, out, model_name="m")["accuracy"] == 1.0 and scripted.calls == 9


def test_ranks_share_rows_and_merge_like_one_process(toy, tiny, tmp_path, monkeypatch) -> None:
    bench = read_benchmark(toy["bench_mc"])
    scripted = Scripted(bench, scripted_replies(bench.rows))
    monkeypatch.setattr(runner, "generate_replies", scripted)
    settings = EvalSettings(model="m")
    done = [run_rank(bench, *tiny, tmp_path, settings, batch_size=2, rank=rank, world=2, progress=False)
            for rank in (0, 1)]
    assert [d["answered"] for d in done] == [5, 5]
    assert [r["id"] for r in load_records(shard_path(tmp_path / PREDICTIONS, 1, 2))] == ["1", "3", "5", "7", "9"]
    results = merge_and_score(bench, tmp_path)
    assert results["accuracy"] == 0.6 and results["total"] == 10
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["errors.jsonl", "predictions.jsonl", "results.json", "results.xlsx"]


def test_merge_refuses_a_missing_row(toy, tiny, tmp_path, monkeypatch) -> None:
    bench = read_benchmark(toy["bench_mc"])
    monkeypatch.setattr(runner, "generate_replies", Scripted(bench, scripted_replies(bench.rows)))
    run_rank(bench, *tiny, tmp_path, EvalSettings(model="m"), rank=0, world=2, progress=False)
    with pytest.raises(RecordError, match="5 missing"):
        merge_and_score(bench, tmp_path)


def test_yes_no_benchmark_with_image_files_and_a_test_split_row(tiny, tmp_path, monkeypatch) -> None:
    from PIL import Image

    (tmp_path / "img").mkdir()
    rows, replies = [], ["Yes", "No, there is none.", "yes", "Maybe.", "no", "Yes."]
    for i, answer in enumerate(["yes", "no", "no", "yes", "", "Yes"]):
        Image.new("RGB", (24 + 8 * i, 24), (40 * i, 100, 100)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"index": f"p{i}", "image_path": f"img/{i}.png", "question": f"Is there a dog in picture {i}?",
                     "answer": answer, "category": "random" if i < 3 else "adversarial"})
    with (tmp_path / "POPE.tsv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    bench = read_benchmark(tmp_path / "POPE.tsv")
    monkeypatch.setattr(runner, "generate_replies", Scripted(bench, dict(zip(bench.indices, replies, strict=True))))
    results = evaluate(*tiny, bench, tmp_path / "out", batch_size=4)
    # p2 says yes to a no; p3 says neither; p4 has no answer key (a test split): answered, not scored.
    assert (results["kind"], results["correct"], results["scored"], results["predicted"]) == ("yes/no", 3, 5, 6)
    assert (results["no_answer"], results["no_ground_truth"], results["errors"]) == (1, 1, 0)
    assert results["by_category"]["random"] == {"correct": 2, "scored": 3, "accuracy": 2 / 3}
    assert results["by_category"]["adversarial"] == {"correct": 1, "scored": 2, "accuracy": 0.5}


def test_sheet_keeps_text_as_text(toy, tiny, tmp_path, monkeypatch) -> None:
    bench = read_benchmark(toy["bench_mc"])
    replies = {row["index"]: "=1+1\x07 B" for row in bench.rows}
    monkeypatch.setattr(runner, "generate_replies", Scripted(bench, replies))
    evaluate(*tiny, bench, tmp_path, model_name="m")
    sheet = load_workbook(tmp_path / "results.xlsx")["predictions"]
    header = [cell.value for cell in sheet[1]]
    cell = sheet.cell(row=2, column=header.index("prediction") + 1)
    assert cell.value == "=1+1 B" and cell.data_type == "s"
    # The JSON keeps the reply exactly as generated.
    assert load_records(tmp_path / PREDICTIONS)[0]["prediction"] == "=1+1\x07 B"


def test_eval_package_keeps_the_import_direction() -> None:
    for path in SRC.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "sicog.toy" not in text and "sicog.generate" not in text, path.name
