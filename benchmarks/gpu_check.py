"""One-GPU check of SICOG at about 1B parameters: bf16 agreement, training MFU, generation, attention backends.

The model is random-init, built with ``sicog.model.builders``: CLIP-ViT-L/14-336 vision tower, the
144-query spatially constrained resampler, and a 16-layer, 2048-wide Qwen2 with a 32,000-token
vocabulary; the tokenizer is trained in-process (nothing is downloaded). Every sample holds one
672x672 image (2x2 slices + the global view: 5 views, 720 image tokens of its 1,490 tokens; the training
section records both as it builds them). Sections, in their default order, each timed and run even when an
earlier one failed (its error is recorded instead):

- ``agreement``: the forward pass with bfloat16 weights against float32 (the weights as built, whatever earlier
  sections did to the model; same batch; TF32 off);
- ``training``: forward + backward + fused AdamW step on bfloat16 weights, the whole model trainable
  (stage 2): tokens/s and MFU of the plain path (the section's own values) and, in ``rows``, of each fast
  path of ``sicog train`` (``--fused_loss liger``, ``--compile_layers``, both), each from the same weights
  with its loss curve against the plain one (``noise_floor``: the gap of a control, the plain path with eager
  attention; a fast path whose gap exceeds ``loss_gap_tolerance`` fails), its bf16 loss and logits at the
  starting weights against the plain float32 forward (``fp32_*``; fails beyond the agreement tolerance), the
  graphs it compiled (none may compile during the timed steps), and each path's top kernels in one
  forward + backward;
- ``attention``: the training step with SDPA, eager and (when importable) flash-attn 2;
- ``greedy``: on 8 records through each decoding path, in float32: temperature 0 (one sequence per record, so
  every path prefills it on its own), top-k 1 sampling of N copies (greedy again, through each path's prefill,
  the shared one included) and seeded sampling of N candidates: identical outputs or where they part;
- ``decoding_agreement``: each decoding path in bfloat16, teacher-forced on the plain path's float32 greedy
  tokens (every sequence decodes those tokens whatever it would pick), its logits at every step against the
  plain float32 ones; fails beyond the agreement tolerance's mean cosine;
- ``generation``: N = 6 candidates per record at batch 8, 32 and 128 through the code path of ``sicog
  generate`` (end-of-sequence disabled, so every candidate has exactly ``--max-new-tokens`` tokens; every record
  asks the same question, so every batch has the warm-up batch's shapes), on each decoding path: transformers'
  own (``plain``: every candidate prefilled on its own), then the prompt prefilled once per record on the
  dynamic cache, on the static cache, and with compiled steps; each row counts the graphs compiled and the
  compiled graphs run without a CUDA graph during its timed batches (both belong to the warm-up batch alone:
  a row that compiles while timed fails).

MFU = model FLOPs per second / peak dense bf16 FLOP/s (989 TFLOP/s for H100 SXM, the same for H200;
756 for H100 PCIe, 835 for H100 NVL). Model FLOPs (see :func:`training_flops`): 6 x parameters x
tokens for every matmul that runs forward and backward, plus the attention scores and weighted sums
(causal: half).

    bash benchmarks/gpu_check.sh                                   # GPU: at most --budget-s (480 s) of work
    .venv/bin/python benchmarks/gpu_check.py --tiny --out /tmp/gc  # CPU: tiny config, same code paths, about 1 min

In ``--tiny`` mode the compiled layers use dynamo's ``eager`` backend (the graphs are traced, not turned
into kernels, which would take minutes on a CPU), and ``generate()`` compiles decoding on GPUs only.

The time budget (``--budget-s``, counted from the start of ``gpu_check.sh`` when it set
``GPU_CHECK_STARTED_AT``) is checked before every section and, inside the training, attention, greedy,
decoding_agreement and generation sections, before every configuration (path, batch size, backend); what is
left out is listed under ``skipped``. Results are written when a section starts, after every configuration and
when it ends, so a run killed at the machine's time limit keeps every finished row (and a section that fails
keeps the rows it reported). Compiled configurations run last in their section: they take longest to start.

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``$OUT`` when set, else under ``--out``, also when
torch, transformers or sicog cannot be imported (the ``imports`` section says why) or when
``gpu_check.sh`` could not install the carried wheels (the ``setup`` section); exits 1 when a section
failed or was skipped (a row's error fails its section), bf16 disagrees with fp32 beyond the tolerance, or
greedy outputs differ. A fast path that is unavailable (e.g. liger-kernel not importable) is no failure: it is
listed under ``warnings`` and printed as a warning line.

``--wheel-set VERSION --wheel-dir DIR`` (what ``gpu_wheels.sh`` runs) prints the wheels still to fetch
for the device and writes ``DIR/requirements.txt``; see :func:`wheel_pins`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterable, Iterator
from email.parser import Parser
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

# Everything below the standard library: on a lent machine any of these can fail (a missing or too old package),
# and the check must still write gpu_check.json saying what failed. main() records the error instead of the run.
try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from transformers import CLIPVisionConfig, LogitsProcessorList
    from transformers.utils import is_flash_attn_2_available

    from sicog.data.jsonl import load_records, write_jsonl
    from sicog.generate.job import GenerationJob, merge_outputs, plan_batches, read_plan, run_rank
    from sicog.generate.sample import encode_task
    from sicog.generate.settings import SamplingSettings
    from sicog.model.builders import make_config, new_model, tiny_config, tiny_text_config, tiny_vision_config
    from sicog.model.configuration import CLIP_L14_336
    from sicog.model.modeling import flatten_views
    from sicog.model.resampler import bin_grid
    from sicog.toy.tokenizer import train_tokenizer
    from sicog.train.fast_paths import FastPathError, compile_layers, fused_loss, repeated_layers
except Exception:  # noqa: BLE001 - an ImportError, or anything a package raises while it loads
    IMPORT_ERROR: str | None = traceback.format_exc(limit=12)
else:
    IMPORT_ERROR = None

# Dense bf16 peaks (TFLOP/s) by device name; H200 has the H100's compute, more and faster memory.
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0))
CORPUS = ["Step 1: Clarify the task objective. How many red circles are in the image? 0 1 2 3 4 5 6 7 8 9",
          "Step 2: Extract the crucial visual information. A red circle, a blue square, a green triangle."]
# The ~1B model (GPU) and the test model (CPU). ``image`` is the side of every (square) test image.
SHAPES = {
    "full": {"text": {"vocab_size": 32000, "hidden_size": 2048, "layers": 16, "heads": 16, "kv_heads": 2},
             "image": 672, "answer_repeats": 32},
    "tiny": {"text": {"vocab_size": 512, "hidden_size": 64, "layers": 2, "heads": 4, "kv_heads": 2},
             "image": 128, "answer_repeats": 20},
}
# bf16 against fp32: the plain forward (agreement), each training path's first forward (its fp32_* values), each
# decoding path's teacher-forced logits (decoding_agreement: mean cosine only, there is no loss).
AGREEMENT_TOLERANCE = {"min_mean_cosine": 0.99, "max_loss_difference": 0.05}
# The largest loss gap a fast training path may show to the plain path over its curve: noise_multiple x the
# section's noise_floor (the control's gap: bf16 noise through other kernels) + absolute (bf16 rounding of a loss
# of about 10 that an unlucky step can amplify; the fast paths' gaps on an H200 were 0.002 to 0.026 on
# 2026-12-04). A path computing another function departs by far more, and more with every step.
LOSS_GAP_TOLERANCE = {"noise_multiple": 4.0, "absolute": 0.05}
# The training paths of `sicog train` measured here: (name, --fused_loss liger, --compile_layers, attention). The
# plain path first (the others are compared with it); then a control, the plain path with eager attention: the same
# function through other kernels, so its loss gap to the plain path is the size of bfloat16 noise over the curve
# (the section's noise_floor), against which the fast paths' gaps are read; the compiled ones last: they take
# longest to start, so a run that meets its time budget loses them, not the others.
NOISE_CONTROL = "plain, eager attention"
TRAINING_PATHS = (("plain", False, False, "sdpa"), (NOISE_CONTROL, False, False, "eager"),
                  ("fused_loss", True, False, "sdpa"), ("compiled", False, True, "sdpa"),
                  ("fused_loss+compiled", True, True, "sdpa"))
# Optional fast-path libraries whose versions the environment records: liger-kernel (--fused_loss liger),
# flash-attn, and the inference engines a decoding backend could be built on.
OPTIONAL_BACKENDS = ("liger-kernel", "flash-attn", "vllm", "sglang")
# The decoding paths of `sicog generate`: (name, --cache, --compile, shared prefill). "plain" is transformers' own
# generate (each of a record's N sequences prefilled on its own: --no-shared-prefill), the in-run reference of the
# speed-ups and of the outputs; the others prefill each prompt once; compiled last (see TRAINING_PATHS).
DECODING_PATHS = (("plain", "dynamic", False, False), ("shared", "dynamic", False, True),
                  ("static", "static", False, True), ("static+compiled", "static", True, True))
REFERENCE_PATH = DECODING_PATHS[0][0]
# A configuration a section runs (see within_budget).
T = TypeVar("T")
# The sections of the check, in the order they run by default (--sections picks some and their order): the
# correctness checks before generation, the longest section, which the time budget cuts first.
SECTIONS = ("agreement", "training", "attention", "greedy", "decoding_agreement", "generation")
# Every record of a generation row asks this, so every batch has one prompt length: the warm-up batch then has
# the timed batches' shapes (a longer prompt would grow the static cache and recompile inside the timed window).
GENERATION_QUESTION = "How many circles are in the picture?"


def build(tiny: bool, device: torch.device):
    """The float32 model on ``device`` and its processor."""
    tokenizer = train_tokenizer(CORPUS * 10, vocab_size=400)
    text = dict(SHAPES["tiny" if tiny else "full"]["text"])
    text_config = tiny_text_config(max(text.pop("vocab_size"), len(tokenizer)), **text)
    if tiny:
        config = tiny_config(tokenizer, text_config=text_config, vision_config=tiny_vision_config())
    else:
        config = make_config(CLIPVisionConfig(**CLIP_L14_336), text_config, tokenizer)
    torch.manual_seed(0)
    with device:  # weights are created (and initialised) on the device itself
        model, processor = new_model(config, tokenizer)
    model.generation_config.eos_token_id = None  # every candidate runs to max_new_tokens
    return model, processor


def test_image(side: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))


def training_batch(processor, shape: dict, batch_size: int, device: torch.device) -> dict:
    """``batch_size`` identical samples (no padding), already on the device as the Trainer would put them."""
    answer = " ".join(["a red circle near the top left corner"] * shape["answer_repeats"])
    conversation = [{"from": "human", "value": "<image>\nDescribe the image step-by-step."},
                    {"from": "gpt", "value": answer}]
    encoded = processor.encode(conversation, [test_image(shape["image"])], train=True)
    batch = processor.collate([encoded] * batch_size)
    batch["pixel_values"] = [v.to(device) for v in batch["pixel_values"]]
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def training_flops(model, batch: dict) -> dict[str, float]:
    """Model FLOPs of one training step (forward + backward = 3 x forward), by part, and their total.

    A matmul costs 2 FLOPs per weight per token forward. Vision: the patch embedding and the layers up
    to ``vision_feature_layer`` (later layers run but their output is unused: not counted); attention
    scores and weighted sums 4 x S x width per token and layer. Resampler: ``kv_proj`` on every patch,
    the attention projections on the queries and their pooled keys. LLM: every weight except the input
    embedding (a lookup), LM head included; causal attention counts half: 2 x S x width.
    """
    config = model.config
    tower = getattr(model.vision_tower, "vision_model", model.vision_tower)
    used = len(tower.encoder.layers) + 1 + config.vision_feature_layer
    vision_width = config.vision_config.hidden_size
    layer_params = sum(p.numel() for layer in tower.encoder.layers[:used] for p in layer.parameters())
    patch_params = tower.embeddings.patch_embedding.weight.numel()
    width, queries, bins = config.text_config.hidden_size, config.resampler_num_queries, config.resampler_cell_bins
    forward = dict.fromkeys(("vision_matmul", "vision_attention", "resampler", "llm_matmul", "llm_attention"), 0.0)
    for view in flatten_views(batch["pixel_values"])[0]:
        rows_p, cols_p = view.shape[1] // config.patch_size, view.shape[2] // config.patch_size
        patches = rows_p * cols_p
        tokens = patches + 1  # + CLS
        forward["vision_matmul"] += 2 * patch_params * patches + 2 * layer_params * tokens
        forward["vision_attention"] += used * 4 * tokens * tokens * vision_width
        # q, out_proj and proj on the queries; k and v on the pooled keys of each query's cell
        keys = bins * bins if config.resampler_pooling == "average" else math.prod(bin_grid(cols_p, rows_p))
        forward["resampler"] += 2 * vision_width * width * patches + 2 * width * width * queries * (3 + 2 * keys)
    llm = model.language_model
    text = config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    rows, length = batch["input_ids"].shape
    llm_params = sum(p.numel() for p in llm.parameters()) - llm.get_input_embeddings().weight.numel()
    forward["llm_matmul"] = 2 * llm_params * rows * length
    forward["llm_attention"] = text.num_hidden_layers * 2 * length * text.num_attention_heads * head_dim * rows * length
    flops = {k: 3.0 * v for k, v in forward.items()}
    flops["total"] = sum(flops.values())
    return flops


def peak_flops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """Peak dense bf16 FLOP/s of the device and where the number comes from."""
    if override:
        return override * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, tflops in PEAK_TFLOPS:
            if key in name:
                return tflops * 1e12, f"{key} dense bf16"
    return None, "unknown device (give --peak-tflops)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_tensors(model) -> dict[str, torch.Tensor]:
    """Every tensor of the model's state, by name: the state dict's (parameters, persistent buffers) and the
    buffers it leaves out (the rotary frequencies, which a cast to bfloat16 rounds for good)."""
    return {**model.state_dict(), **dict(model.named_buffers())}


def cpu_copy(model, pin: bool = False) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors (:func:`model_tensors`) on the CPU, where it takes no device memory from what
    is measured; ``pin``: in page-locked memory, which loads back onto a GPU faster."""
    return {name: torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=pin).copy_(value)
            for name, value in model_tensors(model).items()}


