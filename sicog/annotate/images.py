"""Images as ``data:`` URLs for the chat API, with the MIME type of the actual bytes."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats every OpenAI-compatible vision endpoint accepts as they are; others are re-encoded to PNG.
API_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
_PNG_MODES = frozenset({"1", "L", "LA", "I", "P", "RGB", "RGBA"})


class ImageLoadError(ValueError):
    """An image file that is missing or that Pillow cannot read."""


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
            mime = image.get_format_mimetype()
            if mime not in API_MIME_TYPES:
                if image.mode not in _PNG_MODES:
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
