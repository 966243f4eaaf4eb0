"""Candidate generation throughput: `sicog generate` against a loop in the published style.

The published loop makes one candidate per ``generate`` call with batch size 1 and re-encodes the
image for every call; ours encodes each image once for its N candidates and batches records of
similar length. Both run on the same model and records in one process. End-of-sequence is disabled
so that every candidate is exactly ``--max-new-tokens`` long in both paths (a random model would
otherwise stop at arbitrary points and make the comparison meaningless).

    python benchmarks/bench_generation.py                 # tiny model on CPU, < 5 minutes on 2 cores
    python benchmarks/bench_generation.py --preset medium --device cuda

Prints a markdown table (wall and CPU seconds, candidates/s and speed-up) and optionally writes it as JSON.
CPU seconds are this process's user+sys (``cpu_time.py``, scope ``process``), which other processes on a
shared machine disturb far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from cpu_time import stopwatch
from PIL import Image

from sicog.data.jsonl import write_jsonl
from sicog.generate.job import GenerationJob, read_plan, run_rank
from sicog.generate.settings import SamplingSettings
from sicog.model.builders import new_model, tiny_config, tiny_text_config, tiny_vision_config

# Model sizes: "tiny" is the test model; "medium" is closer in shape to a real LLM (still random weights).
PRESETS = {
    "tiny": {"text": {"hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2},
             "vision": {"hidden_size": 32, "layers": 2}},
    "medium": {"text": {"hidden_size": 1024, "layers": 12, "heads": 16, "kv_heads": 4},
               "vision": {"hidden_size": 256, "layers": 6}},
}
CORPUS = [
    "a red circle on a blue background, a small green square in the top left corner.",
    "How many circles are there? The answer is 3. Answer the question step-by-step.",
    "Step 1: Clarify the task objective.\nThe image shows shapes, colours and numbers 0 1 2 3 4 5 6 7 8 9.",
]


def build_tokenizer():
    """A small byte-level BPE tokenizer with Qwen2's chat markup (trained in a second, no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        extra_special_tokens=["<|im_start|>", "<image>"])
    tokenizer.chat_template = (
        "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
        "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return tokenizer


def build_model(preset: str, device: torch.device, dtype: torch.dtype):
    tokenizer = build_tokenizer()
    shape = PRESETS[preset]
    config = tiny_config(tokenizer, text_config=tiny_text_config(len(tokenizer), **shape["text"]),
                         vision_config=tiny_vision_config(**shape["vision"]))
    torch.manual_seed(0)
    model, processor = new_model(config, tokenizer)
    model.generation_config.eos_token_id = None  # every candidate runs to max_new_tokens
    return model.to(device=device, dtype=dtype).eval(), processor


def write_records(root: Path, count: int) -> Path:
    """Image-question records; image sizes vary so prompts range from 1 to 4 slices."""
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        size = [(48, 48), (96, 64), (128, 96), (64, 160)][i % 4]
        Image.new("RGB", size, (15 * i % 256, 120, 200)).save(root / "images" / f"{i}.png")
        records.append({"id": f"b{i}", "image": f"{i}.png", "question": f"How many shapes are in picture {i}?"})
    write_jsonl(root / "records.jsonl", records)
    return root / "records.jsonl"


def published_loop(job: GenerationJob, model, processor) -> int:
    """One candidate per generate call, batch 1, the image loaded and encoded again for every call."""
    plan = read_plan(job, processor)
    settings = job.sampling
    made = 0
    for task in plan.tasks:
        for candidate in range(settings.num_candidates):
            encoded = processor.encode(task.conversation(), [str(p) for p in task.images], train=False)
            batch = processor.collate([encoded], padding_side="left")
            torch.manual_seed(job.seed + candidate)
            out = model.generate(
                input_ids=batch["input_ids"].to(model.device), attention_mask=batch["attention_mask"].to(model.device),
                pixel_values=batch["pixel_values"], do_sample=True, temperature=settings.temperature,
                top_p=settings.top_p, num_beams=1, max_new_tokens=settings.max_new_tokens,
                suppress_tokens=[processor.image_token_id],
            )
            processor.decode(out[0, batch["input_ids"].shape[1]:])
            made += 1
    return made


def ours(job: GenerationJob, model, processor) -> int:
    plan = read_plan(job, processor)
    summary = run_rank(job, plan, model, processor)
    return summary.generated * job.sampling.num_candidates


def timed(fn, *args) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user+sys of this process) and candidates made by ``fn(*args)`` (GPU work
    included in the wall time)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    with stopwatch(scope="process") as clock:
        made = fn(*args)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return clock.wall_s, clock.cpu_s, made


