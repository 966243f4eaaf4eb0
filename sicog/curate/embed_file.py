"""Embed a file of texts in any environment: the embedding half of curation, run apart from the scoring.

NV-Embed-v2 (the paper's encoder) runs only with the transformers version its remote code was written
for (4.42), which this package does not use. Curation therefore splits in three:

    sicog curate texts captions --input generated.jsonl --output texts.jsonl            # here
    python -m sicog.curate.embed_file --texts texts.jsonl --output embeddings.npy \\
        --encoder /models/NV-Embed-v2 --trust-remote-code --append-eos --padding-side right \\
        --max-length 1024 --dtype float32            # NV-Embed's env, as the paper's captions were encoded
    sicog curate captions --input generated.jsonl --embeddings embeddings.npy --output-dir curated/  # here

This module needs only numpy, sentence-transformers and the standard library (the parts of SICOG it
imports need nothing else), so in the encoder's environment it runs from a checkout
(``PYTHONPATH=/path/to/sicog``) without installing SICOG. Beside the array it writes ``<output>.json``:
the texts' hash and the encoder settings, which scoring checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sicog.curate.embed import EncoderNotFound, EncoderSettings
from sicog.curate.embedding_store import DEFAULT_CHUNK_SIZE, embed_texts, texts_digest
from sicog.data.argtypes import positive_int
from sicog.data.jsonl import (
    RecordError,
    atomic_file,
    blocked_reason,
    iter_records,
    refuse_overwriting,
    write_json,
)
from sicog.data.lock import OutputLocked, output_lock
from sicog.data.sharding import process_group, rank_and_world
from sicog.model.device import DTYPES


def read_texts(path: str | os.PathLike) -> list[str]:
    """The ``text`` of every record of a texts file (as written by ``sicog curate texts``: JSON Lines, or a JSON
    array). A problem raises :class:`RecordError` naming the file and line (JSON that does not parse, text that
    is not UTF-8, a record without a string ``text``)."""
    texts = []
    for line, record in iter_records(path):
        if not isinstance(record.get("text"), str):
            raise RecordError("expected an object with a string field 'text'", path=path, line=line, field="text")
        texts.append(record["text"])
    return texts


def sidecar(path: str | os.PathLike) -> Path:
    """The JSON file that describes an embeddings file."""
    return Path(f"{path}.json")


def save_embeddings(
    path: str | os.PathLike, vectors: np.ndarray, texts: Sequence[str], settings: EncoderSettings,
    truncated: tuple[int, int | None] | None = None,
) -> None:
    """Write the array, then its description, each atomically, after removing the old description.

    A description vouches for the array beside it, so it goes first and comes back last: a run killed in
    between (the array of 1M NV-Embed vectors takes minutes to write) leaves an array without a description,
    which :func:`load_embeddings` refuses, never a description of other texts beside an array it does not
    describe.
    """
    description = {"texts": len(texts), "texts_sha256": texts_digest(texts), "encoder": asdict(settings)}
    if truncated is not None:  # how many texts the encoder cut, at how many tokens (curation reports it)
        description["truncated"] = {"truncated": truncated[0], "max_tokens": truncated[1]}
    sidecar(path).unlink(missing_ok=True)
    with atomic_file(path, "wb") as handle:
        np.save(handle, vectors.astype(np.float32))
    write_json(sidecar(path), description)


def load_embeddings(path: str | os.PathLike, texts: Sequence[str]) -> tuple[np.ndarray, dict]:
    """The embeddings of ``texts`` from a file written by this module, checked against the texts.

    A problem raises ``ValueError``, one line naming the ``.npy`` or its description (``<path>.json``) and what
    is wrong: either missing, a description that is no JSON object with the texts' hash and the encoder's
    settings, an array of other texts, of another shape (or of vectors with no numbers), with a NaN or infinite
    value, or no array of numbers at all.
    """
    path = Path(path)
    if not path.is_file() or not sidecar(path).is_file():
        raise ValueError(f"{path}: no embeddings file with its description ({sidecar(path).name}) there")
    description = _read_description(sidecar(path))
    if description["texts_sha256"] != texts_digest(texts):
        raise ValueError(f"{path}: embeddings of other texts ({description.get('texts')} texts); write the texts "
                         "again with `sicog curate texts` from this input and embed them again")
    vectors = _read_vectors(path)
    if vectors.ndim != 2 or len(vectors) != len(texts) or vectors.shape[1] == 0:
        raise ValueError(f"{path}: shape {vectors.shape}, expected {len(texts)} rows of one or more numbers")
    _check_finite(vectors, path)
    return vectors, description


def _check_finite(vectors: np.ndarray, path: Path, rows: int = 8192) -> None:
    """``ValueError`` naming the first row of ``vectors`` with a NaN or infinite value: its similarities would be NaN,
    which no threshold keeps or drops for a reason. Read ``rows`` at a time: the array may be larger than memory."""
    for start in range(0, len(vectors), rows):
        finite = np.isfinite(vectors[start:start + rows]).all(axis=1)
        if not finite.all():
            raise ValueError(f"{path}: row {start + int(np.argmin(finite))} holds a NaN or infinite value (an encoder "
                             "that overflowed: embed the texts again, e.g. with --dtype float32)")


def _read_description(path: Path) -> dict:
    """The description in ``path`` (see :func:`save_embeddings`); ``ValueError`` naming the file, and the field,
    when it is not one. Curation records the encoder settings from it, so they are checked here too."""
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(description, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(description).__name__}")
    digest, encoder = description.get("texts_sha256"), description.get("encoder")
    if not isinstance(digest, str):
        raise ValueError(f"{path}: field 'texts_sha256': expected the texts' hash (a string), got {json.dumps(digest)}")
    if not isinstance(encoder, dict):
        raise ValueError(f"{path}: field 'encoder': expected an object of encoder settings, got {json.dumps(encoder)}")
    try:
        EncoderSettings(**encoder)
    except (TypeError, ValueError) as err:  # a setting unknown, missing or out of range
        raise ValueError(f"{path}: field 'encoder': {err}") from None
    return description


def _read_vectors(path: Path) -> np.ndarray:
    """The array of numbers in the ``.npy`` file ``path``, memory-mapped; ``ValueError`` naming the file when it
    holds none. Without the header check numpy takes any other file for pickled objects and says so."""
    with path.open("rb") as handle:
        if handle.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise ValueError(f"{path}: not a .npy file (no NumPy array header)")
    try:
        vectors = np.load(path, mmap_mode="r")
    except (ValueError, EOFError) as err:  # a cut file, an array of Python objects
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    if not (np.issubdtype(vectors.dtype, np.floating) or np.issubdtype(vectors.dtype, np.integer)):
        raise ValueError(f"{path}: holds {vectors.dtype.name} values, not numbers (expected float32 embeddings)")
    return vectors


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sicog.curate.embed_file``."""
    parser = argparse.ArgumentParser(prog="python -m sicog.curate.embed_file", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", required=True, help="texts file from `sicog curate texts`")
    parser.add_argument("--output", required=True, help="embeddings .npy (its description goes to <output>.json)")
    parser.add_argument("--encoder", required=True, help="sentence-transformers model directory or hub id")
    parser.add_argument("--batch-size", type=positive_int, default=EncoderSettings.batch_size)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--max-length", type=positive_int)
    parser.add_argument("--query-prefix", default=EncoderSettings.query_prefix)
    parser.add_argument("--append-eos", action="store_true")
    parser.add_argument("--padding-side", choices=("left", "right"))
    parser.add_argument("--dtype", choices=DTYPES)
    parser.add_argument("--device")
    parser.add_argument("--chunk-size", type=positive_int, default=DEFAULT_CHUNK_SIZE,
                        help="texts per resumable chunk, which is also how torchrun ranks share the work")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Embed ``--texts`` into ``--output`` (``python -m sicog.curate.embed_file --help``); under torchrun the ranks
    share the chunks (each on its own GPU) and rank 0 writes the output."""
    args = build_parser().parse_args(argv)
    rank, world = rank_and_world()
    try:
        # One run per output: two would embed the same chunks and each remove the other's folder of them.
        with output_lock(args.output, enabled=rank == 0):
            return _embed(args, rank, world)
    except OutputLocked as err:
        print(f"embed_file: error: {err}", file=sys.stderr)
        return 2


def _embed(args: argparse.Namespace, rank: int, world: int) -> int:
    """:func:`main`'s work, under the output's lock."""
    try:
        refuse_overwriting([("--texts", args.texts)], "--output", args.output, also=[sidecar(args.output)])
        _check_output(Path(args.output))
        texts = read_texts(args.texts)
        settings = EncoderSettings(
            name_or_path=args.encoder, trust_remote_code=args.trust_remote_code, max_length=args.max_length,
            query_prefix=args.query_prefix, append_eos=args.append_eos, padding_side=args.padding_side,
            dtype=args.dtype, device=args.device, batch_size=args.batch_size,
        )
        # Chunk files beside the output, each saved as it is done, with a progress bar: a run killed after
        # hours (1M texts through NV-Embed) resumes from its last chunk instead of starting again.
        chunks = chunk_folder(args.output)
        with process_group(world):
            store = embed_texts(texts, settings, chunks, rank=rank, world=world, chunk_size=args.chunk_size)
        if store is None:  # another rank than 0: its chunks are saved
            return 0
        vectors = store.all()
    except (OSError, ValueError, EncoderNotFound) as err:
        print(f"embed_file: error: {err}", file=sys.stderr)
        return 2
    save_embeddings(args.output, vectors, texts, settings, truncated=store.truncated())
    shutil.rmtree(chunks)
    print(f"{len(texts)} embeddings of dimension {vectors.shape[1]} -> {args.output}")
    return 0


def chunk_folder(output: str | os.PathLike) -> Path:
    """Where the embeddings of ``output`` are kept chunk by chunk until it is written."""
    return Path(f"{output}.chunks")


def _check_output(output: Path) -> None:
    """Refuse, before any text is embedded, an ``--output`` that could not be written at the end."""
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give the path of a .npy file")
    if blocked := blocked_reason(output, folder=False):
        raise ValueError(f"--output {output} {blocked}")


if __name__ == "__main__":
    sys.exit(main())
