"""Batch sizes: the evaluation commands' defaults, and lmms-eval's ``batch_size`` (N, ``auto`` or ``auto:N``), read
one way by ``sicog eval-suite`` (which checks it before the framework starts) and by the SICOG model inside
lmms-eval. No torch, no lmms-eval."""

from __future__ import annotations

# Rows per generate call of `sicog eval`, and records per forward pass of `sicog image-use`.
EVAL_BATCH_SIZE = 8
IMAGE_USE_BATCH_SIZE = 16

# The first batch size tried with batch_size=auto when max_batch_size does not say (lm-eval's default too).
AUTO_BATCH_START = 64


def parse_batch_size(batch_size: int | str | None, max_batch_size: int | str | None = None) -> tuple[int, bool]:
    """``(requests per generate call, whether that number halves on out-of-memory)`` from lmms-eval's
    ``batch_size`` (N, ``auto`` or ``auto:N``) and ``max_batch_size``; ``ValueError`` for anything else.

    ``auto`` starts at ``max_batch_size`` (default :data:`AUTO_BATCH_START`) and keeps the largest size
    that fitted; lm-eval's ``auto:N`` (re-detect N times) is read as ``auto``, which already adapts.
    """
    text = str(1 if batch_size is None else batch_size).strip().lower()
    head, colon, tries = text.partition(":")
    auto = head == "auto" and (not colon or tries.isdigit())
    try:
        size = (AUTO_BATCH_START if max_batch_size is None else int(max_batch_size)) if auto else int(text)
        if not auto and max_batch_size is not None:
            size = min(size, int(max_batch_size))
    except ValueError:
        raise ValueError(f"batch_size must be N, auto or auto:N, got {batch_size!r}") from None
    if size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size!r} (max_batch_size {max_batch_size!r})")
    return size, auto
