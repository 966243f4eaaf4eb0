"""Images as ``data:`` URLs for the chat API: the pixels training reads, with the MIME type of the bytes sent."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

from PIL import Image

from sicog.model.image_io import DECODE_ERRORS, ImageError, load_image

# Formats every OpenAI-compatible vision endpoint accepts as they are.
API_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
# Modes every decoder turns into the RGB pixels PIL's convert("RGB") gives (training's, see sicog.model.image_io).
_AS_STORED_MODES = frozenset({"RGB", "L", "P"})
_ORIENTATION = 0x0112  # the EXIF tag a viewer (and some endpoints, vLLM's among them) turns a photo by


class ImageLoadError(ValueError):
    """An image file that is missing or that Pillow cannot read."""


def _sent_as_stored(image: Image.Image, mime: str) -> bool:
    """Whether the endpoint, decoding the file's own bytes, sees the pixels training reads: an API format, no alpha
    (training drops it, a viewer composites it), one picture (a camera JPEG's extra pictures aside), no EXIF turn
    (training, like the published code, uses pixels as stored)."""
    return (mime in API_MIME_TYPES and image.mode in _AS_STORED_MODES and "transparency" not in image.info
            and (image.format == "MPO" or getattr(image, "n_frames", 1) == 1)
            and image.getexif().get(_ORIENTATION, 1) == 1)


def image_data_url(path: str | os.PathLike) -> str:
    """``data:<mime>;base64,...`` for ``path``: the CoD caption describes what the trained model will see.

    The file's bytes when any decoder shows them as training reads them (:func:`_sent_as_stored`), with the MIME
    type of their content, not of the name (datasets often save JPEG bytes under ``.png``); a JPEG turned by EXIF
    as the same JPEG without the tag; otherwise the RGB pixels training reads
    (:func:`sicog.model.image_io.load_image`), as PNG: BMP, TIFF, CMYK, alpha, wide grey levels (clipped at 255,
    as training clips them), animations (their first frame).
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
            image.load()  # decoded in full now: a truncated file fails here, not at the server
            if not _sent_as_stored(image, mime):
                buffer = io.BytesIO()
                if image.format == "JPEG" and image.mode in _AS_STORED_MODES:
                    # Only its EXIF turn kept it out: the same JPEG without the tag, on its own quantisation tables
                    # (as the published annotation re-saves it), not a PNG six times larger.
                    image.save(buffer, format="JPEG", quality="keep", subsampling="keep")
                else:
                    load_image(image).save(buffer, format="PNG")
                    mime = "image/png"
                data = buffer.getvalue()
    except (*DECODE_ERRORS, ImageError) as err:
        raise ImageLoadError(f"not a readable image {str(path)!r}: {err}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
