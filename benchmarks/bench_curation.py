"""Curation throughput on CPU: candidates embedded per second with the packaged MiniLM, and MBR scoring.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_curation.py [--texts 256] [--batch-sizes 8 32 128] [--repeats 2]

Candidates are synthetic CoD step-5 descriptions of about ``--words`` words (real step-5 texts are
80-200 words). Prints a markdown table; finishes in well under five minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np
import torch

from sicog.curate.embed import EncoderSettings, SentenceEncoder, packaged_minilm_path
from sicog.curate.score import mbr_scores

SUBJECTS = ["a small brown dog", "a red cube", "two children", "an old man", "a white boat", "a green parrot"]
PLACES = ["on a wooden table", "next to a window", "in a snowy street", "under a blue sky", "near a lake"]
DETAILS = ["with a striped pattern", "casting a long shadow", "partly hidden by a plant", "in soft morning light",
           "beside a yellow sign", "with a faded label", "surrounded by scattered leaves"]


def synthetic_caption(rng: random.Random, words: int) -> str:
    """A plausible detailed description of roughly ``words`` words."""
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(f"{rng.choice(SUBJECTS).capitalize()} is {rng.choice(PLACES)}, {rng.choice(DETAILS)}.")
    return " ".join(sentences)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="candidates per measurement")
    parser.add_argument("--words", type=int, default=120, help="approximate words per candidate")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=2, help="runs per batch size (the fastest is reported)")
    parser.add_argument("--records", type=int, default=20000, help="records for the scoring measurement")
    parser.add_argument("--encoder", default=None, help="sentence-transformers model (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu", help="cpu (the recorded numbers) or e.g. cuda")
    args = parser.parse_args()

    rng = random.Random(0)
    texts = [synthetic_caption(rng, args.words) for _ in range(args.texts)]
    start = time.perf_counter()
    encoder = SentenceEncoder(EncoderSettings(args.encoder or packaged_minilm_path(), device=args.device))
    load_s = time.perf_counter() - start
    encoder.encode(texts[:16])  # warm-up: first-call allocations are not throughput
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU {platform.machine()}"
    dtype = next(encoder.model.parameters()).dtype
    print(f"{where}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {dtype} weights, loaded in "
          f"{load_s:.1f} s; {args.texts} candidates of ~{args.words} words\n")
    print(f"| batch size | seconds (best of {args.repeats}) | candidates / s |")
    print("|---:|---:|---:|")
    for batch_size in args.batch_sizes:
        encoder.settings = EncoderSettings(encoder.settings.name_or_path, device=args.device, batch_size=batch_size)
        timings = []
        for _ in range(args.repeats):  # best of several: other processes on a shared machine only slow runs down
            start = time.perf_counter()
            encoder.encode(texts)
            timings.append(time.perf_counter() - start)
        seconds = min(timings)
        print(f"| {batch_size} | {seconds:.2f} | {args.texts / seconds:.1f} |")

    embeddings = np.random.default_rng(0).standard_normal((args.records, 6, encoder.dimension)).astype(np.float32)
    start = time.perf_counter()
    for block in embeddings:
        mbr_scores(block)
    seconds = time.perf_counter() - start
    print(f"\nMBR scoring (6 candidates x {encoder.dimension} dims): {args.records / seconds:,.0f} records / s")


if __name__ == "__main__":
    main()
