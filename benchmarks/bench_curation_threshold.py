"""Curation scores by kind of candidate, to choose an encoder's default threshold (docs/curation.md).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_curation_threshold.py [--scenes 200] [--encoder PATH]

Builds detailed descriptions (CoD step 5 style, about 65-125 words) of procedurally drawn scenes: a setting,
two or three subjects with counts, colours and actions, their layout, peripheral details and the light.
Each scene is written in four styles (sentence templates, synonyms, order of mention), and "wrong"
versions change about half of its facts (colours, counts, objects, layout, peripheral details) while
keeping the setting, the way a sampled description goes wrong about an image it still recognises.

Pairs: the same description sampled again (same style, one peripheral detail left out), a paraphrase
(another style), a wrong description. Records of N = 6 candidates, scored as `sicog curate` scores them
(mean cosine similarity to the other candidates; the best candidate decides): consistent (six correct
paraphrases: keep), majority (four correct, two wrong: keep, the best is a correct one), inconsistent
(six wrong descriptions that disagree with each other: drop). Prints the score distributions, the
share kept by threshold and the threshold that best separates the records to keep from those to drop,
then the wall and CPU seconds (user+sys of this process, every thread) of each measurement.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, replace

import numpy as np
from cpu_time import stopwatch

from sicog.curate.embed import EncoderSettings, SentenceEncoder, packaged_minilm_path
from sicog.curate.score import mbr_scores

SETTINGS = ["a busy street market", "a small kitchen", "a park beside a lake", "a cluttered office desk",
            "a beach at low tide", "a living room", "a train platform", "a farmyard", "a primary school classroom",
            "a bakery counter", "a fishing harbour", "a mountain trail"]
NOUNS = ["dog", "cat", "child", "woman", "man", "bicycle", "umbrella", "basket", "boat", "chair", "car", "bird",
         "cup", "backpack", "lamp", "horse", "book", "bench"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "orange", "purple", "grey"]
ACTIONS = {"dog": "sleeping", "cat": "stretching", "child": "laughing", "woman": "reading", "man": "waving",
           "bicycle": "leaning against a post", "umbrella": "lying open", "basket": "filled with apples",
           "boat": "tied to a rope", "chair": "pushed back", "car": "parked at an angle", "bird": "perched on a rail",
           "cup": "still steaming", "backpack": "half unzipped", "lamp": "switched on", "horse": "grazing",
           "book": "lying open", "bench": "wet from rain"}
RELATIONS = ["to the left of", "to the right of", "behind", "in front of", "next to"]
PERIPHERY = ["a faded poster on the far wall", "a potted plant in the corner", "power lines crossing the sky",
             "a stack of wooden crates", "a clock above the doorway", "puddles on the ground", "a distant church tower",
             "a row of parked scooters", "a chalkboard with writing", "gulls circling overhead",
             "a string of paper lanterns", "a rusty bicycle rack"]
LIGHT = ["warm afternoon light", "the cold blue light of early morning", "harsh midday sun", "soft overcast light",
         "the orange glow of sunset", "dim indoor lighting"]
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five"]
# Wordings a sampled description may choose for the same fact (the first is the plain one).
SYNONYMS = {
    "dog": ["dog", "puppy", "hound"], "cat": ["cat", "kitten", "tabby"], "child": ["child", "kid", "youngster"],
    "woman": ["woman", "lady", "young woman"], "man": ["man", "gentleman", "older man"],
    "bicycle": ["bicycle", "bike", "cycle"], "umbrella": ["umbrella", "parasol", "brolly"],
    "basket": ["basket", "wicker basket", "hamper"], "boat": ["boat", "rowing boat", "dinghy"],
    "chair": ["chair", "seat", "wooden chair"], "car": ["car", "hatchback", "sedan"],
    "bird": ["bird", "pigeon", "sparrow"], "cup": ["cup", "mug", "teacup"],
    "backpack": ["backpack", "rucksack", "school bag"], "lamp": ["lamp", "desk lamp", "light"],
    "horse": ["horse", "pony", "mare"], "book": ["book", "paperback", "notebook"],
    "bench": ["bench", "park bench", "wooden bench"],
}
SETTING_WORDS = {setting: [setting, alternative] for setting, alternative in zip(SETTINGS, [
    "an open-air market crowded with stalls", "a compact home kitchen", "a green park on the shore of a lake",
    "a messy work desk in an office", "a wide sandy beach with the sea far out", "a cosy sitting room",
    "a station platform beside the tracks", "a yard on a working farm", "a classroom for young pupils",
    "the front counter of a bakery", "a small harbour with fishing boats", "a rocky path up a mountain"])}
FILLER = ["The atmosphere is relaxed and unhurried.", "Nothing in the picture looks staged.",
          "The composition draws the eye to the centre first.", "Colours are muted except for the main subjects.",
          "It looks like an ordinary weekday.", "The photo seems to be taken at eye level.",
          "There is a sense of quiet activity.", "Textures such as wood, fabric and stone are easy to make out.",
          "The depth of field keeps most of the scene in focus.", "No people are looking at the camera.",
          "The image has a candid, documentary feel.", "Shadows are soft and fall to one side.",
          "The scene is tidy apart from a few small objects.", "No text or signs can be read clearly."]


@dataclass(frozen=True)
class Subject:
    count: int
    colour: str
    noun: str


@dataclass(frozen=True)
class Scene:
    setting: str
    subjects: tuple[Subject, ...]
    relation: str
    periphery: tuple[str, ...]
    light: str


def draw_scene(rng: random.Random) -> Scene:
    nouns = rng.sample(NOUNS, rng.choice([2, 3]))
    subjects = tuple(Subject(rng.choice([1, 1, 2, 3]), rng.choice(COLOURS), noun) for noun in nouns)
    return Scene(rng.choice(SETTINGS), subjects, rng.choice(RELATIONS), tuple(rng.sample(PERIPHERY, 2)),
                 rng.choice(LIGHT))


def corrupt(scene: Scene, rng: random.Random) -> Scene:
    """About half of the scene's facts changed; the setting is kept."""
    subjects = []
    for subject in scene.subjects:
        change = rng.choice(["colour", "count", "noun", "keep"])
        if change == "colour":
            subject = replace(subject, colour=rng.choice([c for c in COLOURS if c != subject.colour]))
        elif change == "count":
            subject = replace(subject, count=rng.choice([c for c in (1, 2, 3, 4) if c != subject.count]))
        elif change == "noun":
            taken = {s.noun for s in scene.subjects}
            subject = replace(subject, noun=rng.choice([n for n in NOUNS if n not in taken]))
        subjects.append(subject)
    periphery = (rng.choice([p for p in PERIPHERY if p not in scene.periphery]), scene.periphery[1])
    relation = rng.choice([r for r in RELATIONS if r != scene.relation])
    light = rng.choice([x for x in LIGHT if x != scene.light]) if rng.random() < 0.5 else scene.light
    return Scene(scene.setting, tuple(subjects), relation, periphery, light)


