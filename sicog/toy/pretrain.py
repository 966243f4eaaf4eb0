"""The toy world's pretrained parts, the stand-ins for the CLIP and Qwen2 downloads of a real run.

The real SICOG starts from a CLIP vision tower trained contrastively on web image/alt-text pairs and
from an instruction-tuned Qwen2. The toy does the same in miniature, once per world:

- a tiny CLIP (``transformers.CLIPModel``, its own contrastive loss) trained on a separate pool of toy
  images with their descriptions; its vision tower is saved as a ``CLIPVisionModel``;
- a tiny Qwen2 trained on text of the toy language: descriptions, and chat turns that answer a question
  about a scene given its description in the prompt (reading comprehension, as an instruction-tuned
  LLM brings it; it never sees an image).

Both pools come from their own random streams of the world's seed and layout; like web data they are
not checked against the benchmarks (a repeated scene is rare: a 2x2 grid has millions of them). The
result is cached under ``$SICOG_CACHE`` (default ``~/.cache/sicog``) in a folder named by a hash of
everything it depends on, so a second cycle on the same world reuses it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm import tqdm
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    Qwen2ForCausalLM,
    get_cosine_schedule_with_warmup,
)

from sicog.data.prompts import reasoning_prompt
from sicog.data.staging import remove_stale_staging, staged_folder
from sicog.data.workers import exit_with_parent
from sicog.model.builders import share_weights_like_config, tiny_text_config, tiny_vision_config
from sicog.model.configuration import CLIP_MEAN, CLIP_STD
from sicog.toy.answers import cot_answer, multiple_choice, multiple_choice_prompt
from sicog.toy.build import WORLD_VERSION, load_manifest
from sicog.toy.language import brief_description, detailed_description
from sicog.toy.model import PARTS_RECORD, TOY_TEXT, TOY_VISION
from sicog.toy.questions import QUESTION_TYPES, Question, question_kinds
from sicog.toy.render import render
from sicog.toy.synonyms import synonym_table
from sicog.toy.world import LAYOUTS, Layout, Scene, sample_scene

# Bump when the same settings would train different parts or record them differently (8: the reading
# check's word-count baseline counts every wording of a shape).
PARTS_VERSION = 8
CLIP_TRAINING = {"batch_size": 128, "lr": 2e-3, "text_hidden_size": 64, "text_layers": 2, "projection": 64}
LM_TRAINING = {"batch_size": 16, "lr": 2e-3, "max_length": 320}
# Optimizer steps (CLIP, LM) per world size: the tiny world only checks that the path works.
STEPS = {"tiny": (4, 4), "demo": (1000, 500)}


def cache_root() -> Path:
    """Where pretrained toy parts are kept: ``$SICOG_CACHE``, else ``$XDG_CACHE_HOME/sicog``, else
    ``~/.cache/sicog``."""
    if os.environ.get("SICOG_CACHE"):
        return Path(os.environ["SICOG_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sicog"


def parts_key(world_dir: str | os.PathLike) -> str:
    """A hash of everything the parts depend on: world version, seed and layout, tokenizer, sizes, training, the
    threads they train with (float sums in another order give other LM weights) and the torch and transformers
    versions (which may sum them in another order too)."""
    manifest = load_manifest(world_dir)
    digest = hashlib.sha256()
    settings = {
        "parts": PARTS_VERSION, "world": WORLD_VERSION, "seed": manifest["seed"], "layout": manifest["layout"],
        "vision": TOY_VISION, "text": TOY_TEXT, "clip": CLIP_TRAINING, "lm": LM_TRAINING,
        "steps": STEPS[manifest["size"]], "threads": torch.get_num_threads(),
        "torch": torch.__version__, "transformers": transformers.__version__,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(Path(manifest["tokenizer"]).iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def pretrained_parts(
    world_dir: str | os.PathLike, cache: str | os.PathLike | None = None, log: Callable[[str], None] = print
) -> tuple[Path, Path]:
    """The world's pretrained (vision tower, language model) folders, trained and cached on first use."""
    manifest = load_manifest(world_dir)
    folder = Path(cache or cache_root()) / "toy-parts" / parts_key(world_dir)
    vision_dir, llm_dir = folder / "vision", folder / "llm"
    remove_stale_staging(folder.parent)
    if (folder / PARTS_RECORD).is_file():
        return vision_dir, llm_dir
    with staged_folder(folder) as staging:
        tokenizer = AutoTokenizer.from_pretrained(str(manifest["tokenizer"]))
        layout, seed = LAYOUTS[manifest["layout"]], manifest["seed"]
        clip_steps, lm_steps = STEPS[manifest["size"]]
        # The two parts are independent and each seeds its own generators: the CLIP trains in a second
        # process beside the LM, on a second core, with the same weights as one after the other.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                                    initargs=(os.getpid(),)) as pool:
            try:
                clip_job = pool.submit(_clip_part, str(manifest["tokenizer"]), layout.name, seed, clip_steps,
                                       str(staging / "vision"), max(1, torch.get_num_threads() // 2))
                start = time.perf_counter()
                lm, lm_loss = train_language_model(tokenizer, layout, seed, lm_steps)
                lm.save_pretrained(staging / "llm")
                tokenizer.save_pretrained(staging / "llm")
                lm_seconds = time.perf_counter() - start
                clip_loss, clip_seconds = clip_job.result()
            except BaseException:
                # Leaving the block waits for the worker's job: minutes of a CLIP nobody will use, writing into
                # the staging folder, which is then removed. ProcessPoolExecutor.terminate_workers (Python 3.14) does
                # this; before it, the executor's process table is the only handle on its workers.
                for process in list((pool._processes or {}).values()):
                    process.terminate()
                raise
        log(f"toy CLIP: contrastive loss {clip_loss['first']:.3f} -> {clip_loss['last']:.3f} in {clip_seconds:.0f} s")
        reading = reading_check(lm, tokenizer, layout, seed)
        log(f"toy LM: loss {lm_loss['first']:.3f} -> {lm_loss['last']:.3f} in {lm_seconds:.0f} s; answers "
            f"{reading['accuracy']:.2f} of questions about a described scene (chance {reading['chance']:.2f})")
        report = {"clip": {**clip_loss, "seconds": round(clip_seconds, 1)},
                  "lm": {**lm_loss, "seconds": round(lm_seconds, 1), "reading": reading}}
        share_weights_like_config(staging)
        (staging / PARTS_RECORD).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        publish(staging, folder)
    return vision_dir, llm_dir


def publish(staging: Path, folder: Path) -> None:
    """Move the staged parts to ``folder``, unless a concurrent build's parts are there first: theirs win, and
    the parts staged here are dropped when the staging folder is left (also when theirs land between the check
    and the rename, which then fails on a folder that is not empty)."""
    try:
        if not folder.exists():
            os.replace(staging, folder)
    except OSError:
        if not (folder / PARTS_RECORD).is_file():  # no finished parts there: a real failure
            raise


# ----- the vision tower ------------------------------------------------------------------------------
def alt_text(scene: Scene, rng: random.Random) -> str:
    """The pair's text: every object by colour, shape and place, and the background, in a random phrasing.

    Partial texts (a random subset of the objects, like web alt text) trained nothing a linear probe of
    the tower could see; texts naming every object make the in-batch contrast need all of them. The
    longer detailed descriptions (sizes too) did not train at this budget (loss stayed near chance)."""
    return brief_description(scene, rng)


def pixels(scene: Scene, size: int) -> np.ndarray:
    """The scene as the tower sees a ``size`` x ``size`` view: CHW, CLIP-normalised."""
    image = render(scene)
    if image.size != (size, size):
        image = image.resize((size, size))
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    array = (np.asarray(image, dtype=np.float32) / 255.0 - mean) / std
    return array.transpose(2, 0, 1)


def tags_apply(layout: Layout, image_size: int, patch_size: int) -> bool:
    """Whether every cell of the layout's pictures is exactly one patch of the tower (what the tags need)."""
    return layout.full and layout.cell == patch_size and all(
        rows * layout.cell == cols * layout.cell == image_size for rows, cols in layout.grids)


class CellTags(torch.nn.Module):
    """Linear read-outs of each cell's colour, shape, size and place from the tower's patch features.

    Contrastive pairs alone left shape barely readable (a linear probe of the feature layer: colour 1.00,
    shape 0.65; with hard negatives that differ in one object's shape, 0.52): colours, places and the
    background already tell a batch's pictures apart. A real CLIP has seen far more than its alt texts
    say; the toy tower gets the same from a tagging loss beside the contrastive one, as a tower also
    trained on labelled images would (the tags come from the same separate pool, never the benchmarks).

    The place tag keeps each patch's position readable in its feature, as it is in a real CLIP's patch
    features: without it the tower dropped its position embedding (a linear probe read the cell of a
    feature 0.31 of the time, chance 0.25), and the resampler's position table only steers attention,
    so no image token said where its object was."""

    def __init__(self, layout: Layout, hidden_size: int) -> None:
        super().__init__()
        cells = max(rows * cols for rows, cols in layout.grids)  # tags_apply: every grid fills the picture
        self.values = {"color": layout.colors, "shape": layout.shapes, "size": layout.sizes, "place": range(cells)}
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(hidden_size, len(v)) for k, v in self.values.items()})

    def loss(self, patches: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
        """Mean cross-entropy over every cell's attributes; ``patches`` is (batch, cells, hidden)."""
        columns = patches.shape[1] ** 0.5
        rows, objects, places = [], [], []
        for i, scene in enumerate(scenes):
            # A full grid's cells are its rows and columns in order (GRID_LINES place them on the 3x3 names).
            row_of = {r: k for k, r in enumerate(sorted({o.row for o in scene.objects}))}
            col_of = {c: k for k, c in enumerate(sorted({o.col for o in scene.objects}))}
            for obj in scene.objects:
                places.append(int(row_of[obj.row] * columns + col_of[obj.col]))
                rows.append(i * patches.shape[1] + places[-1])
                objects.append(obj)
        features = patches.reshape(-1, patches.shape[-1])[torch.tensor(rows)]
        targets = {k: [self.values[k].index(getattr(o, k)) for o in objects] for k in ("color", "shape", "size")}
        targets["place"] = places
        losses = [torch.nn.functional.cross_entropy(head(features), torch.tensor(targets[k]))
                  for k, head in self.heads.items()]
        return sum(losses) / len(losses)


class _TowerTrainer:
    """CLIPModel with the toy tower's geometry; ``save_pretrained`` writes its vision half as CLIPVisionModel."""

    def __init__(self, model: CLIPModel, losses: list[float]) -> None:
        self.model, self.losses = model, losses

    def save_pretrained(self, out: Path) -> dict:
        vision = CLIPVisionModel(self.model.config.vision_config)
        vision.load_state_dict(self.model.vision_model.state_dict())
        vision.save_pretrained(out)
        return _loss_summary(self.losses)


def _init_worker(parent: int) -> None:
    """Set up the CLIP's worker, which the main process stops by terminating it (see pretrained_parts), and the
    kernel when the main process is killed (:func:`~sicog.data.workers.exit_with_parent`).

    Ctrl-C, which the terminal sends to the whole process group, is ignored: the main process stops the worker,
    without a second traceback from it. tqdm's lock is a thread lock: its default also takes a multiprocessing
    semaphore, which a terminated worker leaves for the resource tracker to warn about.
    """
    exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _clip_part(tokenizer_dir: str, layout: str, seed: int, steps: int, out: str, threads: int) -> tuple[dict, float]:
    """Train the toy CLIP and save its vision tower to ``out`` (in a process of its own); its loss summary
    and seconds."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Its bar on the line below the LM's, which the main process draws at the same time.
    loss = train_clip(tokenizer, LAYOUTS[layout], seed, steps, progress_line=1).save_pretrained(Path(out))
    return loss, time.perf_counter() - start


def train_clip(
    tokenizer: PreTrainedTokenizerBase, layout: Layout, seed: int, steps: int, progress_line: int = 0
) -> _TowerTrainer:
    """Contrastive pretraining of a tiny CLIP on fresh toy images and their descriptions (a progress bar on
    stderr, ``progress_line`` lines below the cursor)."""
    settings = CLIP_TRAINING
    torch.manual_seed(seed)
    rng = random.Random(f"sicog-toy/{seed}/parts/clip")
    vision = tiny_vision_config(**TOY_VISION)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=settings["text_hidden_size"],
        intermediate_size=2 * settings["text_hidden_size"],
        num_hidden_layers=settings["text_layers"], num_attention_heads=4, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=settings["projection"])
    model = CLIPModel(config)
    tags = CellTags(layout, vision.hidden_size) if tags_apply(layout, vision.image_size, vision.patch_size) else None
    parameters = [*model.parameters(), *(tags.parameters() if tags else ())]
    optimizer = torch.optim.AdamW(parameters, lr=settings["lr"], weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    for _ in tqdm(range(steps), desc="toy CLIP", unit="step", position=progress_line, leave=False):
        scenes = [sample_scene(rng, layout) for _ in range(settings["batch_size"])]
        images = torch.from_numpy(np.stack([pixels(s, vision.image_size) for s in scenes]))
        texts = [alt_text(s, rng) + tokenizer.eos_token for s in scenes]
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=images,
                    return_loss=True, output_hidden_states=tags is not None)
        loss = out.loss
        if tags is not None:
            # The feature layer the multimodal model reads: the second to last, CLS dropped.
            loss = loss + tags.loss(out.vision_model_output.hidden_states[-2][:, 1:], scenes)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return _TowerTrainer(model, losses)


# ----- the language model ----------------------------------------------------------------------------
def lm_text(scene: Scene, layout: Layout, rng: random.Random, tokenizer: PreTrainedTokenizerBase) -> str:
    """One training text: a description, or a chat turn answering a question about a described scene,
    directly or, when asked to, step by step (the four steps an instruction-tuned LLM can already follow:
    without them the stage-0 reasoning model, taught the format by 200 annotated answers only, sampled
    steps out of order and reached a right answer 5% of the time)."""
    description = detailed_description(scene, rng)
    if rng.random() < 0.3:
        return description + tokenizer.eos_token
    question = ask(scene, layout, rng)
    if question is None:
        return description + tokenizer.eos_token
    letter = None
    if question.can_be_multiple_choice and rng.random() < 0.5:
        options, letter = multiple_choice(question, rng)
        prompt, answer = multiple_choice_prompt(question.text, options), letter
    else:
        prompt, answer = question.text, question.reply
    if rng.random() < 0.5:
        prompt, answer = reasoning_prompt("cot-default", prompt), cot_answer(question, rng, letter)
    messages = [{"role": "user", "content": f"{description}\n{prompt}"}, {"role": "assistant", "content": answer}]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def ask(scene: Scene, layout: Layout, rng: random.Random, tries: int = 20) -> Question | None:
    """A question of a random kind the layout asks that ``scene`` allows, or None after ``tries`` kinds."""
    for _ in range(tries):
        question = QUESTION_TYPES[rng.choice(question_kinds(layout))][1](scene, rng)
        if question is not None:
            return question
    return None


def train_language_model(
    tokenizer: PreTrainedTokenizerBase, layout: Layout, seed: int, steps: int
) -> tuple[Qwen2ForCausalLM, dict]:
    """Causal-LM pretraining of the toy Qwen2 on text of the toy language (a progress bar on stderr)."""
    settings = LM_TRAINING
    torch.manual_seed(seed)
    rng = random.Random(f"sicog-toy/{seed}/parts/lm")
    model = Qwen2ForCausalLM(tiny_text_config(len(tokenizer), **TOY_TEXT))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, steps // 20), steps)
    losses = []
    for _ in tqdm(range(steps), desc="toy LM", unit="step", leave=False):
        texts = [lm_text(sample_scene(rng, layout), layout, rng, tokenizer) for _ in range(settings["batch_size"])]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=settings["max_length"], return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model, _loss_summary(losses)


def reading_check(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, layout: Layout, seed: int, count: int = 200
) -> dict:
    """How often the language model answers a question about a scene given the scene's true description
    in the prompt: the reading a real instruction-tuned LLM brings, which every step-by-step answer needs
    (the description is step 2, the answer follows from it). Each question's answer competes with up to
    three wrong ones by summed log-likelihood, asked as in pretraining, on scenes of their own stream.

    Beside chance it records ``commonest``: what a reader scores that answers with the option the
    description names most often, whichever object the question is about (ties shared). A model at or
    below it has not learned to bind an attribute to its object; it counts words."""
    rng = random.Random(f"sicog-toy/{seed}/parts/reading-check")
    right, chance, commonest = 0, 0.0, 0.0
    model.eval()
    for _ in tqdm(range(count), desc="toy LM reading check", unit="question", leave=False):
        question = None
        while question is None:  # a scene no question fits is drawn again
            scene = sample_scene(rng, layout)
            question = ask(scene, layout, rng)
        description = detailed_description(scene, rng)
        messages = [{"role": "user", "content": f"{description}\n{question.text}"}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        options = [question.answer, *rng.sample(question.distractors, min(3, len(question.distractors)))]
        scores = _option_log_likelihoods(model, tokenizer, prompt, [question.say(o) for o in options])
        right += max(range(len(options)), key=scores.__getitem__) == 0
        chance += 1 / len(options)
        named = [times_named(option, description) for option in options]
        commonest += (named[0] == max(named)) / named.count(max(named))
    return {"accuracy": round(right / count, 3), "chance": round(chance / count, 3),
            "commonest": round(commonest / count, 3), "questions": count}


def times_named(phrase: str, text: str) -> int:
    """How often ``text`` names ``phrase`` in any of the toy language's wordings, as whole words, and not as part
    of another phrase's wording ("top", the top center, is not named by "top left")."""
    own, others = _wordings(phrase)
    return len(own.findall(others.sub("\0", text) if others else text))


@functools.cache
def _wordings(phrase: str) -> tuple[re.Pattern[str], re.Pattern[str] | None]:
    """``phrase`` or any of its synonyms as whole words, longest first, and the wordings of other phrases that
    hold one of them (None when none do); built once per phrase."""
    table = synonym_table()

    def any_of(words: list[str]) -> re.Pattern[str]:
        return re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + r")\b",
                          re.IGNORECASE)

    head, _, last = phrase.rpartition(" ")
    # An object ("red circle") in its shape's every wording ("red disk"); the table holds the shape alone.
    others = table.get(phrase) or ([f"{head} {word}" for word in table.get(last, ())] if head else [])
    own, canonical = any_of([phrase, *others]), any_of([phrase])
    # A wording of another phrase that holds one of ours names something else ("top left" holds "top", a wording
    # of the top center), unless that phrase holds ours ("in the lower left" is a wording of "in the bottom left").
    longer = [w for other, words in table.items() if other != phrase and canonical.search(other) is None
              for w in (other, *words) if own.search(w) and own.fullmatch(w) is None]
    return own, any_of(longer) if longer else None


@torch.no_grad()
def _option_log_likelihoods(
    model: Qwen2ForCausalLM, tokenizer: PreTrainedTokenizerBase, prompt: str, options: list[str]
) -> list[float]:
    """Summed log-probability of each option's tokens after ``prompt``, in one right-padded batch."""
    context = tokenizer(prompt)["input_ids"]
    sequences = [context + tokenizer(option)["input_ids"] for option in options]
    width = max(map(len, sequences))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])
    # token_log_probs[:, i] is the log-probability of token i + 1 given the tokens before it.
    token_log_probs = model(input_ids=ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    return [token_log_probs[row, len(context) - 1:len(s) - 1].sum().item() for row, s in enumerate(sequences)]


def _loss_summary(losses: list[float]) -> dict:
    tail = losses[-max(1, len(losses) // 10):]
    return {"first": round(losses[0], 4), "last": round(sum(tail) / len(tail), 4), "steps": len(losses)}
