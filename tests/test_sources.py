"""Records from HF `datasets` sources (saved folders, parquet and arrow files, cached Hub datasets) and the
mixture YAML keys of LLaVA-NeXT / LLaVA-OneVision."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from sicog.data.jsonl import RecordError, iter_records
from sicog.data.mixture import Source, load_mixture, sample
from sicog.data.sources import iter_input_records

datasets = pytest.importorskip("datasets", reason="datasets is part of the 'train' extra")

RECORDS = [  # the first has every field (datasets takes the columns from it)
    {"id": "a", "image": "a.png", "question": "Which colour?",
     "conversations": [{"from": "human", "value": "<image>\nWhich colour?"}, {"from": "gpt", "value": "Red."}]},
    {"id": "b", "image": "b.png", "conversations": [{"from": "human", "value": "<image>\nWhat is it?"},
                                                   {"from": "gpt", "value": "A square."}]},
    {"id": "c", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
]


def rows(source) -> list[tuple[int, dict]]:
    return list(iter_input_records(source))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """The same records as a JSONL file, a save_to_disk folder, a DatasetDict folder, parquet and arrow files."""
    root = tmp_path_factory.mktemp("sources")
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    dataset = datasets.Dataset.from_list(RECORDS)
    dataset.save_to_disk(root / "saved")
    datasets.DatasetDict({"train": dataset, "test": dataset.select([2])}).save_to_disk(root / "dict")
    datasets.DatasetDict({"val": dataset, "test": dataset}).save_to_disk(root / "no_train")
    dataset.to_parquet(root / "records.parquet")
    shutil.copy(next((root / "saved").glob("*.arrow")), root / "records.arrow")
    return root


@pytest.mark.parametrize("name", ["saved", "dict", "records.parquet", "records.arrow"])
def test_dataset_sources_give_the_json_records_with_their_rows(saved, name):
    """Absent fields (null in Arrow) are dropped, so every source gives exactly the JSON records."""
    assert rows(saved / name) == rows(saved / "records.jsonl") == list(enumerate(RECORDS, start=1))


def test_a_dataset_dict_needs_a_train_split_or_a_named_one(saved):
    assert [r["id"] for _, r in rows(saved / "dict" / "test")] == ["c"]  # a split's own folder
    with pytest.raises(RecordError, match=r"no_train: no 'train' split; it holds val, test \(give the split's folder"):
        rows(saved / "no_train")


def test_unreadable_sources_are_named(saved, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00")
    cases = {tmp_path / "notes.txt": "notes.txt:1: invalid JSON", tmp_path / "empty": "not a dataset folder",
             tmp_path / "gone.parquet": "file not found", tmp_path / "gone.jsonl": "file not found",
             tmp_path / "data.jsonl.gz": "is a .gz file, not JSON or JSON Lines: decompress it first"}
    for source, message in cases.items():
        with pytest.raises(RecordError, match=message) as err:
            rows(source)
        assert str(source) in str(err.value)


def test_a_file_of_another_name_is_read_by_its_content_as_every_reader_reads_it(tmp_path):
    """`data check` and train refused a JSON Lines file named .ndjson, which image-use and curate read; and a
    parquet file given to those was "invalid JSON" there, while train read it."""
    (tmp_path / "records.ndjson").write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [r["id"] for _, r in rows(tmp_path / "records.ndjson")] == ["a", "b"]
    assert [r["id"] for _, r in iter_records(tmp_path / "records.ndjson")] == ["a", "b"]
    (tmp_path / "records.parquet").write_bytes(b"PAR1")
    with pytest.raises(RecordError, match="is a .parquet file, not JSON or JSON Lines: `sicog data head --input FILE "
                                          "--output FILE.jsonl --limit ROWS`"):
        list(iter_records(tmp_path / "records.parquet"))
    # A mixture or a table given where records are read: said so, not "invalid JSON" on line 1.
    for name, says in (("mix.yaml", "a YAML mixture is read by `sicog train --data_path` and `sicog data check`"),
                       ("bench.tsv", "records are JSON Lines or a JSON array (`sicog eval` reads benchmark TSVs)")):
        (tmp_path / name).write_text("a: 1\n")
        with pytest.raises(RecordError, match=re.escape(f"{name}: is a {name[name.index('.'):]} file, not JSON or "
                                                        f"JSON Lines: {says}")):
            rows(tmp_path / name)


def test_a_damaged_file_is_named(saved, tmp_path):
    data = (saved / "records.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.arrow").write_bytes((saved / "records.arrow").read_bytes()[:100])
    for name in ("cut.parquet", "cut.arrow"):
        with pytest.raises(RecordError, match=f"{name}: cannot read after row 0: "):
            rows(tmp_path / name)


def test_without_the_datasets_package_the_error_says_so(saved, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)
    with pytest.raises(RecordError, match=r"saved: reading a dataset needs the `datasets` package \(pip install"):
        rows(saved / "saved")
    assert len(rows(saved / "records.jsonl")) == 3


def test_embedded_images_stop_with_the_field_named(tmp_path):
    from PIL import Image

    images = datasets.Dataset.from_dict({"id": ["a"], "image": [Image.new("RGB", (4, 4))]})
    images.to_parquet(tmp_path / "embedded.parquet")
    with pytest.raises(RecordError, match=r"embedded\.parquet field 'image': holds embedded image data"):
        rows(tmp_path / "embedded.parquet")
    datasets.Dataset.from_dict({"id": ["a"], "image": [[Image.new("RGB", (4, 4))]]}).save_to_disk(tmp_path / "many")
    with pytest.raises(RecordError, match="field 'image': holds embedded image data"):
        rows(tmp_path / "many")


def test_column_types_json_lacks_are_written_as_text_and_binary_data_is_named(tmp_path):
    import datetime
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "id": ["a"], "when": [datetime.datetime(2020, 1, 2, 3, 4)], "price": [decimal.Decimal("1.10")],
        "meta": [{"day": datetime.date(2020, 1, 2)}]}), tmp_path / "typed.parquet")
    [(_, record)] = rows(tmp_path / "typed.parquet")
    assert record == {"id": "a", "when": "2020-01-02T03:04:00", "price": "1.10", "meta": {"day": "2020-01-02"}}
    json.dumps(record)
    pq.write_table(pa.table({"id": ["a", "b"], "blob": [None, b"\x00"]}), tmp_path / "binary.parquet")
    with pytest.raises(RecordError, match=r"binary\.parquet:2 field 'blob': holds binary data"):
        rows(tmp_path / "binary.parquet")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache and datasets cache (offline, as in every test)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    return tmp_path / "hub"


def test_a_hub_dataset_fetched_with_hf_download_is_read_offline(saved, hub_cache):
    """The Hub cache's layout as `hf download --repo-type dataset me/tiny` leaves it."""
    repo = hub_cache / "datasets--me--tiny"
    (repo / "snapshots" / "0123abc" / "data").mkdir(parents=True)
    shutil.copy(saved / "records.parquet", repo / "snapshots" / "0123abc" / "data" / "train-00000-of-00001.parquet")
    shutil.copy(saved / "records.parquet", repo / "snapshots" / "0123abc" / "data" / "test-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    assert rows("me/tiny") == rows("me/tiny:test") == list(enumerate(RECORDS, start=1))
    with pytest.raises(RecordError, match=r"me/tiny:dev: no split 'dev'; it holds train, test \(name one as"):
        rows("me/tiny:dev")


def test_a_hub_dataset_not_in_the_cache_is_named(hub_cache):
    with pytest.raises(RecordError, match="me/absent: no local file or folder, and not a Hub dataset in the local"):
        rows("me/absent")


def write(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({**RECORDS[1], "id": i}) + "\n" for i in ids))
    return path