def _plural(noun: str) -> str:
    irregular = {"child": "children", "man": "men", "woman": "women", "young woman": "young women",
                 "older man": "older men", "gentleman": "gentlemen", "lady": "ladies", "pony": "ponies",
                 "puppy": "puppies"}
    if noun in irregular:
        return irregular[noun]
    return noun + ("es" if noun.endswith(("ch", "sh", "s", "x")) else "s")


def _phrase(subject: Subject, digits: bool, rng: random.Random) -> tuple[str, str]:
    word = rng.choice(SYNONYMS[subject.noun])
    noun = word if subject.count == 1 else _plural(word)
    number = str(subject.count) if digits and subject.count > 1 else NUMBER_WORDS[subject.count]
    if subject.count == 1:
        number = "an" if subject.colour[0] in "aeiou" else "a"
    verb = "is" if subject.count == 1 else "are"
    return f"{number} {subject.colour} {noun}", verb


def describe(scene: Scene, style: int, rng: random.Random, drop_detail: bool = False) -> str:
    """One detailed description of ``scene`` in one of four styles."""
    subjects = list(scene.subjects)
    if style in (1, 3):
        subjects = subjects[::-1]
    phrases = [_phrase(s, style == 2, rng) for s in subjects]
    periphery = scene.periphery[:1] if drop_detail else scene.periphery
    first, second = phrases[0][0], phrases[1][0]
    scene = replace(scene, setting=rng.choice(SETTING_WORDS[scene.setting]))
    if style == 0:
        parts = [f"The image shows {scene.setting} in {scene.light}."]
        parts += [f"In the foreground {verb} {p}, {ACTIONS[s.noun]}." for (p, verb), s in zip(phrases, subjects)]
        parts.append(f"The {subjects[0].noun} {'is' if subjects[0].count == 1 else 'are'} {scene.relation} the "
                     f"{subjects[1].noun}.")
        parts.append("Around the edges of the frame one can see " + " and ".join(periphery) + ".")
        parts.append("Overall the scene feels calm and ordinary, an everyday moment captured without posing.")
    elif style == 1:
        parts = [f"This photograph captures {scene.setting}, lit by {scene.light}."]
        parts.append("The main subjects are " + ", ".join(p for p, _ in phrases[:-1]) + f" and {phrases[-1][0]}.")
        parts += [f"The {s.noun} {'appears' if s.count == 1 else 'appear'} to be {ACTIONS[s.noun]}."
                  for s in subjects]
        parts.append(f"Spatially, {first} {phrases[0][1]} placed {scene.relation} {second}.")
        parts.append("In the background there " + ("is " if len(periphery) == 1 else "are ")
                     + " as well as ".join(periphery) + ".")
    elif style == 2:
        parts = [f"A scene set in {scene.setting}."]
        parts += [f"There {verb} {p} ({ACTIONS[s.noun]})." for (p, verb), s in zip(phrases, subjects)]
        parts.append(f"Layout: {first} {scene.relation} {second}.")
        parts.append("Peripheral details: " + "; ".join(periphery) + ".")
        parts.append(f"Lighting: {scene.light}. Nothing else stands out; the composition is simple and clear.")
    else:
        parts = [f"We are looking at {scene.setting}, where {first} {phrases[0][1]} {ACTIONS[subjects[0].noun]}."]
        parts += [f"Nearby {verb} {p}, {ACTIONS[s.noun]}." for (p, verb), s in zip(phrases[1:], subjects[1:])]
        parts.append(f"Seen from the camera, the {subjects[0].noun} {'sits' if subjects[0].count == 1 else 'sit'} "
                     f"{scene.relation} the {subjects[1].noun}.")
        parts.append("Less prominent are " + " and ".join(periphery) + f", all under {scene.light}.")
        parts.append("The image gives a clear, detailed view of the place and what is happening in it.")
    parts += rng.sample(FILLER, rng.randint(1, 4))  # sampling variety: remarks that state no fact of the scene
    return " ".join(parts)