def configurations(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    """(method, N, batch size): the published loop, then ours scaled over N and over the batch size."""
    configs = [("published loop", args.num_candidates, 1)]
    configs += [("sicog generate", n, args.batch_size) for n in map(int, args.candidate_counts.split(","))]
    configs += [("sicog generate", args.num_candidates, b) for b in map(int, args.batch_sizes.split(","))]
    return list(dict.fromkeys(configs + [("sicog generate", args.num_candidates, args.batch_size)]))


def measure(args: argparse.Namespace, model, processor, root: Path) -> list[dict]:
    """Best wall and best CPU time of every configuration over ``args.repeats`` interleaved rounds (the machine
    may be shared; load only ever slows a round down)."""
    data = write_records(root / "data", args.records)

    def job(name: str, n: int, batch_size: int) -> GenerationJob:
        sampling = SamplingSettings(num_candidates=n, temperature=0.7, top_p=0.9, max_new_tokens=args.max_new_tokens)
        return GenerationJob(data=data, output=root / name / "out.jsonl", task="reasoning", prompt_type="cot-default",
                             model_name=args.preset, sampling=sampling, image_folder=root / "data" / "images",
                             batch_size=batch_size, progress=False)

    ours(job("warmup", 2, 4), model, processor)  # first-call costs (allocator, kernels) are not the method's
    configs = configurations(args)
    best: dict[tuple, list[float]] = {}  # (wall, CPU, candidates)
    for round_index in range(args.repeats):
        for method, n, batch_size in configs:
            fn = published_loop if method == "published loop" else ours
            seconds, cpu, made = timed(fn, job(f"{fn.__name__}_{n}_{batch_size}_{round_index}", n, batch_size),
                                       model, processor)
            key = (method, n, batch_size)
            previous = best.get(key, [float("inf"), float("inf"), made])
            best[key] = [min(previous[0], seconds), min(previous[1], cpu), made]
    base_wall = best[configs[0]][2] / best[configs[0]][0]
    base_cpu = best[configs[0]][2] / best[configs[0]][1]
    return [{"method": method, "N": n, "batch": batch_size, "seconds": seconds, "cpu_s": cpu, "candidates": made,
             "candidates_per_s": made / seconds, "candidates_per_cpu_s": made / cpu,
             "speedup": made / seconds / base_wall, "speedup_cpu": made / cpu / base_cpu}
            for (method, n, batch_size), (seconds, cpu, made) in best.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESETS, default="tiny")
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--num-candidates", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--candidate-counts", default="1,3,6", help="N values for the scaling table")
    parser.add_argument("--batch-sizes", default="1,4,8,16", help="batch sizes for the scaling table")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (1: the tiny model gains nothing from more; timings stay stable)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the fastest round of each configuration counts")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model, processor = build_model(args.preset, device, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure(args, model, processor, Path(tmp))
    print(f"device {device} ({dtype}), preset {args.preset}, {args.records} records, "
          f"{args.max_new_tokens} new tokens per candidate, torch threads {torch.get_num_threads()}; wall and CPU "
          f"seconds each the best of {args.repeats} rounds, CPU = user+sys of this process\n")
    print("| method | N | batch | wall s | CPU s | candidates | candidates/s | candidates/CPU s | vs published (wall) "
          "| vs published (CPU) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run['method']} | {run['N']} | {run['batch']} | {run['seconds']:.2f} | {run['cpu_s']:.2f} | "
              f"{run['candidates']} | {run['candidates_per_s']:.1f} | {run['candidates_per_cpu_s']:.1f} | "
              f"{run['speedup']:.1f}x | {run['speedup_cpu']:.1f}x |")
    if args.json:
        results = {"device": str(device), "dtype": str(dtype), "preset": args.preset, "records": args.records,
                   "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "runs": runs}
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
