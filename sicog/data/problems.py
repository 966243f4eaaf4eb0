"""Records that cannot be used, and why: the problems training, DPO, ``data check`` and eval's image-use check
report, each naming its record's file, line, id and field; and the full decode of images that finds the files a
header does not show to be broken."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from tqdm.auto import tqdm

from sicog.data.jsonl import RecordError
from sicog.data.mixture import Source
from sicog.data.schema import record_images, resolve_image, valid_image_field
from sicog.model.image_io import ImageError, load_image

#: The category of a sample longer than training's --max-length, which training skips.
TOO_LONG = "too long"


@dataclass(frozen=True)
class Problem:
    """A record that cannot be trained on (or, for ``data check``, one worth a look), and why.

    ``reason`` names the record's location (file:line, id, field) and the cause; ``category`` is a short kind
    ("missing image", "empty answer", "too long", ...) by which summaries group problems; ``field`` is the
    field at fault, when one is.
    """

    id: str | None
    source: Source
    reason: str
    category: str = "invalid record"
    field: str | None = None

    @property
    def message(self) -> str:
        """``reason`` led by the record's location, once: a reason from a :class:`RecordError` names it already."""
        if self.reason.startswith(f"{self.source.path}:{self.source.line}"):
            return self.reason
        return f"{self.source.path}:{self.source.line} id={self.id!r}: {self.reason}"

    def to_json(self) -> dict:
        """The line written to an errors or skipped file."""
        return {"id": self.id, "file": self.source.path, "line": self.source.line, "field": self.field,
                "category": self.category, "reason": self.message}


class ImageProblem(ValueError):
    """An image a record names that cannot be used; ``category`` says how (missing, unreadable, zero size)."""

    def __init__(self, message: str, category: str) -> None:
        super().__init__(message)
        self.category = category


def default_decode_workers() -> int:
    """Threads that decode images for ``data check`` (Pillow decodes outside the GIL): one per core, at most 8,
    beyond which the disk, not the decoding, sets the pace."""
    return min(8, os.cpu_count() or 1)


def decode_failures(paths: Iterable[Path], *, workers: int, show_progress: bool = True) -> dict[Path, str]:
    """Decode every image in full, as training's loader does; the reason of each that fails, by path.

    A header can be whole while the pixels are cut off (a truncated download): only decoding finds it.
    """
    paths = list(dict.fromkeys(paths))

    def failure(path: Path) -> str | None:
        try:
            load_image(path)
        except ImageError as err:
            return str(err)
        return None

    failures: dict[Path, str] = {}
    progress = tqdm(total=len(paths), desc="decoding images", unit="image", disable=not show_progress)
    with ThreadPoolExecutor(max_workers=workers) as pool, progress:
        # Submitted in slices, so that a million images do not make a million pending futures at once.
        pending = iter(paths)
        while batch := list(islice(pending, 64 * workers)):
            for path, reason in zip(batch, pool.map(failure, batch)):
                if reason is not None:
                    failures[path] = reason
            progress.update(len(batch))
    return failures


def undecodable_images(loaded: Iterable[tuple[object, Source]], image_folder, *, workers: int,
                       show_progress: bool = True) -> dict[Path, str]:
    """Decode in full every image the ``loaded`` records name (see :func:`decode_failures`); the reason of each
    that fails, by path."""
    paths = (resolve_image(name, image_folder) for record, _ in loaded
             if isinstance(record, dict) and valid_image_field(record.get("image")) for name in record_images(record))
    return decode_failures(paths, workers=workers, show_progress=show_progress)


def undecodable_problem(record: dict, source: Source, image_folder, undecodable: dict[Path, str]) -> Problem | None:
    """The problem of a record naming an image of ``undecodable`` (from :func:`undecodable_images`), if any."""
    bad = [undecodable[path] for path in (resolve_image(n, image_folder) for n in record_images(record))
           if path in undecodable]
    return located_problem(record.get("id"), source, bad[0], "unreadable image", "image") if bad else None


def located_problem(rid: object, source: Source, message: str, category: str, field: str | None) -> Problem:
    """A problem whose reason names the record's file, line, id and field, as a schema error's does."""
    error = RecordError(message, path=source.path, line=source.line, record_id=rid, field=field)
    return Problem(rid, source, str(error), category, field)
