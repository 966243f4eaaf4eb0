"""The exact prompt strings of every SICOG stage (checkpoints were trained on them; do not reword).

One source of truth for generation, annotation, curation and the toy world.
"""

from __future__ import annotations

from sicog.data.text import blank
from sicog.model.tokens import IMAGE_TOKEN

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

STEP_BY_STEP_DESCRIBE = "Describe the image step-by-step."
STEP_BY_STEP_ANSWER = "Answer the question step-by-step."
SHORT_ANSWER = "Answer the question using a single word or phrase."

CAPTION_PROMPTS: dict[str, str] = {
    "cod-default": f"Please generate a detailed caption of this image. {STEP_BY_STEP_DESCRIBE}",
    "default": "Please generate a detailed caption of this image. Be as descriptive as possible.",
}
CAPTION_PROMPT_TYPES = ("cod-default", "default", "cod-conv")
REASONING_PROMPT_TYPES = ("cot-default", "default")

# Chain-of-Description: the five steps of systematic perception, worded as the published annotation
# prompt words them (training_data_annotation/generate_cod_caption.py); released captions carry them.
COD_STEPS = (
    "Extract salient content by identifying the key elements that define the image or document.",
    "Analyze detailed information, focusing on instance-level attributes such as low-level and fine-grained details, "
    "such as specific text, layout.",
    "Consider relational-level attributes, analyzing interactions between elements and their spatial organization.",
    "Examine marginal or peripheral content to ensure no important information is missed.",
    "Organize all observations into a detailed, cohesive description.",
)
# Structured chain-of-thought: the four steps of systematic reasoning, as the published
# training_data_annotation/convert_cot.py writes them.
COT_STEPS = (
    "Clarify the task objective.",
    "Extract the crucial visual information from the image.",
    "Generate detailed reasoning to solve the task.",
    "Conclude the task with an answer.",
)
# What the published CoD annotation appends to a record's question (without hyphens, unlike the
# generation prompts above).
ANNOTATION_DESCRIBE = "Describe the image step by step."


def strip_instruction(question: str) -> str:
    """The bare question: without ``<image>`` and without a trailing short-answer or step-by-step request."""
    text = question.replace(IMAGE_TOKEN, "").strip()
    for suffix in (SHORT_ANSWER, STEP_BY_STEP_ANSWER, STEP_BY_STEP_DESCRIBE, ANNOTATION_DESCRIBE):
        if text.endswith(suffix):
            text = text[: -len(suffix)].rstrip()
    return text


def step_by_step_question(question: str, keep_images: bool = False) -> str:
    """``question`` (without ``<image>`` unless ``keep_images``, stripped) asking for a step-by-step answer as the
    published convert_cot.py asks it.

    Every :data:`SHORT_ANSWER` is replaced in place by :data:`STEP_BY_STEP_ANSWER`, keeping the text around
    it (``"Q?\\n" + SHORT_ANSWER`` -> ``"Q?\\n" + STEP_BY_STEP_ANSWER``); without one, the request is appended
    after a space. A question that already ends with the request is kept as written: the published
    ``cot-default`` inference sends such a converted question unchanged.
    """
    text = (question if keep_images else question.replace(IMAGE_TOKEN, "")).strip()
    if SHORT_ANSWER in text:
        return text.replace(SHORT_ANSWER, STEP_BY_STEP_ANSWER)
    if text.endswith(STEP_BY_STEP_ANSWER):
        return text
    return f"{text} {STEP_BY_STEP_ANSWER}"


def caption_prompt(prompt_type: str, question: str | None = None) -> str:
    """The user text asking for a caption (``cod-conv`` appends the step-by-step request to ``question``, without
    ``<image>`` and stripped, and otherwise as written, instructions included, as the published recap script)."""
    if prompt_type == "cod-conv":
        text = (question or "").replace(IMAGE_TOKEN, "").strip()
        if not text:
            raise ValueError("prompt type 'cod-conv' needs the record's own question")
        return f"{text} {STEP_BY_STEP_DESCRIBE}"
    if prompt_type not in CAPTION_PROMPTS:
        raise ValueError(f"unknown caption prompt type {prompt_type!r}; choose from {CAPTION_PROMPT_TYPES}")
    return CAPTION_PROMPTS[prompt_type]


def reasoning_prompt(prompt_type: str, question: str) -> str:
    """The user text for a question: step-by-step (``cot-default``, see :func:`step_by_step_question`) or
    direct (``default``: the question without ``<image>``, stripped, and without the step-by-step request wherever
    it stands, the rest as written, a short-answer request included, as the published recap_558k_reasoning.py
    asks it)."""
    if prompt_type not in REASONING_PROMPT_TYPES:
        raise ValueError(f"unknown reasoning prompt type {prompt_type!r}; choose from {REASONING_PROMPT_TYPES}")
    if blank(strip_instruction(question)):
        raise ValueError("empty question")
    if prompt_type == "cot-default":
        return step_by_step_question(question)
    return question.replace(IMAGE_TOKEN, "").strip().replace(STEP_BY_STEP_ANSWER, "")


def user_turn(prompt: str, images: int = 1) -> str:
    """The first user message of a record: one ``<image>`` line per image, then the prompt."""
    return f"{IMAGE_TOKEN}\n" * images + prompt
