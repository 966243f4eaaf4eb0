"""Tiny pretrained parts, checkpoints and datasets that the training tests share."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionModel, Qwen2ForCausalLM

from sicog.model.builders import new_model, save_pretrained, tiny_config, tiny_text_config, tiny_vision_config

TINY_FLAGS = ["--resampler_num_queries", "16", "--scale_resolution", "64", "--max_slice_nums", "4"]
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}


def _pretrain_llm(llm: Qwen2ForCausalLM, tokenizer, steps: int = 60) -> None:
    """Teach the tiny LLM the answer format (not the colour, which only the image tells), like a pretrained LLM."""
    texts = [
        tokenizer.apply_chat_template(
            [
                {"role": "user", "content": "What colour is this image?"},
                {"role": "assistant", "content": f"The image is {c}."},
            ],
            tokenize=False,
        )
        for c in COLORS
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(llm.parameters(), lr=3e-3)
    for _ in range(steps):
        llm(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def make_parts(root: Path, tokenizer) -> tuple[Path, Path]:
    """A tiny CLIP vision tower and a tiny pretrained Qwen2 (+ tokenizer) saved like downloaded checkpoints.

    The tower's native size (64) equals the 64x64 images' views, so some ranks see native-size views and
    others do not: the case where the vision path must still run identically on every rank (ZeRO-3).
    """
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config(image_size=64)).save_pretrained(root / "clip")
    llm = Qwen2ForCausalLM(tiny_text_config(len(tokenizer) + 1))
    _pretrain_llm(llm, tokenizer)
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    return root / "clip", root / "llm"


def make_checkpoint(root: Path, tokenizer) -> Path:
    """A full tiny SICOG checkpoint."""
    torch.manual_seed(0)
    model, processor = new_model(tiny_config(tokenizer, vision_config=tiny_vision_config(image_size=64)), tokenizer)
    save_pretrained(model, processor, root / "base")
    return root / "base"


def make_dataset(root: Path, n: int = 12, text_only: int = 2) -> Path:
    """``n`` image records (several sizes, so several slice grids) and ``text_only`` text records."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    sizes = [(64, 64), (96, 64), (128, 96), (64, 128)]
    records = []
    for i in range(n):
        color = list(COLORS)[i % len(COLORS)]
        Image.new("RGB", sizes[i % len(sizes)], COLORS[color]).save(images / f"{i}.png")
        records.append({"id": f"img-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this image?"},
            {"from": "gpt", "value": f"The image is {color}."}]})
    for i in range(text_only):
        records.append({"id": f"txt-{i}", "conversations": [
            {"from": "human", "value": "Say hello."}, {"from": "gpt", "value": "Hello there."}]})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def logged_losses(output_dir: Path) -> list[float]:
    """Training losses logged in the newest checkpoint's trainer state."""
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoints[-1] / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The saved weights of a checkpoint folder."""
    return load_file(str(checkpoint / "model.safetensors"))