def load_copy(model, copy: dict[str, torch.Tensor]) -> None:
    """Write a :func:`cpu_copy` back into the model, in place (cast to the model's dtypes)."""
    with torch.no_grad():
        for name, tensor in model_tensors(model).items():
            tensor.copy_(copy[name])


def load_fp32(model, weights: dict[str, torch.Tensor]) -> None:
    """Make the model float32 and load ``weights`` (a float32 :func:`cpu_copy` of the model as built): earlier
    sections may have cast it to bfloat16 for good, or trained it."""
    model.float()
    load_copy(model, weights)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """TF32 matmuls and convolutions off inside: a true float32 reference."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def logit_stats(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far ``logits`` are from the float32 ``reference`` of the same shape (vocabulary last)."""
    low, ref = logits.float(), reference.float()
    cosine = F.cosine_similarity(low, ref, dim=-1)
    return {"logits_relative_l2": ((low - ref).norm() / ref.norm()).item(),
            "logits_max_abs_difference": (low - ref).abs().max().item(),
            "mean_cosine": cosine.mean().item(), "min_cosine": cosine.min().item(),
            "top1_agreement": (low.argmax(-1) == ref.argmax(-1)).float().mean().item()}


def agrees(loss_difference: float | None, mean_cosine: float | None) -> bool:
    """Whether bf16 agrees with fp32 within :data:`AGREEMENT_TOLERANCE`; a value that is None is not compared (a
    fused loss returns no logits, decoding has no loss)."""
    return ((loss_difference is None or loss_difference <= AGREEMENT_TOLERANCE["max_loss_difference"])
            and (mean_cosine is None or mean_cosine >= AGREEMENT_TOLERANCE["min_mean_cosine"]))


