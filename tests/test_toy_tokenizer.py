"""The tiny tokenizer: loads offline with AutoTokenizer, special tokens whole, Qwen2 chat template."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer  # noqa: E402

from sicog.data.prompts import COD_STEPS  # noqa: E402
from sicog.data.steps import format_steps  # noqa: E402
from sicog.toy.language import cod_bodies, vocabulary  # noqa: E402
from sicog.toy.tokenizer import train_tokenizer  # noqa: E402
from sicog.toy.world import sample_scene  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    rng = random.Random(0)
    corpus = [format_steps(COD_STEPS, cod_bodies(sample_scene(rng), rng)) for _ in range(200)] + vocabulary()
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(corpus, vocab_size=800).save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))


def test_special_tokens(tokenizer) -> None:
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>")}
    assert len(set(ids.values())) == 4 and tokenizer.unk_token_id not in (None, ids["<image>"])
    encoded = tokenizer.encode("<image>\nWhat is<image>this?<|im_end|>", add_special_tokens=False)
    assert encoded.count(ids["<image>"]) == 2 and encoded.count(ids["<|im_end|>"]) == 1
    assert "<image>" in tokenizer.all_special_tokens


def test_separators_are_single_tokens(tokenizer) -> None:
    comma, newline = tokenizer.encode(",", add_special_tokens=False), tokenizer.encode("\n", add_special_tokens=False)
    assert len(comma) == 1 and len(newline) == 1 and comma != newline
    assert tokenizer.decode(comma) == "," and tokenizer.decode(newline) == "\n"


def test_round_trip_and_unseen_text(tokenizer) -> None:
    for text in ("A large red circle labeled 3 in the top left.", "Ünïcode and 12345 never seen €"):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    # Words of the world become single tokens, so captions stay short.
    assert len(tokenizer.encode(" circle", add_special_tokens=False)) == 1
    assert 300 < len(tokenizer) <= 800


def test_chat_template_is_qwen2(tokenizer) -> None:
    messages = [
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A red circle."},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
        "<|im_start|>assistant\nA red circle.<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.startswith("<|im_start|>system\n")
    own_system = [{"role": "system", "content": "Be brief."}, messages[0]]
    own = tokenizer.apply_chat_template(own_system, tokenize=False)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def test_training_is_deterministic() -> None:
    corpus = ["a red circle at the top", "two blue squares, one small", "Step 1: count\nthe objects"] * 20
    first, second = train_tokenizer(corpus, 400), train_tokenizer(corpus, 400)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_chat_template_words_are_whole_tokens(tokenizer) -> None:
    """The corpus never writes the template's role names or system prompt; they are learned anyway, so the
    template puts a few tokens, not dozens of characters, between a question and its answer."""
    header = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(header, add_special_tokens=False)]
    for word in ("system", "user", "assistant", " helpful"):
        assert word in pieces, word
    assert len(pieces) <= 20, pieces
