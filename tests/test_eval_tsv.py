"""Reading VLMEvalKit-style TSVs (base64, image_path, shared images, missing cells) and building prompts."""

from __future__ import annotations

import base64
import csv
import io
import random

import pytest
from PIL import Image

from sicog.data.jsonl import RecordError
from sicog.eval.prompts import MC_INSTRUCTION, build_prompt
from sicog.eval.tsv import (
    MULTIPLE_CHOICE,
    YES_NO,
    decode_image,
    read_benchmark,
    row_hash,
    row_image,
    row_options,
    row_problem,
)
from sicog.model.image_io import ImageError
from sicog.toy.answers import multiple_choice_prompt as toy_multiple_choice_prompt


def png_base64(size=(40, 30), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_tsv(path, columns, rows) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


MC_COLUMNS = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category"]


def test_multiple_choice_rows_images_and_missing_options(tmp_path) -> None:
    rows = [
        {"index": 1, "image": png_base64(), "question": "Colour?", "hint": "nan", "A": "red", "B": "blue",
         "C": "", "D": "nan", "answer": "A", "category": "coarse", "l2-category": "colour"},
        # MMBench stores a picture once; a short cell names the row that holds it.
        {"index": 2, "image": "1", "question": "Shape?", "hint": "Look closely.", "A": "circle", "B": "square",
         "C": "cross", "D": "", "answer": "C", "category": "fine", "l2-category": "shape"},
    ]
    write_tsv(tmp_path / "MMB.tsv", MC_COLUMNS, rows)
    bench = read_benchmark(tmp_path / "MMB.tsv")
    assert bench.kind == MULTIPLE_CHOICE and bench.name == "MMB" and bench.indices == ["1", "2"]
    first, second = bench.rows
    assert row_options(first) == {"A": "red", "B": "blue"}
    assert row_options(second) == {"A": "circle", "B": "square", "C": "cross"}
    assert row_image(bench, second).size == (40, 30) and row_image(bench, second).mode == "RGB"
    assert build_prompt(first, bench.kind) == f"Colour?\nA. red\nB. blue\n{MC_INSTRUCTION}"
    expected = f"Look closely.\nShape?\nA. circle\nB. square\nC. cross\n{MC_INSTRUCTION}"
    assert build_prompt(second, bench.kind) == expected
    assert build_prompt(first, bench.kind, "cot") == (
        f"Colour?\nA. red\nB. blue\n{MC_INSTRUCTION} Answer the question step-by-step."
    )
    assert row_problem(first, bench.kind) is None


def test_prompt_is_the_one_the_toy_world_trains_on() -> None:
    options = ["red", "blue", "green", "black"]
    row = {"index": "0", "question": "What colour is the circle?", **dict(zip("ABCD", options, strict=True))}
    assert build_prompt(row, MULTIPLE_CHOICE) == toy_multiple_choice_prompt(row["question"], options)


def test_chinese_questions_get_the_chinese_instruction() -> None:
    row = {"index": "0", "question": "图中是什么颜色?", "A": "红", "B": "蓝"}
    assert build_prompt(row, MULTIPLE_CHOICE).endswith("\n请直接回答选项字母。")


def test_yes_no_benchmark_with_image_paths(tmp_path) -> None:
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (20, 20), (0, 0, 0)).save(tmp_path / "imgs" / "a.png")
    rows = [{"index": "p1", "image_path": "imgs/a.png", "question": "Is there a dog in the image?", "answer": "Yes",
             "category": "adversarial"},
            {"index": "p2", "image_path": "imgs/none.png", "question": "Is there a cat?", "answer": "no",
             "category": "random"}]
    write_tsv(tmp_path / "POPE.tsv", ["index", "image_path", "question", "answer", "category"], rows)
    bench = read_benchmark(tmp_path / "POPE.tsv")
    assert bench.kind == YES_NO
    assert build_prompt(bench.rows[0], bench.kind) == (
        "Is there a dog in the image?\nAnswer the question using a single word or phrase."
    )
    cot = build_prompt(bench.rows[0], bench.kind, "cot")
    assert cot == "Is there a dog in the image?\nAnswer the question step-by-step."
    assert row_image(bench, bench.rows[0]).size == (20, 20)
    with pytest.raises(ImageError, match="none.png"):
        row_image(bench, bench.rows[1])
    # --image-root moves where relative paths start.
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert read_benchmark(tmp_path / "POPE.tsv", image_root=other).image_root == other


