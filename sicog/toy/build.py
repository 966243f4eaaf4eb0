"""Building the whole toy world into one directory, atomically, and reading its manifest.

The world is written into a hidden sibling folder and renamed into place at the end, so an
interrupted build leaves nothing half-written (a later build removes the staging folder of one that was
killed); rebuilding with the same seed and size is a no-op.
Nothing in the tree depends on time, dict or set ordering or the hash seed: the same seed gives a
byte-identical tree.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from sicog.data.jsonl import write_json, write_jsonl
from sicog.data.lock import output_lock
from sicog.data.prompts import CAPTION_PROMPTS, COD_STEPS, COT_STEPS, SHORT_ANSWER, STEP_BY_STEP_ANSWER
from sicog.data.staging import staged_folder, staging_path
from sicog.eval.prompts import MC_INSTRUCTION
from sicog.toy import datasets as ds
from sicog.toy.language import vocabulary
from sicog.toy.questions import CATEGORIES
from sicog.toy.tokenizer import train_tokenizer
from sicog.toy.world import LAYOUTS, SLICING

MANIFEST = "manifest.json"
# Bump when the same seed would give a different tree, so an old world is not mistaken for a current one (9: stage
# 2's descriptions asked with the bare cod-default request, since commit 7db4326, which left the number at 8).
WORLD_VERSION = 9
# Stable manifest keys -> file or folder names inside the world directory.
FILES = {
    "align": "align.jsonl",
    "cod": "cod.jsonl",
    "detailed": "detailed.jsonl",
    "cot": "cot.jsonl",
    "unlabeled_images": "unlabeled_images.jsonl",
    "unlabeled_questions": "unlabeled_questions.jsonl",
    "unlabeled_web": "unlabeled_web.jsonl",
    "oracle_captions": "oracle_captions.jsonl",
    "oracle_reasoning": "oracle_reasoning.jsonl",
    "sft": "sft.jsonl",
    "bench_mc": "bench_mc.tsv",
    "bench_caption": "bench_caption.jsonl",
    "bench_perception": "bench_perception.tsv",
    "image_folder": "images",
    "ground_truth": "ground_truth.jsonl",
    "tokenizer": "tokenizer",
}
# The keys of FILES that name folders; the others name files.
FOLDERS = ("image_folder", "tokenizer")
# The other manifest keys the commands read, with their JSON types.
FIELDS = {"version": int, "seed": int, "size": str, "layout": str, "counts": dict, "vocab_size": int}
_JSON_TYPES = {int: "integer", str: "string", dict: "object"}
TRAINING_SETS = (
    "align", "cod", "detailed", "cot", "unlabeled_images", "unlabeled_questions", "sft",
    "unlabeled_web", "oracle_captions", "oracle_reasoning",
)


# In a folder being filled in place while the fill lasts (see build_world).
FILLING = ".sicog-filling"


def build_world(out: str | os.PathLike, seed: int = 0, size: str = "demo", force: bool = False) -> dict:
    """Build the toy world into ``out`` and return its manifest.

    An existing world with the same version, seed and size is kept as it is. Any other non-empty
    ``out`` (an incomplete world included) raises ``FileExistsError`` unless ``force`` is set, in which
    case it is replaced; an empty folder is filled in place, and a fill in place that a killed build cut off is
    emptied and filled again. Two builds into one ``out`` take its lock
    (``OUT.lock`` beside it) to check and replace, so the second finds the first's world: kept when it is
    the same, refused when not.
    """
    if size not in ds.SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(ds.SIZES)}")
    # Resolved first: "." or ".." has no name to stage beside, nor a parent to stage in, and a link to a folder
    # would be renamed aside and replaced by a real folder where its target should get the world.
    out = Path(out).resolve()
    existing = _world_to_keep(out, seed, size, force)
    if existing is not None:
        return existing
    retired = staging_path(out, "replaced")
    with staged_folder(out) as staging:
        manifest = _build_into(staging, seed, size)
        with output_lock(out):
            # Checked again: another build may have finished a world here while this one was building; it is
            # kept, and the world staged here is dropped.
            existing = _world_to_keep(out, seed, size, force)
            if existing is not None:
                return existing
            filling = out / FILLING
            if out.is_dir() and (filling.exists() or not any(out.iterdir())):
                # Filled in place: an empty --out may be the shell's current folder or a mount point, which a
                # rename would replace (leaving the shell in a deleted folder) or fail on. The manifest goes
                # last: until it is there, the folder holds no finished world. The marker says that everything
                # in the folder came from a fill, so that one a killed build cut off is emptied and filled again.
                for entry in out.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                filling.touch()
                for entry in sorted(staging.iterdir(), key=lambda path: path.name == MANIFEST):
                    os.replace(entry, out / entry.name)
                filling.unlink()
            else:
                if out.exists():
                    os.replace(out, retired)
                os.replace(staging, out)
    # Outside the lock: the old world is no longer at ``out``, and removing a demo world takes a while.
    if retired.is_dir():
        shutil.rmtree(retired)
    elif retired.exists():
        retired.unlink()
    return manifest


def _world_to_keep(out: Path, seed: int, size: str, force: bool) -> dict | None:
    """The manifest of the finished world of this version, seed and size in ``out``, or None when ``out`` is
    free (absent or empty) or ``force`` is set; ``FileExistsError`` when it holds anything else."""
    if force:
        return None
    unreadable = ""
    if (out / MANIFEST).is_file():
        try:
            existing = _checked_manifest(out)
        except ValueError as err:
            # A damaged or incomplete world is not this world: refused below like any other content.
            existing, unreadable = {}, f" ({err})"
        if (existing.get("version"), existing.get("seed"), existing.get("size")) == (WORLD_VERSION, seed, size):
            (out / FILLING).unlink(missing_ok=True)  # a fill killed after its last move: the world is complete
            return existing
    if (out / FILLING).exists():
        return None  # a fill in place that a killed build cut off: emptied and filled again (see build_world)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and holds something else{unreadable}; choose another --out or pass --force"
        )
    return None


def _build_into(root: Path, seed: int, size: str) -> dict:
    counts = ds.SIZES[size]
    writer = ds.WorldWriter(root, seed, ds.SIZE_LAYOUTS[size])
    records: dict[str, list[dict]] = {}
    # The build order fixes which random draws each dataset sees; do not reorder.
    records["align"] = ds.build_align(writer, counts["align"])
    records["cod"], records["detailed"] = ds.build_cod(writer, counts["cod"])
    records["cot"] = ds.build_cot(writer, counts["cot"])
    unlabeled = ds.build_unlabeled_images(writer, counts["unlabeled_images"])
    records["unlabeled_images"], records["unlabeled_web"], records["oracle_captions"] = unlabeled
    questions = ds.build_unlabeled_questions(writer, counts["unlabeled_questions"])
    records["unlabeled_questions"], records["oracle_reasoning"] = questions
    records["sft"] = ds.build_sft(writer, counts["sft"])
    bench_rows = ds.build_bench_mc(writer, counts["bench_mc"])
    records["bench_caption"], perception_rows = ds.build_bench_caption(writer, counts["bench_caption"])

    for name in ("align", "cod", "detailed", "cot", "sft"):
        for record in records[name]:
            writer.learn(*(turn["value"] for turn in record["conversations"]))
    writer.learn(*(record["question"] for record in records["unlabeled_questions"]))
    for name, items in records.items():
        write_jsonl(root / FILES[name], items)
    ds.write_bench_tsv(root / FILES["bench_mc"], bench_rows)
    ds.write_bench_tsv(root / FILES["bench_perception"], perception_rows)
    write_jsonl(root / FILES["ground_truth"], writer.ground_truth)

    fixed_texts = [*CAPTION_PROMPTS.values(), *COD_STEPS, *COT_STEPS, SHORT_ANSWER, STEP_BY_STEP_ANSWER, MC_INSTRUCTION]
    tokenizer = train_tokenizer(writer.corpus + fixed_texts + vocabulary())
    tokenizer.save_pretrained(str(root / FILES["tokenizer"]))

    item_counts = {name: len(items) for name, items in records.items()}
    item_counts["bench_mc"], item_counts["bench_perception"] = len(bench_rows), len(perception_rows)
    item_counts["images"] = item_counts["ground_truth"] = len(writer.ground_truth)
    manifest = {
        "world": "sicog toy world",
        "version": WORLD_VERSION,
        "seed": seed,
        "size": size,
        "layout": writer.layout.name,
        **FILES,
        "counts": {k: item_counts[k] for k in (*TRAINING_SETS, "bench_mc", "bench_caption", "bench_perception",
                                                   "images", "ground_truth")},
        "bench_mc_categories": {c: sum(row["category"] == c for row in bench_rows) for c in CATEGORIES},
        "image_settings": dict(SLICING),
        "vocab_size": len(tokenizer),
    }
    write_json(root / MANIFEST, manifest)
    return manifest


def _read_manifest(path: Path) -> dict:
    """The JSON object in ``path``; ``ValueError`` naming the file when it is not one or cannot be read."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a valid manifest ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a valid manifest (a JSON {type(manifest).__name__}, not an object)")
    return manifest


