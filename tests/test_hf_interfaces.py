"""transformers-native use of a SICOG checkpoint: the processor's conformance (in the style of transformers'
own processor tests), the Auto classes and pipeline after only `import sicog`, and remote code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from sicog.model.builders import save_pretrained
from sicog.model.image_io import ImageError, load_image
from sicog.model.processing import (
    CONTENT_PARTS,
    CONTENT_PARTS_END,
    CONTENT_PARTS_START,
    ConversationError,
    SicogProcessor,
    with_content_parts,
)

QUESTION = "How many circles are there?"
PARTS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
STRING = [{"role": "user", "content": f"<image>\n{QUESTION}"}]


@pytest.fixture(scope="module")
def checkpoint(tiny_model_factory, tmp_path_factory):
    model, processor = tiny_model_factory()
    path = tmp_path_factory.mktemp("hf") / "ckpt"
    save_pretrained(model, processor, path)
    return path, model, processor


def image(width: int = 128, height: int = 96) -> Image.Image:
    return Image.new("RGB", (width, height), (200, 40, 40))


def test_save_load_round_trip(checkpoint, tmp_path):
    path, _, processor = checkpoint
    loaded = SicogProcessor.from_pretrained(path)
    assert type(loaded.image_processor).__name__ == "SicogImageProcessor"
    assert loaded.chat_template == processor.chat_template
    assert loaded.image_processor.to_dict() == processor.image_processor.to_dict()
    prompt = processor.apply_chat_template(PARTS, add_generation_prompt=True)
    first, second = processor(text=prompt, images=image()), loaded(text=prompt, images=image())
    assert first["input_ids"] == second["input_ids"]
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == "SicogProcessor"
    loaded.save_pretrained(tmp_path)  # saving what was loaded writes the same template, not a doubled one
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template
    # Saved without its model, it has no settings to load with: said so, not read as a 7B model's defaults.
    with pytest.raises(OSError, match=f"^{tmp_path}: no config.json; a SICOG processor reads its settings"):
        AutoProcessor.from_pretrained(tmp_path)
    again = SicogProcessor.from_pretrained(tmp_path, config=processor.config)
    assert again(text=prompt, images=image())["input_ids"] == first["input_ids"]


def test_a_template_saved_by_an_earlier_version_gets_this_versions_rendering_once(checkpoint, tmp_path):
    """A checkpoint saved before the content-parts rendering changed loads with today's in place of its own."""
    path, _, processor = checkpoint
    original = processor.tokenizer.chat_template
    earlier = CONTENT_PARTS_START + "{%- set messages = messages -%}" + CONTENT_PARTS_END + original
    assert with_content_parts(earlier) == with_content_parts(original) == CONTENT_PARTS + original
    saved = tmp_path / "ckpt"
    shutil.copytree(path, saved)
    (saved / "chat_template.jinja").write_text(earlier)
    loaded = SicogProcessor.from_pretrained(saved)
    assert loaded.chat_template == processor.chat_template
    assert loaded.apply_chat_template(PARTS, add_generation_prompt=True) == (
        processor.apply_chat_template(PARTS, add_generation_prompt=True))


def test_image_settings_given_at_load_replace_the_configs_and_a_save_keeps_the_configs(checkpoint, tmp_path, caplog):
    """They went to the tokenizer, unread; and processor_config.json held a copy of them that no load read."""
    path, _, processor = checkpoint
    assert "image_processor" not in json.loads((path / "processor_config.json").read_text())
    loaded = AutoProcessor.from_pretrained(path, max_slice_nums=1, inference_long_side=32)
    assert (loaded.image_processor.max_slice_nums, loaded.image_processor.inference_long_side) == (1, 32)
    assert loaded.image_token_count(200, 90) < processor.image_token_count(200, 90)
    with caplog.at_level("WARNING", logger="sicog.model.processing"):
        loaded.save_pretrained(tmp_path)
    assert "keeps config.json's image settings, not this processor's max_slice_nums (1, config 4), " in caplog.text
    assert "inference_long_side (32, config None)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="sicog.model.processing"):
        processor.save_pretrained(tmp_path)
    assert caplog.text == ""


def test_image_processor_without_an_inference_side_reloads(checkpoint, tmp_path):
    """transformers leaves a None setting out of the saved dict; loading must not then ask for it."""
    _, _, processor = checkpoint
    assert processor.image_processor.inference_long_side is None  # the tiny model's, as for models built from parts
    processor.image_processor.save_pretrained(tmp_path)
    loaded = type(processor.image_processor).from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.image_processor.to_dict()


