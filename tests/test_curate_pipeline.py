"""Whole curation runs: the packaged MiniLM on CPU, and a table encoder with hand-made embeddings."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sicog.cli import main
from sicog.curate.embed import EncoderSettings, SentenceEncoder, packaged_minilm_path
from sicog.curate.pipeline import CurationSettings, compared_texts_and_errors, curate
from sicog.data.jsonl import load_records
from sicog.data.prompts import COD_STEPS, COT_STEPS, caption_prompt, reasoning_prompt
from sicog.data.schema import check_llava_record
from sicog.data.steps import format_steps

PARAPHRASES = [
    "A small brown dog sleeps on a red sofa next to a window.",
    "A little brown puppy is sleeping on a red couch beside a window.",
    "On a red sofa near the window, a small brown dog is asleep.",
    "A brown dog naps on a red couch close to a window.",
    "Next to a window, a small brown dog lies asleep on a red sofa.",
]
CONTRADICTION = "The red sofa is empty; there is no dog in the room and no window."
QUESTION = "How many cubes are on the table?"


def generation(prompt_type: str, prompt: str) -> dict:
    return {"model": "stage0-perception", "prompt_type": prompt_type, "prompt": prompt, "temperature": 0.7,
            "top_p": 0.9, "num_beams": 1, "max_new_tokens": 1200, "seed": 0, "corruption": None}


def caption_record(rid: str, finals: list[str]) -> dict:
    candidates = [format_steps(COD_STEPS, ["A dog.", "Brown fur.", "On a sofa.", "A window.", f]) for f in finals]
    return {"id": rid, "image": f"{rid}.jpg", "candidates": candidates,
            "generation": generation("cod-default", caption_prompt("cod-default"))}


def reasoning_record(rid: str, conclusions: list[str]) -> dict:
    candidates = [
        format_steps(COT_STEPS, ["Count the cubes.", "Cubes on a table.", "I count them.", c]) for c in conclusions
    ]
    return {"id": rid, "image": f"{rid}.jpg", "question": QUESTION, "answer": "3", "candidates": candidates,
            "generation": generation("cot-default", reasoning_prompt("cot-default", QUESTION))}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def minilm() -> SentenceEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceEncoder(EncoderSettings(packaged_minilm_path(), device="cpu"))


def run(task: str, path: Path, out: Path, encoder: SentenceEncoder, **settings) -> dict:
    return curate(
        path, out, CurationSettings(task=task, **settings), encoder.settings, encoder_factory=lambda _: encoder
    )


def test_minilm_never_chooses_the_contradicting_caption(tmp_path: Path, minilm: SentenceEncoder) -> None:
    records = []
    for position in range(6):  # the contradiction at every position
        finals = PARAPHRASES[:position] + [CONTRADICTION] + PARAPHRASES[position:]
        records.append(caption_record(f"img-{position}", finals))
    summary = run("captions", write_jsonl(tmp_path / "gen.jsonl", records), tmp_path / "out", minilm, threshold=0.6)
    scored = load_records(tmp_path / "out" / "scored.jsonl")
    assert [r["id"] for r in scored] == [r["id"] for r in records]
    for position, record in enumerate(scored):
        scores = record["scores"]
        assert min(scores) == scores[position] and sorted(scores)[1] > scores[position]
        assert record["best_index"] != position and record["kept"]
        assert record["chosen"] == record["candidates"][record["best_index"]]
    assert summary["kept"] == 6 and summary["extraction_fallbacks"] == 0
    curated = load_records(tmp_path / "out" / "curated.jsonl")
    for record in curated:
        check_llava_record(record)
        assert record["conversations"][0]["value"] == "<image>\n" + caption_prompt("cod-default")
        reply = record["conversations"][1]["value"]
        assert reply.startswith("Step 1:") and CONTRADICTION not in reply
        assert record["sicog_source"]["file"].endswith("gen.jsonl") and record["sicog_source"]["score"] >= 0.6
    pairs = load_records(tmp_path / "out" / "pairs.jsonl")
    assert len(pairs) == 6 and all(p["chosen"] != p["rejected"] and p["rejected"].startswith("Step 1:") for p in pairs)


def test_reasoning_majority_agreement_and_full_text_pair(tmp_path: Path, minilm: SentenceEncoder) -> None:
    conclusions = ["There are three cubes. The answer is 3.", "There are five cubes. The answer is 5.",
                   "I see 3 cubes in total, so the answer is three.", "The answer is 3.",
                   "Counting again gives five. The answer is 5.", "Three cubes are visible. Answer: 3"]
    # A VQAv2-style record's own ground truth under "answers" stays as it was.
    record = {**reasoning_record("q1", conclusions), "answers": ["3", "three", "3", "4"]}
    run("reasoning", write_jsonl(tmp_path / "gen.jsonl", [record]), tmp_path / "out", minilm, threshold=0.0,
        min_agreement=0.5)
    [scored] = load_records(tmp_path / "out" / "scored.jsonl")
    assert scored["answers"] == ["3", "three", "3", "4"]
    assert scored["candidate_answers"] == ["3", "5", "3", "3", "5", "3"]
    assert scored["majority_answer"] == "3" and scored["agreement"] == round(4 / 6, 6)
    assert scored["candidate_answers"][scored["best_index"]] == "3" and scored["kept"]
    [pair] = load_records(tmp_path / "out" / "pairs.jsonl")
    assert pair["source"]["chosen_answer"] == "3" and pair["source"]["rejected_answer"] == "5"
    # Both sides are full chains of thought, not just the extracted conclusion.
    assert pair["chosen"].startswith("Step 1:") and pair["rejected"].startswith("Step 1:")
    assert pair["prompt"] == reasoning_prompt("cot-default", QUESTION)
    [curated] = load_records(tmp_path / "out" / "curated.jsonl")
    assert curated["answer"] == "3" and curated["sicog_source"]["agreement"] == round(4 / 6, 6)


class TableEncoder:
    """Hand-made embeddings: each text's vector is looked up in a table (whole: no text is cut)."""

    max_tokens = None

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table
        self.settings = EncoderSettings("table")
        self.encoded = 0

    def truncated(self, texts: list[str]) -> int:
        return 0

    def encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_every_input_id_is_scored_or_an_error_and_candidate_counts_may_differ(tmp_path: Path) -> None:
    table = {"a": [1, 0], "b": [0.9, 0.1], "c": [0, 1], "d": [0.5, 0.5]}
    good = {"generation": generation("default", caption_prompt("default")), "image": "x.jpg"}
    records = [
        {"id": "six", "candidates": ["a", "b", "c", "d", "a", "b"], **good},
        {"id": "two", "candidates": ["a", "c"], **good},
        {"id": "one", "candidates": ["d"], **good},
        {"id": "empty", "candidates": [], **good},
        {"id": "no-field", **good},
        {"id": "not-text", "candidates": ["a", {"text": "b"}], **good},
        {"candidates": ["a", "b"], **good},
        {"id": "six", "candidates": ["a", "b"], **good},
        {"id": "no-prompt", "candidates": ["a", "b"], "generation": {"prompt_type": "default"}},
        {"id": "bad-image", "candidates": ["a", "b"], **good, "image": ["ok.jpg", ""]},
    ]
    encoder = TableEncoder(table)
    # The mean over the other candidates: a single candidate has nothing to agree with.
    summary = curate(write_jsonl(tmp_path / "gen.jsonl", records), tmp_path / "out",
                     CurationSettings(task="captions", threshold=0.5, include_self=False), encoder.settings,
                     encoder_factory=lambda _: encoder)
    scored = load_records(tmp_path / "out" / "scored.jsonl")
    errors = load_records(tmp_path / "out" / "errors.jsonl")
    assert [r["id"] for r in scored] == ["six", "two", "one"]
    assert [(e["id"], e["field"], e["line"]) for e in errors] == [
        ("empty", "candidates", 4), ("no-field", "candidates", 5), ("not-text", "candidates[1]", 6),
        (None, "id", 7), ("six", "id", 8), ("no-prompt", "generation.prompt", 9), ("bad-image", "image", 10),
    ]
    assert all("gen.jsonl:" in e["reason"] and e["record"] for e in errors)
    assert len(scored) + len(errors) == len(records) == summary["records_read"]
    assert encoder.encoded == 4  # unique texts are embedded once
    six, two, one = scored
    assert len(six["scores"]) == 6 and len(two["scores"]) == 2 and one["scores"] == [None]
    assert (six["best_index"], six["kept"]) == (1, True)  # "b" is the closest to the others
    assert (two["kept"], two["drop_reason"]) == (False, "best score below threshold")
    assert (one["kept"], one["rejected_index"]) == (False, None)
    assert summary["candidates_per_record"] == {"1": 1, "2": 1, "6": 1}


