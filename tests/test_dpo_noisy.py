"""`sicog curate pairs-from-noisy`: curated clean answers joined by id with answers generated on corrupted images."""

import json

import pytest

from sicog.cli import main
from sicog.curate.noisy import pairs_from_noisy
from sicog.data.jsonl import RecordError, write_jsonl
from sicog.data.prompts import COT_STEPS
from sicog.data.steps import format_steps
from sicog.train.pairs import check_pair_record

PROMPT = "How many cubes are there? Answer the question step-by-step."


def cot(answer, detail="I count the cubes."):
    return format_steps(COT_STEPS, ["Count the cubes.", "There are cubes.", detail, f"The answer is {answer}."])


def curated(rid, answer="3", prompt=PROMPT):
    return {"id": rid, "image": f"{rid}.png", "conversations": [
        {"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": cot(answer)}],
        "question": "How many cubes are there?", "source": {"task": "reasoning"}}


def generated(rid, candidates, prompt=PROMPT, corruption=({"method": "gaussian_blur", "sigma": 3.5},)):
    return {"id": rid, "image": f"{rid}.png", "question": "How many cubes are there?", "candidates": candidates,
            "generation": {"model": "stage0", "prompt_type": "cot-default", "prompt": prompt, "temperature": 0.7,
                           "corruption": None if corruption is None else list(corruption)}}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def files(tmp_path):
    clean = write(tmp_path / "curated.jsonl", [
        curated("q1"),
        curated("q2"),
        curated("q3"),
        {"id": "q4", "image": "q4.png", "prompt": PROMPT, "chosen": cot("2")},  # a curation pairs.jsonl line
        curated("q7"),
        {"id": "bad", "conversations": [{"from": "gpt", "value": "no question"}]},
    ])
    noisy = write(tmp_path / "noisy.jsonl", [
        # the same answer as chosen, the chosen text itself, and a wrong answer: the wrong one is taken
        generated("q1", [cot("3", "Blurry, but I count three."), cot("3"), cot("5", "Blurry; maybe five."), ""]),
        generated("q2", [cot("4")], prompt="How many cubes are there?"),
        generated("q4", [cot("2"), "  "]),
        generated("q5", [cot("1")]),
        generated("q6", [cot("1")], corruption=None),
        generated("q7", [cot("3", "Blurry, but I count three.")]),
        generated("q7", [cot("9")]),
    ])
    return clean, noisy, tmp_path / "out" / "noisy_pairs.jsonl"


def test_join_by_id_with_every_id_accounted_for(files):
    clean, noisy, output = files
    summary = pairs_from_noisy(clean, noisy, output, seed=0)
    pairs = [json.loads(line) for line in output.read_text().splitlines()]
    errors = [json.loads(line) for line in output.with_name("noisy_pairs.errors.jsonl").read_text().splitlines()]
    assert [p["id"] for p in pairs] == ["q1", "q7"]
    q1 = pairs[0]
    assert q1["prompt"] == PROMPT and q1["image"] == "q1.png" and q1["chosen"] == cot("3")
    assert q1["rejected"] == cot("5", "Blurry; maybe five.")
    assert q1["source"]["rejected_index"] == 2 and q1["source"]["kind"] == "noisy"
    assert (q1["source"]["chosen_answer"], q1["source"]["rejected_answer"]) == ("3", "5")
    assert q1["source"]["corruption"] == [{"method": "gaussian_blur", "sigma": 3.5}]
    # no wrong answer among q7's (first) candidates: any other text will do
    assert pairs[1]["rejected"] == cot("3", "Blurry, but I count three.")
    assert pairs[1]["source"]["rejected_answer"] == "3"
    by_id = {}
    for error in errors:
        by_id.setdefault(error["id"], []).append(error)
    assert {k: [(e["side"], e["field"]) for e in v] for k, v in by_id.items()} == {
        "bad": [("curated", "conversations[0].from")],
        "q6": [("noisy", "generation.corruption")],
        "q7": [("noisy", "id")],
        "q2": [("noisy", "generation.prompt")],
        "q3": [("curated", "id")],
        "q4": [("noisy", "candidates")],
        "q5": [("noisy", "id")],
    }
    assert "no answer generated on a corrupted image" in by_id["q3"][0]["reason"]
    assert "no curated clean answer" in by_id["q5"][0]["reason"] and "noisy.jsonl:4" in by_id["q5"][0]["reason"]
    assert "repeated (first at line 6)" in by_id["q7"][0]["reason"]
    assert all(e["record"]["id"] == e["id"] for e in errors)
    assert (summary.pairs, summary.errors, summary.answer_differs) == (2, 7, 1)
    for line, pair in enumerate(pairs, start=1):
        check_pair_record(pair, path=str(output), line=line)  # what `sicog train --stage dpo` accepts