def test_unusable_images_say_why() -> None:
    with pytest.raises(ImageError, match="not valid base64"):
        decode_image("@@not base64@@" * 10)
    noise = base64.b64encode(random.Random(0).randbytes(300)).decode()
    with pytest.raises(ImageError, match="cannot read the decoded image"):
        decode_image(noise)
    with pytest.raises(ImageError, match="several images"):
        decode_image(f"['{png_base64()}', '{png_base64()}']")


def test_file_level_problems_name_file_line_and_field(tmp_path) -> None:
    path = tmp_path / "bad.tsv"
    write_tsv(path, ["index", "question", "A", "B", "answer"], [{"index": 0, "question": "?", "A": "x", "B": "y"}])
    with pytest.raises(RecordError, match=r"bad.tsv:1: missing columns: image or image_path"):
        read_benchmark(path)
    rows = [{"index": 0, "image": "x", "question": "?", "A": "a", "B": "b", "answer": "A"}] * 2
    write_tsv(path, ["index", "image", "question", "A", "B", "answer"], rows)
    with pytest.raises(RecordError, match=r"bad.tsv:3 id='0' field 'index': index repeats line 2"):
        read_benchmark(path)
    # A blank line and a quoted cell over two lines: the line counts were a row short of the file's.
    path.write_text('index\timage\tquestion\tA\tB\tanswer\n\n0\tx\t"Two\nlines?"\ta\tb\tA\n0\tx\t?\ta\tb\tA\n')
    with pytest.raises(RecordError, match=r"bad.tsv:5 id='0' field 'index': index repeats line 4"):
        read_benchmark(path)
    write_tsv(path, ["index", "image", "question", "answer"],
              [{"index": 0, "image": "x", "question": "?", "answer": "a cat"}])
    with pytest.raises(RecordError, match=r"bad.tsv:2 id='0' field 'answer': answer 'a cat' is neither yes nor no"):
        read_benchmark(path)
    # Open questions without answers (a test split) are not yes/no questions to ask as such.
    for columns in (["index", "image", "question"], ["index", "image", "question", "answer"]):
        write_tsv(path, columns, [{"index": 0, "image": "x", "question": "Describe the chart."}])
        with pytest.raises(RecordError, match=r"bad.tsv:1 field 'answer': no options A, B and no answers"):
            read_benchmark(path)
    with pytest.raises(RecordError, match="benchmark file not found"):
        read_benchmark(tmp_path / "missing.tsv")
    (tmp_path / "folder.tsv").mkdir()
    with pytest.raises(RecordError, match=r"folder.tsv: is a folder, not a benchmark file$"):
        read_benchmark(tmp_path / "folder.tsv")


def test_a_column_named_twice_is_refused_on_line_1(tmp_path) -> None:
    """Each row would keep only the last of the two cells: scored against an answer nobody chose."""
    path = tmp_path / "twice.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\tanswer\n1\tok.png\tQ?\tred\tblue\tA\tB\n")
    with pytest.raises(RecordError) as caught:
        read_benchmark(path)
    assert str(caught.value) == f"{path}:1: repeated column(s): answer"


def test_row_level_problems_are_returned_not_raised(tmp_path) -> None:
    rows = [
        {"index": 0, "image": "x", "question": "?", "A": "a", "B": "b", "answer": "E"},
        {"index": 1, "image": "x", "question": "?", "A": "a", "B": "", "answer": "A"},
        {"index": 2, "image": "x", "question": "", "A": "a", "B": "b", "answer": "A"},
        {"index": 3, "image": "x", "question": "?", "A": "a", "B": "b", "answer": ""},
    ]
    write_tsv(tmp_path / "rows.tsv", ["index", "image", "question", "A", "B", "answer"], rows)
    bench = read_benchmark(tmp_path / "rows.tsv")
    problems = [row_problem(row, bench.kind) for row in bench.rows]
    assert problems[0] == ("answer", "answer 'E' is not one of the options A, B")
    assert problems[1][0] == "A" and "at least two options" in problems[1][1]
    assert problems[2] == ("question", "empty question")
    assert problems[3] is None  # no answer: predicted, not scored