def agreement(model, processor, shape: dict, device: torch.device, batch_size: int,
              weights: dict[str, torch.Tensor]) -> dict:
    """Float32 forward of ``weights`` (the model as built), then the same weights cast to bfloat16; compare logits
    and loss. The model is left in bfloat16."""
    batch = training_batch(processor, shape, batch_size, device)
    model.eval()
    load_fp32(model, weights)
    with torch.no_grad():  # no KV cache either: what earlier sections left in the config must not matter
        with no_tf32():
            reference = model(**batch, use_cache=False)
        model.to(torch.bfloat16)
        half = model(**batch, use_cache=False)
    result = {"tokens": reference.logits.shape[0] * reference.logits.shape[1], "loss_fp32": reference.loss.item(),
              "loss_bf16": half.loss.item(), "loss_difference": abs(reference.loss.item() - half.loss.item()),
              **logit_stats(half.logits, reference.logits)}
    result["ok"] = agrees(result["loss_difference"], result["mean_cosine"])
    return result


class Steps(NamedTuple):
    """What :func:`train_steps` measured."""

    times: list[float]
    losses: list[float]
    graphs_compiled_while_timed: int


def train_steps(model, batch: dict, device: torch.device, warmup: int, steps: int, lr: float = 1e-6) -> Steps:
    """Seconds of each timed step (forward, backward, optimizer) after ``warmup`` untimed steps, the loss of every
    step, and the graphs dynamo compiled during the timed steps (compiling belongs to the warm-up)."""
    model.train()
    model.config.use_cache = False
    model.set_trainable(vision=True, resampler=True, llm=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, fused=device.type == "cuda")
    times, losses = [], []
    compiled_when_timing = compile_counts()["graphs_compiled"]
    for step in range(warmup + steps):
        if step == warmup:
            compiled_when_timing = compile_counts()["graphs_compiled"]
        synchronize(device)
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    del optimizer
    return Steps(times, losses, compile_counts()["graphs_compiled"] - compiled_when_timing)


def kernel_profile(run: Callable[[], object], device: torch.device, top: int = 8) -> str:
    """Where ``run()`` spends its time, as one line: its wall time, the time of its kernels (GPU; how busy the GPU
    was) or operators (CPU), and the ``top`` of them by their own time, each with its share of that total. Never
    raises: a failure is the line (the measurement it goes with stays)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    try:
        synchronize(device)
        with profile(activities=[ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]) as trace:
            start = time.perf_counter()
            run()
            synchronize(device)
            wall_us = (time.perf_counter() - start) * 1e6
        # On a GPU, kernels only: an operator's device time is also its kernels', which would count it twice.
        events = [(event.key, event.self_device_time_total if cuda else event.self_cpu_time_total)
                  for event in trace.key_averages() if not cuda or event.device_type == DeviceType.CUDA]
    except Exception as err:  # noqa: BLE001 - the profile is an aside; the timing it accompanies must stay
        return f"profile failed: {type(err).__name__}: {err}"
    total = sum(time_us for _, time_us in events) or 1.0
    ranked = sorted(events, key=lambda event: event[1], reverse=True)[:top]
    return (f"{wall_us / 1e3:.1f} ms wall, {total / 1e3:.1f} ms in {'kernels' if cuda else 'operators'}: "
            + "; ".join(f"{kernel_name(name)} {time_us / total:.0%}" for name, time_us in ranked))


def kernel_name(name: str, width: int = 90) -> str:
    """A kernel's or operator's name, short enough for a table: no leading ``void``, no namespaces (the template
    arguments stay: they tell apart the elementwise kernels), cut at ``width``."""
    name = re.sub(r"^void\s+", "", name)
    return re.sub(r"\(anonymous namespace\)::|\b(?:\w+::)+", "", name)[:width]


def training_reference(model, weights: dict[str, torch.Tensor], batch: dict) -> dict:
    """The plain float32 forward of ``weights`` in training mode (TF32 off) on ``batch``: its loss and, on the CPU,
    its first sample's logits (every sample of the batch is the same). The model is left in bfloat16 with
    ``weights``, where the training paths start."""
    model.train()
    load_fp32(model, weights)
    with torch.no_grad(), no_tf32():
        output = model(**batch)
    reference = {"loss": output.loss.item(), "logits": output.logits[0].cpu()}
    del output
    model.to(torch.bfloat16)
    return reference


def fp32_comparison(model, batch: dict, reference: dict) -> dict:
    """A training row's ``fp32_*`` values: the model's loss and first sample's logits on ``batch`` (its path, in
    bfloat16) against :func:`training_reference`; logits only where the path returns them (a fused loss does not)."""
    output = model(**batch)  # autograd on, as in training: a compiled path runs the graphs it was timed with
    values = {"fp32_loss_difference": abs(output.loss.item() - reference["loss"]), "fp32_mean_cosine": None,
              "fp32_top1_agreement": None}
    if output.logits is not None:
        stats = logit_stats(output.logits[0].detach(), reference["logits"].to(output.logits.device))
        values.update(fp32_mean_cosine=stats["mean_cosine"], fp32_top1_agreement=stats["top1_agreement"])
    return values


def add_error(row: dict, message: str) -> None:
    """Add ``message`` to the row's error (a row can fail more than one check)."""
    row["error"] = "; ".join(filter(None, (row["error"], message)))


def loss_gap_tolerance(noise_floor: float | None) -> float:
    """The largest loss gap to the plain path a fast training path may show (see :data:`LOSS_GAP_TOLERANCE`);
    without a measured noise floor (the control failed or was skipped), the absolute bound alone."""
    return LOSS_GAP_TOLERANCE["noise_multiple"] * (noise_floor or 0.0) + LOSS_GAP_TOLERANCE["absolute"]


def check_loss_gaps(rows: list[dict], tolerance: float) -> None:
    """Give every fast path whose loss curve departs from the plain one by more than ``tolerance`` an error."""
    for row in rows:
        gap = row["max_loss_difference"]
        if row["path"] not in ("plain", NOISE_CONTROL) and gap is not None and gap > tolerance:
            add_error(row, f"loss curve departs from the plain one by {gap:.4g} > tolerance {tolerance:.4g}")