def test_reasoning_pairs_reject_a_marked_other_answer_and_ties_are_not_kept(tmp_path: Path) -> None:
    # Compared whole ("default" prompt): "There are three cubes." has no answer marker, so its answer is the
    # sentence, which differs from "3" in words only; the marked "5" is the wrong answer to reject.
    texts = ["The answer is 3.", "So the answer is 3.", "Counting, the answer is 3.", "Answer: 3",
             "There are three cubes.", "The answer is 5.", "The answer is yes.", "The answer is no."]
    encoder = TableEncoder({t: [np.cos(i / 10), np.sin(i / 10)] for i, t in enumerate(texts)})
    prompt = {"generation": generation("default", "How many cubes?"), "image": "x.jpg"}
    records = [{"id": "four", "candidates": texts[:6], **prompt},
               {"id": "tie", "candidates": [texts[6]] * 2 + [texts[7]] * 2 + texts[:2], **prompt}]
    path = write_jsonl(tmp_path / "gen.jsonl", records)
    for seed in range(5):
        curate(path, tmp_path / "out", CurationSettings(task="reasoning", threshold=0.0, seed=seed),
               encoder.settings, encoder_factory=lambda _: encoder)
        [pair] = load_records(tmp_path / "out" / "pairs.jsonl")
        assert pair["id"] == "four" and pair["rejected"] == "The answer is 5."
        tie = load_records(tmp_path / "out" / "scored.jsonl")[1]
        assert (tie["kept"], tie["majority_answer"], tie["rejected_index"]) == (False, None, None)
        assert tie["drop_reason"] == "no majority answer (answers tied for the top count)"


