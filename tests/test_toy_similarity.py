"""The toy curation encoder: same facts in other words are identical, one wrong fact is not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_curate_pipeline import caption_record, reasoning_record, write_jsonl

from sicog.cli import main
from sicog.data.jsonl import load_records
from sicog.toy.similarity import caption_facts, fact_vectors

RIGHT = "A large red circle in the top left and a small blue square at the bottom right on a white background."
PARAPHRASE = "On a white backdrop, a tiny blue square is in the bottom right corner and a big red disk at the top left"
COLOUR_SWAP = "A large green circle in the top left and a small blue square at the bottom right on a white background."
MISPLACED = "A large red circle in the top right and a small blue square at the bottom right on a white background."


def cosine(texts: list[str], task: str = "captions") -> np.ndarray:
    vectors = fact_vectors(texts, task)
    return vectors @ vectors.T


def test_caption_facts_read_every_stated_fact():
    assert caption_facts(RIGHT) == {
        "background=white", "object=red circle", "object=blue square",
        "size:red circle=large", "position:red circle=top left",
        "size:blue square=small", "position:blue square=bottom right",
    }
    # The corner dot, as the caption scorer reads it: named (beside an object too), or denied.
    assert caption_facts("A small red dot sits in the top left corner.") == {"dot=red top left"}
    assert caption_facts("A red circle and a blue dot in the bottom right corner.") >= {"dot=blue bottom right"}
    assert caption_facts("There is no dot and no border.") == {"no dot"}
    assert caption_facts("There is a blue dot but no red dot.") == {"dot=blue", "no dot=red"}


def test_a_paraphrase_is_identical_and_each_wrong_fact_costs():
    sim = cosine([RIGHT, PARAPHRASE, COLOUR_SWAP, MISPLACED])
    assert sim[0, 1] == pytest.approx(1.0)
    # A colour swap changes three facts (the object and its size and place), a wrong place one.
    assert sim[0, 2] == pytest.approx(4 / 7)
    assert sim[0, 3] == pytest.approx(6 / 7)
    assert np.allclose(np.linalg.norm(fact_vectors([RIGHT, MISPLACED], "captions"), axis=1), 1.0)


def test_reasoning_compares_final_answers_and_a_text_without_facts_is_a_zero_row():
    sim = cosine(["The answer is B.", "So the answer is (B)", "The answer is C.", ""], "reasoning")
    assert sim[0, 1] == pytest.approx(1.0)
    assert sim[0, 2] == 0.0
    assert not fact_vectors(["", "nothing here"], "captions").any()
    with pytest.raises(ValueError, match="unknown task"):
        fact_vectors([RIGHT], "poems")


@pytest.mark.parametrize("task", ["captions", "reasoning"])
def test_curation_with_toy_embeddings_keeps_the_consistent_candidate(tmp_path, task):
    if task == "captions":
        records = [caption_record("r0", [MISPLACED, RIGHT, PARAPHRASE, COLOUR_SWAP])]
    else:
        conclusions = ["The answer is 4.", "The answer is 3.", "So the answer is 3.", "The answer is 5."]
        records = [reasoning_record("r0", conclusions)]
    source = write_jsonl(tmp_path / "generated.jsonl", records)
    texts, embeddings = tmp_path / "texts.jsonl", tmp_path / "embeddings.npy"
    assert main(["curate", "texts", task, "--input", str(source), "--output", str(texts)]) == 0
    assert main(["toy", "embed", task, "--texts", str(texts), "--output", str(embeddings)]) == 0
    assert json.loads((tmp_path / "embeddings.npy.json").read_text())["encoder"]["name_or_path"] == f"toy-facts:{task}"
    assert main(["curate", task, "--input", str(source), "--embeddings", str(embeddings),
                 "--output-dir", str(tmp_path / "out"), "--threshold", "0.3"]) == 0
    (scored,) = load_records(tmp_path / "out" / "scored.jsonl")
    assert scored["kept"] and scored["best_index"] in (1, 2)
    assert min(scored["scores"]) in (scored["scores"][0], scored["scores"][3])


def test_embed_names_a_bad_texts_file(tmp_path, capsys):
    bad = tmp_path / "texts.jsonl"
    bad.write_text('{"text": "fine"}\n["not an object"]\n', encoding="utf-8")
    assert main(["toy", "embed", "captions", "--texts", str(bad), "--output", str(tmp_path / "e.npy")]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
