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


def resolve_image(image: str, image_folder: str | os.PathLike | None, *, allow_outside: bool = False) -> Path:
    """The image path: ``image`` under ``image_folder`` (the working folder when None), or ``image`` itself
    when absolute.

    Unless ``allow_outside``, a path that leads out of the folder (``../``, an absolute path elsewhere)
    raises :class:`ImageLoadError`: the image is sent to a remote API, and a record must not be able to
    send any readable file of the machine. The check is on the path as written (symbolic links that the
    user placed inside the folder are followed as usual).
    """
    path = Path(image)
    full = path if path.is_absolute() or image_folder is None else Path(image_folder) / path
    if not allow_outside:
        folder = os.path.abspath(image_folder if image_folder is not None else os.curdir)
        target = os.path.normpath(os.path.join(folder, full))
        if os.path.commonpath([folder, target]) != folder:
            raise ImageLoadError(
                f"image path {image!r} leads outside the image folder {folder!r}; "
                "pass --allow-outside-images to allow paths outside it"
            )
    return full


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
