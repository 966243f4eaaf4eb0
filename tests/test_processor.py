import io

import numpy as np
import pytest
import torch
from PIL import Image

from sicog.model.builders import tiny_config, tiny_text_config, tiny_vision_config
from sicog.model.image_io import ImageError, load_image
from sicog.model.modeling import ImageTokenMismatchError
from sicog.model.processing import IGNORE_INDEX, ConversationError, SicogProcessor

LLAMA_SEPARATORS = (29892, 13)
# Qwen2's pre-tokenizer split pattern (its tokenizer.json): whitespace ending in newlines is one piece, so the
# role header's "\n" and a reply's leading "\n" become one "\n\n" token.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")


def conv(*texts):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


def test_uhd_v1_layout_puts_tokenizer_separators_after_each_slice(tokenizer, tiny_model_factory):
    _, processor = tiny_model_factory(image_layout="uhd_v1")
    comma, newline = tokenizer.encode(",", add_special_tokens=False), tokenizer.encode("\n", add_special_tokens=False)
    assert (processor.comma_id, processor.newline_id) == (comma[0], newline[0])
    assert (processor.comma_id, processor.newline_id) != LLAMA_SEPARATORS
    _, ids = processor.process_image(Image.new("RGB", (128, 96)))
    q = processor.config.resampler_num_queries
    assert ids[q] == processor.comma_id and ids[2 * q + 1] == processor.newline_id
    assert ids.count(processor.comma_id) == 2 and ids.count(processor.newline_id) == 2


def test_release_layout_stitches_slices_row_by_row(tiny_model_factory):
    _, processor = tiny_model_factory()
    views, ids = processor.process_image(Image.new("RGB", (128, 96)))  # 2x2 slices of 16 queries (4x4)
    assert tuple(views[0].shape[:2]) == (2, 2) and views[1].ndim == 3
    image, comma, newline = processor.image_token_id, processor.comma_id, processor.newline_id
    row = [image] * 8 + [newline]  # two slices side by side, 4 features each, then a newline
    assert ids == row * 8 + [comma] + [image] * 16
    _, tall = processor.process_image(Image.new("RGB", (64, 160)))  # one column: the separator is a newline
    assert tall[-17] == newline and comma not in tall


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1024, 768), (640, 480), (500, 375), (1024, 100)])
def test_placeholders_equal_features_at_published_geometry(size, tiny_model_factory):
    model, processor = tiny_model_factory(
        vision_config=tiny_vision_config(hidden_size=16, layers=1, patch_size=14, image_size=336),
        scale_resolution=336,
        max_slice_nums=7,
    )
    encoded = processor.encode(conv("<image>\nWhat is this?", "A test."), [Image.new("RGB", size, (9, 99, 199))])
    n_placeholders = encoded.input_ids.count(processor.image_token_id)
    with torch.no_grad():
        features = model.get_image_features(encoded.pixel_values)
    assert n_placeholders == features.shape[0]
    batch = processor.collate([encoded])
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_mismatch_names_both_numbers(tiny_model_factory):
    model, processor = tiny_model_factory()
    encoded = processor.encode(conv("<image>\nhi", "ok"), [Image.new("RGB", (64, 64))])
    batch = processor.collate([encoded])
    batch["pixel_values"] = batch["pixel_values"] * 2
    with pytest.raises(ImageTokenMismatchError, match=r"16 image placeholder tokens but the images give 32 features"):
        model(**batch)


def test_labels_cover_exactly_the_assistant_replies(tokenizer, tiny_model_factory):
    _, processor = tiny_model_factory()
    turns = conv("<image>\nHow many circles?", "There are 3.", "And squares?", "Two squares, one red.")
    encoded = processor.encode(turns, [Image.new("RGB", (64, 64))])
    supervised = [
        (i, token) for i, (token, label) in enumerate(zip(encoded.input_ids, encoded.labels)) if label != IGNORE_INDEX
    ]
    assert all(encoded.labels[i] == t for i, t in supervised)
    # the supervised tokens, split at gaps, are exactly each reply followed by the end marker
    runs, current, last = [], [], None
    for i, t in supervised:
        if last is not None and i != last + 1:
            runs.append(current)
            current = []
        current.append(t)
        last = i
    runs.append(current)
    expected = [
        tokenizer.encode(reply + "<|im_end|>", add_special_tokens=False)
        for reply in ("There are 3.", "Two squares, one red.")
    ]
    assert runs == expected
    assert tokenizer.decode(encoded.input_ids[: supervised[0][0]]).endswith("<|im_start|>assistant\n")