def test_candidates_with_the_image_placeholder_never_reach_the_training_files(tmp_path: Path) -> None:
    # The placeholder candidates agree best with the others; chosen, they would make curated.jsonl invalid.
    table = {"A red <image> square.": [1, 0], "A red square.": [0.9, 0.1], "A blue circle.": [0, 1],
             "<image>": [1, 0], "A <image> cat.": [1, 0]}
    good = {"generation": generation("default", caption_prompt("default")), "image": "x.jpg"}
    records = [
        {"id": "some", "candidates": ["A red <image> square.", "A red <image> square.", "A red square.",
                                      "A blue circle."], **good},
        {"id": "all", "candidates": ["<image>", "A <image> cat."], **good},
    ]
    encoder = TableEncoder(table)
    summary = curate(write_jsonl(tmp_path / "gen.jsonl", records), tmp_path / "out",
                     CurationSettings(task="captions", threshold=0.0), encoder.settings,
                     encoder_factory=lambda _: encoder)
    some, every = load_records(tmp_path / "out" / "scored.jsonl")
    assert (some["best_index"], some["kept"], some["rejected_index"]) == (2, True, 3)
    assert (every["kept"], every["drop_reason"]) == (False, "every candidate is empty or contains <image>")
    [curated] = load_records(tmp_path / "out" / "curated.jsonl")
    check_llava_record(curated)
    assert curated["conversations"][1]["value"] == "A red square."
    [pair] = load_records(tmp_path / "out" / "pairs.jsonl")
    assert "<image>" not in pair["chosen"] + pair["rejected"]
    assert summary["kept_at_threshold"]["0.0"] == 1


def test_scored_answers_are_the_votes_the_agreement_counts(tmp_path: Path) -> None:
    """A candidate with <image> gives no vote: scored.jsonl writes its answer empty, as the agreement counts it."""
    texts = ["The answer is 3.", "<image> The answer is 3.", "So the answer is 3.", "The final answer is:", "Three."]
    encoder = TableEncoder({t: [np.cos(i / 10), np.sin(i / 10)] for i, t in enumerate(texts)})
    record = {"id": "q", "candidates": texts, "generation": generation("default", "How many cubes?"), "image": "x.jpg"}
    summary = curate(write_jsonl(tmp_path / "gen.jsonl", [record]), tmp_path / "out",
                     CurationSettings(task="reasoning", threshold=0.0), encoder.settings,
                     encoder_factory=lambda _: encoder)
    [scored] = load_records(tmp_path / "out" / "scored.jsonl")
    assert scored["candidate_answers"] == ["3", "", "3", "", "3"]
    agreeing = scored["candidate_answers"].count(scored["majority_answer"])
    assert scored["agreement"] == pytest.approx(agreeing / 5, abs=1e-6)
    # The report's counts split the candidates as scored.jsonl does: a marker with nothing after it is empty.
    assert summary["answers"] == {"explicit": 2, "last_sentence": 1, "empty": 2}


