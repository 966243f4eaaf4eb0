"""The VLMEvalKit adapter driven by a minimal stand-in of VLMEvalKit's inference loop and dataset API."""

from __future__ import annotations

import base64
import sys
import types

import pytest

from sicog.data.jsonl import load_records
from sicog.eval.generation import LITERAL_IMAGE, generate_replies
from sicog.eval.runner import evaluate
from sicog.eval.tsv import read_benchmark
from sicog.eval.vlmevalkit import SicogVLM
from sicog.model.configuration import SicogConfig
from sicog.model.image_io import ImageError
from sicog.toy.build import build_world, load_manifest

# VLMEvalKit calls any custom TSV (ToyOpen) multiple choice, options or not.
DATASET_TYPES = {"ToyMC": "MCQ", "ToyOpen": "MCQ", "POPE": "Y/N", "MMVet": "VQA"}


@pytest.fixture
def vlmeval(monkeypatch, tmp_path):
    """``vlmeval.dataset.DATASET_TYPE``, the one thing the adapter asks VLMEvalKit, and ``vlmeval.config``'s
    ``supported_VLM``, where the launcher registers the model (the package lives in a checkout folder)."""
    package, dataset = types.ModuleType("vlmeval"), types.ModuleType("vlmeval.dataset")
    config = types.ModuleType("vlmeval.config")
    dataset.DATASET_TYPE = lambda name: DATASET_TYPES.get(name, "VQA")
    config.supported_VLM = {}
    package.dataset, package.config = dataset, config
    package.__file__ = str(tmp_path / "checkout" / "vlmeval" / "__init__.py")
    monkeypatch.setitem(sys.modules, "vlmeval", package)
    monkeypatch.setitem(sys.modules, "vlmeval.dataset", dataset)
    monkeypatch.setitem(sys.modules, "vlmeval.config", config)
    return package


class StandInDataset:
    """Rows like VLMEvalKit's (missing cells are NaN), images dumped to files, VLMEvalKit's own MCQ prompt."""

    def __init__(self, name, rows, image_dir):
        self.dataset_name, self.image_dir = name, image_dir
        self.data = [{k: (float("nan") if v == "" else v) for k, v in row.items()} for row in rows]

    def dump_image(self, line):
        path = self.image_dir / f"{line['index']}.png"
        path.write_bytes(base64.b64decode(line["image"]))
        return [str(path)]

    def build_prompt(self, line):
        return [{"type": "image", "value": self.dump_image(line)[0]},
                {"type": "text", "value": f"Question: {line['question']}"}]


def infer(model, dataset) -> dict[str, str]:
    """VLMEvalKit's loop for local models: hand over the dump function, build each prompt, generate."""
    model.set_dump_image(dataset.dump_image)
    answers = {}
    for line in dataset.data:
        if model.use_custom_prompt(dataset.dataset_name):
            struct = model.build_prompt(line, dataset=dataset.dataset_name)
        else:
            struct = dataset.build_prompt(line)
        answers[line["index"]] = model.generate(message=struct, dataset=dataset.dataset_name)
    return answers


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlmeval_toy") / "world"
    build_world(root, seed=0, size="tiny")
    return load_manifest(root)


def test_vlmevalkit_answers_like_the_built_in_runner(vlmeval, toy, tiny_model_factory, tmp_path) -> None:
    model, processor = tiny_model_factory(seed=4)
    bench = read_benchmark(toy["bench_mc"])
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=6)
    dataset = StandInDataset("ToyMC", bench.rows[:4], tmp_path)
    answers = infer(adapter, dataset)
    evaluate(model, processor, bench, tmp_path / "runner", batch_size=1, max_new_tokens=6)
    runner = {r["id"]: r for r in load_records(tmp_path / "runner" / "predictions.jsonl")}
    assert answers == {index: runner[index]["prediction"] for index in answers}
    message = adapter.build_prompt(dataset.data[0], dataset="ToyMC")
    assert [item["type"] for item in message] == ["image", "text"]
    assert message[1]["value"] == runner["0"]["prompt"]