def test_chat_template_renders_content_parts_as_the_string_form(checkpoint):
    _, _, processor = checkpoint
    parts = processor.apply_chat_template(PARTS, add_generation_prompt=True)
    assert parts == processor.apply_chat_template(STRING, add_generation_prompt=True)
    assert "<image>\n" + QUESTION in parts and "'type'" not in parts
    # The tokenizer's own template still renders string content exactly as it did.
    original = processor.tokenizer.chat_template
    assert processor.tokenizer.apply_chat_template(STRING, chat_template=original, tokenize=False) == (
        processor.apply_chat_template(STRING)
    )
    with pytest.raises(Exception, match="unsupported content part type: video"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}]}])


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": QUESTION}, {"type": "image"}],
    f"{QUESTION}\n<image>",
    f"{QUESTION} <image>",
])
def test_chat_template_puts_the_image_first_as_encode_does(checkpoint, content):
    """A turn with its one image after the text renders as training saw it: the image in front."""
    _, _, processor = checkpoint
    messages = [{"role": "user", "content": content}]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(STRING, add_generation_prompt=True)
    tokens = processor(text=rendered, images=image())["input_ids"][0]
    assert tokens == processor.encode([{"from": "human", "value": f"{QUESTION}\n<image>"}], [image()],
                                      train=False).input_ids
    two = [{"role": "user", "content": f"{QUESTION}\n<image>\n<image>"}]  # several images stay as written
    assert f"{QUESTION}\n<image>\n<image>" in processor.apply_chat_template(two)


def test_from_pretrained_passes_tokenizer_options_and_chat_template(checkpoint):
    """transformers' idiom for batched generation, AutoProcessor.from_pretrained(path, padding_side="left")."""
    path, _, processor = checkpoint
    assert processor.tokenizer.padding_side == "right"
    left = AutoProcessor.from_pretrained(path, padding_side="left")
    assert isinstance(left, SicogProcessor) and left.tokenizer.padding_side == "left"
    prompts = [processor.apply_chat_template(STRING, add_generation_prompt=True), "Hi"]
    batch = left(text=prompts, images=[[image()], []], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][1, -1] == 1
    custom = SicogProcessor.from_pretrained(path, chat_template="{{ messages[0]['content'] }}!")
    assert custom.apply_chat_template(STRING) == f"<image>\n{QUESTION}!"
    assert custom.encode_text(STRING, train=False).input_ids == custom.tokenizer(f"<image>\n{QUESTION}!")["input_ids"]


def test_tokenized_chat_template_gives_model_inputs(checkpoint):
    _, model, processor = checkpoint
    messages = [{"role": "user", "content": [{"type": "image", "image": image()}, {"type": "text", "text": QUESTION}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    expected = processor.encode(STRING, [image()], train=False)
    assert inputs["input_ids"][0].tolist() == expected.input_ids
    assert all(torch.equal(a, b) for a, b in zip(inputs["pixel_values"], expected.pixel_values))
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("size", [(128, 96), (64, 160), (40, 40)])
def test_image_token_count_is_what_the_model_consumes(checkpoint, size):
    _, model, processor = checkpoint
    prompt = processor.apply_chat_template(PARTS, add_generation_prompt=True)
    inputs = processor(text=prompt, images=image(*size), return_tensors="pt")
    text_only = processor(text=prompt.replace("<image>", ""))["input_ids"][0]
    expected = processor.image_token_count(*size, inference=True)
    assert inputs["input_ids"].shape[1] - len(text_only) == expected
    placeholders = int((inputs["input_ids"] == processor.image_token_id).sum())
    features = model.get_image_features(inputs["pixel_values"])
    assert placeholders == features.shape[0]


def test_batches_pad_on_the_requested_side(checkpoint):
    _, _, processor = checkpoint
    prompts = [processor.apply_chat_template(PARTS, add_generation_prompt=True),
               processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)]
    images = [[image()], []]
    alone = [processor(text=p, images=i or None)["input_ids"][0] for p, i in zip(prompts, images)]
    pad = processor.tokenizer.pad_token_id
    for side in ("left", "right"):
        batch = processor(text=prompts, images=images, padding=True, padding_side=side, return_tensors="pt")
        short = batch["input_ids"][1].tolist()
        n_pad = len(short) - len(alone[1])
        assert n_pad > 0 and batch["attention_mask"][1].sum() == len(alone[1])
        kept = short[n_pad:] if side == "left" else short[: len(alone[1])]
        padding = short[:n_pad] if side == "left" else short[len(alone[1]):]
        assert kept == alone[1] and set(padding) == {pad}
        assert batch["input_ids"][0].tolist() == alone[0]
    with pytest.raises(ValueError, match="padding=True"):
        processor(text=prompts, images=images, return_tensors="pt")
    with pytest.raises(ConversationError, match="1 <image> placeholder"):
        processor(text=prompts[0], images=[image(), image()])
    # The tokenizers' other spellings: "do_not_pad" pads nothing, "longest" pads; "max_length" is not supported.
    assert processor(text=prompts, images=images, padding="do_not_pad")["input_ids"] == alone
    longest = processor(text=prompts, images=images, padding="longest", return_tensors="pt")
    assert torch.equal(longest["input_ids"], processor(text=prompts, images=images, padding=True,
                                                       return_tensors="pt")["input_ids"])
    with pytest.raises(ValueError, match="padding='max_length': only False, 'do_not_pad', True, 'longest'"):
        processor(text=prompts, images=images, padding="max_length")


def test_one_image_list_per_prompt_must_match_that_prompts_placeholders(checkpoint):
    """Flattened, the lists would give one prompt's image to another whenever only the totals agree."""
    _, _, processor = checkpoint
    red, blue = image(), Image.new("RGB", (128, 96), (40, 40, 200))
    prompts = ["<image> <image>\nCompare.", "<image>\nWhat colour?"]
    with pytest.raises(ConversationError, match="prompt 0 has 2 <image> placeholder.s. but its list holds 1 image"):
        processor(text=[prompts[0], "What colour?"], images=[[red], [blue]])
    per_prompt = processor(text=prompts, images=[[red, blue], [blue]])
    assert per_prompt["input_ids"] == processor(text=prompts, images=[red, blue, blue])["input_ids"]


@pytest.mark.parametrize("layout", ["float HWC", "uint8 CHW", "narrow CHW", "torch CHW", "grey", "grey float"])
def test_arrays_and_tensors_are_read_as_transformers_reads_them(checkpoint, layout):
    _, _, processor = checkpoint
    pixels = np.asarray(Image.new("RGB", (50, 40), (200, 40, 40)))
    if layout == "narrow CHW":
        pixels = pixels[:, :4]
    given = {"float HWC": pixels / 255.0, "uint8 CHW": pixels.transpose(2, 0, 1),
             "narrow CHW": pixels.transpose(2, 0, 1), "torch CHW": torch.from_numpy(pixels.transpose(2, 0, 1).copy()),
             "grey": pixels[..., 0], "grey float": pixels[..., 0] / 255.0}[layout]  # grey floats were all black
    picture = Image.fromarray(pixels[..., 0]).convert("RGB") if "grey" in layout else Image.fromarray(pixels)
    prompt = "<image>\nWhat?"
    got, want = processor(text=prompt, images=[given]), processor(text=prompt, images=[picture])
    assert got["input_ids"] == want["input_ids"]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got["pixel_values"], want["pixel_values"]))


