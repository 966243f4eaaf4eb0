"""Reference answers for `sicog image-use` on the toy world: the caption benchmark's images with their
true descriptions (how much worse a model predicts them with swapped images says whether it looks)."""

from __future__ import annotations

import os
from pathlib import Path

from sicog.data.jsonl import RecordError, iter_records, refuse_overwriting, write_records
from sicog.data.prompts import CAPTION_PROMPTS, user_turn
from sicog.toy.build import FILES, MANIFEST, load_manifest
from sicog.toy.score import load_ground_truth


def write_image_use_references(world: str | os.PathLike, output: str | os.PathLike) -> int:
    """Write one LLaVA record per caption-benchmark image, answered by its ground-truth description.

    ``ValueError`` before anything is written when ``output`` is one of the world's files (its ground truth, say),
    which the output would replace."""
    manifest = load_manifest(world)
    read = [(f"the world's {key}", manifest[key]) for key in FILES]
    refuse_overwriting([*read, ("the world's manifest", Path(world) / MANIFEST)], "--output", output)
    truth = load_ground_truth(manifest["ground_truth"])
    request = user_turn(CAPTION_PROMPTS["default"])

    def reference(line: int, record: dict) -> dict:
        image = record["image"]
        if image not in truth:
            raise RecordError(f"image {image!r} is not in {manifest['ground_truth']}",
                              path=manifest["bench_caption"], line=line, record_id=record.get("id"), field="image")
        return {"id": record["id"], "image": image, "conversations": [
            {"from": "human", "value": request}, {"from": "gpt", "value": truth[image]["description"]}]}

    return write_records(output, (reference(line, record) for line, record in iter_records(manifest["bench_caption"])))
