"""`sicog toy build|parts|references|synonyms|embed`: the toy world, its starting model parts, its image-use
references, its synonym table for open short answers, and its curation encoder."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from sicog.data.argtypes import os_error_text, path_text
from sicog.data.jsonl import blocked_reason, refuse_overwriting
from sicog.data.staging import staged_folder, staging_path
from sicog.toy.datasets import SIZES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the ``toy`` sub-commands."""
    sub = parser.add_subparsers(dest="toy_command", metavar="sub-command", required=True)
    build = sub.add_parser("build", help="write images, ground truth, every dataset, a tokenizer and a manifest")
    build.add_argument("--out", required=True, type=path_text, help="directory to write the world into")
    build.add_argument("--seed", type=int, default=0, help="world seed (same seed -> byte-identical tree)")
    build.add_argument("--size", choices=tuple(SIZES), default="demo",
                       help="dataset sizes and layout (demo: the learnable 2x2 grid; tiny: sliced images, for tests)")
    build.add_argument("--force", action="store_true", help="replace an existing, different world in --out")
    parts = sub.add_parser("parts", help="the world's pretrained toy vision tower and LLM, copied like downloads "
                                         "(trained once per world and cached, see docs/toy_world.md)")
    parts.add_argument("--world", required=True, help="a built toy world")
    parts.add_argument("--out", required=True, type=path_text, help="folder for vision/ and llm/")
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
    """Run the chosen sub-command; 2, with one line naming the file, when an input or an output is unusable."""
    command = args.toy_command
    with _sigterm_exits():
        try:
            return _COMMANDS[command](args)
        except OSError as err:  # an output that cannot be written (no permission, disk full) or an unreadable input
            return _error(command, os_error_text(err))


def _parts(args: argparse.Namespace) -> int:
    """Train (or reuse) the world's parts and copy them into --out."""
    from sicog.toy.build import load_manifest
    from sicog.toy.model import PARTS_RECORD
    from sicog.toy.pretrain import pretrained_parts

    try:
        load_manifest(args.world)  # before any training: a missing or damaged world is a usage error
    except (FileNotFoundError, ValueError) as err:
        return _error("parts", str(err))
    if blocked := _blocked(args.out, folder=True):
        return _error("parts", blocked)
    out = Path(os.path.abspath(args.out))  # absolute: "." has no name to stage beside
    sources = pretrained_parts(args.world)
    with staged_folder(out) as staging:
        # A copy: the run keeps working if the cache is cleared.
        for name, source in zip(("vision", "llm"), sources, strict=True):
            _copy_tree(source, staging / name)
        shutil.copyfile(sources[0].parent / PARTS_RECORD, staging / PARTS_RECORD)  # with the LM reading check
        _move_into(staging, out)
    for name, source in zip(("vision", "llm"), sources, strict=True):
        print(f"{name}: {out / name} (from {source})")
    return 0


def _copy_tree(source: Path, target: Path) -> None:
    """Copy the folder ``source`` to ``target`` with the modes of a plain mkdir and open() under the current
    umask: ``shutil.copytree`` copies the cache's own bits, so a cache built under umask 077 gave private parts
    to a shared run, and a shared cache gave readable parts to a private one."""
    target.mkdir()
    for entry in source.iterdir():
        if entry.is_dir():
            _copy_tree(entry, target / entry.name)
        else:
            shutil.copyfile(entry, target / entry.name)  # creates the file by open(): the umask's mode


def _move_into(staging: Path, out: Path) -> None:
    """Put the finished parts in ``staging`` at ``out``: the whole folder renamed into place when ``out`` is
    new, else entry by entry with the parts record removed first and put back last, so that at no moment does
    ``out`` hold a record beside parts that are half old or half copied."""
    from sicog.toy.model import PARTS_RECORD

    if not out.exists():
        os.replace(staging, out)
        return
    (out / PARTS_RECORD).unlink(missing_ok=True)
    retired = staging_path(out, "replaced")
    retired.mkdir()
    try:
        for entry in sorted(staging.iterdir(), key=lambda path: path.name == PARTS_RECORD):
            if (out / entry.name).is_dir() and not (out / entry.name).is_symlink():
                os.replace(out / entry.name, retired / entry.name)  # a folder cannot be replaced by a rename
            os.replace(entry, out / entry.name)
    finally:
        shutil.rmtree(retired, ignore_errors=True)


