"""`sicog annotate cot`: LLaVA-CoT tags -> 4-step CoT records and short-answer records."""

from __future__ import annotations

import copy
import errno

import pytest

from sicog.annotate import cot as cot_module
from sicog.annotate.cot import TagError, convert_record, cot_question, run_cot_job, split_tags
from sicog.annotate.stepcheck import StepFormatError, format_checked_steps
from sicog.cli import main
from sicog.data.jsonl import RecordError, load_records, write_jsonl
from sicog.data.prompts import COT_STEPS
from sicog.data.schema import check_llava_record
from sicog.data.steps import final_step, split_steps

PARTS = ["I will read the bar chart and compare the two bars.",
         "A bar chart with a blue bar labelled 2019 at 40 and a red bar labelled 2020 at 55.",
         "55 is greater than 40, so 2020 has the taller bar.\nThe difference is 15.",
         "2020"]


def tagged(parts=PARTS, tags=("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")) -> str:
    return "\n\n".join(f"<{tag}> {part} </{tag}>" for tag, part in zip(tags, parts))


def cot_record(rid="q1", answer=None, question="<image>\nWhich year is higher? "
               "Answer the question using a single word or phrase.") -> dict:
    return {"id": rid, "image": f"{rid}.jpg", "source": "ChartQA", "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer or tagged()}]}


def cot_answer(text: str) -> tuple[str, str]:
    """The 4-step answer and the conclusion of one tagged answer, as the conversion builds them."""
    bodies = split_tags(text)
    return format_checked_steps(COT_STEPS, bodies), bodies[-1]


def test_tags_round_trip_through_the_four_steps():
    answer, conclusion = cot_answer(tagged())
    assert split_steps(answer, COT_STEPS) == dict(enumerate(PARTS, start=1))
    assert answer.startswith("Step 1: Clarify the task objective.\n")
    assert "\n\nStep 4: Conclude the task with an answer.\n2020" in answer
    assert final_step(answer, 4, COT_STEPS) == ("2020", True)
    assert conclusion == "2020"
    # and back: the steps re-tagged give the same tag bodies
    retagged = tagged([split_steps(answer, COT_STEPS)[i] for i in range(1, 5)])
    assert split_tags(retagged) == PARTS


def test_record_conversion_builds_both_outputs_from_the_untouched_input():
    record = cot_record()
    snapshot = copy.deepcopy(record)
    conversion = convert_record(record)
    cot, short = conversion.cot, conversion.short
    assert record == snapshot and conversion.cot_error is None
    assert cot["conversations"][0]["value"] == "<image>\nWhich year is higher? Answer the question step-by-step."
    assert split_steps(cot["conversations"][1]["value"], COT_STEPS)[3] == PARTS[2]
    assert short["conversations"] == [snapshot["conversations"][0], {"from": "gpt", "value": "2020"}]
    assert cot["source"] == short["source"] == "ChartQA" and cot["id"] == short["id"] == "q1"
    for out in (cot, short):
        check_llava_record(out)


def test_question_without_short_answer_request_gets_the_step_request_appended():
    assert cot_question("<image>\nWhy is the sky blue?") == (
        "<image>\nWhy is the sky blue? Answer the question step-by-step.")
    assert cot_question("And the grass?") == "And the grass? Answer the question step-by-step."


def test_a_turn_with_several_images_keeps_its_placeholders_where_they_are():
    assert cot_question("<image>\n<image>\nSame?") == "<image>\n<image>\nSame? Answer the question step-by-step."
    assert cot_question("Left: <image> right: <image>\nAnswer the question using a single word or phrase.") == (
        "Left: <image> right: <image>\nAnswer the question step-by-step.")
    conversion = convert_record({**cot_record(question="<image>\n<image>\nSame?"), "image": ["a.png", "b.png"]})
    assert conversion.cot_error is None
    assert conversion.cot["conversations"][0]["value"].count("<image>") == 2
    check_llava_record(conversion.cot)


def test_missing_image_placeholder_is_added_to_the_first_question():
    conversion = convert_record(cot_record(question="Which year is higher?"))
    cot, short = conversion.cot, conversion.short
    assert cot["conversations"][0]["value"] == "<image>\nWhich year is higher? Answer the question step-by-step."
    assert short["conversations"][0]["value"] == "<image>\nWhich year is higher?"


def test_multi_turn_records_are_converted_turn_by_turn():
    second = ["I will count the bars.", "Two bars.", "One blue, one red: two in total.", "2"]
    record = cot_record()
    record["conversations"] += [{"from": "human", "value": "How many bars are there?"},
                                {"from": "gpt", "value": tagged(second)}]
    conversion = convert_record(record)
    cot, short = conversion.cot, conversion.short
    assert [t["from"] for t in cot["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert cot["conversations"][2]["value"] == "How many bars are there? Answer the question step-by-step."
    assert split_steps(cot["conversations"][1]["value"], COT_STEPS)[4] == "2020"
    assert split_steps(cot["conversations"][3]["value"], COT_STEPS) == dict(enumerate(second, start=1))
    assert [t["value"] for t in short["conversations"][1::2]] == ["2020", "2"]
    assert short["conversations"][2]["value"] == "How many bars are there?"


def test_tag_names_in_prose_are_ordinary_words():
    parts = ["In SUMMARY, I must find the CONCLUSION of the chart.",
             "The CAPTION under the chart reads 'REASONING about sales'; a <summary> html tag is visible.",
             "The word CONCLUSION here is prose, not a tag.", "Summary"]
    assert split_tags(tagged(parts)) == parts
    assert cot_answer(tagged(parts))[1] == "Summary"


@pytest.mark.parametrize(("answer", "reason"), [
    (tagged(PARTS[:3]), "missing tag(s): <CONCLUSION>"),
    (tagged([PARTS[0], PARTS[2], PARTS[1], PARTS[3]], ("SUMMARY", "REASONING", "CAPTION", "CONCLUSION")),
     "tags out of order"),
    (tagged() + "\n<CONCLUSION> again </CONCLUSION>", "repeated tag(s): <CONCLUSION>"),
    (tagged().replace("</REASONING>", ""), "unclosed"),
    (tagged([PARTS[0], PARTS[1], PARTS[2], " "]), "empty tag(s): CONCLUSION"),
    ("Let me think. " + tagged(), "text outside the tags"),
])
def test_malformed_answers_are_rejected_with_a_reason(answer, reason):
    with pytest.raises(TagError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        split_tags(answer)


@pytest.mark.parametrize("parts", [
    [PARTS[0], PARTS[1], PARTS[2], "**B**"],
    [PARTS[0], "A red sign reading *STOP*", PARTS[2], "STOP"],
    [PARTS[0], PARTS[1], "The bar for 2020 is *highest*", "2020"],
    ["*Compare* the bars:", "**Note:** two bars:\n- 2019: 40\n- 2020: 55", "55 > 40:\n2020 is higher", "**2020**"],
], ids=["bold-conclusion", "italic-caption", "italic-reasoning", "colons-and-emphasis"])
def test_bodies_with_markdown_emphasis_are_converted_as_written(parts):
    conversion = convert_record(cot_record(answer=tagged(parts)))
    assert conversion.cot_error is None
    answer = conversion.cot["conversations"][1]["value"]
    # the published convert_long_template: "Step i: header\n<tag body>", blank lines between
    assert answer == "\n\n".join(f"Step {i}: {header}\n{part}"
                                  for i, (header, part) in enumerate(zip(COT_STEPS, parts), start=1))
    assert split_steps(answer, COT_STEPS) == dict(enumerate(parts, start=1))
    assert conversion.short["conversations"][1]["value"] == parts[3]


def test_a_body_with_a_step_line_loses_only_the_four_step_record(tmp_path, capsys):
    answer = tagged([PARTS[0], PARTS[1], "Step 4: subtract.\n55 - 40 = 15", PARTS[3]])
    with pytest.raises(StepFormatError, match=r"step\(s\) 3, 4 would not parse back \(a line of a body reads as a "
                                              r"'Step N' marker\)"):
        format_checked_steps(COT_STEPS, split_tags(answer))
    conversion = convert_record(cot_record(answer=answer), path="cot.jsonl", line=2)
    assert conversion.cot is None
    assert str(conversion.cot_error).startswith("cot.jsonl:2 id='q1' field 'conversations[1].value': step(s) 3, 4")
    assert conversion.short["conversations"][1]["value"] == "2020"

    source = tmp_path / "in.jsonl"
    write_jsonl(source, [cot_record("a"), cot_record("b", answer=answer), cot_record("c", answer=tagged(PARTS[:3]))])
    assert main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert [r["id"] for r in load_records(tmp_path / "out" / "cot.jsonl")] == ["a"]
    short = load_records(tmp_path / "out" / "short_answer.jsonl")
    assert [r["id"] for r in short] == ["a", "b"] and short[1]["conversations"][1]["value"] == "2020"
    errors = load_records(tmp_path / "out" / "errors.jsonl")
    assert [e["id"] for e in errors] == ["b", "c"]
    assert errors[0]["reason"].endswith("only its short answer was written (short_answer.jsonl)")
    assert "in.jsonl:2 id='b' field 'conversations[1].value': step(s) 3, 4 would not parse back" in errors[0]["reason"]
    assert "1 of 3 records converted, 2 errors (1 of them with a short answer only)" in capsys.readouterr().err


@pytest.mark.parametrize("part", [PARTS[1] + "\n---\nCheck the axis labels.", "---\n" + PARTS[1]])
def test_a_body_with_a_rule_loses_the_four_step_record_and_says_why(part):
    answer = tagged([PARTS[0], part, PARTS[2], PARTS[3]])
    with pytest.raises(StepFormatError, match=r"step\(s\) 2 would not parse back \(a horizontal rule in a body: the "
                                              r"reader drops one at its start and ends the step at one after its "
                                              r"text\)"):
        format_checked_steps(COT_STEPS, split_tags(answer))
    conversion = convert_record(cot_record(answer=answer), path="cot.jsonl", line=2)
    assert conversion.cot is None and "horizontal rule" in str(conversion.cot_error)
    assert conversion.short["conversations"][1]["value"] == "2020"


def test_the_short_answer_request_is_replaced_in_place_as_published():
    # convert_cot.py's process_long_data: question.replace(<short-answer request>, <step-by-step request>)
    assert cot_question("<image>\nWhat color is the bus?\nAnswer the question using a single word or phrase.") == (
        "<image>\nWhat color is the bus?\nAnswer the question step-by-step.")
    assert cot_question("Answer the question using a single word or phrase. What is this?") == (
        "Answer the question step-by-step. What is this?")
    assert cot_question("<image>\nWhat is this?\nAnswer the question step-by-step.") == (
        "<image>\nWhat is this?\nAnswer the question step-by-step.")


def test_a_bad_turn_names_file_line_id_and_field():
    record = cot_record()
    record["conversations"] += [{"from": "human", "value": "And?"}, {"from": "gpt", "value": tagged(PARTS[:3])}]
    with pytest.raises(RecordError) as info:
        convert_record(record, path="cot.jsonl", line=9)
    assert str(info.value).startswith("cot.jsonl:9 id='q1' field 'conversations[3].value': missing tag(s)")


def test_job_writes_outputs_and_errors_and_keeps_the_input_file(tmp_path, capsys):
    records = [cot_record("a"), cot_record("b", answer=tagged(PARTS[:3])), cot_record("c"),
               {"image": "x.jpg", "conversations": []}]
    source = tmp_path / "llava_cot.jsonl"
    write_jsonl(source, records)
    before = source.read_bytes()
    rc = main(["annotate", "cot", "--input", str(source), "--cot-dir", str(tmp_path / "cot"),
               "--short-dir", str(tmp_path / "short"), "--no-progress"])
    assert rc == 0 and source.read_bytes() == before
    cot = load_records(tmp_path / "cot" / "cot.jsonl")
    short = load_records(tmp_path / "short" / "short_answer.jsonl")
    errors = load_records(tmp_path / "cot" / "errors.jsonl")
    assert [r["id"] for r in cot] == [r["id"] for r in short] == ["a", "c"]
    assert [e["id"] for e in errors] == ["b", None]
    assert "llava_cot.jsonl:2 id='b'" in errors[0]["reason"] and "<CONCLUSION>" in errors[0]["reason"]
    assert errors[0]["record"] == records[1] and errors[1]["line"] == 4
    assert "field 'id'" in errors[1]["reason"]
    assert "2 of 4 records converted, 2 errors" in capsys.readouterr().err


def test_a_repeated_id_goes_to_the_errors_file(tmp_path):
    """Later stages match records by id: a repeat is an error naming the first line, not a second copy."""
    source = tmp_path / "llava_cot.jsonl"
    write_jsonl(source, [cot_record("q0"), cot_record("q1"), {**cot_record("q0"), "image": "other.jpg"}])
    rc = main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    assert [r["id"] for r in load_records(tmp_path / "out" / "cot.jsonl")] == ["q0", "q1"]
    assert [r["id"] for r in load_records(tmp_path / "out" / "short_answer.jsonl")] == ["q0", "q1"]
    [error] = load_records(tmp_path / "out" / "errors.jsonl")
    assert error["id"] == "q0" and error["line"] == 3 and error["record"]["image"] == "other.jpg"
    assert "llava_cot.jsonl:3 id='q0' field 'id': duplicate id (first on line 1)" in error["reason"]


@pytest.mark.parametrize("image", [5, 1.5, True], ids=["int", "float", "bool"])
def test_a_scalar_image_goes_to_the_errors_file_and_the_others_are_converted(tmp_path, image):
    """A number or a boolean as the image is the record's error, like any other invalid image field."""
    source = tmp_path / "llava_cot.jsonl"
    write_jsonl(source, [cot_record("a"), {**cot_record("b"), "image": image}, cot_record("c")])
    rc = main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    assert [r["id"] for r in load_records(tmp_path / "out" / "cot.jsonl")] == ["a", "c"]
    assert [r["id"] for r in load_records(tmp_path / "out" / "short_answer.jsonl")] == ["a", "c"]
    [error] = load_records(tmp_path / "out" / "errors.jsonl")
    assert error["id"] == "b" and error["line"] == 2 and error["record"]["image"] == image
    assert "llava_cot.jsonl:2 id='b' field 'image': must be a non-empty string" in error["reason"]


def test_rerun_replaces_outputs_and_json_arrays_are_read(tmp_path):
    source = tmp_path / "llava_cot.json"
    source.write_text('[{"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "Q?"}, '
                      '{"from": "gpt", "value": "<SUMMARY>s</SUMMARY><CAPTION>c</CAPTION>'
                      '<REASONING>r</REASONING><CONCLUSION>x</CONCLUSION>"}]}]')
    for _ in range(2):
        summary = run_cot_job(source, tmp_path / "out", tmp_path / "out", progress=False)
        assert (summary.total, summary.converted, summary.errors) == (1, 1, 0)
    assert len(load_records(tmp_path / "out" / "cot.jsonl")) == 1
    assert load_records(tmp_path / "out" / "short_answer.jsonl")[0]["conversations"][1]["value"] == "x"


def test_output_dirs_are_required(tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [cot_record()])
    assert main(["annotate", "cot", "--input", str(source), "--cot-dir", str(tmp_path)]) == 2
    assert "--short-dir" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "flags", "named"), [
    ("cot.jsonl", ["--output-dir", "{dir}"], "--output-dir {dir}"),
    ("short_answer.jsonl", ["--cot-dir", "{dir}/cot", "--short-dir", "{dir}"], "--short-dir {dir}"),
    ("errors.jsonl", ["--output-dir", "{dir}/sub/.."], "--output-dir {dir}/sub/.."),
], ids=["cot", "short-answers", "errors-spelled-otherwise"])
def test_an_input_that_is_an_output_file_is_refused_and_kept(tmp_path, capsys, name, flags, named):
    source = tmp_path / name
    write_jsonl(source, [cot_record("a"), cot_record("b")])
    (tmp_path / "sub").mkdir()
    before = source.read_bytes()
    argv = ["annotate", "cot", "--input", str(source), *[f.format(dir=tmp_path) for f in flags], "--no-progress"]
    for _ in range(2):  # the second run would read what the first wrote over the input
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        # Named by the option that gave the folder, the one to change.
        assert err.startswith(f"sicog annotate cot: error: {named.format(dir=tmp_path)} writes ")
        assert f"/{name}, which is the same file as --input {source}; writing it would replace the input" in err
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [name]


def test_an_input_beside_the_outputs_is_converted(tmp_path):
    source = tmp_path / "llava_cot.jsonl"
    write_jsonl(source, [cot_record("a")])
    assert main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path), "--no-progress"]) == 0
    assert [r["id"] for r in load_records(tmp_path / "cot.jsonl")] == ["a"]


