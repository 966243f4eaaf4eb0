"""Training throughput on CPU: tokens/s, padding by batching strategy, peak memory; ZeRO-2 against ZeRO-3.

Every measurement runs the real training path (``sicog.train.run.build_model`` / ``load_data`` and
``SicogTrainer``, stage 2: the whole model learns) on a synthetic dataset of image and text-only
conversations whose lengths vary widely, so that the batching strategy matters:

- ``random``: the HF default sampler;
- ``length``: ``--train_sampling_strategy group_by_length``;
- ``modality+length``: ``--group_by_modality_length`` (image-only or text-only batches of similar length).

Each preset trains in a fresh process, so its peak resident memory (``ru_maxrss``) is its own. The
ZeRO comparison launches 2 CPU processes under torchrun (gloo) per ZeRO stage; a ZeRO run that
fails is reported in its table row with its first error line, and the script then exits 1.

    .venv/bin/python benchmarks/bench_training.py                       # tiny + small + ZeRO-2/3, < 5 min on 2 cores
    .venv/bin/python benchmarks/bench_training.py --presets tiny --zero-presets   # no ZeRO runs

Prints markdown tables; ``--json FILE`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import TrainerCallback

from sicog.data.jsonl import write_jsonl
from sicog.model.builders import new_model, save_pretrained, tiny_config, tiny_text_config, tiny_vision_config
from sicog.toy.tokenizer import train_tokenizer
from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments
from sicog.train.datasets import SupervisedCollator
from sicog.train.run import build_model, load_data
from sicog.train.trainer import SicogTrainer

# Model shapes. "tiny" is the test model; "small" has wider layers, 64 queries and 14-pixel patches.
PRESETS: dict[str, dict] = {
    "tiny": {"text": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2},
             "vision": {"hidden_size": 32, "layers": 2, "patch_size": 8, "image_size": 32},
             "settings": {"scale_resolution": 64, "max_slice_nums": 4,
                          "resampler_num_queries": 16, "resampler_num_heads": 2}},
    "small": {"text": {"hidden_size": 256, "layers": 4, "heads": 4, "kv_heads": 2},
              "vision": {"hidden_size": 128, "layers": 4, "patch_size": 14, "image_size": 112},
              "settings": {"scale_resolution": 112, "max_slice_nums": 4,
                           "resampler_num_queries": 64, "resampler_num_heads": 2}},
}
STRATEGIES = ("random", "length", "modality+length")
WORDS = ("red blue green yellow circle square triangle small large left right top bottom corner shape image "
         "shows there are two three four near above below next to the a of and with on in").split()
# Image sizes as multiples of the preset's scale resolution: 1 view, 3x1 + global, 2x2 + global, 1x2 + global.
SIZE_FACTORS = ((1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (1.0, 2.0))


class StepTimer(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


class CountingCollator(SupervisedCollator):
    """The training collator, also recording the real (unpadded) and padded tokens of each batch in order."""

    def __init__(self, processor) -> None:
        super().__init__(processor)
        self.batches: list[tuple[int, int]] = []

    def __call__(self, items):
        batch = super().__call__(items)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.sum()), mask.numel()))
        return batch


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_world(root: Path, preset: str, records: int, seed: int = 0) -> tuple[Path, Path]:
    """A random-init checkpoint of ``preset`` and a dataset of image and text-only records; returns both paths."""
    rng = random.Random(seed)
    tokenizer = train_tokenizer([" ".join(rng.choices(WORDS, k=40)) for _ in range(200)], vocab_size=600)
    shape = PRESETS[preset]
    config = tiny_config(tokenizer, text_config=tiny_text_config(len(tokenizer), **shape["text"]),
                         vision_config=tiny_vision_config(**shape["vision"]), **shape["settings"])
    torch.manual_seed(seed)
    model, processor = new_model(config, tokenizer)
    save_pretrained(model, processor, root / "checkpoint")
    scale = shape["settings"]["scale_resolution"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(records):
        # Answers from 4 to 150 words: the spread that makes batching strategies differ.
        answer = " ".join(rng.choices(WORDS, k=rng.choice([4, 10, 25, 60, 150])))
        if i % 4 == 3:
            rows.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "Describe a scene."},
                                                          {"from": "gpt", "value": answer}]})
            continue
        fx, fy = SIZE_FACTORS[i % len(SIZE_FACTORS)]
        Image.new("RGB", (int(fx * scale), int(fy * scale)), (37 * i % 256, 90, 160)).save(root / "images" / f"{i}.png")
        rows.append({"id": f"i{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": answer}]})
    write_jsonl(root / "data.jsonl", rows)
    return root / "checkpoint", root / "data.jsonl"


def training_args(
    out: Path, strategy: str, batch_size: int, steps: int, deepspeed: str | None = None
) -> SicogTrainingArguments:
    """Stage-2 arguments for a short timed run (no saving, no logging overhead)."""
    return SicogTrainingArguments(
        output_dir=str(out), stage="2", per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=1e-4,
        use_cpu=True, save_strategy="no", logging_steps=10**6, report_to="none", disable_tqdm=True, seed=0,
        dataloader_num_workers=0, deepspeed=deepspeed,
        train_sampling_strategy="group_by_length" if strategy == "length" else "random",
    )


def timed_training(checkpoint: Path, data: Path, root: Path, args: SicogTrainingArguments, strategy: str,
                   warmup: int) -> dict:
    """Train ``args.max_steps`` steps; time and count tokens of the steps after ``warmup``."""
    model, processor = build_model(ModelArguments(model_name_or_path=str(checkpoint)), args)
    dataset = load_data(DataArguments(data_path=str(data), image_folder=str(root / "images"),
                                      group_by_modality_length=strategy == "modality+length"), processor, args)
    collator, timer = CountingCollator(processor), StepTimer()
    trainer = SicogTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                           processing_class=processor.tokenizer, group_by_modality=strategy == "modality+length",
                           callbacks=[timer])
    # Padding over whole epochs of the sampler the trainer uses (random order: averaged over 5 epochs).
    epoch_real = epoch_padded = 0
    batch = args.per_device_train_batch_size
    for epoch in range(5):
        torch.manual_seed(epoch)
        sampler = trainer._get_train_sampler(dataset)
        if hasattr(sampler, "set_epoch"):  # the length-grouped samplers draw each epoch's order from it, as training
            sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order), batch):
            lengths = [dataset.lengths[i] for i in order[start:start + batch]]
            epoch_real += sum(lengths)
            epoch_padded += max(lengths) * len(lengths)
    rss_before = peak_rss_mib()
    trainer.train()
    seconds = timer.ends[-1] - timer.ends[warmup - 1]
    counted = collator.batches[warmup:args.max_steps]
    real, padded = sum(b[0] for b in counted), sum(b[1] for b in counted)
    return {"strategy": strategy, "steps": args.max_steps - warmup, "seconds": seconds,
            "seconds_per_step": seconds / (args.max_steps - warmup), "real_tokens": real, "padded_tokens": padded,
            "real_tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds,
            "padding_timed": 1 - real / padded, "padding_epoch": 1 - epoch_real / epoch_padded,
            "peak_rss_before_mib": rss_before, "peak_rss_after_mib": peak_rss_mib(),
            "parameters": sum(p.numel() for p in model.parameters())}


def worker_single(args: argparse.Namespace) -> None:
    """One preset, every strategy, in this process; writes its results to ``args.result``."""
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    runs = [timed_training(Path(args.checkpoint), Path(args.data), root,
                           training_args(root / f"out-{i}", strategy, args.batch_size, args.warmup + args.steps),
                           strategy, args.warmup)
            for i, strategy in enumerate(args.strategies)]
    Path(args.result).write_text(json.dumps(runs))


def worker_zero(args: argparse.Namespace) -> None:
    """One rank of a ZeRO run under torchrun; each rank writes ``<result>.rank<N>``."""
    import deepspeed

    torch.set_num_threads(args.threads)
    root = Path(args.root)
    targs = training_args(root / f"out-{args.zero_worker}", "modality+length", args.batch_size,
                          args.warmup + args.steps, deepspeed=args.zero_worker)
    # As in `sicog train`: DeepSpeed must see the process group before ZeRO-3 builds the model.
    deepspeed.init_distributed(dist_backend="gloo")
    run = timed_training(Path(args.checkpoint), Path(args.data), root, targs, "modality+length", args.warmup)
    Path(f"{args.result}.rank{torch.distributed.get_rank()}").write_text(json.dumps(run))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunFailed(RuntimeError):
    """A benchmark child process failed; ``reason`` is the first error line of its output."""

    def __init__(self, command: list[str], output: str) -> None:
        errors = [line.strip() for line in output.splitlines() if "Error:" in line and "ChildFailedError" not in line]
        self.reason = errors[0] if errors else "exit status != 0 (no error line found)"
        super().__init__(f"{' '.join(command[:6])} ... failed: {self.reason}\n{output[-12000:]}")


def launch(command: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RunFailed(command, result.stdout + result.stderr)


def worker_flags(
    args: argparse.Namespace, root: Path, checkpoint: Path, data: Path, result: Path, threads: int
) -> list[str]:
    return ["--root", str(root), "--checkpoint", str(checkpoint), "--data", str(data), "--result", str(result),
            "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--threads", str(threads)]


def run_all(args: argparse.Namespace, tmp: Path) -> dict:
    """Every preset in its own process, then the ZeRO-2/3 runs; returns all results."""
    results: dict = {"single": {}, "zero": {}}
    worlds = {}
    for preset in dict.fromkeys([*args.presets, *args.zero_presets]):
        worlds[preset] = make_world(tmp / preset, preset, args.records)
    for preset in args.presets:
        checkpoint, data = worlds[preset]
        result = tmp / f"{preset}.json"
        start = time.perf_counter()
        flags = worker_flags(args, tmp / preset, checkpoint, data, result, args.threads)
        launch([sys.executable, __file__, "--worker", *flags, "--strategies", *args.strategies], args.threads)
        print(f"{preset}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        results["single"][preset] = json.loads(result.read_text())
    for preset in args.zero_presets:
        checkpoint, data = worlds[preset]
        for zero in ("zero2", "zero3"):
            result = tmp / f"{preset}-{zero}.json"
            start = time.perf_counter()
            try:
                launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), __file__, "--zero-worker", zero,
                        *worker_flags(args, tmp / preset, checkpoint, data, result, 1)], 1)
            except RunFailed as err:  # a failing configuration is a result too; the other runs still go on
                print(err, file=sys.stderr)
                results["zero"].setdefault(preset, {})[zero] = {"error": err.reason}
                continue
            print(f"{preset} {zero}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
            ranks = [json.loads(Path(f"{result}.rank{r}").read_text()) for r in (0, 1)]
            # The step ends when the slower rank ends; tokens are both ranks' together.
            seconds = max(r["seconds"] for r in ranks)
            real = sum(r["real_tokens"] for r in ranks)
            results["zero"].setdefault(preset, {})[zero] = {
                "steps": ranks[0]["steps"], "seconds": seconds, "seconds_per_step": seconds / ranks[0]["steps"],
                "real_tokens_per_s": real / seconds, "peak_rss_mib_per_rank": [r["peak_rss_after_mib"] for r in ranks]}
    return results


def print_tables(args: argparse.Namespace, results: dict) -> None:
    print(f"batch {args.batch_size} per process, {args.records} records (3/4 with an image), {args.warmup} warm-up "
          f"+ {args.steps} timed steps, torch threads {args.threads} (1 per rank under torchrun)\n")
    print("| preset | parameters | batching | padding (5 epochs) | padding (timed steps) | s / step | real tokens / s "
          "| padded tokens / s | peak RSS MiB |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for preset, runs in results["single"].items():
        for run in runs:
            print(f"| {preset} | {run['parameters'] / 1e6:.2f} M | {run['strategy']} | {run['padding_epoch']:.1%} | "
                  f"{run['padding_timed']:.1%} | {run['seconds_per_step']:.3f} | {run['real_tokens_per_s']:,.0f} | "
                  f"{run['padded_tokens_per_s']:,.0f} | {run['peak_rss_after_mib']:,.0f} |")
    if results["zero"]:
        print("\n| ZeRO stage (2 CPU processes, gloo, batching modality+length) | preset | s / step "
              "| real tokens / s (both ranks) | peak RSS MiB per rank |")
        print("|---|---|---:|---:|---|")
        for preset, runs in results["zero"].items():
            for zero, run in runs.items():
                if "error" in run:
                    print(f"| {zero} | {preset} | failed: {run['error']} | | |")
                    continue
                rss = " / ".join(f"{m:,.0f}" for m in run["peak_rss_mib_per_rank"])
                print(f"| {zero} | {preset} | {run['seconds_per_step']:.3f} | {run['real_tokens_per_s']:,.0f} "
                      f"| {rss} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", choices=PRESETS, default=list(PRESETS),
                        help="presets of the single-process runs (none: skip them)")
    parser.add_argument("--zero-presets", nargs="*", choices=PRESETS, default=list(PRESETS),
                        help="presets of the ZeRO-2/3 runs (none: skip them)")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--records", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps per run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the single-process runs "
                             "(1: on a shared 2-core machine more threads stall)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # Internal: the child processes this script launches.
    for flag in ("--root", "--checkpoint", "--data", "--result"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zero-worker", choices=("zero2", "zero3"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.worker:
        worker_single(args)
        return 0
    if args.zero_worker:
        worker_zero(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        results = run_all(args, Path(tmp))
    print_tables(args, results)
    if args.json:
        args.json.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "json"}, **results},
                                        indent=2, default=str) + "\n")
    return 1 if any("error" in run for runs in results["zero"].values() for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
