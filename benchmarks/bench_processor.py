"""Image preprocessing throughput: slicing + normalisation through `SicogProcessor`, with DataLoader workers.

The processor has the published geometry (CLIP-ViT-L/14-336 patches, 336-pixel slices, up to 7
slices, 144 queries per view); images are JPEG files of common photo sizes, decoded from disk as in
training. Two measurements, each with ``num_workers`` 0, 1 and 2:

- ``image``: ``SicogProcessor.process_image`` (decode, slice, resize, normalise into tensors);
- ``sample``: a whole training sample through ``SupervisedDataset`` (the above + chat template,
  tokenisation, label masking) and the training collator.

    .venv/bin/python benchmarks/bench_processor.py                  # < 2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_processor.py --images 384 --workers 0 2 4 8

Prints a markdown table (wall and CPU seconds, each the best of ``--repeats`` passes over the images);
``--json FILE`` writes it too. CPU seconds are user+sys of this process and of its DataLoader workers
(``cpu_time.py``, scope ``process+children``: ``RUSAGE_CHILDREN`` counts the workers, which end with each pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from cpu_time import Scope, stopwatch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPVisionConfig

from sicog.data.jsonl import write_jsonl
from sicog.model.builders import make_config, tiny_text_config
from sicog.model.configuration import CLIP_L14_336
from sicog.model.modeling import flatten_views
from sicog.model.processing import SicogProcessor
from sicog.toy.tokenizer import train_tokenizer
from sicog.train.datasets import SupervisedCollator, SupervisedDataset

# Common photo sizes (width, height): no slicing, 2x2, 3x2, 4x2 grids and a portrait.
SIZES = ((336, 336), (640, 480), (1024, 768), (1280, 720), (1920, 1080), (800, 1200))
# What the CPU seconds count: this process and its DataLoader workers (children, reaped at the end of each pass).
CPU_SCOPE: Scope = "process+children"
CAPTION = "A red bus is parked next to a small green kiosk on a sunny street, with two people waiting."


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG photos-like images (smooth colour fields plus noise, which JPEG does not compress away)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * rng.uniform(0.3, 1.0, size=3)
        pixels = np.clip(ramp + rng.normal(0, 25, size=(height, width, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def build_processor() -> SicogProcessor:
    """A processor with the published image geometry around a small in-process tokenizer."""
    tokenizer = train_tokenizer([CAPTION] * 20, vocab_size=400)
    config = make_config(CLIPVisionConfig(**CLIP_L14_336), tiny_text_config(len(tokenizer)), tokenizer)
    return SicogProcessor.from_config(tokenizer, config)


class ImageViews(Dataset):
    """``process_image`` of each path: the views (tensors) and placeholder ids."""

    def __init__(self, processor: SicogProcessor, paths: list[Path]) -> None:
        self.processor = processor
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        return self.processor.process_image(self.paths[index])


def count_views(batch) -> int:
    """Views in a batch of either measurement."""
    if isinstance(batch, dict):
        return len(flatten_views(batch.get("pixel_values", []))[0])
    return sum(len(flatten_views(views)[0]) for views, _ in batch)


def timed_pass(dataset: Dataset, collate, workers: int, batch_size: int) -> tuple[float, float, int]:
    """Wall seconds and CPU seconds (this process and its workers) for one pass over ``dataset`` (worker
    start-up included), and the views it made."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    with stopwatch(scope=CPU_SCOPE) as clock:
        iterator = iter(loader)
        views = sum(count_views(batch) for batch in iterator)
        # The exhausted iterator has joined its workers (no persistent_workers), so their CPU time is counted.
        del iterator
    return clock.wall_s, clock.cpu_s, views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96, help="images per pass (sizes cycle through SIZES)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers values")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every setting; the fastest pass counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # preprocessing is PIL and NumPy work; workers add processes, not threads
    processor = build_processor()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_images(root / "images", args.images)
        records = [{"id": str(i), "image": p.name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": CAPTION}]}
            for i, p in enumerate(paths)]
        write_jsonl(root / "data.jsonl", records)
        samples = SupervisedDataset(root / "data.jsonl", processor, image_folder=root / "images", max_length=8192,
                                    show_progress=False)
        measurements = {
            "image": (ImageViews(processor, paths), list),
            "sample": (samples, SupervisedCollator(processor)),
        }
        best: dict[tuple[str, int], list[float]] = {}  # (wall, CPU, views)
        # Rounds interleave the settings, so a burst of load from other processes hits all of them alike.
        for _ in range(args.repeats):
            for name, (dataset, collate) in measurements.items():
                for workers in args.workers:
                    seconds, cpu, views = timed_pass(dataset, collate, workers, args.batch_size)
                    previous = best.get((name, workers), [float("inf"), float("inf"), views])
                    best[name, workers] = [min(previous[0], seconds), min(previous[1], cpu), views]
        for (name, workers), (seconds, cpu, views) in best.items():
            runs.append({"measurement": name, "workers": workers, "seconds": seconds, "cpu_s": cpu,
                         "images": args.images, "views": views, "images_per_s": args.images / seconds,
                         "views_per_s": views / seconds, "images_per_cpu_s": args.images / cpu})

    print(f"CPU {platform.machine()}, {os.cpu_count()} cores; {args.images} JPEG images of {len(SIZES)} sizes "
          f"({', '.join(f'{w}x{h}' for w, h in SIZES)}); batch {args.batch_size}; wall and CPU seconds each the best "
          f"of {args.repeats} passes, CPU = user+sys of this process and its workers\n")
    print("| measurement | workers | wall s | CPU s | images / s | views / s | images / CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['measurement']} | {run['workers']} | {run['seconds']:.2f} | {run['cpu_s']:.2f} | "
              f"{run['images_per_s']:.1f} | {run['views_per_s']:.1f} | {run['images_per_cpu_s']:.1f} |")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        args.json.write_text(json.dumps({"settings": settings, "runs": runs}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
