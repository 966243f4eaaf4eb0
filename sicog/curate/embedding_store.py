"""Embedding many texts once: resumable chunk files, sharded over torchrun ranks, read back memory-mapped.

The unique texts are cut into fixed chunks; rank r of w embeds chunks r, r+w, ... and saves each one
atomically as ``chunk-NNNNNN.npy`` in a directory named by a hash of the texts and the encoder
settings. A rerun (after a crash, or with another threshold) skips the chunks already there, and the
chunk split does not depend on the number of ranks. Rank 0 then reads every chunk memory-mapped, so
the scorer never holds all embeddings in memory at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sicog.curate.embed import EncoderSettings, SentenceEncoder
from sicog.data.jsonl import atomic_file, write_json
from sicog.data.sharding import shard

DEFAULT_CHUNK_SIZE = 1024


def texts_digest(texts: Sequence[str]) -> str:
    """A hash of the texts and their order (what an embeddings file or chunk folder is valid for); each text's
    length goes in first, so that texts cut at other places never hash alike."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()


def cache_key(texts: Sequence[str], settings: EncoderSettings, chunk_size: int) -> str:
    """A hash of everything that determines the chunk files' contents."""
    identity = json.dumps([settings.identity(), chunk_size, texts_digest(texts)], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def _chunk_path(directory: Path, index: int) -> Path:
    return directory / f"chunk-{index:06d}.npy"


def _counts_path(directory: Path, index: int) -> Path:
    """Beside a chunk: how many of its texts the encoder cut (written before the chunk, which marks it done)."""
    return directory / f"chunk-{index:06d}.json"


def truncation(counts: object) -> tuple[int, int | None] | None:
    """``(texts the encoder cut, the tokens it reads)`` from a ``{"truncated", "max_tokens"}`` record (a chunk's, or
    an embeddings file's description); None when there is none."""
    if not isinstance(counts, dict) or not isinstance(counts.get("truncated"), int):
        return None
    return counts["truncated"], counts.get("max_tokens")


def _load_chunk(path: Path) -> np.ndarray:
    """A chunk file, memory-mapped; ``ValueError`` naming it when it is damaged (written whole, it can only have
    been damaged since)."""
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable embedding chunk ({error}); delete it to embed its texts again") \
            from None


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_file(path, "wb") as handle:
        np.save(handle, array)


class EmbeddingStore:
    """Rows of the embedding matrix of all unique texts, read from memory-mapped chunk files."""

    def __init__(self, directory: Path, n_texts: int, chunk_size: int) -> None:
        self.directory = directory
        self.chunk_size = chunk_size
        n_chunks = -(-n_texts // chunk_size)
        self._chunks = [_load_chunk(_chunk_path(directory, k)) for k in range(n_chunks)]
        for k, chunk in enumerate(self._chunks):
            expected = min(chunk_size, n_texts - k * chunk_size)
            if chunk.ndim != 2 or len(chunk) != expected:
                raise ValueError(f"{_chunk_path(directory, k)} has shape {chunk.shape}, expected {expected} rows")

    def truncated(self) -> tuple[int, int | None] | None:
        """``(texts longer than the encoder reads, that limit)`` over every chunk; None when a chunk was made
        without its count."""
        counts = []
        for k in range(len(self._chunks)):
            try:
                counts.append(truncation(json.loads(_counts_path(self.directory, k).read_text(encoding="utf-8"))))
            except (OSError, ValueError):
                return None
        if None in counts:
            return None
        return sum(cut for cut, _ in counts), max(filter(None, (limit for _, limit in counts)), default=None)

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """The embeddings of the texts at ``indices`` (a new float32 array)."""
        return np.stack([self._chunks[i // self.chunk_size][i % self.chunk_size] for i in indices]).astype(np.float32)

    def all(self) -> np.ndarray:
        """Every text's embedding, in order (a new float32 array; no rows, and no columns, for no texts)."""
        if not self._chunks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self._chunks).astype(np.float32)


class ArrayStore:
    """Rows of an embedding matrix computed elsewhere (``python -m sicog.curate.embed_file``)."""

    directory = None  # nothing of it to clean up

    def __init__(self, vectors: np.ndarray, truncated: tuple[int, int | None] | None = None) -> None:
        self.vectors = vectors
        self._truncated = truncated

    def truncated(self) -> tuple[int, int | None] | None:
        """As :meth:`EmbeddingStore.truncated`, from the embeddings' description (None: it does not say)."""
        return self._truncated

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """The embeddings of the texts at ``indices`` (a new float32 array)."""
        return np.asarray(self.vectors[list(indices)], dtype=np.float32)


def embed_texts(
    texts: Sequence[str],
    settings: EncoderSettings,
    cache_root: Path,
    *,
    rank: int = 0,
    world: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encoder_factory: Callable[[EncoderSettings], SentenceEncoder] = SentenceEncoder,
) -> EmbeddingStore | None:
    """Embed ``texts`` (this rank's chunks), wait for every rank, and return the store on rank 0.

    Other ranks return ``None``. The encoder is loaded only when this rank has chunks left to embed.
    """
    if chunk_size < 1:
        raise ValueError("chunk size must be at least 1")
    directory = Path(cache_root) / cache_key(texts, settings, chunk_size)
    directory.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        manifest = {"encoder": settings.identity(), "texts": len(texts), "chunk_size": chunk_size}
        write_json(directory / "manifest.json", manifest)
    n_chunks = -(-len(texts) // chunk_size)
    todo = [k for k in shard(range(n_chunks), rank, world) if not _chunk_path(directory, k).exists()]
    if todo:
        encoder = encoder_factory(settings)
        total = sum(len(texts[k * chunk_size : (k + 1) * chunk_size]) for k in todo)
        with tqdm(total=total, unit="text", desc=f"embedding (rank {rank}/{world})", position=rank) as bar:
            for k in todo:
                part = texts[k * chunk_size : (k + 1) * chunk_size]
                write_json(_counts_path(directory, k), {"truncated": encoder.truncated(part),
                                                        "max_tokens": encoder.max_tokens})
                _save_array(_chunk_path(directory, k), encoder.encode(part))
                bar.update(len(part))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank != 0:
        return None
    return EmbeddingStore(directory, len(texts), chunk_size)