def test_report_lists_the_standard_thresholds_and_fallbacks(tmp_path: Path) -> None:
    # The first candidate has no step 5 and is compared whole; the table holds the compared texts.
    encoder = TableEncoder({"A cat.": [1, 0], "A cat sits.": [1, 0.1], "A dog.": [0, 1]})
    record = {"id": "r", "image": "x.jpg", "candidates": ["A cat.", "Step 5: A cat sits.", "Step 5: A dog."],
              "generation": generation("cod-default", caption_prompt("cod-default"))}
    summary = curate(write_jsonl(tmp_path / "gen.jsonl", [record]), tmp_path / "out",
                     CurationSettings(task="captions", threshold=0.3, temperature=1.0), encoder.settings,
                     encoder_factory=lambda _: encoder)
    assert summary["kept_at_threshold"] == {"0.3": 1, "0.8": 0, "0.85": 0, "0.9": 0}
    assert summary["extraction_fallbacks"] == 1 and summary["records_with_fallback"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    for needle in ("| 0.3 (this run) | 1 |", "| 0.8 | 0 |", "| 0.85 | 0 |", "| 0.9 | 0 |",
                   "1 of 3 candidates", "another temperature"):
        assert needle in report
    assert (tmp_path / "out" / "score_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kept"] == 1


def test_embeddings_are_resumed_from_chunks(tmp_path: Path) -> None:
    table = {t: [np.cos(i), np.sin(i)] for i, t in enumerate("abcdefg")}
    records = [{"id": "r1", "candidates": list("abc"), "generation": generation("default", "Describe.")},
               {"id": "r2", "candidates": list("defg"), "generation": generation("default", "Describe.")}]
    path = write_jsonl(tmp_path / "gen.jsonl", records)
    settings = CurationSettings(task="captions", threshold=0.0, chunk_size=2, keep_embeddings=True)
    first = TableEncoder(table)
    curate(path, tmp_path / "out", settings, first.settings, encoder_factory=lambda _: first)
    expected = (tmp_path / "out" / "scored.jsonl").read_text()
    [cache] = (tmp_path / "out" / ".embeddings").iterdir()
    (cache / "chunk-000001.npy").unlink()  # as if the run had been killed before this chunk
    second = TableEncoder(table)
    curate(path, tmp_path / "out", settings, second.settings, encoder_factory=lambda _: second)
    assert second.encoded == 2 and (tmp_path / "out" / "scored.jsonl").read_text() == expected

    def no_encoder(_: EncoderSettings) -> TableEncoder:
        raise AssertionError("everything is cached; the encoder must not be loaded")

    chunk = cache / "chunk-000001.npy"
    chunk.write_bytes(chunk.read_bytes()[:90])  # damaged since it was written whole
    with pytest.raises(ValueError, match=f"^{chunk}: not a readable embedding chunk .*; delete it to embed its texts"):
        curate(path, tmp_path / "out", settings, first.settings, encoder_factory=no_encoder)
    chunk.unlink()
    curate(path, tmp_path / "out", settings, first.settings, encoder_factory=lambda _: first)
    rescored = CurationSettings(task="captions", threshold=0.99, chunk_size=2)
    summary = curate(path, tmp_path / "out", rescored, first.settings, encoder_factory=no_encoder)
    assert summary["kept"] == 0 and not (tmp_path / "out" / ".embeddings").exists()


def test_cli_uses_the_packaged_encoder_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = write_jsonl(tmp_path / "gen.jsonl", [caption_record("img", PARAPHRASES[:3])])
    args = ["curate", "captions", "--input", str(path), "--output-dir", str(tmp_path / "out"), "--threshold", "0.5"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["kept"] == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["encoder"]["name_or_path"] == packaged_minilm_path()
    args = ["curate", "captions", "--input", str(tmp_path / "missing.jsonl"), "--output-dir", str(tmp_path / "o")]
    assert main(args) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    broken = write_jsonl(tmp_path / "broken.jsonl", [{"id": "a", "image": "x.png"}, {"id": "b", "image": "y.png"}])
    assert main(["curate", "captions", "--input", str(broken), "--output-dir", str(tmp_path / "b")]) == 1
    assert "every one of the 2 records failed" in capsys.readouterr().err
    assert len(load_records(tmp_path / "b" / "errors.jsonl")) == 2


@pytest.mark.parametrize(("flags", "says"), [
    (["--max-length", "1024"], "--max-length 1024: "),  # the packaged MiniLM reads 512 tokens
    (["--max-length", "0"], "argument --max-length: must be at least 1"),
    (["--device", "bogus"], "--device bogus: "),
    (["--device", "cuda:0"], "--device cuda:0: no CUDA GPU is available here"),
])
def test_encoder_options_that_cannot_work_stop_with_one_line_before_embedding(tmp_path, capsys, flags, says) -> None:
    """Each failed deep in the encoder once a text was long enough, with a traceback."""
    if "cuda" in says and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available here")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = write_jsonl(tmp_path / "gen.jsonl", [caption_record("img", PARAPHRASES[:3])])
    with pytest.raises(SystemExit) if "argument" in says else contextlib.nullcontext():
        code = main(["curate", "captions", "--input", str(path), "--output-dir", str(tmp_path / "out"), *flags])
        assert code == 2
    err = capsys.readouterr().err
    assert says in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not (tmp_path / "out" / "scored.jsonl").exists()


def generated_for(task: str, rid: str, *, tagged: bool) -> dict:
    """A record as `sicog generate <task>` writes it; ``tagged=False``: as older runs wrote it, without the task."""
    record = caption_record(rid, PARAPHRASES[:2]) if task == "captions" else reasoning_record(rid, ["The answer is 3."])
    if tagged:
        record["generation"]["task"] = task
    return record


@pytest.mark.parametrize("command", [["captions"], ["reasoning"], ["texts", "captions"], ["texts", "reasoning"]])
def test_records_generated_for_the_other_task_stop_curation(tmp_path: Path, capsys, command: list[str]) -> None:
    task = command[-1]
    other = {"captions": "reasoning", "reasoning": "captions"}[task]
    gen = write_jsonl(tmp_path / "gen.jsonl", [generated_for(other, "old", tagged=False),
                                               generated_for(other, "new", tagged=True)])
    output = ["--output", str(tmp_path / "t.jsonl")] if command[0] == "texts" else [
        "--output-dir", str(tmp_path / "out"), "--encoder", "never-loaded"]
    assert main(["curate", *command, "--input", str(gen), *output]) == 2
    assert capsys.readouterr().err == (f"error: {gen}:2 id='new' field 'generation.task': {other!r}, not {task!r}: "
                                       f"the file holds the output of `sicog generate {other}`, not of `sicog "
                                       f"generate {task}`\n")
    assert not (tmp_path / "t.jsonl").exists() and not (tmp_path / "out" / "scored.jsonl").exists()
    # Records of the task curated, with or without the task written in them, are read as before.
    same = write_jsonl(tmp_path / "same.jsonl", [generated_for(task, "old", tagged=False),
                                                 generated_for(task, "new", tagged=True)])
    texts, errors = compared_texts_and_errors(same, task)
    assert len(texts) == (2 if task == "captions" else 1) and errors == []


def test_encoder_rows_are_unit_length_and_empty_texts_are_zero(minilm: SentenceEncoder) -> None:
    vectors = minilm.encode(["A dog on a sofa.", "   ", "A cat."])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[[0, 2]], axis=1), 1.0, atol=1e-5) and not vectors[1].any()