def test_a_run_where_every_record_fails_exits_1(tmp_path, capsys):
    short_only = tagged([PARTS[0], PARTS[1], "Step 4: subtract.\n55 - 40 = 15", PARTS[3]])
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [cot_record("a", answer=tagged(PARTS[:3])), cot_record("b", answer=short_only)])
    assert main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "0 of 2 records converted, 2 errors (1 of them with a short answer only)" in err
    assert f"error: every one of the 2 records failed; the reasons are in {tmp_path / 'out' / 'errors.jsonl'}" in err
    # Nothing is lost: the reasons and the one short answer are still written.
    assert [e["id"] for e in load_records(tmp_path / "out" / "errors.jsonl")] == ["a", "b"]
    assert [r["id"] for r in load_records(tmp_path / "out" / "short_answer.jsonl")] == ["b"]


@pytest.mark.parametrize("content", ["", "[]"], ids=["empty-jsonl", "empty-array"])
def test_an_input_without_records_is_refused_writing_nothing(tmp_path, capsys, content):
    """It exited 0 with empty outputs: a truncated download found out only at training."""
    source = tmp_path / "in.json"
    source.write_text(content)
    assert main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    assert capsys.readouterr().err == f"error: {source}: holds no records\n"
    assert not any((tmp_path / "out").rglob("*.jsonl"))


