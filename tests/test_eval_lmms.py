"""The lmms-eval adapter against a stand-in of lmms-eval's model API (lmms-eval is not in this venv).

The stand-in mirrors lmms-eval 0.7: ``lmms_eval.api.model.lmms`` (abstract ``loglikelihood``,
``generate_until``, ``generate_until_multi_round``; ``task_dict``, ``rank``), request objects whose
``args`` are ``(context, gen_kwargs | target, doc_to_visual, doc_id, task, split)``, and the model
registry (``ModelManifest``, ``MODEL_REGISTRY_V2``) that entry points feed.
"""

from __future__ import annotations

import abc
import importlib
import os
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from sicog.eval.generation import LITERAL_IMAGE, encode_item, generate_replies


class StandInLmms(abc.ABC):
    is_simple = True

    def __init__(self) -> None:
        self._rank, self._world_size, self.task_dict = 0, 1, {}

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    @abc.abstractmethod
    def loglikelihood(self, requests): ...

    @abc.abstractmethod
    def generate_until(self, requests): ...

    @abc.abstractmethod
    def generate_until_multi_round(self, requests): ...


@dataclass(frozen=True)
class StandInManifest:
    model_id: str
    simple_class_path: str | None = None
    chat_class_path: str | None = None
    aliases: tuple[str, ...] = ()


class StandInRegistry:
    def __init__(self) -> None:
        self.manifests = {}

    def register_manifest(self, manifest, *, overwrite=False) -> None:
        self.manifests[manifest.model_id] = manifest


def stand_in_modules() -> dict[str, types.ModuleType]:
    modules = {name: types.ModuleType(name) for name in (
        "lmms_eval", "lmms_eval.api", "lmms_eval.api.model", "lmms_eval.models", "lmms_eval.models.registry_v2",
        "lmms_eval.cli", "lmms_eval.cli.dispatch")}
    modules["lmms_eval.api.model"].lmms = StandInLmms
    modules["lmms_eval.models.registry_v2"].ModelManifest = StandInManifest
    modules["lmms_eval.models"].MODEL_REGISTRY_V2 = StandInRegistry()
    calls = []
    modules["lmms_eval.cli.dispatch"].main = lambda: calls.append(list(sys.argv))
    modules["lmms_eval.cli.dispatch"].calls = calls
    return modules


@pytest.fixture
def lmms_module(monkeypatch):
    """``sicog.eval.lmms_eval`` imported against the stand-in."""
    modules = stand_in_modules()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "sicog.eval.lmms_eval", raising=False)
    module = importlib.import_module("sicog.eval.lmms_eval")
    yield module, modules
    sys.modules.pop("sicog.eval.lmms_eval", None)


def request(*args):
    return types.SimpleNamespace(args=args)


def docs() -> list[dict]:
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200), (200, 200, 20)]
    return [{"image": Image.new("RGB", (32 + 16 * i, 32), c), "q": f"Which colour is shape {i}?"}
            for i, c in enumerate(colours)]


def to_visual(doc):
    return [doc["image"]]


def test_replies_stop_at_a_checkpoints_stop_strings(tiny_model_factory) -> None:
    """A checkpoint's generation config may hold stop_strings, which generate applies only given the tokenizer."""
    model, processor = tiny_model_factory(seed=6)
    item = [encode_item(processor, docs()[1]["q"], [docs()[1]["image"]])]
    whole = generate_replies(model, processor, item, max_new_tokens=6)[0]
    stop = next(w for w in whole.split() if w.isascii() and w.isalpha() and whole.index(w) + len(w) < len(whole))
    model.generation_config.stop_strings = [stop]
    cut = generate_replies(model, processor, item, max_new_tokens=6)[0]
    assert stop in cut and whole.startswith(cut) and len(cut) < len(whole)


def test_generate_until_answers_each_request_in_order(lmms_module, tiny_model_factory) -> None:
    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    adapter = module.SicogLMMs(model=model, processor=processor, batch_size=1)
    adapter.task_dict = {"toy": {"test": docs()}}
    direct = [generate_replies(model, processor, [encode_item(processor, d["q"], [d["image"]])], max_new_tokens=6)[0]
              for d in docs()]
    stop = direct[1][2]  # cut reply 1 at its third character
    settings_a, settings_b = {"max_new_tokens": 6, "until": [stop]}, {"max_new_tokens": 6, "temperature": 0}
    requests = [request(d["q"], dict(settings_a if i % 2 else settings_b), to_visual, i, "toy", "test")
                for i, d in enumerate(docs())]
    replies = adapter.generate_until(requests)
    assert replies[0] == direct[0] and replies[2] == direct[2]  # groups interleave; the order is kept
    assert replies[1] == direct[1].split(stop, 1)[0] and replies[3] == direct[3].split(stop, 1)[0]
    assert len(replies[1]) < len(direct[1])
    # Batching requests together gives the same replies.
    batched = module.SicogLMMs(model=model, processor=processor, batch_size=2)
    batched.task_dict = adapter.task_dict
    assert batched.generate_until(requests) == replies


