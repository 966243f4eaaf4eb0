"""Which row is shown which other picture: the pairing behind the blind baseline (``sicog eval --blind-seed``)
and the swapped images of ``sicog image-use``."""

from __future__ import annotations

import random
from collections.abc import Mapping


def blind_partners(images: Mapping[str, str], seed: int) -> dict[str, str]:
    """For each row index of ``images`` (row index -> :func:`image_keys` digest), the index of the row whose
    image it is shown with, always a different picture. The rows are grouped by picture (groups and rows in a
    seeded order) and each is paired with the row as many places on as the largest group has rows, skipping on
    past rows of its own picture; so while no picture has more than half the rows, every row lends its image
    exactly once. Raises ``ValueError`` when fewer than two distinct pictures exist: a blind score would then
    show rows their own image."""
    if len(set(images.values())) < 2:
        raise ValueError("the blind baseline needs at least two distinct images; this benchmark has "
                         f"{len(set(images.values()))}")
    rng = random.Random(f"sicog-blind/{seed}")
    groups: dict[str, list[str]] = {}
    for index in sorted(images):
        groups.setdefault(images[index], []).append(index)
    keys = sorted(groups)
    rng.shuffle(keys)
    order = []
    for key in keys:
        rng.shuffle(groups[key])
        order += groups[key]
    shift, n = max(len(rows) for rows in groups.values()), len(order)
    partners = {}
    for k, index in enumerate(order):
        j = (k + shift) % n
        while images[order[j]] == images[index]:
            j = (j + 1) % n
        partners[index] = order[j]
    return partners