def test_an_image_path_that_would_not_show_is_quoted(tmp_path):
    """A trailing space or a newline in the name was printed as it is: invisible, or a second line."""
    for name in ("cut.png ", "cut\n.png"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n")
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / name)
        assert str(err.value).startswith(f"cannot read image {str(tmp_path / name)!r}: ")


def test_an_array_that_is_no_image_is_one_error_naming_its_shape(checkpoint):
    _, _, processor = checkpoint
    with pytest.raises(ImageError, match=r"cannot use the ndarray of shape \(2, 5, 5, 3\) and dtype uint8 as an image"):
        processor(text="<image>\nWhat?", images=[np.zeros((2, 5, 5, 3), dtype=np.uint8)])


def test_batch_decode_decodes_each_row(checkpoint):
    _, _, processor = checkpoint
    texts = ["a red circle", "How many circles are there?"]
    ids = [processor.tokenizer(t, add_special_tokens=False)["input_ids"] + [processor.tokenizer.eos_token_id]
           for t in texts]
    assert processor.batch_decode(ids) == texts
    assert processor.decode(ids[0]) == texts[0]
    assert processor.batch_decode(ids, skip_special_tokens=False)[0].endswith(processor.tokenizer.eos_token)


def run_python(code: str, *args: str, env: dict | None = None, cwd=None) -> str:
    result = subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_auto_classes_and_pipeline_after_only_import_sicog(checkpoint):
    path, _, _ = checkpoint
    out = run_python(f"""
        import sys
        import sicog
        print("torch after import sicog:", "torch" in sys.modules)
        from PIL import Image
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline
        path = {str(path)!r}
        config = AutoConfig.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
        print(type(config).__name__, type(model).__name__, type(processor).__name__)
        messages = [{{"role": "user", "content": [{{"type": "image", "image": Image.new("RGB", (128, 96))}},
                                                 {{"type": "text", "text": "How many?"}}]}}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        print("generated", model.generate(**inputs, max_new_tokens=3, do_sample=False).shape[1]
              - inputs["input_ids"].shape[1])
        reply = pipeline("image-text-to-text", model=path)(text=messages, max_new_tokens=3, do_sample=False)
        print("pipeline", reply[0]["generated_text"][-1]["role"])
    """)
    assert "torch after import sicog: False" in out
    assert "SicogConfig SicogForConditionalGeneration SicogProcessor" in out
    assert "generated 3" in out and "pipeline assistant" in out


