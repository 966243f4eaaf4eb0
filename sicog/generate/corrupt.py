"""Image corruptions for noisy reasoning (DPO rejected answers): seeded, deterministic, PIL + numpy.

Each corruption takes an RGB image and a numpy ``Generator`` and returns the corrupted image and the
parameters it drew, so that every generation record can say exactly what was done to its image.
The random stream of a record depends only on the run seed and the record id, never on batching.
As in the release, a record gets one of the listed corruptions, drawn at random (:func:`chosen_methods`);
``apply_all`` applies every listed one in order instead.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Corruption = Callable[[Image.Image, np.random.Generator], tuple[Image.Image, dict]]

# Published settings: blur sigma 3-5; jitter strengths as torchvision's ColorJitter(0.8, 0.8, 0.8, 0.2);
# the mask hides a half-plane of 30% +- 5% of the image.
BLUR_SIGMA = (3.0, 5.0)
JITTER_STRENGTH = 0.8
HUE_STRENGTH = 0.2
MASK_FRACTION = (0.25, 0.35)


def gaussian_blur(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Blur with a Gaussian of standard deviation drawn from 3-5 pixels."""
    sigma = float(rng.uniform(*BLUR_SIGMA))
    return image.filter(ImageFilter.GaussianBlur(radius=sigma)), {"sigma": round(sigma, 4)}


def _rotate_hue(image: Image.Image, turns: float) -> Image.Image:
    """Rotate every colour about the grey axis of RGB space by ``turns`` of a full circle.

    A linear hue rotation (Rodrigues' formula about (1, 1, 1)) keeps greys grey and runs as one PIL
    matrix conversion, an order of magnitude faster than a round trip through HSV.
    """
    theta = 2.0 * math.pi * turns
    cos, sin, third = math.cos(theta), math.sin(theta), 1.0 / 3.0
    axis = math.sqrt(third)
    cross = ((0.0, -axis, axis), (axis, 0.0, -axis), (-axis, axis, 0.0))
    rows = [[cos * (i == j) + sin * cross[i][j] + (1.0 - cos) * third for j in range(3)] for i in range(3)]
    return image.convert("RGB", tuple(v for row in rows for v in (*row, 0.0)))


def color_jitter(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Brightness, contrast and saturation factors in [0.2, 1.8] and a hue rotation of -0.2 to 0.2 turns,
    applied in a random order (the ranges and order of torchvision's ColorJitter(0.8, 0.8, 0.8, 0.2))."""
    low, high = max(0.0, 1.0 - JITTER_STRENGTH), 1.0 + JITTER_STRENGTH
    params = {
        "brightness": float(rng.uniform(low, high)),
        "contrast": float(rng.uniform(low, high)),
        "saturation": float(rng.uniform(low, high)),
        "hue": float(rng.uniform(-HUE_STRENGTH, HUE_STRENGTH)),
    }
    order = [list(params)[i] for i in rng.permutation(len(params))]
    enhancers = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                 "saturation": ImageEnhance.Color}
    for name in order:
        if name == "hue":
            image = _rotate_hue(image, params["hue"])
        else:
            image = enhancers[name](image).enhance(params[name])
    return image, {**{k: round(v, 4) for k, v in params.items()}, "order": order}


def mirror_rotation(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Mirror left-right, then rotate by 90 or 270 degrees (counter-clockwise): width and height swap."""
    degrees = int(rng.choice([90, 270]))
    rotate = Image.Transpose.ROTATE_90 if degrees == 90 else Image.Transpose.ROTATE_270
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(rotate), {"rotation": degrees}


def mask(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, dict]:
    """Fill a half-plane covering 25-35% of the pixels with the mean colour of the pixels it covers.

    The region keeps its average colour and loses its detail, as in the published ``apply_mask``.

    The half-plane's direction is random; its offset is the quantile of the pixels' projections onto
    that direction, so the covered share is exact up to ties and the computation is one vectorised pass.
    """
    array = np.asarray(image.convert("RGB")).copy()
    height, width = array.shape[:2]
    target = float(rng.uniform(*MASK_FRACTION))
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    projection = (xs * math.cos(angle) + ys * math.sin(angle)).ravel()
    n_pixels = projection.size
    n_covered = min(max(int(round(target * n_pixels)), 1), n_pixels)
    threshold = np.partition(projection, n_pixels - n_covered)[n_pixels - n_covered]
    covered = (projection >= threshold).reshape(height, width)
    array[covered] = array[covered].mean(axis=0).round().astype(array.dtype)
    params = {"fraction": round(float(covered.mean()), 4), "angle_degrees": round(math.degrees(angle), 2)}
    return Image.fromarray(array), params


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_blur": gaussian_blur,
    "color_jitter": color_jitter,
    "mirror_rotation": mirror_rotation,
    "mask": mask,
}


def corruption_methods(text: str) -> tuple[str, ...]:
    """``--corrupt``'s methods (argparse type; see :func:`parse_methods`)."""
    try:
        return parse_methods(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_methods(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"gaussian_blur,mask"`` (or a list) -> validated method names; empty or ``"none"`` -> ``()``.

    Quotes and brackets around the names are ignored, so the seed README's ``"gaussian_blur", "color_jitter"``
    and ``["gaussian_blur"]`` read as written.
    """
    if text is None:
        return ()
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(n for n in (p.strip().strip("[]\"' ") for p in parts) if n and n.lower() != "none")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # a second draw or application of one method is no other method (two rotations undo the swap)
        raise ValueError(f"corruption(s) {repeated} given more than once; name each method once")
    return names


def record_rng(seed: int, record_id: str) -> np.random.Generator:
    """The random stream of one record: a function of the run seed and the id only (stable across processes)."""
    digest = hashlib.sha256(str(record_id).encode("utf-8")).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def chosen_methods(methods: Sequence[str], rng: np.random.Generator, apply_all: bool = False) -> tuple[str, ...]:
    """The corruptions of one record: one of ``methods`` drawn from ``rng`` (the release's choice per record),
    or with ``apply_all`` every one of them in order. One listed method is taken without a draw."""
    if apply_all or len(methods) <= 1:
        return tuple(methods)
    return (methods[int(rng.integers(len(methods)))],)


def record_methods(methods: Sequence[str], seed: int, record_id: str, apply_all: bool = False) -> tuple[str, ...]:
    """The corruptions record ``record_id`` gets in a run with ``seed`` (the first draw of its stream)."""
    return chosen_methods(methods, record_rng(seed, record_id), apply_all)


def corrupt(image: Image.Image, methods: Sequence[str], rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """Apply ``methods`` in order to an RGB image; return it with one ``{"method", ...params}`` per method."""
    applied = []
    for name in methods:
        image, params = CORRUPTIONS[name](image.convert("RGB"), rng)
        applied.append({"method": name, **params})
    return image, applied