def _checked_manifest(directory: Path) -> dict:
    """The manifest of the world in ``directory`` as written, once it holds every key the commands read, with
    its type, every file and folder it names exists and its image folder holds the images built; ``ValueError``
    naming the manifest otherwise."""
    path = directory / MANIFEST
    manifest = _read_manifest(path)
    missing = [key for key in (*FIELDS, *FILES) if key not in manifest]
    if missing:
        raise ValueError(f"{path}: manifest lacks the keys {', '.join(missing)}")
    for key, kind in (*FIELDS.items(), *((key, str) for key in FILES)):
        # bool is an int to isinstance, and no count or seed is true or false.
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise ValueError(f"{path}: {key} is {manifest[key]!r}, not a JSON {_JSON_TYPES[kind]}")
    for key, known in (("size", ds.SIZES), ("layout", LAYOUTS)):
        if manifest[key] not in known:
            raise ValueError(f"{path}: {key} {manifest[key]!r} is not one of {', '.join(known)}")
    rebuild = f"rebuild the world with `sicog toy build --out {directory} --force`"
    for key in FILES:
        target = directory / manifest[key]
        if not (target.is_dir() if key in FOLDERS else target.is_file()):
            kind = "folder" if key in FOLDERS else "file"
            raise ValueError(f"{path}: its {key} {kind} {target} is missing; {rebuild}")
    images = directory / manifest["image_folder"]
    found, built = sum(1 for _ in images.rglob("*.png")), manifest["counts"].get("images")
    if found != built:  # an image removed by hand: its records would name a missing file
        raise ValueError(f"{path}: {images} holds {found} images, not the {built} built; {rebuild}")
    return manifest


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read and check ``directory/manifest.json``; the file keys become absolute paths (``pathlib.Path``).

    ``FileNotFoundError`` when the world was never built, ``ValueError`` (naming the file) when the
    manifest is damaged or incomplete or a file it names is missing.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; build the world first with `sicog toy build --out {directory}`")
    manifest = _checked_manifest(directory)
    return {**manifest, **{key: (directory / manifest[key]).resolve() for key in FILES}}