def pair_similarities(encoder: SentenceEncoder, scenes: list[Scene], rng: random.Random) -> dict[str, list[float]]:
    """Cosine similarity of a description with the same sampled again, a paraphrase and a wrong description."""
    texts = {"reference": [], "sampled again": [], "paraphrase": [], "wrong": []}
    for scene in scenes:
        style = rng.randrange(4)
        texts["reference"].append(describe(scene, style, rng))
        texts["sampled again"].append(describe(scene, style, rng, drop_detail=True))
        texts["paraphrase"].append(describe(scene, (style + rng.randrange(1, 4)) % 4, rng))
        texts["wrong"].append(describe(corrupt(scene, rng), rng.randrange(4), rng))
    vectors = {kind: encoder.encode(batch) for kind, batch in texts.items()}
    return {kind: np.sum(vectors["reference"] * vectors[kind], axis=1).tolist()
            for kind in ("sampled again", "paraphrase", "wrong")}


def record_candidates(scene: Scene, kind: str, rng: random.Random) -> list[str]:
    styles = [rng.randrange(4) for _ in range(6)]
    correct = {"consistent": 6, "majority": 4, "inconsistent": 0}[kind]
    return [describe(scene if i < correct else corrupt(scene, rng), style, rng, drop_detail=rng.random() < 0.3)
            for i, style in enumerate(styles)]