def test_release_labels_follow_the_published_qwen_preprocessing(tokenizer, tiny_model_factory, monkeypatch):
    """Whole assistant turns, plus every newline, <|im_start|> and <|im_end|> token of the other turns."""
    _, processor = tiny_model_factory(label_masking="release")

    def whole_vocabulary():  # Qwen2's has 152K entries: built twice per record, 0.26 s of every sample
        raise AssertionError("the whole vocabulary was built to encode one record")

    monkeypatch.setattr(processor.tokenizer, "get_vocab", whole_vocabulary)
    turns = conv("<image>\nHow many circles?", "There are 3.")
    encoded = processor.encode(turns, [Image.new("RGB", (64, 64))])
    newline = tokenizer.encode("\n", add_special_tokens=False)
    markers = {tokenizer.convert_tokens_to_ids(m) for m in ("<|im_start|>", "<|im_end|>")} | set(newline)
    # Expected labels built turn by turn, as the published code tokenizes: each rendered message alone.
    expected = []
    for message, supervised in (({"role": "system", "content": "You are a helpful assistant."}, False),
                                ({"role": "user", "content": "<image>\nHow many circles?"}, False),
                                ({"role": "assistant", "content": "There are 3."}, True)):
        rendered = f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
        ids = tokenizer.encode(rendered, add_special_tokens=False)
        expected += [t if supervised or t in markers else IGNORE_INDEX for t in ids]
    start = encoded.input_ids.index(processor.image_token_id)
    labels = encoded.labels[:start] + [IGNORE_INDEX] + encoded.labels[start + processor.image_token_count(64, 64) :]
    assert labels == expected
    assert set(expected[: expected.index(IGNORE_INDEX)]) <= markers and IGNORE_INDEX in expected[:20]


def test_generation_prompt_drops_a_trailing_answer(tiny_model_factory):
    _, processor = tiny_model_factory()
    encoded = processor.encode(conv("Hi", "Hello"), train=False)
    assert encoded.labels is None
    prompt = processor.tokenizer.decode(encoded.input_ids)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_placeholder_count_mismatch_is_clear(tiny_model_factory):
    _, processor = tiny_model_factory()
    image = Image.new("RGB", (64, 64))
    with pytest.raises(ConversationError, match="2 <image> placeholder\\(s\\) but 1 image"):
        processor.encode(conv("<image><image>\nhi", "ok"), [image])
    with pytest.raises(ConversationError, match="0 <image> placeholder\\(s\\) but 1 image"):
        processor.encode(conv("hi", "ok"), [image])


def test_a_single_placeholder_moves_in_front_for_training_and_inference(tiny_model_factory):
    """As the published preprocess_multimodal rewrites a turn: one <image> goes first on its own line, the rest
    stripped after it; a turn starting with it, or holding several, stays as written."""
    _, processor = tiny_model_factory()
    moved = {"How many circles?\n<image>": "<image>\nHow many circles?",
             "How many <image> circles?": "<image>\nHow many  circles?", "\n<image>\n": "<image>"}
    kept = ["<image>How many circles?", "<image>\nHow many circles?", "A <image> and B <image>", "No image."]
    for written, expected in [*moved.items(), *((text, text) for text in kept)]:
        assert processor.to_messages(conv(written))[0]["content"] == expected
    image = Image.new("RGB", (64, 64))
    for written, expected in moved.items():
        for train in (True, False):
            as_written = processor.encode(conv(written, "3"), [image], train=train)
            assert as_written.input_ids == processor.encode(conv(expected, "3"), [image], train=train).input_ids