def test_the_draw_is_seeded_per_record(files, tmp_path):
    clean, noisy, _ = files
    records = [json.loads(line) for line in noisy.read_text().splitlines()]
    records[0]["candidates"] = [cot(str(n), f"Blurry: {n}.") for n in (4, 5, 6, 7, 8, 9)]
    write(noisy, records)
    picks = set()
    for seed in range(6):
        output = tmp_path / f"s{seed}.jsonl"
        pairs_from_noisy(clean, noisy, output, seed=seed)
        again = tmp_path / f"again{seed}.jsonl"
        pairs_from_noisy(clean, noisy, again, seed=seed)
        assert output.read_text() == again.read_text()
        picks.add(json.loads(output.read_text().splitlines()[0])["source"]["rejected_index"])
    assert len(picks) > 1


def test_a_wrong_answer_a_marker_states_is_rejected_before_an_unmarked_one(tmp_path):
    """An answer read from a last sentence may be the chosen one in other words: half the pairs rejected it."""
    clean = write(tmp_path / "c.jsonl", [curated(f"q{i}") for i in range(20)])
    unmarked = format_steps(COT_STEPS, ["Count the cubes.", "Cubes.", "Blurry.", "There are three cubes on the table."])
    noisy = write(tmp_path / "n.jsonl", [generated(f"q{i}", [unmarked, cot("5"), cot("3"), ""]) for i in range(20)])
    summary = pairs_from_noisy(clean, noisy, tmp_path / "p.jsonl")
    pairs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert summary.pairs == 20 and {p["source"]["rejected_answer"] for p in pairs} == {"5"}


def test_against_an_unmarked_chosen_answer_no_marked_answer_is_preferred(tmp_path):
    """Against "There are three cubes." every marked answer looks different, the right "3" too: it was always
    rejected."""
    unmarked = format_steps(COT_STEPS, ["Count the cubes.", "Cubes.", "I count.", "There are three cubes."])
    clean = write(tmp_path / "c.jsonl", [{**curated(f"q{i}"), "conversations": [
        {"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": unmarked}]} for i in range(20)])
    wrong = format_steps(COT_STEPS, ["Count the cubes.", "Cubes.", "Blurry.", "There are five cubes."])
    noisy = write(tmp_path / "n.jsonl", [generated(f"q{i}", [cot("3"), wrong]) for i in range(20)])
    pairs_from_noisy(clean, noisy, tmp_path / "p.jsonl")
    picks = {json.loads(line)["source"]["rejected_index"] for line in (tmp_path / "p.jsonl").read_text().splitlines()}
    assert picks == {0, 1}


def test_captions_take_any_other_candidate(tmp_path):
    prompt = "Please generate a detailed caption of this image. Describe the image step-by-step."
    clean = write(tmp_path / "c.jsonl", [{"id": "c1", "image": "c1.png", "conversations": [
        {"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": "A red cube."}]}])
    noisy = write(tmp_path / "n.jsonl", [generated("c1", ["A red cube.", "A blurred pink blob."], prompt=prompt)])
    summary = pairs_from_noisy(clean, noisy, tmp_path / "p.jsonl", task="captions")
    pair = json.loads((tmp_path / "p.jsonl").read_text())
    assert pair["rejected"] == "A blurred pink blob." and "chosen_answer" not in pair["source"]
    assert (summary.pairs, summary.errors) == (1, 0)