def test_sampling_rules_counts_percentages_and_seeds():
    items = list(range(10))
    assert sample(items, "all", 0) == sample(items, None, 0) == items
    assert sample(items, "first:3", 0) == [0, 1, 2] and sample(items, "end:3", 0) == [7, 8, 9]
    assert sample(items, "first:15%", 0) == [0, 1]  # 1.5 rounded up, as LLaVA-NeXT does
    assert sample(items, "end:0", 0) == [] and sample(items, "end:20", 0) == items
    drawn = sample(items, "random:40%", 3)
    assert len(drawn) == 4 and drawn == sorted(drawn) and drawn == sample(items, "random:40%", 3)
    assert len({tuple(sample(items, "random:4", seed)) for seed in range(6)}) > 1
    for rule in ("some", "first", "first:x", "last:2", "random:-1", "end:2.5"):
        with pytest.raises(RecordError, match="invalid sampling rule"):
            sample(items, rule, 0)


def test_llava_next_mixture_keys(saved, tmp_path, monkeypatch):
    """`json_path` / `sampling_strategy` as in LLaVA-OneVision's YAML files; entries may name dataset sources; a
    relative path is found beside the YAML file, else in the working folder (where LLaVA-NeXT looks)."""
    folder = tmp_path / "mixtures"
    (folder / "sub").mkdir(parents=True)
    write(folder / "a.jsonl", [f"a{i}" for i in range(10)])
    write(folder / "sub" / "b.json", [f"b{i}" for i in range(10)])
    write(tmp_path / "c.jsonl", ["c0", "c1"])
    spec = {"datasets": [
        {"json_path": "a.jsonl", "sampling_strategy": "end:20%"},
        {"json_path": "sub/b.json", "sampling_strategy": "random:3"},
        {"path": str(saved / "records.parquet"), "sampling": "first:1"},
        {"json_path": "c.jsonl"},
    ]}
    mixture = folder / "onevision.yaml"
    mixture.write_text(yaml.safe_dump(spec))
    monkeypatch.chdir(tmp_path)
    records = load_mixture(mixture, seed=5)
    ids = [r["id"] for r, _ in records]
    assert ids[:2] == ["a8", "a9"] and ids[5:] == ["a", "c0", "c1"]
    assert len(set(ids[2:5])) == 3 and all(i.startswith("b") for i in ids[2:5])
    assert ids == [r["id"] for r, _ in load_mixture(mixture, seed=5)]
    assert records[5][1] == Source(str(saved / "records.parquet"), 1) and records[6][1] == Source("c.jsonl", 1)

    spec["datasets"][1]["sampling_strategy"] = "half"
    mixture.write_text(yaml.safe_dump(spec))
    with pytest.raises(RecordError, match=r"onevision\.yaml field 'datasets\[1\]\.sampling_strategy': invalid"):
        load_mixture(mixture)
    mixture.write_text(yaml.safe_dump({"datasets": [{"path": "a.jsonl", "json_path": "a.jsonl"}]}))
    with pytest.raises(RecordError, match=r"field 'datasets\[0\]': give path or json_path, not both"):
        load_mixture(mixture)