def training(model, processor, shape: dict, device: torch.device, args, peak: float | None,
             weights: dict[str, torch.Tensor], progress: Progress | None = None) -> dict:
    """The plain training step's throughput (the section's values) and every fast path's, from the same weights.

    ``weights`` (the model as built, float32, on the CPU): every path starts from them in bfloat16, and its first
    forward is compared with their plain float32 forward. ``progress`` (the running :class:`Sections`) is asked
    before each path after the plain one whether the time budget is spent, and is given the rows measured so far
    after each path. A failed path, the plain one included, is its row's error; the other rows stay."""
    progress = progress or NO_BUDGET
    batch = training_batch(processor, shape, args.batch_size, device)
    flops = training_flops(model, batch)
    tokens = batch["input_ids"].numel()
    reference = training_reference(model, weights, batch)
    initial = cpu_copy(model, pin=device.type == "cuda")
    rows, curves, skipped, profiles = [], {}, [], {}

    def measure(row: dict, name: str, fused: bool, compiled: bool, implementation: str) -> None:
        compiled_before = compile_counts()["graphs_compiled"]
        try:
            load_copy(model, initial)
            model.set_attn_implementation(implementation)
            model.fused_loss = fused_loss("liger", device) if fused else None
            if compiled:
                compile_layers(model, backend="eager" if args.tiny else "inductor")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            steps = train_steps(model, batch, device, args.warmup, args.steps, lr=args.curve_lr)
            if device.type == "cuda":
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            load_copy(model, initial)  # the reference's weights
            row.update(fp32_comparison(model, batch, reference))
            profiles[name] = kernel_profile(lambda: model(**batch).loss.backward(), device)
            model.zero_grad(set_to_none=True)
        except FastPathError as err:
            row["error"] = f"unavailable: {err}"
            return
        except Exception as err:  # noqa: BLE001 - one path failing must not hide the others' numbers
            row["error"] = f"{type(err).__name__}: {err}"
            return
        finally:
            row["graphs_compiled"] = compile_counts()["graphs_compiled"] - compiled_before
            model.fused_loss = None
            model.set_attn_implementation("sdpa")
            uncompile_layers(model)
        curves[name] = steps.losses
        seconds = float(np.median(steps.times))
        row.update(median_step_s=seconds, tokens_per_s=tokens / seconds,
                   mfu=flops["total"] / seconds / peak if peak else None,
                   loss_first=steps.losses[0], loss_last=steps.losses[-1],
                   graphs_compiled_while_timed=steps.graphs_compiled_while_timed)
        if "plain" in curves:
            row["max_loss_difference"] = max(abs(a - b) for a, b in zip(steps.losses, curves["plain"], strict=True))
        if steps.graphs_compiled_while_timed:
            add_error(row, f"{steps.graphs_compiled_while_timed} graphs compiled during the timed steps")
        if not agrees(row["fp32_loss_difference"], row["fp32_mean_cosine"]):
            add_error(row, "bf16 disagrees with the plain fp32 forward beyond the tolerance")

    try:
        # The plain path always runs: the section started within the budget.
        for name, fused, compiled, implementation in within_budget(TRAINING_PATHS, progress, skipped,
                                                                   lambda path: path[0], first_always=True):
            row = {"path": name, "median_step_s": None, "tokens_per_s": None, "mfu": None, "peak_memory_gib": None,
                   "loss_first": None, "loss_last": None, "max_loss_difference": None, "fp32_loss_difference": None,
                   "fp32_mean_cosine": None, "fp32_top1_agreement": None, "graphs_compiled": None,
                   "graphs_compiled_while_timed": None, "error": ""}
            rows.append(row)
            measure(row, name, fused, compiled, implementation)
            progress.partial({"rows": rows})
    finally:
        load_copy(model, initial)
    noise_floor = next((row["max_loss_difference"] for row in rows if row["path"] == NOISE_CONTROL), None)
    check_loss_gaps(rows, loss_gap_tolerance(noise_floor))
    result = {"batch": args.batch_size, "sequence_length": batch["input_ids"].shape[1],
              "image_tokens_per_sample": int((batch["input_ids"][0] == model.config.image_token_id).sum()),
              "views_per_step": len(flatten_views(batch["pixel_values"])[0]),
              **plain_throughput(rows[0], flops, args.batch_size),
              "tflops_per_step": flops["total"] / 1e12,
              "flops_share": {k: round(v / flops["total"], 3) for k, v in flops.items() if k != "total"},
              "mfu_formula": "model FLOPs per step (6 x weights x tokens of each part + attention, see training_flops) "
                             "/ median step time / peak dense bf16 FLOP/s",
              "curve": f"{args.warmup + args.steps} steps on one batch at learning rate {args.curve_lr}; "
                       "max_loss_difference: the largest gap to the plain path's loss at the same step",
              "noise_floor": noise_floor, "loss_gap_tolerance": loss_gap_tolerance(noise_floor),
              "fp32": "fp32_*: the path's first forward (bf16, starting weights) against the plain fp32 forward, "
                      f"loss {reference['loss']:.4f}; tolerance {AGREEMENT_TOLERANCE}",
              "kernel_profile": profiles, "rows": rows}
    add_row_errors(result, [row for row in rows if not row["error"].startswith("unavailable")], lambda row: row["path"])
    note_skipped(result, skipped, progress)
    return result


def plain_throughput(plain: dict, flops: dict[str, float], batch_size: int) -> dict:
    """The section's own values, from the plain path's row; none where it measured nothing (its error says why)."""
    seconds = plain["median_step_s"]
    if seconds is None:
        return {}
    return {"median_step_s": seconds, "tokens_per_s": plain["tokens_per_s"], "samples_per_s": batch_size / seconds,
            "achieved_tflops": flops["total"] / seconds / 1e12, "mfu": plain["mfu"],
            "peak_memory_gib": plain["peak_memory_gib"]}

def add_row_errors(result: dict, rows: list[dict], label: Callable[[dict], str]) -> None:
    """Set ``result["error"]`` to every failed row's error, each after its ``label``, when any row failed."""
    failed = [f"{label(row)}: {row['error']}" for row in rows if row["error"]]
    if failed:
        result["error"] = "; ".join(failed)


def within_budget(configurations: Iterable[T], progress: Progress, skipped: list[str], label: Callable[[T], str],
                  first_always: bool = False) -> Iterator[T]:
    """The ``configurations`` a section runs: before each, ``progress`` is asked whether the time budget is spent,
    and one that would start after it is listed in ``skipped`` (by its ``label``) instead; ``first_always``: the
    first runs regardless (the section's baseline; the section started within the budget)."""
    for index, configuration in enumerate(configurations):
        if (index or not first_always) and progress.over_budget():
            skipped.append(label(configuration))
            continue
        yield configuration


def note_skipped(result: dict, skipped: list[str], progress: Progress) -> None:
    """Set ``result["skipped"]`` to the configurations left out because the time budget was spent, if any."""
    if skipped:
        result["skipped"] = f"time budget of {progress.budget_s:.0f} s spent before: {', '.join(skipped)}"


def uncompile_layers(model) -> None:
    """Undo :func:`compile_layers` (``nn.Module.compile`` keeps the compiled call beside the module)."""
    for layer in repeated_layers(model):
        layer._compiled_call_impl = None
    torch._dynamo.reset()


