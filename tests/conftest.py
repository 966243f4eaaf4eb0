"""Shared fixtures: a small byte-level BPE tokenizer with Qwen2's chat markup, and a tiny model."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is fastest and never oversubscribes



@pytest.fixture(scope="session", autouse=True)
def parts_cache(tmp_path_factory):
    """Pretrained toy parts go to a fresh cache, never the user's (subprocesses inherit it)."""
    os.environ["SICOG_CACHE"] = str(tmp_path_factory.mktemp("sicog_cache"))
    return os.environ["SICOG_CACHE"]


QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "a red circle on a blue background, a small green square in the top left corner.",
    "How many circles are there? The answer is 3. Describe the image step-by-step.",
    "Step 1: Extract the salient content.\nThe image shows shapes, colours and numbers 0 1 2 3 4 5 6 7 8 9.",
]


def bpe_tokenizer(image_token: bool = True):
    """A trained byte-level BPE tokenizer whose ids differ from LLaMA's and Qwen2's; without ``<image>`` it is like
    the published checkpoints' (Qwen2's), which mark images by splitting the prompt text instead."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    image = ["<image>"] if image_token else []
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *image]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", *image],
    )
    tok.chat_template = QWEN_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tokenizer():
    """:func:`bpe_tokenizer` with ``<image>``, as a SICOG checkpoint's."""
    return bpe_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_factory(tokenizer):
    """Build a fresh tiny model (seeded) with optional config overrides."""
    from sicog.model.builders import new_model, tiny_config

    def make(seed: int = 0, **settings):
        torch.manual_seed(seed)
        model, processor = new_model(tiny_config(tokenizer, **settings), tokenizer)
        return model.eval(), processor

    return make


@pytest.fixture(scope="session")
def taught_replies(tiny_model_factory):
    """Build a tiny model (seeded) taught, by 60 full-batch AdamW steps, each ``(prompt, image, reply)`` example."""

    def make(examples: list, seed: int = 0):
        model, processor = tiny_model_factory(seed=seed)
        batch = processor.collate([processor.encode([{"from": "human", "value": f"<image>\n{prompt}"},
                                                     {"from": "gpt", "value": reply}], [image])
                                   for prompt, image, reply in examples])
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(60):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return model.eval(), processor

    return make