def test_other_dataset_types_keep_the_dataset_prompt(vlmeval, tiny_model_factory, tmp_path) -> None:
    model, processor = tiny_model_factory(seed=4)
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=4)
    assert adapter.use_custom_prompt("ToyMC") and not adapter.use_custom_prompt("POPE")
    assert not adapter.use_custom_prompt("MMVet")
    with pytest.raises(ValueError, match="build_prompt serves multiple-choice datasets; 'POPE' is 'Y/N'"):
        adapter.build_prompt({"index": 0, "question": "Is there a dog?"}, dataset="POPE")


def test_multi_turn_conversations_as_vlmevalkit_chats_them(vlmeval, tiny_model_factory, tmp_path) -> None:
    """VLMEvalKit's multi-turn datasets (MMDU) call chat() with the turns so far, earlier replies as strings:
    every turn is encoded in order, each image where it stands."""
    from PIL import Image

    model, processor = tiny_model_factory(seed=4)
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=4)
    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (10, 200, 10)).save(image)
    first = {"role": "user", "content": [{"type": "image", "value": str(image)}, {"type": "text", "value": "Colour?"}]}
    # One turn is the single-turn answer.
    assert adapter.chat([first]) == adapter.generate([str(image), "Colour?"])
    later = [first, {"role": "assistant", "content": "green"},
             {"role": "user", "content": [{"type": "text", "value": "And <image> its shape?"}]}]
    turns = [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "green"},
             {"role": "user", "content": f"And {LITERAL_IMAGE} its shape?"}]
    expected = generate_replies(model, processor, [processor.encode(turns, [Image.open(image)], train=False)],
                                max_new_tokens=4)[0]
    assert adapter.chat(later) == expected
    with pytest.raises(ValueError, match="turn 1 is not {'role', 'content'}"):
        adapter.chat([first, {"text": "?"}])


def test_message_forms_and_checks(vlmeval, tiny_model_factory, tmp_path) -> None:
    from PIL import Image

    model, processor = tiny_model_factory(seed=4)
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=4)
    image = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (10, 200, 10)).save(image)
    as_items = adapter.generate([{"type": "image", "value": str(image)}, {"type": "text", "value": "What colour?"}])
    assert isinstance(as_items, str)
    assert adapter.generate([str(image), "What colour?"]) == as_items  # strings naming image files are images
    assert isinstance(adapter.generate("Hello?"), str)  # text only
    with pytest.raises(ValueError, match="has type 'video'"):
        adapter.generate([{"type": "video", "value": "v.mp4"}])
    with pytest.raises(ValueError, match="not {'type', 'value'}"):
        adapter.generate([{"text": "x"}])
    with pytest.raises(ImageError, match="missing.png"):
        adapter.generate([{"type": "image", "value": str(tmp_path / "missing.png")}, {"type": "text", "value": "?"}])
    # A "<image>" in the text that places none of the message's images is text: MUIRBench's questions name their
    # pictures so, and the placeholder count stopped the row (and VLMEvalKit's whole dataset).
    second = tmp_path / "b.png"
    Image.new("RGB", (20, 30), (200, 10, 10)).save(second)
    literal = adapter.generate([{"type": "image", "value": str(image)}, {"type": "image", "value": str(second)},
                                {"type": "text", "value": "Which of <image> is red?"}])
    assert literal == adapter.generate([str(image), str(second), f"Which of {LITERAL_IMAGE} is red?"])
    with pytest.raises(RuntimeError, match="set_dump_image"):
        adapter.build_prompt({"index": 0, "question": "?", "A": "x", "B": "y"}, dataset="ToyMC")
    with pytest.raises(ValueError, match="either model_path"):
        SicogVLM()
    with pytest.raises(ValueError, match="unknown prompt style"):
        SicogVLM(model=model, processor=processor, prompt="fancy")


