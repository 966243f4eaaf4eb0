"""Where a model runs: the device and weight dtype from ``auto`` or explicit settings.

Torch is imported where it is used: the command lines take their ``--dtype`` choices from here before any
model code loads (and the curation encoder's environment may have another torch)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Weight dtypes a --dtype flag takes (besides ``auto``, where a command has it).
DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: one GPU per local rank when GPUs are visible, else cpu; bfloat16 on GPU, float32 on CPU.

    The GPU is cuda:(LOCAL_RANK modulo the visible GPUs): cuda:LOCAL_RANK under torchrun or accelerate,
    and cuda:0 where a launcher shows each process only its own GPU (VLMEvalKit's run.py does).
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
        else:
            device = "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPES)}")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:  # "gpu", "cuda0": torch's message lists the device types
        raise ValueError(f"--device {device}: {str(err).splitlines()[0]}") from None
    # Else the first tensor moved there fails, after the model is read, in a traceback.
    if chosen.type == "meta":
        raise ValueError(f"--device {device}: a meta device holds no weights to run")
    if chosen.type != "cpu":
        backend = getattr(torch, chosen.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
        if backend is None or not backend.is_available():
            raise ValueError(f"--device {device}: no {chosen.type.upper()} device is available here")
        if chosen.index is not None and chosen.index >= backend.device_count():
            raise ValueError(f"--device {device}: only {backend.device_count()} {chosen.type.upper()} device(s) are "
                             "visible here")
    return chosen, getattr(torch, dtype)