def best_scores(encoder: SentenceEncoder, scenes: list[Scene], rng: random.Random) -> dict[str, list[float]]:
    """The best candidate's MBR score of each record, by kind of record."""
    out = {}
    for kind in ("consistent", "majority", "inconsistent"):
        out[kind] = []
        for scene in scenes:
            scores = mbr_scores(encoder.encode(record_candidates(scene, kind, rng)))
            out[kind].append(float(max(scores)))
    return out


def timed(fn, *args):
    """``fn(*args)``, its wall seconds and its CPU seconds (user+sys of this process, every thread)."""
    with stopwatch(scope="process") as clock:
        result = fn(*args)
    return result, clock.wall_s, clock.cpu_s


def _stats(values: list[float]) -> str:
    q = np.quantile(values, [0.0, 0.1, 0.5, 0.9, 1.0])
    return " | ".join(f"{v:.3f}" for v in q)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=200, help="scenes (records per kind)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder", default=None, help="sentence-transformers model (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    scenes = [draw_scene(rng) for _ in range(args.scenes)]
    encoder = SentenceEncoder(EncoderSettings(args.encoder or packaged_minilm_path(), device=args.device))
    pairs, pairs_s, pairs_cpu = timed(pair_similarities, encoder, scenes, rng)
    best, best_s, best_cpu = timed(best_scores, encoder, scenes, rng)
    timing = [{"measurement": "pair similarities", "texts": 4 * args.scenes, "seconds": pairs_s, "cpu_s": pairs_cpu},
              {"measurement": "records' best scores", "texts": 3 * 6 * args.scenes, "seconds": best_s,
               "cpu_s": best_cpu}]
    example = random.Random(1)
    words = [len(describe(s, example.randrange(4), example).split()) for s in scenes]
    print(f"{args.scenes} scenes, descriptions of {min(words)}-{max(words)} words, encoder "
          f"{args.encoder or 'packaged all-MiniLM-L6-v2'}\n")
    print("Cosine similarity to a reference description\n")
    print("| pair | min | p10 | median | p90 | max |\n|---|---:|---:|---:|---:|---:|")
    for kind, values in pairs.items():
        print(f"| {kind} | {_stats(values)} |")
    print("\nBest candidate's score per record (N = 6)\n")
    print("| record | min | p10 | median | p90 | max |\n|---|---:|---:|---:|---:|---:|")
    for kind, values in best.items():
        print(f"| {kind} | {_stats(values)} |")

    keep = np.array(best["consistent"] + best["majority"])
    drop = np.array(best["inconsistent"])
    grid = np.round(np.arange(0.50, 0.951, 0.01), 2)
    separation = [(float((keep >= t).mean() - (drop >= t).mean()), float(t)) for t in grid]
    top = max(value for value, _ in separation)
    # Among equally good thresholds the highest: it keeps the same good records and drops more doubtful ones.
    chosen = max(t for value, t in separation if value >= top - 1e-9)
    print("\nShare of records kept (best score >= threshold)\n")
    print("| threshold | consistent | majority | inconsistent |\n|---:|---:|---:|---:|")
    shown = sorted({0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, chosen})
    for t in shown:
        row = " | ".join(f"{np.mean(np.array(best[k]) >= t):.0%}" for k in best)
        print(f"| {t:.2f}{' (best)' if t == chosen else ''} | {row} |")
    print(f"\nbest separation: threshold {chosen:.2f} keeps {np.mean(keep >= chosen):.0%} of the records to keep "
          f"and {np.mean(drop >= chosen):.0%} of those to drop")
    print("\nTime (CPU = user+sys of this process)\n")
    print("| measurement | texts embedded | wall s | CPU s |\n|---|---:|---:|---:|")
    for row in timing:
        print(f"| {row['measurement']} | {row['texts']} | {row['seconds']:.2f} | {row['cpu_s']:.2f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"pairs": pairs, "best": best, "chosen": chosen, "timing": timing}, handle)


if __name__ == "__main__":
    main()