def attention(model, processor, shape: dict, device: torch.device, args, progress: Progress | None = None) -> dict:
    """The same training step under each attention backend that can run here (half the batch: eager
    attention keeps every score matrix for the backward pass). ``progress``: as in :func:`training`."""
    progress = progress or NO_BUDGET
    implementations = ["sdpa", "eager"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])
    batch = training_batch(processor, shape, max(1, args.batch_size // 2), device)
    rows, skipped = [], []

    def summary() -> dict:
        result = {"batch": len(batch["input_ids"]), "rows": rows,
                  "unavailable": [] if "flash_attention_2" in implementations
                  else ["flash_attention_2 (flash_attn not importable)"]}
        add_row_errors(result, rows, lambda row: row["implementation"])
        note_skipped(result, skipped, progress)
        return result

    for implementation in within_budget(implementations, progress, skipped, str, first_always=True):
        row = {"implementation": implementation, "median_step_s": None, "tokens_per_s": None, "error": ""}
        try:
            model.set_attn_implementation(implementation)
            seconds = float(np.median(train_steps(model, batch, device, 1, max(2, args.steps // 2)).times))
            row.update(median_step_s=seconds, tokens_per_s=batch["input_ids"].numel() / seconds)
        except Exception as err:  # noqa: BLE001 - one backend failing must not hide the others' numbers
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # what one backend cached must not count against the next
        progress.partial(summary())
    model.set_attn_implementation("sdpa")
    return summary()


def generation_job(root: Path, name: str, records: int, batch_size: int, settings: SamplingSettings,
                   varied: bool) -> GenerationJob:
    """A `sicog generate` job over ``records`` new records in a folder of its own under ``root`` (never an earlier
    job's outputs, which it would resume instead of generating). ``varied``: record ``i`` asks about picture ``i``
    (prompts of a few lengths, so a batch is padded); else every record asks :data:`GENERATION_QUESTION`."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    questions = [{"id": f"{name}-{i}", "image": "image.png",
                  "question": f"How many circles are in picture {i}?" if varied else GENERATION_QUESTION}
                 for i in range(records)]
    write_jsonl(folder / "questions.jsonl", questions)
    return GenerationJob(data=folder / "questions.jsonl", output=folder / "out.jsonl", task="reasoning",
                         prompt_type="cot-default", model_name="gpu-check", sampling=settings,
                         image_folder=root / "images", batch_size=batch_size, progress=False)


def generate_records(model, processor, root: Path, name: str, records: int, batch_size: int,
                     settings: SamplingSettings, varied: bool = False) -> tuple[float, list[list[str]], int]:
    """Seconds, candidates per record and prompt tokens (of the first record) of one `sicog generate` run over
    ``records`` records (see :func:`generation_job`)."""
    job = generation_job(root, name, records, batch_size, settings, varied)
    plan = read_plan(job, processor)
    synchronize(model.device)
    start = time.perf_counter()
    run_rank(job, plan, model, processor)
    synchronize(model.device)
    seconds = time.perf_counter() - start
    merge_outputs(job, plan.ids)
    candidates = {record["id"]: record["candidates"] for record in load_records(job.output)}
    return seconds, [candidates.get(f"{name}-{i}") for i in range(records)], plan.tasks[0].num_tokens


def prepare_generation(model, shape: dict, root: Path) -> None:
    model.eval()
    model.config.use_cache = True
    (root / "images").mkdir(parents=True, exist_ok=True)
    test_image(shape["image"]).save(root / "images" / "image.png")


def release_decoding_state(model, device: torch.device) -> None:
    """Drop what earlier ``generate`` calls left holding memory, so that a row's peak memory is its own: the static
    cache the shared prefill keeps (and its length: the next call sizes its own), transformers' compiled forward,
    dynamo's graphs and their CUDA graphs."""
    for name in ("_static_cache", "_static_cache_length", "_compiled_call", "_last_compile_config"):
        vars(model).pop(name, None)
    torch._dynamo.reset()
    gc.collect()  # a cache in a reference cycle would otherwise stay allocated
    if device.type == "cuda":
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()  # the CUDA graphs' memory pools (torch._dynamo.reset frees them only in new releases)
        torch.cuda.empty_cache()


def generation(model, processor, shape: dict, device: torch.device, args, root: Path,
               progress: Progress | None = None) -> dict:
    """Candidates and tokens per second on each decoding path and batch size, through `sicog generate`'s code.

    Each (path, batch size) first runs one untimed batch of the same shape: compilation, CUDA graphs, allocator.
    Batch sizes in the order of ``--gen-batch-sizes``, each on every path (the compiled one last), so a run that
    meets its budget has compared the paths at its first sizes. Before each (path, batch size) ``progress`` is
    asked whether the time budget is spent (then it is listed under ``skipped``), after each it is given the
    section's result so far.
    """
    progress = progress or NO_BUDGET
    prepare_generation(model, shape, root)
    rows, skipped = [], []

    def summary() -> dict:
        result = {"rows": rows}
        plain = {row["batch"]: row["new_tokens_per_s"] for row in rows
                 if row["path"] == REFERENCE_PATH and not row["error"]}
        result[f"speedup_over_{REFERENCE_PATH}"] = {
            f"{row['path']} batch {row['batch']}": row["new_tokens_per_s"] / plain[row["batch"]]
            for row in rows if row["path"] != REFERENCE_PATH and not row["error"] and row["batch"] in plain}
        add_row_errors(result, rows, lambda row: f"{row['path']} batch {row['batch']}")
        note_skipped(result, skipped, progress)
        return result

    configurations = itertools.product(args.gen_batch_sizes, DECODING_PATHS)
    for batch_size, (path, cache, compiled, shared) in within_budget(
            configurations, progress, skipped, lambda configuration: f"{configuration[1][0]} batch {configuration[0]}"):
        settings = SamplingSettings(num_candidates=args.num_candidates, temperature=0.7, top_p=0.9,
                                    max_new_tokens=args.max_new_tokens, cache=cache, compile=compiled,
                                    shared_prefill=shared)
        rows.append(generation_row(model, processor, device, args, root, path, batch_size, settings))
        progress.partial(summary())
    release_decoding_state(model, device)
    return summary()


def generation_row(model, processor, device: torch.device, args, root: Path, path: str, batch_size: int,
                   settings: SamplingSettings) -> dict:
    """One row of :func:`generation`: an untimed batch, then ``--gen-batches`` timed ones (at the first batch size,
    then one more under the profiler: ``profile``, see :func:`kernel_profile`); a failure is its error, and so is
    a graph compiled during the timed batches (their time would include compiling)."""
    row = {"path": path, "batch": batch_size, "N": args.num_candidates,
           "sequences_per_call": batch_size * args.num_candidates, "prompt_tokens": None,
           "new_tokens": args.max_new_tokens, "warmup_s": None, "seconds": None, "candidates_per_s": None,
           "new_tokens_per_s": None, "peak_memory_gib": None, "graphs_compiled_while_timed": None,
           "cudagraph_skips_while_timed": None, "profile": None, "error": ""}
    try:
        release_decoding_state(model, device)  # the previous row's static cache and graphs are not this row's
        row["warmup_s"] = generate_records(model, processor, root, f"{path}-w{batch_size}", batch_size,
                                           batch_size, settings)[0]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        records = batch_size * args.gen_batches
        before = compile_counts()
        seconds, _, row["prompt_tokens"] = generate_records(model, processor, root, f"{path}-b{batch_size}",
                                                            records, batch_size, settings)
        # What the timed batches compiled or ran outside CUDA graphs: compiling belongs to the warm-up batch alone.
        row.update({f"{name}_while_timed": count - before[name] for name, count in compile_counts().items()})
    except Exception as err:  # noqa: BLE001 - one path failing must not hide the others' numbers
        row["error"] = f"{type(err).__name__}: {err}"
        return row
    candidates = records * args.num_candidates
    row.update(seconds=seconds, candidates_per_s=candidates / seconds,
               new_tokens_per_s=candidates * args.max_new_tokens / seconds)
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if row["graphs_compiled_while_timed"]:
        add_error(row, f"{row['graphs_compiled_while_timed']} graphs compiled during the timed batches")
    if batch_size == args.gen_batch_sizes[0]:  # how busy the GPU is while one batch decodes, on each path
        row["profile"] = kernel_profile(lambda: generate_records(
            model, processor, root, f"{path}-p{batch_size}", batch_size, batch_size, settings), device)
    return row


def compile_counts() -> dict[str, int]:
    """So far in this process: graphs dynamo compiled, and compiled graphs run without a CUDA graph (skipped)."""
    from torch._dynamo.utils import counters

    return {"graphs_compiled": counters["stats"]["unique_graphs"],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"]}


def greedy(model, processor, shape: dict, device: torch.device, args, root: Path,
           progress: Progress | None = None) -> dict:
    """The outputs of every decoding path on ``--greedy-records`` records: they must be the plain path's.

    Three runs per path, on records of a few prompt lengths (so batches are padded): temperature 0
    (``identical_greedy``: one sequence per record, which every path prefills on its own, as ``sicog generate
    --temperature 0`` does), top-k 1 sampling of ``--num-candidates`` copies (``identical_greedy_n``: greedy
    again, through each path's prefill of N sequences, the shared prefill's copies of the cache included), and
    seeded sampling of ``--num-candidates`` sequences per record (``identical_sampled``: the shared prefill's
    copies must sample what a prefill per sequence samples). ``ok`` is False when a path that ran gave other texts
    than the plain one, None when no path could be compared with it (an error, or the time budget: see ``error``
    and ``skipped``). ``progress``: as in :func:`generation`.
    """
    progress = progress or NO_BUDGET
    prepare_generation(model, shape, root)
    texts, rows, skipped = {}, [], []
    runs = {"greedy": {"num_candidates": 1, "temperature": 0.0},
            "greedy_n": {"num_candidates": args.num_candidates, "temperature": 1.0, "top_k": 1, "top_p": 1.0},
            "sampled": {"num_candidates": args.num_candidates, "temperature": 0.7, "top_p": 0.9}}

    def summary() -> dict:
        compared = [row[f"identical_{run}"] for row in rows for run in runs if row[f"identical_{run}"] is not None]
        result = {"rows": rows, "ok": all(n == args.greedy_records for n in compared) if compared else None}
        add_row_errors(result, rows, lambda row: row["path"])
        note_skipped(result, skipped, progress)
        return result

    for path, cache, compiled, shared in within_budget(DECODING_PATHS, progress, skipped, lambda path: path[0]):
        row = {"path": path, "records": args.greedy_records, **{f"identical_{run}": None for run in runs},
               "first_difference": None, "error": ""}
        rows.append(row)
        for run, sampling in runs.items():
            settings = SamplingSettings(**sampling, max_new_tokens=args.max_new_tokens, cache=cache, compile=compiled,
                                        shared_prefill=shared)
            try:
                texts[path, run] = generate_records(model, processor, root, f"{run}-{path}", args.greedy_records,
                                                    args.greedy_records, settings, varied=True)[1]
            except Exception as err:  # noqa: BLE001 - one path failing must not hide the others' outputs
                row["error"] = f"{type(err).__name__}: {err}"
                break
            reference = texts.get((REFERENCE_PATH, run))
            if reference is None:
                continue
            parted = [(i, a, b) for i, (a, b) in enumerate(zip(texts[path, run], reference, strict=True)) if a != b]
            row[f"identical_{run}"] = len(reference) - len(parted)
            if parted and row["first_difference"] is None:
                row["first_difference"] = first_difference(run, *parted[0])
        progress.partial(summary())
    release_decoding_state(model, device)
    return summary()


def first_difference(run: str, record: int, ours: list[str] | None, theirs: list[str] | None) -> str:
    """Where a record's candidates first part from the plain path's, as one line."""
    ours, theirs = ours or [], theirs or []  # a record that got no candidates reads as none
    k = next((k for k, (x, y) in enumerate(zip(ours, theirs)) if x != y), None)
    if k is None:
        return f"{run}, record {record}: {len(ours)} vs {len(theirs)} candidates"
    a, b = ours[k], theirs[k]
    at = next((c for c, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"{run}, record {record}, candidate {k}, character {at}: {a[at:at + 30]!r} vs {b[at:at + 30]!r}"


class ForcedTokens:
    """A logits processor that makes sequence ``r`` decode ``tokens[r // copies]`` whatever its scores (every other
    token gets -inf), so that every decoding path runs through the same tokens and its logits can be compared
    step by step. ``generate`` hands it the generated ids alone (SICOG decodes from embeddings), one column a
    step."""

    def __init__(self, tokens: torch.Tensor, copies: int) -> None:
        self.tokens = tokens.repeat_interleave(copies, dim=0)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        forced = self.tokens[:, input_ids.shape[1], None].to(scores.device)
        return torch.full_like(scores, -math.inf).scatter_(1, forced, 0.0)


def generation_inputs(processor, root: Path, records: int, device: torch.device) -> dict:
    """``model.generate`` inputs of ``records`` varied records in one batch, as `sicog generate` makes them (its
    plan and encoding, left padding; see :func:`sicog.generate.sample.sample_candidates`)."""
    job = generation_job(root, "inputs", records, records, SamplingSettings(), varied=True)
    tasks = plan_batches(read_plan(job, processor).tasks, records)[0]
    batch = processor.collate([encode_task(processor, task)[0] for task in tasks], padding_side="left")
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
            "pixel_values": batch["pixel_values"]}


def decoded_logits(model, inputs: dict, settings: SamplingSettings,
                   forced: ForcedTokens | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The new tokens (sequences x steps) and the float32 logits at each step (sequences x steps x vocabulary) of
    one ``generate`` call with ``settings``' arguments, as `sicog generate` calls it; ``forced``: its tokens."""
    kwargs = settings.generate_kwargs()
    if forced is not None:
        kwargs["logits_processor"] = LogitsProcessorList([forced])
    torch.manual_seed(0)
    out = model.generate(**inputs, **kwargs, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1]:], torch.stack(out.logits, dim=1).float()


def decoding_agreement(model, processor, shape: dict, device: torch.device, args, root: Path,
                       weights: dict[str, torch.Tensor], progress: Progress | None = None) -> dict:
    """Each decoding path in bfloat16 against the plain path in float32, teacher-forced on the same tokens.

    The reference: ``weights`` (the model as built) in float32 (TF32 off), the plain path at temperature 0 on
    ``--greedy-records`` records of a few prompt lengths; its tokens and the logits at every step. Then, in
    bfloat16, each decoding path with the generation section's settings (N = ``--num-candidates`` sequences per
    record, so the shared prefill runs) made to decode those same tokens (:class:`ForcedTokens`): its logits at
    every step of every sequence against the reference's. Greedy outputs themselves are not compared across
    dtypes: with random weights near-tied logits abound, and bf16 rounding flips them on any path. A path is
    ``ok`` at mean cosine >= ``AGREEMENT_TOLERANCE["min_mean_cosine"]``; the section's ``ok`` is False when a
    path that ran is not, None when none ran. The model is left in bfloat16. ``progress``: as in :func:`generation`.
    """
    progress = progress or NO_BUDGET
    prepare_generation(model, shape, root)
    inputs = generation_inputs(processor, root, args.greedy_records, device)
    load_fp32(model, weights)
    with no_tf32():
        tokens, reference = decoded_logits(model, inputs, SamplingSettings(
            num_candidates=1, temperature=0.0, max_new_tokens=args.max_new_tokens, shared_prefill=False))
    model.to(torch.bfloat16)
    reference = reference.repeat_interleave(args.num_candidates, dim=0)
    rows, skipped = [], []

    def summary() -> dict:
        compared = [row["ok"] for row in rows if row["ok"] is not None]
        result = {"records": args.greedy_records, "steps": reference.shape[1],
                  "reference": "plain path, float32, greedy; each path forced onto its tokens",
                  "rows": rows, "ok": all(compared) if compared else None}
        add_row_errors(result, rows, lambda row: row["path"])
        note_skipped(result, skipped, progress)
        return result

    for path, cache, compiled, shared in within_budget(DECODING_PATHS, progress, skipped, lambda path: path[0]):
        row = {"path": path, "sequences": len(reference), "mean_cosine": None, "min_cosine": None,
               "top1_agreement": None, "logits_relative_l2": None, "ok": None, "error": ""}
        rows.append(row)
        settings = SamplingSettings(num_candidates=args.num_candidates, temperature=0.7, top_p=0.9,
                                    max_new_tokens=args.max_new_tokens, cache=cache, compile=compiled,
                                    shared_prefill=shared)
        try:
            decoded, logits = decoded_logits(model, inputs, settings, ForcedTokens(tokens, args.num_candidates))
            if not torch.equal(decoded, tokens.repeat_interleave(args.num_candidates, dim=0)):
                raise RuntimeError("the path did not decode the forced tokens: its logits are not comparable")
            stats = logit_stats(logits, reference)
            row.update({name: stats[name] for name in ("mean_cosine", "min_cosine", "top1_agreement",
                                                       "logits_relative_l2")})
            row["ok"] = agrees(None, row["mean_cosine"])
        except Exception as err:  # noqa: BLE001 - one path failing must not hide the others' agreement
            row["error"] = f"{type(err).__name__}: {err}"
        progress.partial(summary())
    release_decoding_state(model, device)
    return summary()

def commit() -> str:
    """``SICOG_COMMIT`` when set (a copied tree's git metadata can be older than its files), else the checked-out
    commit."""
    if os.environ.get("SICOG_COMMIT"):
        return os.environ["SICOG_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def installed(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# Distributions whose versions every run records, also when the imports failed: what the check imports.
RECORDED_PACKAGES = ("torch", "transformers", "huggingface-hub", "tokenizers", "safetensors", "accelerate", "numpy",
                     "pillow", "braceexpand")


def basic_environment() -> dict:
    """What the standard library alone can say: date, commit, interpreter, versions of the packages the check needs."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit(),
            "python": platform.python_version(), "executable": sys.executable,
            "packages": {name: installed(name) for name in RECORDED_PACKAGES}}


def environment(device: torch.device, peak: tuple[float | None, str], basic: dict | None = None) -> dict:
    """Date, commit, versions, device and its peak: what makes two results comparable.

    Also the versions of the optional fast-path libraries (None where absent), so that one run on a lent
    machine says which backends it could offer (e.g. whether a vLLM decoding backend is worth building).
    ``basic``: :func:`basic_environment`'s answer where it was already taken.
    """
    import transformers

    info = dict(basic or basic_environment())
    info.update({"torch": torch.__version__, "transformers": transformers.__version__,
                 "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else f"CPU {platform.processor() or platform.machine()}"),
                 "cpu_count": os.cpu_count(), "peak_tflops": peak[0] / 1e12 if peak[0] else None,
                 "peak_source": peak[1], "flash_attn_importable": is_flash_attn_2_available()})
    info.update({f"{name.replace('-', '_')}_version": installed(name) for name in OPTIONAL_BACKENDS})
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def setup_section() -> dict | None:
    """What gpu_check.sh reported of its wheel install, or None where it installed nothing: the interpreter, what
    pip took from the wheels, what pip said conflicts with the machine's other packages, and the error if it failed
    (with the end of pip's output)."""
    log_path = os.environ.get("GPU_CHECK_SETUP_LOG")
    if not log_path:
        return None
    try:
        log = Path(log_path).read_text(errors="replace")
    except OSError as err:
        log = f"(no log: {err})"
    lines = log.splitlines()
    taken = [line.split("Successfully installed", 1)[1].split() for line in lines if "Successfully installed" in line]
    section = {"wheel_dir": os.environ.get("GPU_CHECK_WHEEL_DIR", ""), "python": sys.executable,
               "installed_from_wheels": " ".join(taken[-1]) if taken else "",
               "conflicts_with_machine_packages": [line for line in lines if ", but you have " in line]}
    if os.environ.get("GPU_CHECK_SETUP_SECONDS"):
        section["seconds_in_section"] = float(os.environ["GPU_CHECK_SETUP_SECONDS"])
    if os.environ.get("GPU_CHECK_SETUP_ERROR"):
        section["error"] = os.environ["GPU_CHECK_SETUP_ERROR"]
        section["log"] = "\n".join(lines[-40:])
    return section


def render(results: dict) -> str:
    """The results as markdown: environment and model, then each section's rows and values as tables."""
    lines = ["# SICOG GPU check", "", *_table({**results["environment"], **results["model"]})]
    if results.get("warnings"):
        lines += ["", "## warnings", "", *(f"- {line}" for line in results["warnings"])]
    for name, section in results["sections"].items():
        lines += ["", f"## {name}", ""]
        rows = section.get("rows")
        if rows:
            lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
            lines += ["| " + " | ".join(_cell(v) for v in row.values()) + " |" for row in rows] + [""]
        lines += _table({k: v for k, v in section.items() if k not in ("rows", "traceback", "log")})
        for block in ("traceback", "log"):
            if block in section:
                lines += ["", "```", section[block].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def _table(values: dict) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in values.items())]


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


class Progress(Protocol):
    """What a section's loop asks of the run: is the time budget spent, and keep this partial result."""

    budget_s: float

    def over_budget(self) -> bool: ...

    def partial(self, result: dict) -> None: ...


class _NoBudget:
    """The progress of a section run on its own (tests, a notebook): no budget, nothing saved."""

    budget_s = math.inf

    def over_budget(self) -> bool:
        return False

    def partial(self, result: dict) -> None:
        pass


NO_BUDGET = _NoBudget()


class Sections:
    """Runs named sections under a time budget; a failure is recorded and the next section still runs.

    ``on_result`` is called when a section starts, whenever the running section reports a partial result
    (:meth:`partial`, after each of its configurations) and when it ends, so results are on disk even if the
    process is killed mid-section; a section that raises keeps its last partial result beside its error.
    ``spent_s``: seconds already used before this object was made (the wheel install of gpu_check.sh, the
    imports), counted against ``budget_s``.
    """

    def __init__(self, budget_s: float, on_result: Callable[[], None] = lambda: None, spent_s: float = 0.0) -> None:
        self.start = time.perf_counter() - spent_s
        self.budget_s = budget_s
        self.on_result = on_result
        self.results: dict[str, dict] = {}
        self.current: str | None = None

    def over_budget(self) -> bool:
        """Whether the time budget is spent: sections and configurations that would start now are skipped."""
        return time.perf_counter() - self.start > self.budget_s

    def partial(self, result: dict) -> None:
        """Record what the running section has measured so far, and save it."""
        if self.current is not None:
            self.results[self.current] = {**result, "incomplete": "the section was still running when this was saved"}
            self.on_result()

    def run(self, name: str, fn: Callable[[], dict]) -> None:
        """Run ``fn`` as section ``name`` unless the budget is spent; record its result or its error."""
        if self.over_budget():
            self.results[name] = {"skipped": f"time budget of {self.budget_s:.0f} s spent"}
        else:
            started = time.perf_counter()
            self.current = name
            self.results[name] = {"incomplete": "the section was still running when this was saved"}
            self.on_result()
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - every failure is reported, the other sections still run
                # What the section reported before it failed (its finished rows) stays beside the error.
                kept = {k: v for k, v in self.results[name].items() if k != "incomplete"}
                result = {**kept, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
            finally:
                self.current = None
            result["seconds_in_section"] = round(time.perf_counter() - started, 2)
            self.results[name] = result
        print(f"[gpu_check] {name}: {json.dumps(self.results[name], default=str)[:300]}", flush=True)
        self.on_result()


# Wheels for a machine without internet (gpu_wheels.sh fetches them here, gpu_check.sh installs them there).
# Never carried, because the GPU image has them (KINDS.md lists each) and they are big: torch and its CUDA stack
# (gigabytes; only the machine's own build fits its driver, and liger-kernel runs on its triton); numpy, scipy and
# scikit-learn (tens of MB; scipy and scikit-learn for sentence-transformers); matplotlib and pillow (17 MB with
# fonttools; any version from the last years satisfies pyproject.toml). Their requirements stay in requirements.txt,
# so pip there still checks that the machine's versions fit (the setup section of gpu_check.json says when not).
NOT_CARRIED = ("torch", "triton", "nvidia-*", "cuda-*", "numpy", "scipy", "scikit-learn", "matplotlib", "pillow")
# Pinned to the version installed here, not left to whatever the machine has that pyproject.toml allows: the check
# measures the transformers this checkout is developed and tested with (its generation and cache code is timed).
PINNED_TO_LOCAL = ("transformers",)


def not_carried(name: str) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(name, pattern) for pattern in NOT_CARRIED)


def top_requirements(root: Path) -> list[str]:
    """What gpu_check.sh installs on the device: sicog's runtime requirements (pyproject.toml) and the ``gpu`` extra's
    liger-kernel (``--fused_loss liger``), with :data:`PINNED_TO_LOCAL` pinned to the versions installed here."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    try:
        import tomllib

        project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
        requirements = [*project["dependencies"], *project["optional-dependencies"]["gpu"]]
    except ImportError:  # Python 3.10: the installed metadata says the same
        requirements = [r for r in importlib.metadata.requires("sicog") or []
                        if "extra" not in r or 'extra == "gpu"' in r.replace("'", '"')]
    chosen = []
    for text in requirements:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            requirement.marker = None
        if name in ("flash-attn",):  # a CUDA build of its own: the check reports whether it imports, nothing more
            continue
        if name in PINNED_TO_LOCAL and (version := installed(name)):
            requirement = Requirement(f"{requirement.name}=={version}")
        chosen.append(str(requirement))
    return chosen


def device_markers(python_version: str) -> dict[str, str]:
    """Environment-marker values of the device: CPython ``python_version`` (``3.12`` or ``3.12.3``) on x86-64 Linux."""
    full = python_version if python_version.count(".") >= 2 else f"{python_version}.0"
    return {"python_version": ".".join(full.split(".")[:2]), "python_full_version": full,
            "implementation_name": "cpython", "implementation_version": full,
            "platform_python_implementation": "CPython", "os_name": "posix", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64"}


def wheel_metadata(wheel_dir: Path) -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, Requires-Dist) of every wheel in ``wheel_dir``."""
    from packaging.utils import parse_wheel_filename

    found = {}
    for path in sorted(wheel_dir.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
            message = Parser().parsestr(archive.read(member).decode("utf-8", errors="replace"))
        found[name] = (str(version), message.get_all("Requires-Dist") or [])
    return found


def local_metadata(name: str) -> tuple[str, list[str]] | None:
    """(version, requirements) of ``name`` as installed here, or None where it is not installed."""
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return distribution.version, distribution.requires or []


def wheel_pins(requirements: list[str], python_version: str, wheels: dict[str, tuple[str, list[str]]],
               local: Callable[[str], tuple[str, list[str]] | None] = local_metadata) -> dict[str, str]:
    """Canonical name -> what to download, for every distribution in the dependency closure of ``requirements`` on
    the device (markers evaluated for it, extras followed) except :data:`NOT_CARRIED`: ``name==version`` of the wheel
    already in ``wheels``, else of the version installed here (``local``), else the requirement itself (its own
    requirements are walked once its wheel is in ``wheels``: call again after downloading)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    markers = device_markers(python_version)

    def applies(requirement: Requirement, extra: str) -> bool:
        return requirement.marker is None or requirement.marker.evaluate({**markers, "extra": extra})

    pins: dict[str, str] = {}
    walked: set[tuple[str, str]] = set()
    stack = [r for r in map(Requirement, requirements) if applies(r, "")]
    while stack:
        requirement = stack.pop()
        name = canonicalize_name(requirement.name)
        if not_carried(name):
            continue
        metadata = wheels.get(name) or local(name)
        if name not in pins:
            if metadata:
                pins[name] = f"{name}=={metadata[0]}"
            else:
                bare = Requirement(str(requirement))
                bare.marker = None
                pins[name] = str(bare)
        if metadata is None:
            continue
        for extra in ("", *sorted(requirement.extras)):
            if (name, extra) not in walked:
                walked.add((name, extra))
                stack += [r for r in map(Requirement, metadata[1]) if applies(r, extra)]
    return pins


def print_wheel_set(python_version: str, wheel_dir: Path) -> int:
    """Write ``wheel_dir/requirements.txt`` (what gpu_check.sh installs) and print, one a line, the wheels that
    ``wheel_dir`` still lacks for it (nothing once the set is complete); warn about wheels nothing needs."""
    root = Path(__file__).resolve().parents[1]
    requirements = top_requirements(root)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    (wheel_dir / "requirements.txt").write_text(
        "# Written by benchmarks/gpu_wheels.sh: what benchmarks/gpu_check.sh installs from the wheels beside this\n"
        "# file (pip install --no-index --find-links), taking only what the machine's own packages do not satisfy.\n"
        + "".join(f"{line}\n" for line in requirements))
    wheels = wheel_metadata(wheel_dir)
    pins = wheel_pins(requirements, python_version, wheels)
    for name in sorted(set(wheels) - set(pins)):
        print(f"warning: {wheel_dir} holds {name}, which nothing needs", file=sys.stderr)
    for name, pin in sorted(pins.items()):
        if name not in wheels:
            print(pin)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU (the test); same code paths")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"),
                        help="results folder when $OUT is not set")
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 8; 2 with --tiny)")
    parser.add_argument("--agreement-batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None, help="untimed training steps (default 3; 1 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; 2 with --tiny)")
    parser.add_argument("--num-candidates", type=int, default=6)
    parser.add_argument("--gen-batch-sizes", type=int, nargs="+", default=None,
                        help="records per generate call (default 8 32 128; 2 8 with --tiny); a repeated size "
                             "runs once")
    parser.add_argument("--greedy-records", type=int, default=8, help="records of the greedy check")
    parser.add_argument("--curve-lr", type=float, default=1e-4,
                        help="learning rate of the training paths' loss curves (timing does not depend on it)")
    parser.add_argument("--gen-batches", type=int, default=None, help="batches per size (default 2; 1 with --tiny)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 64; 8 with --tiny")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak dense bf16 TFLOP/s (default: from the GPU name)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="the sections to run after building the model, in this order (default: all, in "
                             "the order listed)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="sections and configurations that would start later are skipped (seconds since "
                             "gpu_check.sh started, or since this script did when run directly)")
    parser.add_argument("--wheel-set", metavar="PYTHON_VERSION", default=None,
                        help="instead of the check: print the wheels still to fetch into --wheel-dir for a machine "
                             "with this CPython on x86-64 Linux, and write its requirements.txt (gpu_wheels.sh)")
    parser.add_argument("--wheel-dir", type=Path, default=None, help="the folder of --wheel-set")
    args = parser.parse_args(argv)
    if args.wheel_set and args.wheel_dir is None:
        parser.error("--wheel-set needs --wheel-dir")
    defaults = {"batch_size": (8, 2), "warmup": (3, 1), "steps": (20, 2), "gen_batches": (2, 1),
                "max_new_tokens": (64, 8), "gen_batch_sizes": ([8, 32, 128], [2, 8])}
    for key, (full, small) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if args.tiny else full)
    # A size given twice would be measured twice for nothing.
    args.gen_batch_sizes = list(dict.fromkeys(args.gen_batch_sizes))
    return args


def seconds_since_start() -> float:
    """Seconds since gpu_check.sh started (``GPU_CHECK_STARTED_AT``, Unix time), 0 where it did not set it."""
    try:
        return max(0.0, time.time() - float(os.environ["GPU_CHECK_STARTED_AT"]))
    except (KeyError, ValueError):
        return 0.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wheel_set:
        return print_wheel_set(args.wheel_set, args.wheel_dir)
    tiny = args.tiny
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"environment": basic_environment(), "settings": {k: str(v) for k, v in vars(args).items()},
                     "model": {}}

    def save() -> None:
        results["total_seconds"] = round(time.perf_counter() - sections.start, 1)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (out / "gpu_check.md").write_text(render(results))

    sections = Sections(args.budget_s, save, spent_s=seconds_since_start())
    results["sections"] = sections.results
    setup = setup_section()
    if setup is not None:
        sections.results["setup"] = setup
    if IMPORT_ERROR is not None:  # nothing below can run; say why
        sections.results["imports"] = {"error": IMPORT_ERROR.strip().splitlines()[-1], "traceback": IMPORT_ERROR}
        save()
        print(render(results))
        failed = [name for name, section in sections.results.items() if "error" in section]
        print(f"results in {out}; failed: {', '.join(failed)}")
        return 1
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(1)  # shared CPUs: more threads stall on a busy machine
    shape = SHAPES["tiny" if tiny else "full"]
    peak = peak_flops(device, args.peak_tflops)
    results["environment"] = environment(device, peak, results["environment"])
    save()
    built = {}

    def build_section() -> dict:
        built["model"], built["processor"] = build(tiny, device)
        model = built["model"]
        # The float32 weights as built, the reference of every bf16 comparison: sections cast the model to bfloat16
        # for good, and train it.
        built["weights"] = cpu_copy(model)
        parts = {"vision_tower": model.vision_tower, "resampler": model.resampler,
                 "language_model": model.language_model}
        results["model"] = {f"{k}_parameters": sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        results["model"]["total_parameters"] = sum(p.numel() for p in model.parameters())
        return dict(results["model"])

    def need_model():
        if "model" not in built:
            raise RuntimeError("the model could not be built (see the build section)")
        return built["model"], built["processor"]

    def bf16_model():
        model, processor = need_model()
        return model.to(torch.bfloat16), processor  # a no-op once an earlier section has cast it

    # need_model() / bf16_model() come first in each call: built["weights"] exists once they return.
    with tempfile.TemporaryDirectory() as tmp:
        run = {
            "agreement": lambda: agreement(*need_model(), shape, device, args.agreement_batch, built["weights"]),
            "training": lambda: training(*bf16_model(), shape, device, args, peak[0], built["weights"], sections),
            "attention": lambda: attention(*bf16_model(), shape, device, args, sections),
            # In float32: the model's weights are random, so its logits hold near-ties that bfloat16 rounding in
            # one kernel or another (each path uses other kernels) would flip without any path being wrong.
            "greedy": lambda: greedy(need_model()[0].float(), need_model()[1], shape, device, args, Path(tmp),
                                     sections),
            "decoding_agreement": lambda: decoding_agreement(*bf16_model(), shape, device, args, Path(tmp),
                                                             built["weights"], sections),
            "generation": lambda: generation(*bf16_model(), shape, device, args, Path(tmp), sections),
        }
        sections.run("build", build_section)
        for name in dict.fromkeys(args.sections):
            sections.run(name, run[name])
    results["warnings"] = unavailable_paths(results["sections"])
    save()
    print(render(results))
    failed = [name for name, section in sections.results.items() if "error" in section or "skipped" in section]
    # Only a comparison that was made can fail: a section that errored or was skipped is already listed above.
    if sections.results.get("agreement", {}).get("ok") is False:
        failed.append("agreement tolerance")
    if sections.results.get("greedy", {}).get("ok") is False:
        failed.append("greedy outputs differ between decoding paths")
    if sections.results.get("decoding_agreement", {}).get("ok") is False:
        failed.append("bf16 decoding disagrees with fp32")
    for line in results["warnings"]:
        print(f"warning: {line}")
    print(f"results in {out}; {'failed: ' + ', '.join(failed) if failed else 'all sections passed'}")
    return 1 if failed else 0


def unavailable_paths(sections: dict[str, dict]) -> list[str]:
    """One line per path that could not run here (a fast path whose library is missing, e.g. liger-kernel): not
    a failure of the check, but a measurement it lacks."""
    return [f"{name} {row.get('path')}: {row['error']}" for name, section in sections.items()
            for row in section.get("rows", []) if str(row.get("error", "")).startswith("unavailable")]


if __name__ == "__main__":
    sys.exit(main())
