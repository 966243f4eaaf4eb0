"""The stage-1.5 mixture (`sicog curate mix`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sicog.cli import main
from sicog.curate.mix import id_prefixes, mix, take
from sicog.data.jsonl import RecordError, errors_path, load_records


def llava(rid: str, answer: str = "A cat.") -> dict:
    return {"id": rid, "image": f"{rid}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": answer}]}


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_ratios_take_all_part_or_repeated_copies(tmp_path: Path) -> None:
    captions = write(tmp_path / "captions.jsonl", [llava(f"c{i}") for i in range(10)])
    reasoning = write(tmp_path / "reasoning.jsonl", [llava(f"r{i}") for i in range(4)])
    parts = mix([captions, reasoning], tmp_path / "mix.jsonl", ratios=[0.5, 2], seed=3)
    assert [(p.records, p.taken) for p in parts] == [(10, 5), (4, 8)]
    ids = [r["id"] for r in load_records(tmp_path / "mix.jsonl")]
    assert len(ids) == len(set(ids)) == 13
    assert sorted(i for i in ids if i.startswith("r")) == ["r0", "r0#1", "r1", "r1#1", "r2", "r2#1", "r3", "r3#1"]
    assert len([i for i in ids if i.startswith("c")]) == 5


def test_same_seed_same_mixture_other_seed_other_order(tmp_path: Path) -> None:
    source = write(tmp_path / "a.jsonl", [llava(f"a{i}") for i in range(30)])
    mix([source], tmp_path / "one.jsonl", ratios=[0.5], seed=1)
    mix([source], tmp_path / "two.jsonl", ratios=[0.5], seed=1)
    mix([source], tmp_path / "three.jsonl", ratios=[0.5], seed=2)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()
    assert (tmp_path / "one.jsonl").read_text() != (tmp_path / "three.jsonl").read_text()


def test_invalid_records_and_repeated_ids_go_to_the_errors_file(tmp_path: Path) -> None:
    bad_turns = {"id": "bad", "image": "x.jpg", "conversations": [{"from": "gpt", "value": "hi"}]}
    source = write(tmp_path / "a.jsonl", [llava("ok"), bad_turns, llava("ok", "again")])
    parts = mix([source], tmp_path / "mix.json")
    assert (parts[0].records, parts[0].errors, parts[0].taken) == (3, 2, 1)
    assert [r["id"] for r in json.loads((tmp_path / "mix.json").read_text())] == ["ok"]
    errors = load_records(errors_path(tmp_path / "mix.json"))
    assert [(e["id"], e["line"], e["field"]) for e in errors] == [("bad", 2, "conversations[0].from"), ("ok", 3, "id")]


def test_colliding_ids_across_inputs_stop_the_mix_unless_prefixed(tmp_path: Path) -> None:
    first = write(tmp_path / "captions.jsonl", [llava("img1")])
    second = write(tmp_path / "reasoning.jsonl", [llava("img1")])
    with pytest.raises(RecordError, match="img1"):
        mix([first, second], tmp_path / "mix.jsonl")
    assert not (tmp_path / "mix.jsonl").exists()
    mix([first, second], tmp_path / "mix.jsonl", prefix_ids=True)
    assert sorted(r["id"] for r in load_records(tmp_path / "mix.jsonl")) == ["captions:img1", "reasoning:img1"]


def test_prefix_ids_tell_inputs_of_the_same_name_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The documented layout: curated/captions/curated.jsonl and curated/reasoning/curated.jsonl share a name.
    (tmp_path / "captions").mkdir()
    (tmp_path / "reasoning").mkdir()
    first = write(tmp_path / "captions" / "curated.jsonl", [llava("img1"), llava("img2")])
    second = write(tmp_path / "reasoning" / "curated.jsonl", [llava("img1")])
    out = tmp_path / "mix.jsonl"
    args = ["curate", "mix", "--inputs", str(first), str(second), "--output", str(out), "--prefix-ids"]
    assert main(args) == 0
    assert sorted(r["id"] for r in load_records(out)) == [
        "captions/curated:img1", "captions/curated:img2", "reasoning/curated:img1"]
    capsys.readouterr()


def test_id_prefixes_are_the_shortest_distinct_path_ends(tmp_path: Path) -> None:
    assert id_prefixes([tmp_path / "a" / "x.jsonl", tmp_path / "b" / "x.jsonl"]) == ["a/x", "b/x"]
    assert id_prefixes([tmp_path / "b" / "x.jsonl", tmp_path / "a" / "b" / "x.jsonl"])[1] == "a/b/x"
    assert id_prefixes([tmp_path / "x.json", tmp_path / "x.jsonl"]) == ["x.json", "x.jsonl"]


def test_the_same_file_twice_stops_the_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").mkdir()
    source = write(tmp_path / "a" / "curated.jsonl", [llava("img1")])
    again = tmp_path / "a" / ".." / "a" / "curated.jsonl"
    out = tmp_path / "mix.jsonl"
    with pytest.raises(ValueError, match="same file"):
        mix([source, again], out, prefix_ids=True)
    assert main(["curate", "mix", "--inputs", str(source), str(again), "--output", str(out), "--prefix-ids"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are the same file" in err and not out.exists()


def test_a_ratios_share_is_rounded_half_up() -> None:
    # round() rounds half to even: 0.5 of 5 records would take 2, though 0.5 of 3 takes 2.
    five = [llava(f"r{i}") for i in range(5)]
    assert len(take(five, 0.5, random.Random(0))) == 3
    assert len(take(five, 2.5, random.Random(0))) == 13
    assert len(take(five, 0.1, random.Random(0))) == 1
    assert len(take(five, 0.09, random.Random(0))) == 0


def test_take_rejects_negative_ratios() -> None:
    with pytest.raises(ValueError, match="ratio"):
        take([llava("a")], -1, random.Random(0))


def test_cli_mix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path / "a.jsonl", [llava("a1"), llava("a2")])
    second = write(tmp_path / "b.jsonl", [llava("b1")])
    out = tmp_path / "mix.jsonl"
    assert main(["curate", "mix", "--inputs", str(first), str(second), "--output", str(out), "--ratios", "1", "3"]) == 0
    assert len(load_records(out)) == 5 and "wrote 5 records" in capsys.readouterr().out
    assert main(["curate", "mix", "--inputs", str(first), "--output", str(out), "--ratios", "1", "2"]) == 2
    assert "1 inputs but 2 ratios" in capsys.readouterr().err


def test_a_copy_meeting_an_id_of_its_own_file_is_not_advised_prefixes(tmp_path: Path) -> None:
    # Ratio 2 copies "img" as "img#1", which the file already holds: a prefix per input cannot tell them apart.
    source = write(tmp_path / "a.jsonl", [llava("img"), llava("img#1")])
    with pytest.raises(RecordError, match="rename the ids") as err:
        mix([source], tmp_path / "mix.jsonl", ratios=[2])
    assert "--prefix-ids" not in str(err.value)
    other = write(tmp_path / "b.jsonl", [llava("img")])
    with pytest.raises(RecordError, match="use --prefix-ids"):
        mix([source, other], tmp_path / "mix.jsonl")


def test_a_ratio_is_read_as_the_decimal_written():
    """A ratio's share is the decimal written (1.15 of 10 records = 10 + 1.5 rounded half up = 12)."""
    records = [{"id": str(i)} for i in range(10)]
    assert len(take(records, 1.15, random.Random(0))) == 12


def test_the_commands_defaults_are_the_functions() -> None:
    """`curate mix` and `curate pairs-from-noisy` take their defaults from the library functions, written once."""
    import argparse
    import inspect

    from sicog.curate.cli import add_arguments
    from sicog.curate.noisy import pairs_from_noisy

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    mixed = parser.parse_args(["mix", "--inputs", "a.jsonl", "--output", "m.jsonl"])
    noisy = parser.parse_args(["pairs-from-noisy", "--curated", "c.jsonl", "--noisy", "n.jsonl", "--output", "p.jsonl"])
    assert mixed.seed == inspect.signature(mix).parameters["seed"].default
    assert (noisy.task, noisy.seed) == tuple(inspect.signature(pairs_from_noisy).parameters[name].default
                                             for name in ("task", "seed"))
