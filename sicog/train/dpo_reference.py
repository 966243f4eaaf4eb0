"""Reference log-probabilities for DPO, computed once with the starting model before training begins.

Precomputing them means no second (frozen) model is held during training: nothing to place or
partition under ZeRO-2/ZeRO-3, nothing extra with LoRA. Each rank scores its share of the pairs
(every ``world``-th pair), appending to its own shard file so that a killed run resumes; the shares
are then exchanged between ranks and rank 0 writes one cache file, keyed by a fingerprint of the
pairs, the model and the settings, that later runs on the same data reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import send_to_device
from torch import nn
from tqdm.auto import tqdm
from transformers.integrations import is_deepspeed_zero3_enabled

from sicog.data.checkpoint_files import files_signature
from sicog.data.jsonl import JsonlAppender, iter_records, write_json
from sicog.data.lock import output_lock
from sicog.data.schema import record_images, resolve_image
from sicog.data.sharding import gather_shares, shard
from sicog.train.dpo_loss import pair_logps
from sicog.train.pairs import PairCollator, PairDataset

logger = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.json"


def fingerprint(dataset: PairDataset, settings: dict) -> str:
    """A digest of every pair (in dataset order), of its image files (size and time: pictures rewritten under the
    same names are other inputs) and of the settings that change the log-probabilities."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for record in dataset.records:
        images = [files_signature(resolve_image(name, dataset.image_folder)) for name in record_images(record)]
        fields = [record.get("id"), record.get("image"), record["prompt"], record["chosen"], record["rejected"],
                  images]
        digest.update(json.dumps(fields, ensure_ascii=False).encode() + b"\n")
    return digest.hexdigest()


