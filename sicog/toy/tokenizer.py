"""The toy world's tiny tokenizer: byte-level BPE trained on the toy corpus, with Qwen2's chat markup.

Like Qwen2's tokenizer it splits text with Qwen2's pre-tokenisation pattern (single digits, words with
their leading space) and maps bytes to symbols, so any text encodes without unknown tokens; "," and
"\\n" are single bytes and therefore always one token each, as the model's slice separators require.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sicog.data.prompts import DEFAULT_SYSTEM_PROMPT, IMAGE_TOKEN

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, IMAGE_TOKEN)
DEFAULT_VOCAB_SIZE = 1536
MODEL_MAX_LENGTH = 4096

# Qwen2's pre-tokenisation pattern.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2's template: a default system turn when the conversation has none, then <|im_start|>role\n...<|im_end|>\n.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '" + IM_START + "system\\n" + DEFAULT_SYSTEM_PROMPT + IM_END + "\\n' }}"
    "{% endif %}"
    "{{ '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + IM_START + "assistant\\n' }}{% endif %}"
)
# The template's own words, learned with every corpus so that each is one token: spelled in characters they
# would stand between a question and its answer in every chat turn, and a tiny model looks words up by
# how near they are.
TEMPLATE_TEXTS = ("system", "user", "assistant", DEFAULT_SYSTEM_PROMPT)


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on ``texts`` and the chat template's words, and wrap it with the special tokens
    and the chat template.

    Training stops early when the corpus has no more pairs to merge, so a small corpus gives a
    smaller vocabulary. The result is the same for the same texts in the same order.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(itertools.chain(texts, TEMPLATE_TEXTS), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=ENDOFTEXT,
        extra_special_tokens=[IM_START, IMAGE_TOKEN],
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer

