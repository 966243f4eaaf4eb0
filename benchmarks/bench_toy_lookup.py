"""Which look-ups the toy language model learns within a CPU budget, on synthetic token sequences.

A toy scene is four objects, each with a colour, a shape and a place (four of each). The same tiny Qwen2
as the toy world's (``TOY_TEXT``) is trained from scratch on one task at a time and scored on fresh
sequences; each task is one way an answer can depend on an object's attributes:

- ``text pairs``: each object is written as two tokens, shape then colour, and the question names a
  shape right before the answer: the answer is the token after the shape's mention (binding across
  neighbouring text tokens, as a description in the prompt needs it).
- ``text pairs, colour first``: the same with each object written colour then shape, as English puts
  an adjective before its noun ("a red circle"): the answer is the token before the shape's mention.
- ``text pairs, asked 5 back``: shape then colour, with the shape five tokens before the answer.
- ``bound, asked last``: each object is one token that carries all its attributes (as an image token
  of the toy tower does), and the question's last token is the shape to look up; answer its place.
- ``bound, asked 5 back``: the same, with the shape five tokens before the answer (as a chat template's
  end-of-turn and assistant header put it).
- ``bound, asked 5 back, restated``: the same, and the reply names the shape again right before the
  answer ("the circle is ..."), as the toy world's short replies do.
- ``bound, two words last`` / ``two words 5 back``: the object is named by colour and shape (either
  may repeat between objects), right before the answer or five tokens before it.
- ``bound, describe``: every object is described in a random order, "colour shape word place"; scored
  on the place, predicted from the words just written (what a caption needs).
- ``composed, ...``: the same tasks with each object's token replaced by a fixed feature, the sum of
  random vectors for its colour, shape and place, through a trained linear projector: an image token as
  the toy model gets it, where a one-token object has an embedding of its own.
- ``composed, describe, distinct``: a description where no colour or shape repeats in a scene;
  ``colours distinct``: where no colour repeats (shapes may).
- ``composed, describe, named``: a description where each object's colour, shape and the word before its
  place are one token (" red circle in the" kept whole); colours and shapes repeat as in ``describe``.
- ``composed, describe, named, 6 fixed tokens after the image``: the same with six tokens between the image
  and the description, the same in every sequence like a chat template's (``varied``: drawn afresh);
  ``in a chat turn``: the demo's layout, 14 fixed tokens before the image and 14 after it (system turn and
  user header; caption request and assistant header), and four image tokens per object (the resampler's
  four queries per cell).
- ``tower, describe, named`` (with ``--tower``, a toy parts folder): the same with real image tokens: each
  scene drawn as a toy world picture (the demo's 2x2 grid, random sizes, background and jitter), its four
  patch features from the toy tower at the layer the model reads, through a trained projector;
  ``centred``: the features less their mean over 1,024 other such pictures.
- ``..., every token``: trained on every token after the image, as a caption is (the names too, each
  drawn from the objects not yet said), still scored on the places; ``by colour``: the objects described
  by colour, then shape, not in a random order; ``chat``: in a chat turn, as above.

Prints a markdown table: accuracy on 512 fresh sequences after training, and what guessing among the
scene's own values scores. Results are in docs/toy_findings.md.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cpu_time import cpu_seconds
from transformers import CLIPVisionModel, Qwen2ForCausalLM, get_cosine_schedule_with_warmup

from sicog.model.builders import tiny_text_config
from sicog.model.configuration import SicogConfig
from sicog.model.vision import patch_features
from sicog.toy.model import TOY_TEXT
from sicog.toy.pretrain import pixels
from sicog.toy.world import GRID_LINES, LAYOUTS, Scene, SceneObject

VALUES = 4  # colours, shapes and places
OBJECTS = 4
BOS, SEP, T1, T2, T3, IS = 1, 2, 3, 4, 5, 6  # T1-T3: a fixed template between question and answer


def colour(c: int) -> int:
    return 10 + c


def shape(s: int) -> int:
    return 20 + s


def place(p: int) -> int:
    return 30 + p


FILLER = range(40, 60)


def named(c: int, s: int) -> int:
    """One text token for "colour shape word": an object's name with the word before its place."""
    return 60 + c * VALUES + s


def bound(c: int, s: int, p: int) -> int:
    """One token per (colour, shape, place): the object as one image token."""
    return 100 + (c * VALUES + s) * VALUES + p


def unbound(code: int | torch.Tensor) -> tuple:
    """(colour, shape, place) of one-token objects given as ``token - bound(0, 0, 0)`` (ints or a tensor)."""
    return code // (VALUES * VALUES), code // VALUES % VALUES, code % VALUES


VOCAB = bound(VALUES - 1, VALUES - 1, VALUES - 1) + 1
# Tokens, the positions whose next token is scored, and optionally those trained on (else the scored ones).
Sample = tuple[list[int], list[int]] | tuple[list[int], list[int], list[int]]


def _scene(rng: random.Random, unique: str) -> list[tuple[int, int, int]]:
    """Four objects in four places, no two sharing ``unique``: "pair" (colour and shape together), "colour",
    or "each" (neither their colour nor their shape)."""
    places = rng.sample(range(VALUES), OBJECTS)
    if unique == "colour":
        pairs = list(zip(rng.sample(range(VALUES), OBJECTS), [rng.randrange(VALUES) for _ in range(OBJECTS)]))
    elif unique == "each":
        pairs = list(zip(rng.sample(range(VALUES), OBJECTS), rng.sample(range(VALUES), OBJECTS), strict=True))
    else:
        pairs = rng.sample([(c, s) for c in range(VALUES) for s in range(VALUES)], OBJECTS)
    return [(c, s, p) for (c, s), p in zip(pairs, places, strict=True)]


def _image(objects: list[tuple[int, int, int]]) -> list[int]:
    return [BOS] + [bound(*o) for o in sorted(objects, key=lambda o: o[2])] + [SEP]


def _template(rng: random.Random, gap: int) -> list[int]:
    """The ``gap`` - 1 tokens between the question's key and the answer (a filler, then a fixed template)."""
    return [rng.choice(FILLER), T1, T2, T3][: gap - 1] if gap > 1 else []


def text_pairs(colour_first: bool, gap: int = 1) -> Callable[[random.Random], Sample]:
    """Objects as two text tokens each; the question names a shape ``gap`` tokens before its colour."""

    def task(rng: random.Random) -> Sample:
        objects = _scene(rng, "each")
        pairs = [(colour(c), shape(s)) if colour_first else (shape(s), colour(c)) for c, s, _ in objects]
        tokens = [BOS] + [t for pair in pairs for t in pair] + [SEP]
        c, s, _ = rng.choice(objects)
        tokens += [shape(s), *_template(rng, gap), colour(c)]
        return tokens, [len(tokens) - 2]

    return task


def asked(words: int, gap: int) -> Callable[[random.Random], Sample]:
    """A question naming the object by its shape (``words`` 1) or colour and shape (2), ``gap`` tokens
    before the answer, which is the object's place."""

    def task(rng: random.Random) -> Sample:
        objects = _scene(rng, "each" if words == 1 else "pair")
        c, s, p = rng.choice(objects)
        name = [shape(s)] if words == 1 else [colour(c), shape(s)]
        template = _template(rng, gap)
        question = [rng.choice(FILLER) for _ in range(8 - len(name) - len(template))] + name + template
        tokens = _image(objects) + question + [place(p)]
        return tokens, [len(tokens) - 2]

    return task


def restated(rng: random.Random) -> Sample:
    """The question names a shape five tokens before the reply, and the reply names it again: "the
    circle is" before the answer."""
    objects = _scene(rng, "each")
    c, s, p = rng.choice(objects)
    template = _template(rng, 5)
    question = [rng.choice(FILLER) for _ in range(7 - len(template))] + [shape(s)] + template
    tokens = _image(objects) + question + [shape(s), IS, place(p)]
    return tokens, [len(tokens) - 2]


def describing(unique: str, one_token: bool = False, by_colour: bool = False) -> Callable[[random.Random], Sample]:
    """Every object described in a random order (``by_colour``: by colour, then shape), "colour shape word
    place", scored on the place; no two objects share ``unique`` (as in ``_scene``: with "each", either word
    alone names the object, with "colour" the colour does); ``one_token``: "colour shape word" is one token."""

    def task(rng: random.Random) -> Sample:
        objects = _scene(rng, unique)
        tokens, scored = _image(objects), []
        for c, s, p in sorted(objects) if by_colour else rng.sample(objects, OBJECTS):
            tokens += [named(c, s)] if one_token else [colour(c), shape(s), rng.choice(FILLER)]
            scored.append(len(tokens) - 1)
            tokens.append(place(p))
        return tokens, scored

    return task


describe = describing("pair")
describe_named = describing("pair", one_token=True)
describe_by_colour = describing("pair", one_token=True, by_colour=True)
# The demo's chat layout around its image: the system turn and the user header before the image tokens
# (14 tokens with the toy tokenizer), the caption request and the assistant header after them (14, here
# after the token that closes the image), and four image tokens per object (the resampler's four queries
# per cell).
CHAT_BEFORE, CHAT_AFTER, QUERIES_PER_CELL = 14, 14, 4


def in_context(task: Callable[[random.Random], Sample], before: int, after: int, copies: int = 1,
               varied: bool = False) -> Callable[[random.Random], Sample]:
    """``task`` with ``before`` tokens between BOS and its image tokens, ``after`` between them and its text,
    and every image token repeated ``copies`` times; the added tokens are fillers, the same in every
    sequence like a chat template's, or drawn afresh for each one if ``varied``."""
    template = random.Random("template")
    fixed = [template.choice(FILLER) for _ in range(before + after)]

    def wrapped(rng: random.Random) -> Sample:
        tokens, scored = task(rng)
        added = [rng.choice(FILLER) for _ in fixed] if varied else fixed
        image = [t for t in tokens[1 : 1 + OBJECTS] for _ in range(copies)]
        out = [BOS, *added[:before], *image, SEP, *added[before:], *tokens[2 + OBJECTS :]]
        return out, [k + len(out) - len(tokens) for k in scored]

    return wrapped


def every_token(task: Callable[[random.Random], Sample]) -> Callable[[random.Random], Sample]:
    """``task`` trained on every token after the image, as a caption is, and scored as before."""

    def wrapped(rng: random.Random) -> Sample:
        tokens, scored = task(rng)[:2]
        return tokens, scored, list(range(tokens.index(SEP), len(tokens) - 1))

    return wrapped


def chat_turn(task: Callable[[random.Random], Sample]) -> Callable[[random.Random], Sample]:
    """``task`` laid out as the demo's chat turn (``in_context`` with the chat template's lengths)."""
    return in_context(task, CHAT_BEFORE, CHAT_AFTER, QUERIES_PER_CELL)


# Guessing a description's places: those already said are excluded, so 1/4, 1/3, 1/2, then 1.
DESCRIBE_GUESS = (1 / 4 + 1 / 3 + 1 / 2 + 1) / 4
TASKS: dict[str, tuple[Callable[[random.Random], Sample], float]] = {
    # name: (task, what guessing among the scene's own values scores)
    "text pairs": (text_pairs(colour_first=False), 1 / OBJECTS),
    "text pairs, colour first": (text_pairs(colour_first=True), 1 / OBJECTS),
    "text pairs, asked 5 back": (text_pairs(colour_first=False, gap=5), 1 / OBJECTS),
    "bound, asked last": (asked(1, 1), 1 / OBJECTS),
    "bound, asked 5 back": (asked(1, 5), 1 / OBJECTS),
    "bound, asked 5 back, restated": (restated, 1 / OBJECTS),
    "bound, two words last": (asked(2, 1), 1 / OBJECTS),
    "bound, two words 5 back": (asked(2, 5), 1 / OBJECTS),
    "bound, describe": (describe, DESCRIBE_GUESS),
    "composed, asked last": (asked(1, 1), 1 / OBJECTS),
    "composed, two words last": (asked(2, 1), 1 / OBJECTS),
    "composed, asked 5 back, restated": (restated, 1 / OBJECTS),
    "composed, describe": (describe, DESCRIBE_GUESS),
    "composed, describe, distinct": (describing("each"), DESCRIBE_GUESS),
    "composed, describe, colours distinct": (describing("colour"), DESCRIBE_GUESS),
    "composed, describe, named": (describe_named, DESCRIBE_GUESS),
    "composed, describe, named, 6 fixed tokens after the image": (in_context(describe_named, 0, 6), DESCRIBE_GUESS),
    "composed, describe, named, 6 varied tokens after the image": (
        in_context(describe_named, 0, 6, varied=True), DESCRIBE_GUESS),
    "composed, describe, named, in a chat turn": (chat_turn(describe_named), DESCRIBE_GUESS),
    "composed, describe, named, every token": (every_token(describe_named), DESCRIBE_GUESS),
    "tower, describe, named": (describe_named, DESCRIBE_GUESS),
    "tower, describe, named, centred": (describe_named, DESCRIBE_GUESS),
    "tower, describe, named, every token": (every_token(describe_named), DESCRIBE_GUESS),
    "tower, describe, named, by colour, every token": (every_token(describe_by_colour), DESCRIBE_GUESS),
    "tower, describe, named, chat, every token": (every_token(chat_turn(describe_named)), DESCRIBE_GUESS),
    "tower, describe, named, by colour, chat, every token": (
        every_token(chat_turn(describe_by_colour)), DESCRIBE_GUESS),
}
FEATURES = 64  # the toy tower's width
CENTRING_PICTURES = 1024
FEATURE_LAYER = SicogConfig.vision_feature_layer  # the tower's hidden layer the multimodal model reads


class ComposedObjects(torch.nn.Module):
    """Image tokens as the toy model gets them: a fixed feature per object, the sum of random vectors for
    its colour, shape and place (what a tower's patch feature superposes), through a trained projector."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.register_buffer("parts", torch.randn(3, VALUES, FEATURES))
        self.projector = torch.nn.Linear(FEATURES, hidden_size)

    def embed(self, model: Qwen2ForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
        """The model's input embeddings with every one-token object replaced by its projected feature."""
        embeddings = model.get_input_embeddings()(tokens)
        objects = tokens >= bound(0, 0, 0)
        colour, shape, place = unbound(tokens[objects] - bound(0, 0, 0))
        features = self.parts[0, colour] + self.parts[1, shape] + self.parts[2, place]
        embeddings[objects] = self.projector(features)
        return embeddings


class TowerObjects(torch.nn.Module):
    """Image tokens from a toy tower: each sequence's objects drawn as a toy world picture (the demo's 2x2
    grid, every cell one patch; random sizes, background and jitter), its patch features at the layer the
    model reads, less their mean over ``CENTRING_PICTURES`` random pictures if ``centre``, through a trained
    projector."""

    def __init__(self, tower_dir: Path, hidden_size: int, centre: bool, seed: int) -> None:
        super().__init__()
        self.tower = CLIPVisionModel.from_pretrained(tower_dir).eval().requires_grad_(False)
        self.layout, self.rng = LAYOUTS["grid"], random.Random(f"tower/{seed}")
        width = self.tower.config.hidden_size
        self.register_buffer("mean", torch.zeros(width))
        if centre:
            pool = random.Random(f"tower/{seed}/centring")
            scenes = [self._drawn(_scene(pool, "pair")) for _ in range(CENTRING_PICTURES)]
            self.mean = self._features(scenes).mean(0)
        self.projector = torch.nn.Linear(width, hidden_size)

    def _features(self, scenes: list[Scene]) -> torch.Tensor:
        """Every scene's patch features in reading order, one row per patch."""
        config = self.tower.config
        images = torch.from_numpy(np.stack([pixels(scene, config.image_size) for scene in scenes]))
        with torch.no_grad():
            return patch_features(self.tower, images, FEATURE_LAYER, config.patch_size).flatten(0, 2)

    def _drawn(self, objects: list[tuple[int, int, int]]) -> Scene:
        """A toy world picture of ``objects`` (colour, shape, place), its objects in place order."""
        cells, layout, rng = self.layout.cell, self.layout, self.rng
        drawn = tuple(
            SceneObject(layout.shapes[s], layout.colors[c], rng.choice(layout.sizes), GRID_LINES[2][p // 2],
                        GRID_LINES[2][p % 2], dx=round(rng.uniform(-1, 1), 2), dy=round(rng.uniform(-1, 1), 2))
            for c, s, p in sorted(objects, key=lambda o: o[2]))
        return Scene(2 * cells, 2 * cells, rng.choice(layout.backgrounds), drawn, rows=2, cols=2, layout="grid")

    def embed(self, model: Qwen2ForCausalLM, tokens: torch.Tensor) -> torch.Tensor:
        """The model's input embeddings with each sequence's image tokens (its objects in place order, as
        ``_image`` writes them, which is the order of the tower's patches) replaced by projected features."""
        embeddings = model.get_input_embeddings()(tokens)
        objects = tokens >= bound(0, 0, 0)
        copies = int(objects.sum()) // (len(tokens) * OBJECTS)  # image tokens per object (``in_context``)
        codes = (tokens[objects] - bound(0, 0, 0)).reshape(len(tokens), -1)[:, ::copies].tolist()
        scenes = [self._drawn([unbound(code) for code in row]) for row in codes]
        features = self._features(scenes).reshape(len(tokens), OBJECTS, -1).repeat_interleave(copies, dim=1)
        embeddings[objects] = self.projector(features.flatten(0, 1) - self.mean)
        return embeddings


def _batch(task: Callable[[random.Random], Sample], rng: random.Random, size: int) -> tuple[torch.Tensor, ...]:
    """Tokens, and masks of the positions scored and trained on."""
    samples = [task(rng) for _ in range(size)]
    tokens = torch.tensor([sample[0] for sample in samples])
    scored, trained = torch.zeros_like(tokens, dtype=torch.bool), torch.zeros_like(tokens, dtype=torch.bool)
    for row, sample in enumerate(samples):
        scored[row, sample[1]] = True
        trained[row, sample[-1]] = True
    return tokens, scored, trained


def run(name: str, steps: int, lr: float, batch_size: int, seed: int, tower: Path | None = None, **size: int) -> dict:
    """Train a fresh toy Qwen2 (``TOY_TEXT``, with ``size`` overriding its settings) on one task; accuracy on
    512 fresh sequences. ``tower``: a toy parts folder, for the ``tower`` tasks."""
    task, guess = TASKS[name]
    torch.manual_seed(seed)
    rng = random.Random(f"{name}/{seed}")
    model = Qwen2ForCausalLM(tiny_text_config(VOCAB, **{**TOY_TEXT, **size}))
    images = None
    if name.startswith("composed"):
        images = ComposedObjects(model.config.hidden_size)
    elif name.startswith("tower"):
        if tower is None or not (tower / "vision").is_dir():
            raise SystemExit(f"task {name!r} needs --tower, a toy parts folder with a vision/ tower (got {tower})")
        images = TowerObjects(tower / "vision", model.config.hidden_size, name.endswith("centred"), seed)

    def forward(tokens: torch.Tensor) -> torch.Tensor:
        if images is None:
            return model(input_ids=tokens).logits
        return model(inputs_embeds=images.embed(model, tokens)).logits

    parameters = [p for p in (*model.parameters(), *(images.parameters() if images else ())) if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    start = cpu_seconds("process")
    for _ in range(steps):
        tokens, _, trained = _batch(task, rng, batch_size)
        logits = forward(tokens)
        loss = torch.nn.functional.cross_entropy(logits[trained], tokens[:, 1:][trained[:, :-1]])
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        tokens, scored, _ = _batch(task, random.Random(f"{name}/held-out"), 512)
        predicted = forward(tokens).argmax(-1)
        accuracy = (predicted[scored] == tokens[:, 1:][scored[:, :-1]]).float().mean().item()
    return {"task": name, "accuracy": accuracy, "guess": guess, "cpu_s": cpu_seconds("process") - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=800)
    for setting in TOY_TEXT:
        parser.add_argument(f"--{setting.replace('_', '-')}", type=int, default=TOY_TEXT[setting])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tower", type=Path, help="a toy parts folder (sicog toy parts), for the tower tasks")
    parser.add_argument("--tasks", nargs="*", choices=list(TASKS),
                        help="default: every task, the tower ones only with --tower")
    args = parser.parse_args()
    tasks = args.tasks or [name for name in TASKS if args.tower or not name.startswith("tower")]
    torch.set_num_threads(1)
    size = {setting: getattr(args, setting) for setting in TOY_TEXT}
    print(f"{args.steps} steps of {args.batch_size} sequences, lr {args.lr}, {size}\n")
    print("| task | accuracy | guessing among the scene's values | CPU s |\n|---|---|---|---|")
    for name in tasks:
        result = run(name, args.steps, args.lr, args.batch_size, args.seed, args.tower, **size)
        print(f"| {name} | {result['accuracy']:.3f} | {result['guess']:.3f} | {result['cpu_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
