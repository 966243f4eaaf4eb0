"""Curation throughput on CPU: candidates embedded per second with the packaged MiniLM, and MBR scoring.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_curation.py [--texts 256] [--batch-sizes 8 32 128] [--repeats 2]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_curation.py --threads 1 2   # both thread counts, one run

Candidates are synthetic CoD step-5 descriptions of about ``--words`` words (real step-5 texts are
80-200 words). ``--threads`` sets torch's thread count (default: torch's own); with several values,
every round runs each batch size at each thread count in turn, so load from other processes hits them
alike. Prints a markdown table of wall and CPU seconds (user+sys of this process, all its threads;
each the best of ``--repeats`` rounds) and rates; ``--json FILE`` writes them too. Finishes in well
under five minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time

import numpy as np
import torch
from cpu_time import stopwatch

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


def timed(fn, *args) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of this process, every thread) of ``fn(*args)``."""
    with stopwatch(scope="process") as clock:
        fn(*args)
    return clock.wall_s, clock.cpu_s


def load() -> float:
    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256, help="candidates per measurement")
    parser.add_argument("--words", type=int, default=120, help="approximate words per candidate")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every variant (fastest counts)")
    parser.add_argument("--records", type=int, default=20000, help="records for the scoring measurement")
    parser.add_argument("--encoder", default=None, help="sentence-transformers model (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu", help="cpu (the recorded numbers) or e.g. cuda")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch thread counts to compare in this run (default: torch's own, "
                             "which follows OMP_NUM_THREADS)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    threads = args.threads or [torch.get_num_threads()]

    load_before = load()
    rng = random.Random(0)
    texts = [synthetic_caption(rng, args.words) for _ in range(args.texts)]
    start = time.perf_counter()
    encoder = SentenceEncoder(EncoderSettings(args.encoder or packaged_minilm_path(), device=args.device))
    load_s = time.perf_counter() - start
    for count in threads:  # warm-up at each thread count: first-call allocations are not throughput
        torch.set_num_threads(count)
        encoder.encode(texts[:16])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU {platform.machine()}"
    dtype = next(encoder.model.parameters()).dtype

    # Best of several rounds (other processes on a shared machine only slow a run down); every round runs each
    # batch size at each thread count in turn, so the variants share the machine's load alike.
    best: dict[tuple[int, int], list[float]] = {}  # (threads, batch size) -> [wall, CPU]
    for _ in range(args.repeats):
        for batch_size in args.batch_sizes:
            encoder.settings = EncoderSettings(encoder.settings.name_or_path, device=args.device,
                                               batch_size=batch_size)
            for count in threads:
                torch.set_num_threads(count)
                seconds, cpu = timed(encoder.encode, texts)
                previous = best.get((count, batch_size), [float("inf"), float("inf")])
                best[count, batch_size] = [min(previous[0], seconds), min(previous[1], cpu)]
    rows = [{"threads": count, "batch_size": batch_size, "seconds": seconds, "cpu_s": cpu,
             "candidates_per_s": args.texts / seconds, "candidates_per_cpu_s": args.texts / cpu}
            for count in threads for batch_size in args.batch_sizes
            for seconds, cpu in [best[count, batch_size]]]

    embeddings = np.random.default_rng(0).standard_normal((args.records, 6, encoder.dimension)).astype(np.float32)
    seconds, cpu = timed(lambda: [mbr_scores(block) for block in embeddings])
    mbr = {"records": args.records, "seconds": seconds, "cpu_s": cpu, "records_per_s": args.records / seconds,
           "records_per_cpu_s": args.records / cpu}
    load_after = load()

    print(f"{where}, {os.cpu_count()} cores, torch threads {' and '.join(map(str, threads))}; {dtype} weights, "
          f"loaded in {load_s:.1f} s; {args.texts} candidates of ~{args.words} words; load average (1 min) "
          f"{load_before:.2f} before, {load_after:.2f} after; wall and CPU seconds each the best of {args.repeats} "
          "rounds, CPU = user+sys of this process\n")
    print("| threads | batch size | wall s | CPU s | candidates / s | candidates / CPU s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['threads']} | {row['batch_size']} | {row['seconds']:.2f} | {row['cpu_s']:.2f} | "
              f"{row['candidates_per_s']:.1f} | {row['candidates_per_cpu_s']:.1f} |")
    print(f"\nMBR scoring (6 candidates x {encoder.dimension} dims, NumPy): {args.records} records in "
          f"{seconds:.2f} s wall, {cpu:.2f} s CPU: {mbr['records_per_s']:,.0f} records / s, "
          f"{mbr['records_per_cpu_s']:,.0f} records / CPU s")
    if args.json:
        results = {"device": args.device, "dtype": str(dtype), "texts": args.texts, "words": args.words,
                   "repeats": args.repeats, "threads": threads, "load_before": load_before, "load_after": load_after,
                   "rows": rows, "mbr": mbr}
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