def test_sampling_settings_and_bad_images(lmms_module, tiny_model_factory) -> None:
    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    adapter = module.SicogLMMs(model=model, processor=processor, max_new_tokens=3)
    adapter.task_dict = {"toy": {"test": docs() + [{"image": Image.new("RGB", (0, 0)), "q": "?"}]}}
    sampled = adapter.generate_until([request("Describe.", {"temperature": 0.9, "top_p": 0.5, "do_sample": True},
                                              to_visual, 0, "toy", "test")])
    assert isinstance(sampled[0], str)
    with pytest.raises(ValueError, match="task 'toy' split 'test' doc 4: .*zero size"):
        adapter.generate_until([request("?", {}, to_visual, 4, "toy", "test")])
    with pytest.raises(NotImplementedError, match="multi-round"):
        adapter.generate_until_multi_round([])


def test_loglikelihood_of_continuations(lmms_module, tiny_model_factory) -> None:
    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    adapter = module.SicogLMMs(model=model, processor=processor)
    adapter.task_dict = {"toy": {"test": docs()}}
    doc = docs()[0]
    batch = processor.collate([encode_item(processor, doc["q"], [doc["image"]])], padding_side="left")
    with torch.no_grad():
        logprobs = model(**batch).logits[0, -1].log_softmax(-1)
    tokenizer = processor.tokenizer
    # Single tokens whose text encodes back to the same token, best first.
    ranked = [t for t in logprobs.argsort(descending=True).tolist()
              if tokenizer.encode(tokenizer.decode([t]), add_special_tokens=False) == [t]]
    best, other = ranked[0], ranked[5]
    results = adapter.loglikelihood([
        request(doc["q"], tokenizer.decode([best]), to_visual, 0, "toy", "test"),
        request(doc["q"], lambda d: tokenizer.decode([other]), to_visual, 0, "toy", "test"),
    ])
    assert results[0][0] == pytest.approx(logprobs[best].item(), abs=1e-4)
    assert results[0][1] is (best == logprobs.argmax().item())
    assert results[1][0] == pytest.approx(logprobs[other].item(), abs=1e-4) and results[1][1] is False
    assert results[0][0] > results[1][0]


def test_registration_and_command_line(lmms_module, tiny_model_factory) -> None:
    module, modules = lmms_module
    manifest = module.manifest()
    assert (manifest.model_id, manifest.simple_class_path) == ("sicog", "sicog.eval.lmms_eval.SicogLMMs")
    assert manifest.chat_class_path == "sicog.eval.lmms_eval.SicogLMMsChat"  # what --model sicog resolves to
    for path, cls in ((manifest.simple_class_path, module.SicogLMMs), (manifest.chat_class_path, module.SicogLMMsChat)):
        module_path, class_name = path.rsplit(".", 1)
        assert getattr(importlib.import_module(module_path), class_name) is cls
    assert issubclass(module.SicogLMMs, StandInLmms) and module.SicogLMMs.is_simple
    assert issubclass(module.SicogLMMsChat, StandInLmms) and not module.SicogLMMsChat.is_simple
    assert module.main(["--model", "sicog", "--model_args", "pretrained=ckpt", "--tasks", "mmstar"]) == 0
    assert modules["lmms_eval.models"].MODEL_REGISTRY_V2.manifests["sicog"] == manifest
    assert modules["lmms_eval.cli.dispatch"].calls == [["lmms-eval", "--model", "sicog", "--model_args",
                                                         "pretrained=ckpt", "--tasks", "mmstar"]]
    model, processor = tiny_model_factory(seed=6)
    with pytest.raises(ValueError, match="either pretrained=PATH"):
        module.SicogLMMs(pretrained="x", model=model, processor=processor)
    assert module.SicogLMMs(model=model, processor=processor, batch_size="4", max_batch_size="2").batch_size == 2


def messages_of(doc):
    """What lmms-eval's chat tasks build from doc_to_visual and doc_to_text: the images, then the text."""
    return [{"role": "user", "content": [{"type": "image", "url": doc["image"]}, {"type": "text", "text": doc["q"]}]}]


@pytest.fixture
def adapters(lmms_module, tiny_model_factory):
    """The module, a tiny model and processor, greedy settings, and its simple and chat adapters over docs()."""
    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    simple = module.SicogLMMs(model=model, processor=processor, batch_size=2)
    chat = module.SicogLMMsChat(model=model, processor=processor, batch_size=2)
    simple.task_dict = chat.task_dict = {"toy": {"test": docs()}}
    return module, model, processor, {"max_new_tokens": 6, "temperature": 0}, simple, chat


