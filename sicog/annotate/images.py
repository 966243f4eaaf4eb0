"""Images as ``data:`` URLs for the chat API, with the MIME type of the actual bytes."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats every OpenAI-compatible vision endpoint accepts as they are; others are re-encoded to PNG.
API_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})
# Grey levels wider than 8 bits (16-bit and 32-bit integers, floats): converting them to RGB clips every value
# above 255, and a 16-bit scan comes out nearly white.
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


class ImageLoadError(ValueError):
    """An image file that is missing or that Pillow cannot read."""


def _eight_bit(image: Image.Image) -> Image.Image:
    """A wide grey image as 8-bit grey: 16-bit levels scaled from their full range, other modes (32-bit
    integers, floats, with no fixed range) stretched from their darkest to their lightest value."""
    levels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        low, high = float(levels.min()), float(levels.max())
    scaled = (levels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(levels)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def image_data_url(path: str | os.PathLike) -> str:
    """``data:<mime>;base64,...`` for ``path``.

    The MIME type comes from the file's content, not its name (datasets often save JPEG bytes under
    ``.png``); formats the API does not take (BMP, TIFF, ...) are re-encoded to PNG.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ImageLoadError(f"cannot read image {str(path)!r}: {err.strerror or err}") from None
    except ValueError as err:
        # The OS refuses some paths before opening them (an embedded NUL byte): still this record's failure.
        raise ImageLoadError(f"cannot read image {str(path)!r}: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # A camera JPEG with a multi-picture extension (MPO) is a JPEG, its first picture what decoders show.
            mime = "image/jpeg" if image.format == "MPO" else image.get_format_mimetype()
            if mime not in API_MIME_TYPES:
                if image.mode in _WIDE_MODES:
                    image = _eight_bit(image)
                elif image.mode not in _PNG_MODES:
                    image = image.convert("RGB")
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                data, mime = buffer.getvalue(), "image/png"
            else:
                # Decode fully now so a truncated file fails here, not at the server.
                image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
        raise ImageLoadError(f"not a readable image {str(path)!r}: {err}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