@pytest.mark.parametrize("cell", ["None", "N/A", "NA", "null", "NULL", "n/a", "<NA>", "#N/A", "-nan", "1.#IND"])
def test_cells_pandas_reads_as_nan_are_no_option(tmp_path, cell) -> None:
    """VLMEvalKit reads TSVs with pandas, whose default NA strings become NaN: no option C there, nor here."""
    rows = [{"index": 0, "image": "x", "question": "Which is right?", "A": "cat", "B": "dog", "C": cell, "answer": "C"}]
    write_tsv(tmp_path / "na.tsv", ["index", "image", "question", "A", "B", "C", "answer"], rows)
    row = read_benchmark(tmp_path / "na.tsv").rows[0]
    assert row_options(row) == {"A": "cat", "B": "dog"}
    assert row_problem(row, MULTIPLE_CHOICE) == ("answer", "answer 'C' is not one of the options A, B")


@pytest.mark.parametrize("cell", ["NAN", " NA ", "none", "0"])
def test_cells_pandas_keeps_are_options(tmp_path, cell) -> None:
    rows = [{"index": 0, "image": "x", "question": "Which is right?", "A": "cat", "B": "dog", "C": cell, "answer": "C"}]
    write_tsv(tmp_path / "na.tsv", ["index", "image", "question", "A", "B", "C", "answer"], rows)
    assert list(row_options(read_benchmark(tmp_path / "na.tsv").rows[0])) == ["A", "B", "C"]


def test_a_one_image_list_cell_is_that_image(tmp_path) -> None:
    """VLMEvalKit's toliststr reads "['x']" as a list of one image, and uses that image."""
    Image.new("RGB", (20, 10)).save(tmp_path / "a.png")
    rows = [{"index": 0, "image": f"['{png_base64((30, 12))}']", "image_path": "", "question": "?", "answer": "yes"},
            {"index": 1, "image": "", "image_path": "['a.png']", "question": "?", "answer": "no"},
            {"index": 2, "image": "", "image_path": '["a.png", "a.png"]', "question": "?", "answer": "no"},
            {"index": 3, "image": "", "image_path": "[a.png]", "question": "?", "answer": "no"}]
    write_tsv(tmp_path / "list.tsv", ["index", "image", "image_path", "question", "answer"], rows)
    bench = read_benchmark(tmp_path / "list.tsv")
    assert row_image(bench, bench.rows[0]).size == (30, 12)
    assert row_image(bench, bench.rows[1]).size == (20, 10)
    with pytest.raises(ImageError, match="several images"):
        row_image(bench, bench.rows[2])
    with pytest.raises(ImageError, match="is not a list"):
        row_image(bench, bench.rows[3])
    with pytest.raises(ImageError, match="empty list"):
        decode_image("[]")


def test_base64_with_line_breaks_is_decoded() -> None:
    """MIME-wrapped base64 (a line break every 76 characters), which VLMEvalKit's decoder reads."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="PNG")
    wrapped = base64.encodebytes(buffer.getvalue()).decode("ascii")
    assert "\n" in wrapped.strip()
    assert decode_image(wrapped.strip()).size == (64, 64)
    assert decode_image(wrapped.strip().replace("\n", "\r\n")).size == (64, 64)


def test_row_hash_changes_with_the_options(tmp_path):
    """A prediction is reused only for a row with the same options (row_hash covers them, as documented)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    hashes = []
    for b in ("blue", "green"):
        path = tmp_path / f"bench_{b}.tsv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "question", "A", "B", "answer", "image"])
            writer.writerow(["0", "What colour is it?", "red", b, "A", image])
        bench = read_benchmark(path)
        hashes.append(row_hash(bench, bench.rows[0]))
    assert hashes[0] != hashes[1]


QUOTE_HEADER = "index\timage_path\tquestion\tA\tB\tanswer\n"