def test_rows_without_options_are_not_asked_for_a_letter(vlmeval, tiny_model_factory, tmp_path) -> None:
    from sicog.data.prompts import SHORT_ANSWER
    from sicog.eval.prompts import MC_INSTRUCTION

    model, processor = tiny_model_factory(seed=4)
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=4)
    adapter.set_dump_image(lambda line: str(tmp_path / "a.png"))
    nan = float("nan")
    rows = {
        "options": {"index": 0, "question": "Which colour?", "A": "red", "B": "blue", "C": nan, "answer": "A"},
        "open": {"index": 1, "hint": "A toy picture.", "question": "Which colour?", "A": nan, "B": nan,
                 "answer": "red"},
        "yes/no": {"index": 2, "question": "Is it red?", "answer": "Yes"},
    }
    rows["counts"] = {"index": 3, "question": "How many?", "A": 1.0, "B": 2.0, "C": 3.5, "D": nan, "answer": "B"}
    texts = {kind: adapter.build_prompt(row, dataset="ToyOpen")[-1]["value"] for kind, row in rows.items()}
    assert texts["options"] == f"Which colour?\nA. red\nB. blue\n{MC_INSTRUCTION}"
    # pandas reads a numeric column with an empty cell as floats: asked as the file writes them, as `sicog eval` does
    assert texts["counts"] == f"How many?\nA. 1\nB. 2\nC. 3.5\n{MC_INSTRUCTION}"
    assert texts["open"] == "A toy picture.\nWhich colour?"
    assert texts["yes/no"] == f"Is it red?\n{SHORT_ANSWER}"
    cot = SicogVLM(model=model, processor=processor, prompt="cot")
    cot.set_dump_image(adapter.dump_image_func)
    assert cot.build_prompt(rows["open"], dataset="ToyOpen")[-1]["value"].endswith("Answer the question step-by-step.")


RUN_PY = """\
import json, sys
from vlmeval.config import supported_VLM
entry = supported_VLM["sicog"]
json.dump({"argv": sys.argv, "path0": sys.path[0], "keywords": entry.keywords}, open(sys.argv[-1], "w"))
"""


def test_launcher_registers_the_model_and_runs_run_py(vlmeval, tmp_path, monkeypatch) -> None:
    import json

    from sicog.eval import vlmevalkit

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "run.py").write_text(RUN_PY)
    SicogConfig().save_pretrained(tmp_path / "ckpt")  # its config.json is all the launcher reads
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)  # no run.py here: the one beside the vlmeval package is found
    report = tmp_path / "report.json"
    assert vlmevalkit.main(["--sicog-model", "ckpt", "--model", "sicog", "--sicog-prompt", "cot", "--data", "MMStar",
                            "POPE", "--work-dir", "out", str(report)]) == 0
    ran = json.loads(report.read_text())
    assert ran["argv"] == [str(checkout / "run.py"), "--model", "sicog", "--data", "MMStar", "POPE",
                           "--work-dir", "out", str(report)]
    assert ran["path0"] == str(checkout)
    assert ran["keywords"] == {"model_path": str(tmp_path / "ckpt"), "prompt": "cot", "max_new_tokens": 1024,
                               "device": "auto", "dtype": "auto"}
    assert vlmevalkit.find_run_script(checkout) == checkout / "run.py"


def test_launcher_refuses_bad_input(vlmeval, tmp_path, capsys) -> None:
    from sicog.eval import vlmevalkit

    with pytest.raises(SystemExit) as stop:
        vlmevalkit.main(["--sicog-model", str(tmp_path / "none"), "--model", "sicog", "--data", "MMStar"])
    assert stop.value.code == 2 and "no SICOG checkpoint at" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "llava_qwen"}')  # a published checkpoint, not converted
    with pytest.raises(SystemExit) as stop:
        vlmevalkit.main(["--sicog-model", str(tmp_path), "--model", "sicog", "--data", "MMStar"])
    assert stop.value.code == 2 and "convert it with `sicog convert from-release`" in capsys.readouterr().err
    SicogConfig().save_pretrained(tmp_path)
    with pytest.raises(SystemExit) as stop:
        vlmevalkit.main(["--sicog-model", str(tmp_path), "--vlmevalkit", str(tmp_path), "--data", "MMStar"])
    assert stop.value.code == 2 and f"no VLMEvalKit run.py in {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize(("visible", "local_rank", "expected"),
                         [(8, "3", "cuda:3"), (1, "3", "cuda:0"), (2, "0", "cuda:0")])
def test_auto_device_is_one_gpu_per_local_rank(monkeypatch, visible, local_rank, expected) -> None:
    """torchrun / accelerate show every GPU (cuda:LOCAL_RANK); VLMEvalKit's run.py shows each process its own."""
    import torch

    from sicog.model.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert resolve_device() == (torch.device(expected), torch.bfloat16)