def test_encoder_options_are_explicit(minilm: SentenceEncoder) -> None:
    with pytest.raises(ValueError, match="no EOS token"):
        SentenceEncoder(EncoderSettings(packaged_minilm_path(), device="cpu", append_eos=True))
    prefixed = SentenceEncoder(EncoderSettings(packaged_minilm_path(), device="cpu", query_prefix="Query: "))
    assert not np.allclose(prefixed.encode(["A dog."]), minilm.encode(["A dog."]))
    with pytest.raises(ValueError, match="batch size"):
        EncoderSettings("x", batch_size=0)


def test_embedding_chunks_of_another_encoder_are_not_reused(tmp_path):
    """An embedding cache of another encoder is never reused (a rerun after a crash with another --encoder)."""
    import numpy as np

    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embedding_store import embed_texts

    class Fake(TableEncoder):
        def __init__(self, vector):
            self.vector = vector

        def encode(self, texts):
            return np.array([self.vector] * len(texts), dtype=np.float32)

    texts = ["a red cube", "a blue ball"]
    embed_texts(texts, EncoderSettings("encoder-a"), tmp_path, encoder_factory=lambda s: Fake([1.0, 0.0]))
    store = embed_texts(texts, EncoderSettings("encoder-b"), tmp_path, encoder_factory=lambda s: Fake([0.0, 1.0]))
    assert store.all().tolist() == [[0.0, 1.0], [0.0, 1.0]]


def test_the_cache_key_tells_texts_apart_where_they_are_cut():
    """Texts hashed end to end: ["ab", "c"] and ["a", "bc"] would share a cache, each other's vectors."""
    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embedding_store import cache_key

    settings = EncoderSettings("encoder-a")
    assert cache_key(["ab", "c"], settings, 8) != cache_key(["a", "bc"], settings, 8)
    assert cache_key(["ab", "c"], settings, 8) == cache_key(["ab", "c"], settings, 8)
