"""Opening images of any mode safely: every failure is an `ImageError` that names the file and the cause."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be used (missing, unreadable, truncated, empty)."""


# What Pillow raises for a file it cannot decode: a broken PNG chunk is a SyntaxError.
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _to_rgb(image: Image.Image) -> Image.Image:
    # PIL's convert("RGB") whatever the mode, as the published training and inference code, VLMEvalKit and
    # lmms-eval do: alpha is dropped, not composited (a transparent pixel shows the colour stored under it), and
    # 16- and 32-bit grey clips at 255 rather than being rescaled, so every image gives the release's pixels.
    return image.convert("RGB")


def shown_path(path: str | os.PathLike) -> str:
    """``path`` for a one-line message: as written, or quoted when a character of it would not show (a newline
    would break the line, a trailing space is invisible)."""
    text = str(path)
    return repr(text) if text != text.strip() or not text.isprintable() else text


def check_image_file(path: str | os.PathLike) -> None:
    """Raise :class:`ImageError` unless ``path`` is a file: missing, a folder, or a path the system refuses to look
    up."""
    try:
        if Path(path).is_file():
            return
        folder = Path(path).is_dir()
    except OSError as err:  # is_file() answers False for a missing file but raises for a name over 255 bytes
        raise ImageError(f"cannot read image {shown_path(path)}: {err.strerror or err}") from None
    if folder:
        raise ImageError(f"image path is a folder, not an image file: {shown_path(path)}")
    raise ImageError(f"image file not found: {shown_path(path)}")


def _array_image(array) -> Image.Image:
    """An image given as a numpy array or torch tensor, read as transformers' image processors read one: a
    grey (h, w) array, or channels first or last, floats in [0, 1] or 0-255 integers."""
    from transformers.image_transforms import to_pil_image

    try:
        # A grey (h, w) array as (h, w, 1): to_pil_image then scales floats in [0, 1] as it does in colour.
        return to_pil_image(np.asarray(array)[..., None] if np.ndim(array) == 2 else array)
    except (TypeError, ValueError) as err:
        shape, dtype = tuple(getattr(array, "shape", ())), getattr(array, "dtype", "?")
        raise ImageError(
            f"cannot use the {type(array).__name__} of shape {shape} and dtype {dtype} as an image ({err}): give "
            "(h, w), (h, w, c) or (c, h, w) with floats in [0, 1] or 0-255 integers, or a path or PIL image"
        ) from None


def load_image(source: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
    """Open ``source`` fully (truncated files fail here, not later) and return it as RGB. A numpy array or
    torch tensor is read as transformers' image processors read one."""
    if not isinstance(source, (str, os.PathLike, Image.Image)) and hasattr(source, "shape"):
        source = _array_image(source)
    if isinstance(source, Image.Image):
        image, name = source, "<in-memory image>"
    else:
        name = shown_path(source)
        check_image_file(source)
        try:
            image = Image.open(source)
            image.load()
        except DECODE_ERRORS as err:
            raise ImageError(f"cannot read image {name}: {err}") from None
    if image.width == 0 or image.height == 0:
        raise ImageError(f"image {name} has zero size ({image.width}x{image.height})")
    try:
        return _to_rgb(image)
    except (OSError, ValueError) as err:
        raise ImageError(f"cannot convert image {name} (mode {image.mode}) to RGB: {err}") from None
