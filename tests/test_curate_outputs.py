"""What `sicog curate texts|mix|random` write and return: the input's own `source` kept, `.json` outputs as JSON
arrays, invalid records counted, exit codes, ratios rounded half up, and the embeddings file's safety."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from test_curate_pipeline import generation, write_jsonl

from sicog.cli import main
from sicog.curate import embed_file
from sicog.curate.embed import EncoderSettings
from sicog.curate.mix import take
from sicog.curate.records import PROVENANCE
from sicog.data.jsonl import load_records
from sicog.data.prompts import caption_prompt


def generated(rid: str, candidates: list, **fields) -> dict:
    return {"id": rid, "image": f"{rid}.jpg", "candidates": candidates,
            "generation": generation("default", caption_prompt("default")), **fields}


def llava(rid: str, answer: str = "A cat.") -> dict:
    return {"id": rid, "conversations": [{"from": "human", "value": "Describe."}, {"from": "gpt", "value": answer}]}


def test_a_dataset_own_source_field_is_kept_beside_the_provenance(tmp_path: Path) -> None:
    gen = write_jsonl(tmp_path / "gen.jsonl", [generated("s1", ["A cat."], source="ALLaVA-VFLAN/vflan_123")])
    assert main(["curate", "random", "--input", str(gen), "--output", str(tmp_path / "r.jsonl")]) == 0
    [record] = load_records(tmp_path / "r.jsonl")
    assert record["source"] == "ALLaVA-VFLAN/vflan_123"
    assert record[PROVENANCE] == {"file": str(gen), "candidate": 0}


@pytest.mark.parametrize("name", ["r.json", "r.JSON"])
def test_random_writes_a_json_array_for_a_json_name(tmp_path: Path, name: str) -> None:
    gen = write_jsonl(tmp_path / "gen.jsonl", [generated("a", ["A cat."]), generated("b", ["A dog."])])
    assert main(["curate", "random", "--input", str(gen), "--output", str(tmp_path / name)]) == 0
    assert [r["id"] for r in json.loads((tmp_path / name).read_text())] == ["a", "b"]


def test_mix_writes_a_json_array_for_a_json_name_in_any_case(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "a.jsonl", [llava("a"), llava("b")])
    assert main(["curate", "mix", "--inputs", str(source), "--output", str(tmp_path / "m.JSON")]) == 0
    assert sorted(r["id"] for r in json.loads((tmp_path / "m.JSON").read_text())) == ["a", "b"]


def test_mix_exits_1_when_every_record_failed_and_warns_of_inputs_that_add_nothing(tmp_path: Path, capsys) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [llava("x", answer="")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["curate", "mix", "--inputs", str(bad), "--output", str(tmp_path / "m.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "every one of the 1 records failed" in err and f"{bad} contributes no record" in err
    good = write_jsonl(tmp_path / "good.jsonl", [llava("a")])
    assert main(["curate", "mix", "--inputs", str(good), str(empty), "--output", str(tmp_path / "m.jsonl")]) == 0
    assert f"{empty} contributes no record to the mixture (it holds no record)" in capsys.readouterr().err


def test_texts_lists_the_records_curation_will_not_score(tmp_path: Path, capsys) -> None:
    gen = write_jsonl(tmp_path / "gen.jsonl", [generated("a", ["A cat.", "A cat."]), generated("b", [])])
    assert main(["curate", "texts", "captions", "--input", str(gen), "--output", str(tmp_path / "t.json")]) == 0
    assert json.loads((tmp_path / "t.json").read_text()) == [{"text": "A cat."}]
    [error] = load_records(tmp_path / "t.errors.jsonl")
    assert (error["id"], error["field"]) == ("b", "candidates")
    assert "1 invalid records" in capsys.readouterr().out
    only_bad = write_jsonl(tmp_path / "bad.jsonl", [generated("b", [])])
    assert main(["curate", "texts", "captions", "--input", str(only_bad), "--output", str(tmp_path / "u.jsonl")]) == 1
    assert "every one of the 1 records failed" in capsys.readouterr().err


@pytest.mark.parametrize("ratio, taken", [(0.15, 2), (1.15, 12), (2.15, 22), (0.05, 1), (0.25, 3), (1.0, 10)])
def test_a_fractional_share_is_rounded_half_up_as_written(ratio: float, taken: int) -> None:
    records = [{"id": str(i)} for i in range(10)]
    assert len(take(records, ratio, random.Random(0))) == taken


def test_texts_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2.*invalid JSON"):
        embed_file.read_texts(tmp_path / "t.jsonl")
    (tmp_path / "u.jsonl").write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=r"u\.jsonl:2.*not UTF-8"):
        embed_file.read_texts(tmp_path / "u.jsonl")
    (tmp_path / "v.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match=r"v\.jsonl:1 field 'text'"):
        embed_file.read_texts(tmp_path / "v.jsonl")


def test_the_texts_file_error_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "t.jsonl").write_text("oops\n")
    code = embed_file.main(["--texts", str(tmp_path / "t.jsonl"), "--output", str(tmp_path / "e.npy"),
                            "--encoder", "none"])
    said = capsys.readouterr().err
    assert code == 2 and f"{tmp_path / 't.jsonl'}:1: invalid JSON: Expecting value (column 1)" in said


def test_embed_file_checks_its_output_and_encoder_before_embedding(tmp_path: Path, capsys) -> None:
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a cat"}])
    (tmp_path / "afile").write_text("")
    blocked = (tmp_path / "afile" / "e.npy", f"({tmp_path / 'afile'} is a file)")
    for output, says in ((tmp_path, "is a folder"), blocked):
        assert embed_file.main(["--texts", str(texts), "--output", str(output), "--encoder", "none"]) == 2
        assert says in capsys.readouterr().err
    assert embed_file.main(["--texts", str(texts), "--output", str(tmp_path / "e.npy"),
                            "--encoder", str(tmp_path / "no-encoder")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-encoder" in err and "Traceback" not in err


def test_embed_file_resumes_from_the_chunks_a_killed_run_saved(tmp_path: Path, monkeypatch) -> None:
    """Each chunk is kept as it is done: a rerun after a kill needs no encoder for them, and the chunks go once
    the array is written."""
    from sicog.curate.embed import SentenceEncoder, packaged_minilm_path

    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": t} for t in ("a red circle", "two blue squares")])
    output = tmp_path / "e.npy"
    argv = ["--texts", str(texts), "--output", str(output), "--encoder", packaged_minilm_path(), "--device", "cpu"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(embed_file, "save_embeddings", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_file.main(argv)
    monkeypatch.undo()
    assert list(embed_file.chunk_folder(output).rglob("chunk-*.npy")) and not output.exists()
    monkeypatch.setattr(SentenceEncoder, "__init__", killed)  # the chunks are all there: no encoder is loaded
    assert embed_file.main(argv) == 0
    vectors, _ = embed_file.load_embeddings(output, ["a red circle", "two blue squares"])
    assert vectors.shape[0] == 2 and not embed_file.chunk_folder(output).exists()


@pytest.mark.parametrize("killed_at", ["array", "description"])
def test_a_killed_rewrite_leaves_no_embeddings_that_pass_for_other_texts(tmp_path: Path, monkeypatch,
                                                                         killed_at: str) -> None:
    """Rewriting an embeddings file for other texts (the same count) and being killed part way must not leave
    a description that vouches for an array of other texts."""
    path, settings = tmp_path / "e.npy", EncoderSettings(name_or_path="enc")
    old_texts, new_texts = ["a cat", "a dog"], ["a bird", "a fish"]
    embed_file.save_embeddings(path, np.eye(2, dtype=np.float32), old_texts, settings)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    if killed_at == "array":  # the long write: minutes for a million NV-Embed vectors
        monkeypatch.setattr(np, "save", killed)
    else:
        monkeypatch.setattr(embed_file, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        embed_file.save_embeddings(path, np.full((2, 2), 0.5, dtype=np.float32), new_texts, settings)
    monkeypatch.undo()
    for texts in (old_texts, new_texts):
        with pytest.raises(ValueError, match="no embeddings file with its description"):
            embed_file.load_embeddings(path, texts)
    embed_file.save_embeddings(path, np.full((2, 2), 0.5, dtype=np.float32), new_texts, settings)
    assert np.asarray(embed_file.load_embeddings(path, new_texts)[0]).tolist() == [[0.5, 0.5], [0.5, 0.5]]


def _save_objects(path: Path) -> None:
    with path.open("wb") as handle:
        np.save(handle, np.array([{"a": 1}] * 6, dtype=object).reshape(2, 3), allow_pickle=True)


def _save_with_nan(path: Path) -> None:
    vectors = np.load(path)
    vectors[1, 0] = np.nan
    np.save(path, vectors)


# What is done to a good embeddings file (its .npy, its description), which of the two the line names, what it says.
DAMAGES = {
    "description: a JSON array": (lambda npy, desc: desc.write_text("[1, 2]"), "desc",
                                  "expected a JSON object, got list"),
    "description: not JSON": (lambda npy, desc: desc.write_text("{not json"), "desc",
                              "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                              "(char 1))"),
    "description: no hash": (lambda npy, desc: desc.write_text('{"encoder": {"name_or_path": "enc"}}'), "desc",
                             "field 'texts_sha256': expected the texts' hash (a string), got null"),
    "description: an encoder setting unknown": (
        lambda npy, desc: desc.write_text(json.dumps({**json.loads(desc.read_text()), "encoder": {"colour": 1}})),
        "desc", "field 'encoder': EncoderSettings.__init__() got an unexpected keyword argument 'colour'"),
    "array: not a .npy file": (lambda npy, desc: npy.write_text("garbage"), "npy",
                               "not a .npy file (no NumPy array header)"),
    "array: cut short": (lambda npy, desc: npy.write_bytes(npy.read_bytes()[:-8]), "npy",
                         "not a readable .npy array (mmap length is greater than file size)"),
    "array: Python objects": (lambda npy, desc: _save_objects(npy), "npy",
                              "not a readable .npy array (Array can't be memory-mapped: Python objects in dtype.)"),
    "array: strings": (lambda npy, desc: np.save(npy, np.array([["a"] * 3] * 2)), "npy",
                       "holds str32 values, not numbers (expected float32 embeddings)"),
    "array: a NaN": (lambda npy, desc: _save_with_nan(npy), "npy", "row 1 holds a NaN or infinite value (an encoder "
                     "that overflowed: embed the texts again, e.g. with --dtype float32)"),
    "array: vectors of no numbers": (lambda npy, desc: np.save(npy, np.zeros((len(np.load(npy)), 0), np.float32)),
                                     "npy", "shape (3, 0), expected 3 rows of one or more numbers"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_embeddings_file_is_one_line_naming_it(tmp_path: Path, capsys, damage: str) -> None:
    """`curate captions --embeddings`: a description holding a JSON array was a traceback; invalid JSON, an array
    of no numbers or no .npy file at all were reported without naming the file (numpy calls any file without an
    array header pickled data)."""
    from test_curate_pipeline import PARAPHRASES, caption_record

    generated_file = write_jsonl(tmp_path / "gen.jsonl", [caption_record("g1", PARAPHRASES[:3])])
    texts_file = tmp_path / "texts.jsonl"
    assert main(["curate", "texts", "captions", "--input", str(generated_file), "--output", str(texts_file)]) == 0
    texts, npy = embed_file.read_texts(texts_file), tmp_path / "e.npy"
    embed_file.save_embeddings(npy, np.eye(len(texts), 3, dtype=np.float32), texts, EncoderSettings("enc"))
    embed_file.load_embeddings(npy, texts)  # good before the damage
    damaged, named, says = DAMAGES[damage]
    damaged(npy, embed_file.sidecar(npy))
    capsys.readouterr()
    assert main(["curate", "captions", "--input", str(generated_file), "--embeddings", str(npy),
                 "--output-dir", str(tmp_path / "out"), "--threshold", "0.5"]) == 2
    file = npy if named == "npy" else embed_file.sidecar(npy)
    assert capsys.readouterr().err.splitlines() == [f"error: {file}: {says}"]


def test_pairs_from_noisy_write_a_json_array_for_a_json_name(tmp_path: Path) -> None:
    prompt = caption_prompt("default")
    clean = write_jsonl(tmp_path / "curated.jsonl", [
        {"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": f"<image>\n{prompt}"},
                                                       {"from": "gpt", "value": "A red cube."}]}])
    noisy = generated("a", ["A blurred blob."])
    noisy["generation"]["corruption"] = [{"method": "gaussian_blur", "sigma": 3.5}]
    noisy_file = write_jsonl(tmp_path / "noisy.jsonl", [noisy])
    output = tmp_path / "pairs.json"
    assert main(["curate", "pairs-from-noisy", "--curated", str(clean), "--noisy", str(noisy_file),
                 "--output", str(output), "--task", "captions"]) == 0
    [pair] = json.loads(output.read_text())
    assert (pair["chosen"], pair["rejected"]) == ("A red cube.", "A blurred blob.")


def _one_of_each_input(tmp_path: Path) -> dict[str, Path]:
    """A generation file, a curated file and a noisy generation file, each with one usable record."""
    noisy = generated("a", ["A blurred blob."])
    noisy["generation"]["corruption"] = [{"method": "gaussian_blur", "sigma": 3.5}]
    return {"gen": write_jsonl(tmp_path / "gen.jsonl", [generated("a", ["A cat."])]),
            "curated": write_jsonl(tmp_path / "curated.jsonl", [llava("a")]),
            "noisy": write_jsonl(tmp_path / "noisy.jsonl", [noisy])}


def _snapshot(folder: Path) -> dict[Path, bytes | None]:
    """Every path under ``folder``, with the bytes of the files."""
    return {path: path.read_bytes() if path.is_file() else None for path in folder.rglob("*")}


# Each command with its output set to one of its inputs (another spelling of it, a link to it, or the errors file
# beside the output), and the start of the one error line.
OVERWRITING = {
    "random": (["curate", "random", "--input", "{gen}", "--output", "{gen}"],
               "--output {gen} is the same file as --input {gen};"),
    "random-errors-file": (["curate", "random", "--input", "{dir}/r.errors.jsonl", "--output", "{dir}/r.jsonl"],
                           "--output {dir}/r.jsonl writes {dir}/r.errors.jsonl, which is the same file as --input "
                           "{dir}/r.errors.jsonl;"),
    "texts": (["curate", "texts", "captions", "--input", "{gen}", "--output", "{dir}/./gen.jsonl"],
              "--output {dir}/./gen.jsonl is the same file as --input {gen};"),
    "mix": (["curate", "mix", "--inputs", "{dir}/link.jsonl", "{gen}", "--output", "{curated}"],
            "--output {curated} is the same file as --inputs {dir}/link.jsonl;"),
    "pairs-from-noisy": (["curate", "pairs-from-noisy", "--curated", "{curated}", "--noisy", "{noisy}",
                          "--output", "{noisy}"], "--output {noisy} is the same file as --noisy {noisy};"),
    "captions": (["curate", "captions", "--input", "{dir}/out/curated.jsonl", "--output-dir", "{dir}/out"],
                 "--output-dir {dir}/out writes {dir}/out/curated.jsonl, which is the same file as --input "
                 "{dir}/out/curated.jsonl;"),
}


@pytest.mark.parametrize("case", OVERWRITING)
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(tmp_path: Path, capsys, case: str) -> None:
    files = _one_of_each_input(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "curated.jsonl").write_bytes(files["gen"].read_bytes())
    (tmp_path / "r.errors.jsonl").write_bytes(files["gen"].read_bytes())  # records an earlier run could not use
    (tmp_path / "link.jsonl").symlink_to(files["curated"])
    before = _snapshot(tmp_path)
    argv, says = OVERWRITING[case]
    names = {"dir": str(tmp_path), **{key: str(path) for key, path in files.items()}}
    assert main([arg.format(**names) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {says.format(**names)} writing it would replace the input")
    assert _snapshot(tmp_path) == before


def test_embed_file_refuses_to_write_over_its_texts(tmp_path: Path, capsys) -> None:
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "a cat"}])
    assert embed_file.main(["--texts", str(texts), "--output", str(texts), "--encoder", "none"]) == 2
    assert f"--output {texts} is the same file as --texts {texts}" in capsys.readouterr().err
    assert load_records(texts) == [{"text": "a cat"}]


@pytest.mark.parametrize("argv", [
    ["curate", "random", "--input", "{gen}", "--output", "{dir}/afile/m.jsonl"],
    ["curate", "mix", "--inputs", "{curated}", "--output", "{dir}/afile/m.jsonl"],
    ["curate", "texts", "captions", "--input", "{gen}", "--output", "{dir}/afile/sub/m.json"],
], ids=["random", "mix", "texts"])
def test_an_output_inside_a_file_names_that_file(tmp_path: Path, capsys, argv: list[str]) -> None:
    files = _one_of_each_input(tmp_path)
    (tmp_path / "afile").write_text("")
    names = {"dir": str(tmp_path), **{key: str(path) for key, path in files.items()}}
    assert main([arg.format(**names) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"({tmp_path / 'afile'} is a file)" in err and "File exists" not in err


def test_an_output_folder_inside_a_file_names_that_file(tmp_path: Path, capsys) -> None:
    gen = _one_of_each_input(tmp_path)["gen"]
    (tmp_path / "afile").write_text("")
    assert main(["curate", "captions", "--input", str(gen), "--output-dir", str(tmp_path / "afile" / "out")]) == 2
    assert capsys.readouterr().err == (f"error: --output-dir {tmp_path / 'afile' / 'out'} cannot be made a folder "
                                       f"({tmp_path / 'afile'} is a file)\n")