def reference_settings(
    model: nn.Module,
    chat_template: str,
    checkpoints: dict[str, str | None],
    image_folder: str | None,
    max_length: int,
    seed: int,
    autocast: torch.dtype | None = None,
) -> dict:
    """What, besides the pairs, decides the reference log-probabilities: the starting ``model``'s files
    (``checkpoints``: each argument naming a checkpoint or file it was built from, such as ``--projector``), its
    whole configuration as loaded (which sets the processor's slicing and layout too), its dtype and attention,
    the chat template, and how the pairs are read."""
    return {
        "checkpoints": {
            name: [str(Path(path).resolve()) if path and Path(path).exists() else path, files_signature(path)]
            for name, path in checkpoints.items()
        },
        # (the path it was loaded from, as typed, is left out: "checkpoints" holds it resolved)
        "config": {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"},
        "attention": model.config._attn_implementation,
        "chat_template": chat_template,
        "dtype": str(model.dtype),
        "autocast": str(autocast),
        "image_folder": str(Path(image_folder).resolve()) if image_folder else None,  # however it was typed
        "max_length": max_length,
        "seed": seed,  # a YAML mixture's random sampling decides which pairs, in which order
    }


_CACHE_START = re.compile(rb'\s*\{\s*"fingerprint"\s*:')


def check_reference_file(path: str | os.PathLike) -> None:
    """Raise ValueError when ``path`` holds something other than a reference cache, which the run would replace
    (the pairs file named by mistake, say)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--dpo_reference_file {path} is a folder; name the file to write the reference to")
    if path.exists():
        with path.open("rb") as handle:
            if not _CACHE_START.match(handle.read(256)):
                raise ValueError(f"--dpo_reference_file {path} holds something other than reference log-probabilities,"
                                 " which the run would write over it; name a new file or an earlier run's")


def _load_cache(path: Path, key: str, n: int) -> list[tuple[float, float]] | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if cached.get("fingerprint") != key or len(cached.get("logps", [])) != n:
        logger.warning("reference cache %s belongs to other pairs or another model; computing it again", path)
        return None
    return [(float(c), float(r)) for c, r in cached["logps"]]


def _full_weights(model: nn.Module) -> contextlib.AbstractContextManager:
    """Under ZeRO-3 the weights are partitioned over ranks: gather them for the (no-grad) scoring pass."""
    if is_deepspeed_zero3_enabled():
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def _autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type, as the Trainer runs the policy's forward; none for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _score_share(
    model: nn.Module,
    dataset: PairDataset,
    collator: PairCollator,
    part: Path,
    indices: list[int],
    batch_size: int,
    device,
    show_progress: bool,
    autocast: torch.dtype | None,
) -> dict[int, tuple[float, float]]:
    """Score this rank's pairs, resuming from (and appending to) its shard file ``part``."""
    with JsonlAppender(part) as out:
        todo = [i for i in indices if str(i) not in out.done_ids]
        # Longest first, similar lengths together: little padding, and memory trouble shows at once.
        todo.sort(key=lambda i: -dataset.lengths[i])
        batches = [todo[s : s + batch_size] for s in range(0, len(todo), batch_size)]
        was_training = model.training
        model.eval()
        with torch.no_grad(), _full_weights(model), _autocast(device, autocast):
            for batch_indices in tqdm(batches, desc="reference log-probs", disable=not show_progress):
                batch = send_to_device(collator([dataset[i] for i in batch_indices]), device)
                logps = pair_logps(model, batch)
                for i, chosen, rejected in zip(batch_indices, logps.chosen.tolist(), logps.rejected.tolist()):
                    out.write({"id": str(i), "pair": dataset.records[i]["id"], "chosen": chosen, "rejected": rejected})
                out.flush()
        model.train(was_training)
    mine = set(indices)
    return {int(row["id"]): (row["chosen"], row["rejected"]) for _, row in iter_records(part) if int(row["id"]) in mine}


def _agreed(value):
    """Rank 0's ``value`` on every rank (the cache may exist on rank 0's disk only)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def compute_reference(
    model: nn.Module,
    dataset: PairDataset,
    collator: PairCollator,
    *,
    path: str | Path,
    key: str,
    batch_size: int,
    device: torch.device | str,
    rank: int = 0,
    world: int = 1,
    show_progress: bool = True,
    autocast: torch.dtype | None = None,
) -> list[tuple[float, float]]:
    """``(chosen, rejected)`` log-probabilities of every pair under ``model`` as it is now, in dataset order.

    Every rank must call this (under ZeRO-3 the weights are gathered collectively). A cache at
    ``path`` with the same ``key`` is reused; otherwise the result is written there by rank 0.
    ``autocast``: the type the Trainer autocasts the policy's forward to (fp32 weights with ``--bf16``
    and no DeepSpeed), so that the reference is the starting policy computed the same way.
    """
    path = Path(path)
    # Two runs scoring into one file (a beta sweep started at once) would append to the same shard files, and
    # the first to finish would delete them under the other: the second stops at once, naming the first.
    with output_lock(path, enabled=rank == 0):
        cached = _agreed(_load_cache(path, key, len(dataset)) if rank == 0 else None)
        if cached is not None:
            logger.info("reference log-probabilities read from %s", path)
            return cached
        if not is_deepspeed_zero3_enabled():
            model.to(device)  # ZeRO-3 gathers the weights onto the device itself
        shard_dir = path.with_name(f".{path.stem}-{key[:16]}")
        part = shard_dir / f"rank{rank:05d}-of-{world:05d}.jsonl"
        indices = shard(range(len(dataset)), rank, world)
        share = _score_share(model, dataset, collator, part, indices, batch_size, device, show_progress, autocast)
        values = gather_shares(share)
        missing = [i for i in range(len(dataset)) if i not in values]
        if missing:
            raise RuntimeError(
                f"reference log-probabilities missing for {len(missing)} pairs (first indices {missing[:5]})"
            )
        result = [values[i] for i in range(len(dataset))]
        if rank == 0:
            write_json(path, {
                "fingerprint": key,
                "pairs": len(result),
                "ids": [r["id"] for r in dataset.records],
                "logps": [list(v) for v in result],
            })
        shutil.rmtree(shard_dir, ignore_errors=True)
        return result