def test_chat_requests_answer_like_simple_ones(adapters) -> None:
    module, _, _, settings, simple, chat = adapters
    expected = simple.generate_until([request(d["q"], dict(settings), to_visual, i, "toy", "test")
                                      for i, d in enumerate(docs())])
    replies = chat.generate_until([request(d["q"], messages_of, dict(settings), i, "toy", "test")
                                   for i, d in enumerate(docs())])
    assert replies == expected
    # A system turn and text around the image are kept in order; a video is refused, naming the document.
    turns, images = module.conversation_of([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image", "url": "a.png"},
                                     {"type": "text", "text": "What is it?"}]}])
    assert turns == [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Look: <image>\nWhat is it?"}]
    assert images == ["a.png"]
    video = [{"role": "user", "content": [{"type": "video", "url": "v.mp4"}, {"type": "text", "text": "?"}]}]
    with pytest.raises(ValueError, match="task 'toy' split 'test' doc 1: message 0 holds a 'video' item"):
        chat.generate_until([request("?", lambda doc: video, dict(settings), 1, "toy", "test")])


def test_a_data_uri_image_is_the_image_it_holds(adapters) -> None:
    """lmms-eval's MME-SCI tasks send images as base64 data URIs; they stopped the run as a missing file."""
    import base64
    import io

    module, _, _, settings, _, chat = adapters
    png = io.BytesIO()
    docs()[0]["image"].save(png, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    as_uri = [{"role": "user", "content": [{"type": "image", "url": uri}, {"type": "text", "text": docs()[0]["q"]}]}]
    replies = chat.generate_until([request("?", lambda doc: as_uri, dict(settings), 0, "toy", "test"),
                                   request("?", messages_of, dict(settings), 0, "toy", "test")])
    assert replies[0] == replies[1]
    broken = [{"role": "user", "content": [{"type": "image", "url": "data:image/png;base64,AAAA"}]}]
    with pytest.raises(ValueError, match="task 'toy' split 'test' doc 0: cannot read the image of a data URI"):
        chat.generate_until([request("?", lambda doc: broken, dict(settings), 0, "toy", "test")])


def test_the_blank_line_lmms_eval_stops_every_task_at_does_not_cut_a_reply(adapters, monkeypatch) -> None:
    """lmms-eval gives each task without stop strings until ["\\n\\n"]: the replies lost every step after the first."""
    module, _, _, settings, simple, _ = adapters
    reply = "Step 1: a red circle.\n\nStep 2: The answer is 3. Q: more"
    monkeypatch.setattr(module, "generate_replies", lambda model, processor, encoded, **kwargs: [reply] * len(encoded))
    doc = docs()[0]
    assert simple.generate_until([request(doc["q"], {**settings, "until": ["\n\n"]}, to_visual, 0, "toy", "test"),
                                  request(doc["q"], {**settings, "until": ["\n\n", "Q:"]}, to_visual, 0, "toy", "test")]
                                 ) == [reply, "Step 1: a red circle.\n\nStep 2: The answer is 3. "]


def test_a_literal_image_placeholder_in_a_tasks_text_is_asked_as_text(adapters) -> None:
    """egothink's prompts ("USER: <image>\n...") and MMMU's simple prompts naming "<image 1>" twice hold more
    placeholders than images: each is asked as the text [image], not a count that stops the whole run."""
    _, model, processor, settings, simple, chat = adapters
    doc = docs()[0]
    said = f"USER: {LITERAL_IMAGE}\n{doc['q']}"
    expected = generate_replies(model, processor, [encode_item(processor, said, [doc["image"]])], max_new_tokens=6)
    literal = [{"role": "user", "content": [{"type": "image", "url": doc["image"]},
                                            {"type": "text", "text": f"USER: <image>\n{doc['q']}"}]}]
    assert chat.generate_until([request("", lambda d: literal, dict(settings), 0, "toy", "test")]) == expected
    twice = f"<image>\nUSER: <image>\n{doc['q']}"
    asked = f"{LITERAL_IMAGE}\nUSER: {LITERAL_IMAGE}\n{doc['q']}"
    expected = generate_replies(model, processor, [encode_item(processor, asked, [doc["image"]])], max_new_tokens=6)
    assert simple.generate_until([request(twice, dict(settings), to_visual, 0, "toy", "test")]) == expected
    # As many placeholders as images: they are the images' places.
    placed = f"{doc['q']}\n<image>"
    expected = generate_replies(model, processor, [encode_item(processor, placed, [doc["image"]])], max_new_tokens=6)
    assert simple.generate_until([request(placed, dict(settings), to_visual, 0, "toy", "test")]) == expected


def test_a_system_prompt_model_argument_is_a_system_turn(lmms_module, tiny_model_factory, tmp_path) -> None:
    """`--model_args pretrained=...,system_prompt=...` as lmms-eval's chat models take it: text (its "\\n" a new
    line) or a file; in the chat model it replaces the task's own system turn."""
    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    doc = docs()[0]
    system = "Be brief.\nAnswer in one word."
    (tmp_path / "system.txt").write_text(system + "\n")
    turns = [{"from": "system", "value": system}, {"from": "human", "value": f"<image>\n{doc['q']}"}]
    expected = processor.encode(turns, [doc["image"]], train=False).input_ids
    own = [{"role": "system", "content": "Be verbose."}, *messages_of(doc)]
    for given in ("Be brief.\\nAnswer in one word.", str(tmp_path / "system.txt")):
        simple = module.SicogLMMs(model=model, processor=processor, system_prompt=given)
        chat = module.SicogLMMsChat(model=model, processor=processor, system_prompt=given)
        simple.task_dict = chat.task_dict = {"toy": {"test": docs()}}
        assert simple._encode_request((doc["q"], {}, to_visual, 0, "toy", "test")).input_ids == expected
        assert chat._encode_request(("", own, {}, 0, "toy", "test")).input_ids == expected
    plain = module.SicogLMMs(model=model, processor=processor)
    plain.task_dict = {"toy": {"test": docs()}}
    assert plain._encode_request((doc["q"], {}, to_visual, 0, "toy", "test")).input_ids != expected


def test_batch_size_auto_halves_when_a_batch_does_not_fit(lmms_module, tiny_model_factory, monkeypatch) -> None:
    from sicog.eval.batch_size import AUTO_BATCH_START, parse_batch_size

    module, _ = lmms_module
    model, processor = tiny_model_factory(seed=6)
    assert parse_batch_size("auto") == (AUTO_BATCH_START, True)
    assert parse_batch_size("auto:3", "8") == (8, True) and parse_batch_size("4", 2) == (2, False)
    for batch_size, largest, message in (("many", None, "N, auto or auto:N"), ("auto:x", None, "N, auto or auto:N"),
                                         ("0", None, "at least 1"), ("auto", 0, "at least 1")):
        with pytest.raises(ValueError, match=message):
            parse_batch_size(batch_size, largest)
    settings = {"max_new_tokens": 5, "temperature": 0}
    requests = [request(d["q"], dict(settings), to_visual, i, "toy", "test") for i, d in enumerate(docs())]
    one = module.SicogLMMs(model=model, processor=processor, batch_size=1)
    one.task_dict = {"toy": {"test": docs()}}
    expected = one.generate_until(requests)

    real_generate, sizes = module.generate_replies, []

    def fits_two(model, processor, encoded, **kwargs):
        sizes.append(len(encoded))
        if len(encoded) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(model, processor, encoded, **kwargs)

    monkeypatch.setattr(module, "generate_replies", fits_two)
    auto = module.SicogLMMs(model=model, processor=processor, batch_size="auto", max_batch_size=8)
    auto.task_dict = one.task_dict
    assert auto.generate_until(requests) == expected
    assert sizes == [4, 2, 2] and auto.batch_size == 2  # 4 requests: 4 did not fit, then two batches of 2
    fixed = module.SicogLMMs(model=model, processor=processor, batch_size=4)
    fixed.task_dict = one.task_dict
    with pytest.raises(torch.OutOfMemoryError):  # a batch size the user set is not changed behind their back
        fixed.generate_until(requests)


def test_import_without_lmms_eval_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "lmms_eval", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.api", None)
    monkeypatch.setitem(sys.modules, "lmms_eval.api.model", None)
    monkeypatch.delitem(sys.modules, "sicog.eval.lmms_eval", raising=False)
    with pytest.raises(ImportError, match="pip install lmms-eval"):
        importlib.import_module("sicog.eval.lmms_eval")


def test_the_launcher_without_lmms_eval_is_one_line(tmp_path) -> None:
    """`python -m sicog.eval.lmms_eval` (docs/evaluation.md) where lmms-eval is missing: a traceback, exit 1."""
    blocker = tmp_path / "lmms_eval.py"
    blocker.write_text("raise ImportError('No module named lmms_eval (blocked by the test)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[1])])}
    result = subprocess.run([sys.executable, "-m", "sicog.eval.lmms_eval", "--model", "sicog"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr[-2000:]
    assert result.stderr.startswith("python -m sicog.eval.lmms_eval: error: lmms-eval cannot be imported here (")