def test_remote_code_checkpoint_loads_where_sicog_is_not_importable(tiny_model_factory, tmp_path):
    """`python -S` skips site initialisation, so the editable install's path hook is not set up; the
    site-packages folder is put back on sys.path by hand (transformers, torch), and the test first
    asserts that `sicog` cannot be found. The run starts in a folder outside the repository."""
    model, processor = tiny_model_factory()
    save_pretrained(model, processor, tmp_path / "ckpt", remote_code=True)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration.SicogConfig",
                                  "AutoModelForImageTextToText": "modeling.SicogForConditionalGeneration"}
    assert getattr(model.config, "auto_map", None) is None and type(model)._auto_class is None
    inputs = processor.apply_chat_template(STRING, add_generation_prompt=True)
    expected = model.generate(**processor(text=inputs, images=image(), return_tensors="pt"), max_new_tokens=4,
                              do_sample=False)
    out = run_python(f"""
        import importlib.util, sys
        sys.path.append({sysconfig.get_paths()["purelib"]!r})
        assert importlib.util.find_spec("sicog") is None, "sicog is importable"
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor
        path = {str(tmp_path / "ckpt")!r}
        model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        prompt = processor.apply_chat_template({STRING!r}, add_generation_prompt=True)
        inputs = processor(text=prompt, images=Image.new("RGB", (128, 96), (200, 40, 40)), return_tensors="pt")
        print(model.generate(**inputs, max_new_tokens=4, do_sample=False)[0].tolist())
        print(type(model).__module__, [m for m in sys.modules if m.split(".")[0] == "sicog"])
    """, "-S", env={"HF_MODULES_CACHE": str(tmp_path / "modules")}, cwd=tmp_path)
    generated, where = out.strip().splitlines()[-2:]
    assert generated == str(expected[0].tolist())
    assert where.startswith("transformers_modules.") and where.endswith(" []")
    # A plain save after it writes no auto_map: it wrote `"auto_map": null`, which transformers cannot read.
    assert "auto_map" not in model.config.__dict__ and "auto_map" not in processor.__dict__
    save_pretrained(model, processor, tmp_path / "plain")
    for name in ("config.json", "processor_config.json"):
        assert "auto_map" not in json.loads((tmp_path / "plain" / name).read_text())
    AutoModelForImageTextToText.from_pretrained(tmp_path / "plain")


def test_generate_warns_on_right_padding_and_names_the_prompt_length(checkpoint, caplog):
    """transformers checks both on input_ids, which generate does not hand it: it checks them itself."""
    _, model, processor = checkpoint
    prompts = [processor.apply_chat_template(STRING, add_generation_prompt=True), "Hi"]
    images = [[image()], []]
    settings = {"max_new_tokens": 2, "do_sample": False}
    for side, warned in (("left", False), ("right", True)):
        caplog.clear()
        batch = processor(text=prompts, images=images, padding=True, padding_side=side, return_tensors="pt")
        model.generate(**batch, **settings)
        assert ("right-padding was detected" in caplog.text) is warned
    inputs = processor(text=prompts[0], images=image(), return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    message = f"Input length of input_ids is {length}, but `max_length` is set to {length - 3}"
    with pytest.raises(ValueError, match=message):
        model.generate(**inputs, max_length=length - 3, do_sample=False)
    assert model.generate(**inputs, max_length=length + 2, do_sample=False).shape[1] == length + 2


def test_an_image_url_is_opened_as_stored_like_a_local_path(checkpoint, tmp_path, monkeypatch):
    """A photo whose EXIF says "rotate 90" keeps its stored size from a URL too, as from a path and in the
    published code (transformers' load_image would turn it, and the slices with it)."""
    from huggingface_hub.utils import httpx

    _, _, processor = checkpoint
    photo = tmp_path / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    image(160, 96).save(photo, exif=exif)
    requested = []

    def get(url, **kwargs):
        requested.append(url)
        return httpx.Response(200, content=photo.read_bytes(), request=httpx.Request("GET", url))

    monkeypatch.setattr(httpx, "get", get)
    prompt = processor.apply_chat_template(PARTS, add_generation_prompt=True)
    from_url = processor(text=prompt, images=["https://example.test/photo.jpg"])
    from_path = processor(text=prompt, images=[str(photo)])
    assert requested == ["https://example.test/photo.jpg"]
    assert from_url["input_ids"] == from_path["input_ids"]
    assert all(torch.equal(a, b) for a, b in zip(from_url["pixel_values"], from_path["pixel_values"], strict=True))
    assert processor(text=prompt, images=[Image.open(photo)])["input_ids"] == from_path["input_ids"]
