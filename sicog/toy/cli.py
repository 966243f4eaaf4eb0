"""`sicog toy build|parts|references|synonyms|embed`: the toy world, its starting model parts, its image-use
references, its synonym table for open short answers, and its curation encoder."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from sicog.toy.datasets import SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the ``toy`` sub-commands."""
    sub = parser.add_subparsers(dest="toy_command", metavar="sub-command", required=True)
    build = sub.add_parser("build", help="write images, ground truth, every dataset, a tokenizer and a manifest")
    build.add_argument("--out", required=True, help="directory to write the world into")
    build.add_argument("--seed", type=int, default=0, help="world seed (same seed -> byte-identical tree)")
    build.add_argument("--size", choices=tuple(SIZES), default="demo",
                       help="dataset sizes and layout (demo: the learnable 2x2 grid; tiny: sliced images, for tests)")
    build.add_argument("--force", action="store_true", help="replace an existing, different world in --out")
    parts = sub.add_parser("parts", help="the world's pretrained toy vision tower and LLM, copied like downloads "
                                         "(trained once per world and cached, see docs/toy_world.md)")
    parts.add_argument("--world", required=True, help="a built toy world")
    parts.add_argument("--out", required=True, help="folder for vision/ and llm/")
    references = sub.add_parser("references", help="the caption benchmark's images with their true descriptions "
                                                   "(reference answers for `sicog image-use`)")
    references.add_argument("--world", required=True, help="a built toy world")
    references.add_argument("--output", required=True, help="LLaVA records (.jsonl)")
    synonyms = sub.add_parser("synonyms", help="the toy language's synonyms (for `sicog eval --mc-scoring open "
                                               "--synonyms`)")
    synonyms.add_argument("--output", required=True, help="JSON: canonical phrase -> list of other phrasings")
    embed = sub.add_parser("embed", help="embed curation texts by the facts they state (the toy's curation encoder, "
                                         "see docs/curation.md)")
    embed.add_argument("task", choices=("captions", "reasoning"))
    embed.add_argument("--texts", required=True, help="texts file from `sicog curate texts`")
    embed.add_argument("--output", required=True, help="embeddings .npy for `sicog curate --embeddings`")


def run(args: argparse.Namespace) -> int:
    """Run the chosen sub-command."""
    if args.toy_command == "parts":
        from sicog.toy.build import load_manifest
        from sicog.toy.model import PARTS_RECORD
        from sicog.toy.pretrain import pretrained_parts

        try:
            load_manifest(args.world)  # before any training: a missing or damaged world is a usage error
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        out = Path(args.out)
        sources = pretrained_parts(args.world)
        for name, source in zip(("vision", "llm"), sources, strict=True):
            shutil.rmtree(out / name, ignore_errors=True)
            shutil.copytree(source, out / name)  # a copy: the run keeps working if the cache is cleared
            print(f"{name}: {out / name} (from {source})")
        shutil.copyfile(sources[0].parent / PARTS_RECORD, out / PARTS_RECORD)  # with the LM reading check
        return 0
    if args.toy_command == "references":
        from sicog.toy.references import write_image_use_references

        try:
            count = write_image_use_references(args.world, args.output)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {count} records to {args.output}")
        return 0
    if args.toy_command == "synonyms":
        from sicog.toy.synonyms import write_synonyms

        print(f"wrote {write_synonyms(args.output)} canonical phrases to {args.output}")
        return 0
    if args.toy_command == "embed":
        return _embed(args)
    from sicog.toy.build import build_world

    start = time.perf_counter()
    try:
        manifest = build_world(args.out, seed=args.seed, size=args.size, force=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    where = f"seed {manifest['seed']}, size {manifest['size']}, layout {manifest['layout']}"
    print(f"toy world ({where}) in {args.out}: {counts}")
    print(f"tokenizer: {manifest['vocab_size']} tokens; took {time.perf_counter() - start:.1f} s")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embed_file import read_texts, save_embeddings
    from sicog.toy.similarity import ENCODER_NAME, fact_vectors

    try:
        texts = read_texts(args.texts)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    vectors = fact_vectors(texts, args.task)
    save_embeddings(args.output, vectors, texts, EncoderSettings(name_or_path=f"{ENCODER_NAME}:{args.task}"))
    print(f"{len(texts)} texts as {vectors.shape[1]} facts -> {args.output}")
    return 0