@pytest.mark.parametrize(("flags", "says"), [
    (["--output-dir", "afile"], "--output-dir afile is a file, not a folder"),
    (["--output-dir", "afile/cot"], "--output-dir afile/cot cannot be made a folder (afile is a file)"),
    (["--cot-dir", "ok", "--short-dir", "afile/x"], "--short-dir afile/x cannot be made a folder (afile is a file)"),
], ids=["file", "inside-a-file", "short-dir-inside-a-file"])
def test_an_output_folder_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys, flags, says):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", [cot_record()])
    (tmp_path / "afile").write_text("keep me")
    assert main(["annotate", "cot", "--input", "in.jsonl", *flags, "--no-progress"]) == 2
    assert capsys.readouterr().err == f"sicog annotate cot: error: {says}\n"
    assert (tmp_path / "afile").read_text() == "keep me" and not (tmp_path / "ok").exists()


def test_an_unreadable_input_is_one_line(tmp_path, monkeypatch, capsys):
    source = tmp_path / "in.jsonl"
    write_jsonl(source, [cot_record()])

    def refused(path):  # what opening a file without read permission raises (root may read any file)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(cot_module, "iter_records", refused)
    assert main(["annotate", "cot", "--input", str(source), "--output-dir", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"sicog annotate cot: error: {source}: Permission denied\n"
    assert not (tmp_path / "out").exists()
