"""`sicog curate random`: one candidate per record drawn at random, records read and checked as curation reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_curate_pipeline import generation, write_jsonl

from sicog.cli import main
from sicog.curate.random_pick import one_random_candidate, random_index
from sicog.cycle.analysis import curation_quality
from sicog.data.jsonl import load_records
from sicog.data.prompts import caption_prompt
from sicog.data.schema import check_llava_record


def record(rid: str, candidates: list) -> dict:
    return {"id": rid, "image": f"{rid}.jpg", "candidates": candidates,
            "generation": generation("default", caption_prompt("default"))}


def test_invalid_and_repeated_records_go_to_the_errors_file(tmp_path: Path) -> None:
    records = [
        record("c0", ["A cat.", "A dog."]),
        record("c1", ["A cat.", 5]),
        record("c2", ["A bird.", "A fish."]),
        record("c0", ["A cow.", "A hen."]),
    ]
    picked = one_random_candidate(write_jsonl(tmp_path / "gen.jsonl", records), tmp_path / "random.jsonl", seed=0)
    assert [r["id"] for r in load_records(tmp_path / "random.jsonl")] == ["c0", "c2"]
    errors = load_records(tmp_path / "random.errors.jsonl")
    assert [(e["id"], e["line"], e["field"]) for e in errors] == [("c1", 2, "candidates[1]"), ("c0", 4, "id")]
    assert "duplicate id (first seen on line 1)" in errors[1]["reason"] and errors[1]["record"] == records[3]
    assert (picked.records, picked.errors, picked.errors_output) == (2, 2, str(tmp_path / "random.errors.jsonl"))


def test_empty_and_image_placeholder_candidates_are_never_picked(tmp_path: Path) -> None:
    usable = record("ok", ["", "A red <image> square.", "A red square.", "  ", "\u200b\ufeff"])
    unusable = record("none", ["<image>", " "])
    for seed in range(10):
        one_random_candidate(write_jsonl(tmp_path / "gen.jsonl", [usable, unusable]), tmp_path / "r.jsonl", seed)
        [picked] = load_records(tmp_path / "r.jsonl")
        check_llava_record(picked)
        assert picked["conversations"][1]["value"] == "A red square." and picked["sicog_source"]["candidate"] == 2
        [error] = load_records(tmp_path / "r.errors.jsonl")
        assert error["id"] == "none" and error["field"] == "candidates" and "contains <image>" in error["reason"]


def test_the_pick_is_drawn_by_the_seed_and_the_record_not_by_its_place() -> None:
    candidates = [f"caption {i}" for i in range(6)]
    assert all(random_index(candidates, "img-1", 7) == random_index(candidates, "img-1", 7) for _ in range(5))
    assert len({random_index(candidates, "img-1", seed) for seed in range(40)}) == 6
    assert len({random_index(candidates, f"img-{i}", 7) for i in range(40)}) == 6


def test_the_cycle_analysis_scores_the_picks_arm_c_trains_on(tmp_path: Path) -> None:
    # Answers 0-5; candidate 0 holds <image> in every second record, so no pick may land there.
    records = [{**record(f"c{i}", [("<image> " if i % 2 else "") + "0", *map(str, range(1, 6))]),
                "candidate_answers": [str(j) for j in range(6)], "answer": str(i % 6), "scores": [0.0] * 6}
               for i in range(40)]
    generated = write_jsonl(tmp_path / "gen.jsonl", records)
    one_random_candidate(generated, tmp_path / "r.jsonl", seed=3)
    picked = {r["id"]: r["sicog_source"]["candidate"] for r in load_records(tmp_path / "r.jsonl")}
    assert not [rid for rid, pick in picked.items() if pick == 0 and int(rid[1:]) % 2]
    right = [str(picked[r["id"]]) == r["answer"] for r in records]
    quality = curation_quality(generated, "reasoning", {}, seed=3)
    assert quality["right_share_random_candidate"] == sum(right) / len(right)
    assert quality["records"] == len(records)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "gen.jsonl", [record("a", ["A cat.", "A dog."]), record("a", ["A cow."])])
    out = tmp_path / "r.jsonl"
    assert main(["curate", "random", "--input", str(source), "--output", str(out)]) == 0
    assert "wrote 1 records" in capsys.readouterr().out
    failing = write_jsonl(tmp_path / "bad.jsonl", [record("a", []), record("b", ["<image>"])])
    assert main(["curate", "random", "--input", str(failing), "--output", str(out)]) == 1
    assert "every one of the 2 records failed" in capsys.readouterr().err
    assert load_records(out) == [] and len(load_records(tmp_path / "r.errors.jsonl")) == 2