def test_a_stray_quote_that_swallows_rows_is_refused_on_the_line_it_starts(tmp_path, capsys) -> None:
    """A `"` at the start of a cell opens a quoted cell up to the next lone `"`: the rows in between were read as
    part of the cell (one row lost without a word, another row's answer scored). Quoted as pandas quotes them
    (VLMEvalKit's TSVs), cells holding tabs, quotes or line ends still read as pandas reads them."""
    from sicog.cli import main

    path = tmp_path / "q.tsv"
    path.write_text(QUOTE_HEADER + '0\timg.png\t"Say ""hi""\tthen"\t"a\tb"\tblue\tA\n'
                    '1\timg.png\t"Two\r\nlines?"\tred\t"multi\nline\n"\tB\n2\timg.png\tThe "odd" one?"\tred\tblue\tB',
                    newline="")
    assert [[row[c] for c in ("index", "question", "A", "B")] for row in read_benchmark(path).rows] == [
        ["0", 'Say "hi"\tthen', "a\tb", "blue"], ["1", "Two\r\nlines?", "red", "multi\nline\n"],
        ["2", 'The "odd" one?"', "red", "blue"]]
    # The review's file: row 1's question swallowed row 2, whose answer row 1 then carried.
    path.write_text(QUOTE_HEADER + '0\timg.png\tWhat color?\tred\tblue\tA\n1\timg.png\t"Is it red or blue?\tred\tblue'
                    '\tA\n2\timg.png\tThe "odd" one?"\tred\tblue\tB\n3\timg.png\tWhat color?\tred\tblue\tB\n')
    with pytest.raises(RecordError) as caught:
        read_benchmark(path)
    assert str(caught.value) == (f'{path}:3: probably an unbalanced quote (") in the row starting on this line: a '
                                 "quoted cell closes before other text on line 4")
    # The line the row starts on, after a row whose quoted cell runs over two lines.
    path.write_text(QUOTE_HEADER + '0\timg.png\t"Two\nlines?"\tred\tblue\tA\n1\timg.png\t"Q?\tred\tblue\tB\n'
                    '2\timg.png\tQ "x"\tred\tblue\tA\n')
    with pytest.raises(RecordError, match=r'q.tsv:4: probably an unbalanced quote \(\"\) in the row starting on'):
        read_benchmark(path)
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--benchmark", str(path), "--output-dir",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sicog eval: error: {path}:4: probably an unbalanced quote") and err.count("\n") == 1


def test_cells_pandas_wrote_with_tabs_and_line_ends_read_as_pandas_reads_them(tmp_path) -> None:
    """A table or tab-indented code in a question is no stray quote (it was refused as one)."""
    import pandas as pd

    questions = ["Which row is oldest?\nName\tAge\nBob\t42\nAnn\t37", "What does it print?\nif x:\n\tprint(1)",
                 "Tabs\tand\nlines\tboth"]
    hints = ["", "def f():\n\treturn 3", "Name\tAge\nBob\t3"]  # in the last column
    frame = pd.DataFrame({"index": range(3), "image_path": "img.png", "question": questions, "A": "x", "B": "y",
                          "answer": "A", "hint": hints})
    frame.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    rows = read_benchmark(tmp_path / "p.tsv").rows
    assert [row["question"] for row in rows] == questions and [row["hint"] for row in rows] == hints
    pandas = pd.read_csv(tmp_path / "p.tsv", sep="\t", keep_default_na=False)
    assert pandas["question"].tolist() == questions and pandas["hint"].tolist() == hints


@pytest.mark.parametrize(("tail", "line"), [
    ('2\timg.png\t"What color?\tred\tblue\tB\n3\timg.png\tWhat color?\tred\tblue\tB\n', 3),
    ('2\timg.png\tWhat color?\tred\tblue\t"B\n', 3),
    ('2\timg.png\tWhat color?\tred\tblue\t"B', 3),
    ('2\timg.png\tWhat color?\t"red\nor not\tblue\t""B""', 3),
], ids=["rows-swallowed", "last-cell", "last-cell-without-line-end", "doubled-quotes-only"])
def test_a_quote_left_open_at_the_end_of_the_file_is_refused(tmp_path, tail, line) -> None:
    """csv took a quoted cell never closed to run to the end of the file (pandas refuses it): the rows after it,
    or the last row's line end, became part of the cell, without a word."""
    path = tmp_path / "open.tsv"
    path.write_text(QUOTE_HEADER + "1\timg.png\tWhat color?\tred\tblue\tA\n" + tail, newline="")
    with pytest.raises(RecordError) as caught:
        read_benchmark(path)
    assert str(caught.value).startswith(f'{path}:{line}: probably an unbalanced quote (") in the row starting on '
                                        "this line: a quoted cell is never closed")
    # Closed, the same last cells are read, whether or not the file ends with a line end.
    for ending in ("", "\n"):
        path.write_text(QUOTE_HEADER + '1\timg.png\tWhat color?\tred\t"blue\nor not"\t"B"' + ending, newline="")
        assert read_benchmark(path).rows[0]["answer"] == "B"
