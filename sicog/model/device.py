"""Where a model runs: the device and weight dtype from ``auto`` or explicit settings."""

from __future__ import annotations

import os

import torch

DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: cuda:LOCAL_RANK when a GPU is available, else cpu; bfloat16 on GPU, float32 on CPU."""
    if device == "auto":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    return torch.device(device), getattr(torch, dtype)