@pytest.fixture(scope="module")
def qwen2_split_tokenizer(tokenizer):
    """A byte-level BPE pre-tokenized with Qwen2's split pattern, so that two newlines are one token as in Qwen2."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                                                  "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["You are a helpful assistant. Describe the image.", "assistant\n\nStep 1: Extract the salient content."]
    bpe.train_from_iterator(corpus * 20, trainer)
    qwen2_like = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                         additional_special_tokens=["<|im_start|>", "<image>"])
    qwen2_like.chat_template = tokenizer.chat_template
    return qwen2_like


@pytest.mark.parametrize("masking", ["replies", "release"])
def test_a_reply_starting_with_a_newline_trains(qwen2_split_tokenizer, masking):
    """The two-newline token that runs from the role header into the reply is part prompt: unsupervised with
    ``replies`` masking, the rest of the reply learned; ``release`` supervises the whole turn, as published."""
    tokenizer = qwen2_split_tokenizer
    processor = SicogProcessor.from_config(tokenizer, tiny_config(tokenizer, label_masking=masking))
    reply = "Step 1: Extract the salient content."
    encoded = processor.encode(conv("<image>\nDescribe the image.", "\n" + reply), [Image.new("RGB", (64, 64))])
    merged = encoded.input_ids.index(tokenizer.convert_tokens_to_ids("ĊĊ"))
    assert tokenizer.decode(encoded.input_ids[: merged + 1]).endswith("<|im_start|>assistant\n\n")
    assert encoded.labels[merged] == (IGNORE_INDEX if masking == "replies" else encoded.input_ids[merged])
    learned = [label for label, reply_token in zip(encoded.labels, encoded.in_reply) if reply_token]
    assert learned == tokenizer.encode(reply + "<|im_end|>", add_special_tokens=False)


def _save(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("L", (20, 10), 128), (128, 128, 128)),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 0)), (255, 0, 0)),  # alpha dropped, as convert("RGB") does
        (Image.new("LA", (20, 10), (90, 0)), (90, 90, 90)),
        (Image.new("RGBA", (20, 10), (255, 0, 0, 255)), (255, 0, 0)),
        (Image.new("P", (20, 10), 0), (0, 0, 0)),
        (Image.new("CMYK", (20, 10), (0, 255, 255, 0)), (255, 0, 0)),
        # 16-bit grey clips at 255, as the published code's convert("RGB") does (not rescaled).
        (Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)), (255, 255, 255)),
        (Image.fromarray(np.full((10, 20), 200, dtype=np.uint16)), (200, 200, 200)),
        (Image.fromarray(np.full((10, 20), 32768, dtype=np.uint16)), (255, 255, 255)),
    ],
)
def test_modes_convert_to_rgb(image, expected):
    rgb = load_image(image)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((3, 3)) == pytest.approx(expected, abs=1)


def test_bad_files_raise_image_errors(tmp_path, monkeypatch):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_save(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image")
    cases = [(truncated, "cannot read"), (garbage, "cannot read"), (tmp_path / "missing.png", "not found"),
             (tmp_path, "image path is a folder, not an image file")]
    for path, message in cases:
        with pytest.raises(ImageError, match=message):
            load_image(path)
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    huge = tmp_path / "huge.png"
    Image.new("RGB", (64, 64)).save(huge)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit: a decompression bomb
    with pytest.raises(ImageError, match="cannot read image .*huge.png.*decompression bomb"):
        load_image(huge)


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1)])
def test_extreme_aspect_ratios_run_through_the_model(size, tiny_model_factory):
    model, processor = tiny_model_factory()
    encoded = processor.encode(conv("<image>\nhi", "ok"), [Image.new("RGB", size, (200, 0, 0))])
    with torch.no_grad():
        out = model(**processor.collate([encoded]))
    assert torch.isfinite(out.loss)


def test_processor_writes_the_configs_separator_ids(tokenizer):
    from sicog.model.processing import SicogProcessor

    config = tiny_config(tokenizer, text_config=tiny_text_config(30000))
    config.slice_comma_id, config.slice_newline_id = LLAMA_SEPARATORS
    processor = SicogProcessor.from_config(tokenizer, config)
    _, ids = processor.process_image(Image.new("RGB", (128, 96)))
    assert set(ids) == {config.image_token_id, *LLAMA_SEPARATORS}
    config.slice_comma_id = None
    with pytest.raises(ValueError, match="separator ids"):
        SicogProcessor.from_config(tokenizer, config)


def test_inference_resizes_the_long_side_before_slicing(tiny_model_factory):
    _, processor = tiny_model_factory(inference_long_side=128)
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    assert processor.inference_size(64, 48) == (128, 96)
    assert processor.inference_size(48, 64) == (96, 128)
    turn = conv("<image>\nWhat is it?")
    generation = processor.encode(turn, [image], train=False)
    assert tuple(generation.pixel_values[0].shape[:2]) == (2, 2)  # 128x96 is sliced 2x2
    training = processor.encode(conv("<image>\nWhat is it?", "A box."), [image])
    assert len(training.pixel_values) == 1  # training: the image as given
    n_image = generation.input_ids.count(processor.image_token_id) + 2 * 4 + 1  # placeholders + 8 newlines + separator
    assert processor.image_token_count(64, 48, inference=True) == n_image