def _references(args: argparse.Namespace) -> int:
    """Write the caption benchmark's references for `sicog image-use`."""
    from sicog.toy.references import write_image_use_references

    if blocked := _blocked(args.output, folder=False):
        return _error("references", blocked)
    try:
        count = write_image_use_references(args.world, args.output)
    except ValueError as err:
        return _error("references", str(err))
    print(f"wrote {count} records to {args.output}")
    return 0


def _synonyms(args: argparse.Namespace) -> int:
    """Write the toy language's synonym table."""
    from sicog.toy.synonyms import write_synonyms

    if blocked := _blocked(args.output, folder=False):
        return _error("synonyms", blocked)
    print(f"wrote {write_synonyms(args.output)} canonical phrases to {args.output}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Embed curation texts by the facts they state."""
    from sicog.curate.embed import EncoderSettings
    from sicog.curate.embed_file import read_texts, save_embeddings, sidecar
    from sicog.toy.similarity import ENCODER_NAME, fact_vectors

    try:
        refuse_overwriting([("--texts", args.texts)], "--output", args.output, also=[sidecar(args.output)])
        texts = read_texts(args.texts)
    except ValueError as err:
        return _error("embed", str(err))
    if blocked := _blocked(args.output, folder=False):
        return _error("embed", blocked)
    vectors = fact_vectors(texts, args.task)
    save_embeddings(args.output, vectors, texts, EncoderSettings(name_or_path=f"{ENCODER_NAME}:{args.task}"))
    print(f"{len(texts)} texts as {vectors.shape[1]} facts -> {args.output}")
    return 0


def _build(args: argparse.Namespace) -> int:
    """Build the world, or keep the same one already there."""
    from sicog.data.lock import OutputLocked
    from sicog.toy.build import build_world

    # The folder above --out only: --out itself may be a file, which --force replaces.
    if blocked := _blocked(args.out, folder=False):
        return _error("build", blocked)
    start = time.perf_counter()
    try:
        manifest = build_world(args.out, seed=args.seed, size=args.size, force=args.force)
    except (FileExistsError, OutputLocked) as err:
        return _error("build", str(err))
    except OSError as err:
        # The system names the hidden staging folder beside --out; the user named --out.
        return _error("build", f"{args.out}: cannot be written ({os_error_text(err)})")
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    where = f"seed {manifest['seed']}, size {manifest['size']}, layout {manifest['layout']}"
    print(f"toy world ({where}) in {args.out}: {counts}")
    print(f"tokenizer: {manifest['vocab_size']} tokens; took {time.perf_counter() - start:.1f} s")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "build": _build, "parts": _parts, "references": _references, "synonyms": _synonyms, "embed": _embed,
}


def _error(command: str, message: str) -> int:
    """Print ``message`` as the one error line of ``sicog toy COMMAND``; the exit status of a usage error."""
    print(f"sicog toy {command}: error: {message}", file=sys.stderr)
    return 2


def _blocked(path: str, *, folder: bool) -> str | None:
    """``PATH: reason`` when a file stands where ``path`` (a ``folder``) or a folder above it must be, else None.

    Checked before the work (the parts train for minutes), and naming the file in the way, where mkdir would
    say only "File exists" or "Not a directory" about another path.
    """
    blocked = blocked_reason(path, folder=folder)
    return None if blocked is None else f"{path}: {blocked}"


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (kill, timeout, a batch scheduler's stop) unwinds the command by an exception, so that its cleanup
    runs (the CLIP worker is stopped, staging folders and temporary files are removed; without it the process died
    at once and left both), and then reaches the process as it would have: it dies by SIGTERM (status 143), or
    the handler it had before runs. Raised again rather than left as an exception, because a caller that runs the
    command in-process (the cycle's pool worker) catches SystemExit and would live on, orphaned."""
    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except _Terminated:
        signal.signal(signal.SIGTERM, previous)
        signal.raise_signal(signal.SIGTERM)
        raise  # only when the earlier disposition ignores SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Terminated(SystemExit):
    """SIGTERM arrived while a toy command ran (see :func:`_sigterm_exits`)."""