def test_training_records_from_a_dataset_name_the_row_of_each_problem(saved, tmp_path, tiny_model_factory):
    from PIL import Image

    from sicog.train.datasets import SupervisedDataset

    _, processor = tiny_model_factory()
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    dataset = SupervisedDataset(saved / "records.parquet", processor, image_folder=tmp_path, show_progress=False)
    assert [r["id"] for r in dataset.records] == ["a", "c"]
    (problem,) = dataset.problems
    assert (problem.id, problem.source) == ("b", Source(str(saved / "records.parquet"), 2))
    assert "b.png" in problem.reason


def test_data_head_writes_the_first_rows_of_a_dataset_as_jsonl(saved, tmp_path, capsys):
    from sicog.cli import main
    from sicog.data.jsonl import load_records

    assert main(["data", "head", "--input", str(saved / "dict"), "--output", str(tmp_path / "two.jsonl"),
                 "--limit", "2"]) == 0
    assert load_records(tmp_path / "two.jsonl") == RECORDS[:2]
    assert main(["data", "head", "--input", str(tmp_path / "gone.parquet"), "--output", str(tmp_path / "x.jsonl"),
                 "--limit", "2"]) == 2
    assert "sicog data head: error: " in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_data_head_reads_no_further_than_the_limit(tmp_path, capsys):
    """A bad line just after the records asked for does not stop the command."""
    from sicog.cli import main
    from sicog.data.jsonl import load_records

    (tmp_path / "in.jsonl").write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n{not json\n")
    assert main(["data", "head", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "two.jsonl"),
                 "--limit", "2"]) == 0
    assert load_records(tmp_path / "two.jsonl") == RECORDS[:2]