def test_an_interleaved_prompt_keeps_its_images_in_place(tmp_path):
    prompt = "Is the cube in <image> the same colour as the cube in <image>? Answer the question step-by-step."
    clean = write(tmp_path / "c.jsonl", [{"id": "m1", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": prompt}, {"from": "gpt", "value": cot("yes")}]}])
    noisy = {**generated("m1", [cot("no")], prompt=prompt), "image": ["a.png", "b.png"]}
    pairs_from_noisy(clean, write(tmp_path / "n.jsonl", [noisy]), tmp_path / "p.jsonl")
    pair = json.loads((tmp_path / "p.jsonl").read_text())
    assert pair["prompt"] == prompt
    check_pair_record(pair)


def test_cli(files, capsys):
    clean, noisy, output = files
    args = ["curate", "pairs-from-noisy", "--curated", str(clean), "--noisy", str(noisy), "--output", str(output)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == 2 and printed["errors_output"].endswith("noisy_pairs.errors.jsonl")
    clean.write_text('{"id": "x"\n')
    assert main(args) == 2
    assert "curated.jsonl:1" in capsys.readouterr().err


def test_a_pair_record_with_an_unusable_image_or_placeholder_answer_is_an_error(tmp_path, capsys):
    clean = write(tmp_path / "pairs.jsonl", [
        {"id": "q1", "image": 5, "prompt": PROMPT, "chosen": cot("3")},
        {"id": "q2", "image": ["q2.png", ""], "prompt": PROMPT, "chosen": cot("3")},
        {"id": "q3", "image": "q3.png", "prompt": PROMPT, "chosen": "<image>\n" + cot("3")},
        {"id": "q4", "image": "q4.png", "prompt": PROMPT, "chosen": cot("3")},
        {"id": "q5", "image": "q5.png", "prompt": PROMPT, "chosen": "\u200b"},  # blank: DPO training refuses it
    ])
    # q4's wrong answer carries a placeholder: the pair would be refused by DPO training, so the right one is taken.
    noisy = write(tmp_path / "noisy.jsonl", [generated(rid, [cot("3", "Blurry."), "<image> " + cot("5")])
                                             for rid in ("q1", "q2", "q3", "q4", "q5")])
    output = tmp_path / "out.jsonl"
    args = ["curate", "pairs-from-noisy", "--curated", str(clean), "--noisy", str(noisy), "--output", str(output)]
    assert main(args) == 0
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    curated_side = [(e["id"], e["field"]) for e in errors if e["side"] == "curated"]
    assert curated_side == [("q1", "image"), ("q2", "image"), ("q3", "chosen"), ("q5", "chosen")]
    assert "pairs.jsonl:1 id='q1' field 'image'" in errors[0]["reason"]
    [pair] = [json.loads(line) for line in output.read_text().splitlines()]
    assert pair["id"] == "q4" and pair["rejected"] == cot("3", "Blurry.")
    check_pair_record(pair, path=str(output), line=1)
    capsys.readouterr()


@pytest.mark.parametrize("field", ["prompt", "chosen", "rejected"])
def test_a_blank_pair_text_is_refused(field):
    """A zero-width space passed as a prompt or an answer: DPO trained against an invisible rejected answer."""
    pair = {"id": "p", "prompt": PROMPT, "chosen": cot("3"), "rejected": cot("5"), field: "\u200b\u2060"}
    with pytest.raises(RecordError, match="missing, empty or not a string"):
        check_pair_record(pair)


def test_no_pair_made_from_records_read_exits_1(files, capsys):
    clean, noisy, output = files
    write(noisy, [generated("other", [cot("5")])])
    args = ["curate", "pairs-from-noisy", "--curated", str(clean), "--noisy", str(noisy), "--output", str(output)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["pairs"] == 0
    errors_output = output.with_name("noisy_pairs.errors.jsonl")
    assert captured.err == f"error: every one of the 7 records failed; the reasons are in {errors_output}\n"
    assert len(errors_output.read_text().splitlines()) == 7  # nothing lost: every record says why


@pytest.mark.parametrize("task, generated_for", [("reasoning", "captions"), ("captions", "reasoning")])
def test_noisy_records_generated_for_the_other_task_stop_the_join(files, capsys, task, generated_for):
    clean, noisy, output = files
    tagged = generated("q1", [cot("5")])
    tagged["generation"]["task"] = generated_for
    write(noisy, [generated("q2", [cot("4")]), tagged])
    args = ["curate", "pairs-from-noisy", "--curated", str(clean), "--noisy", str(noisy), "--output", str(output),
            "--task", task]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{noisy}:2 id='q1' field 'generation.task': {generated_for!r}, not {task!r}" in err
    assert not output.exists()


def test_noisy_join_refuses_another_image(tmp_path):
    """A noisy record of the same id but another image is no rejected answer for the clean one."""
    clean = [{"id": "a", "image": "cat.png", "prompt": "What is it?", "chosen": "A cat."}]
    noisy = [{"id": "a", "image": "dog.png", "candidates": ["A dog.", "A wolf."],
              "generation": {"prompt": "What is it?", "task": "captions", "corruption": [{"method": "noise"}]}}]
    write_jsonl(tmp_path / "curated.jsonl", clean)
    write_jsonl(tmp_path / "noisy.jsonl", noisy)
    summary = pairs_from_noisy(tmp_path / "curated.jsonl", tmp_path / "noisy.jsonl", tmp_path / "pairs.jsonl",
                               task="captions")
    assert summary.pairs == 0 and summary.errors == 1
