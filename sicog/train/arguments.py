"""The typed arguments of `sicog train`: the single source of truth for every training setting.

Besides its own flags, `sicog train` takes every HF ``TrainingArguments`` flag (``--learning_rate``,
``--per_device_train_batch_size``, ``--deepspeed``, ``--gradient_checkpointing``, ...).
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from dataclasses import dataclass, field
from importlib import resources

import torch
from transformers import TrainingArguments

from sicog.model.builders import SEPARATOR_CHOICES
from sicog.model.configuration import SicogConfig
from sicog.train.fast_paths import FUSED_LOSSES

PARTS = ("vision_tower", "resampler", "language_model")


def config_choices(name: str) -> tuple[str, ...]:
    """The values SicogConfig's ``Literal`` annotation of ``name`` allows: its flag's choices, checked by argparse
    before the model is loaded."""
    return typing.get_args(inspect.get_annotations(SicogConfig, eval_str=True)[name])
# How the SFT loss weighs the samples of one optimizer step (docs/training.md, "Loss weighting").
LOSS_WEIGHTINGS = ("tokens", "micro_batches")


class UsageError(ValueError):
    """The arguments of `sicog train` do not describe a run that can start (the command exits 2)."""


@dataclass(frozen=True)
class StagePreset:
    """What a stage trains and where its model comes from."""

    parts: tuple[str, ...]
    never_split: bool
    source: str  # "checkpoint": --model_name_or_path; "parts": --vision_tower + --language_model (+ --projector)
    title: str  # what the stage is, in the model card


STAGES: dict[str, StagePreset] = {
    "0": StagePreset(PARTS, never_split=False, source="checkpoint", title="warm-up on annotated CoD / CoT data"),
    "1": StagePreset(("resampler",), never_split=True, source="parts", title="alignment"),
    "1.5": StagePreset(PARTS, never_split=False, source="parts",
                       title="pre-training on self-generated, self-curated data"),
    "2": StagePreset(PARTS, never_split=False, source="checkpoint", title="visual instruction tuning"),
    # DPO: the preference is about the answer; the vision tower stays as the SFT model left it.
    "dpo": StagePreset(("resampler", "language_model"), never_split=False, source="checkpoint",
                       title="preference training on chosen / rejected pairs"),
}


@dataclass
class ModelArguments:
    """Where the model comes from and, when built from parts, its shape."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "a full SICOG checkpoint"})
    vision_tower: str | None = field(default=None, metadata={"help": "CLIP checkpoint (building from parts)"})
    language_model: str | None = field(default=None, metadata={"help": "causal LLM checkpoint (building from parts)"})
    projector: str | None = field(default=None, metadata={"help": "projector-only checkpoint from stage 1"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | flash_attention_2 | eager"})
    resampler_num_queries: int = SicogConfig.resampler_num_queries
    resampler_attention: str = field(
        default=SicogConfig.resampler_attention,
        metadata={"help": "cell (spatially constrained) | global", "choices": config_choices("resampler_attention")},
    )
    resampler_pooling: str = field(
        default=SicogConfig.resampler_pooling,
        metadata={"help": "roi_align (published) | average (earlier)", "choices": config_choices("resampler_pooling")},
    )
    image_layout: str = field(
        default=SicogConfig.image_layout,
        metadata={"help": "release (published llava_arch) | uhd_v1 (earlier)",
                  "choices": config_choices("image_layout")},
    )
    label_masking: str = field(
        default=SicogConfig.label_masking,
        metadata={"help": "replies | release (published preprocess_qwen)", "choices": config_choices("label_masking")},
    )
    slice_separators: str = field(default="auto", metadata={"help": "auto | release (LLaMA ids 29892, 13) | tokenizer",
                                                            "choices": SEPARATOR_CHOICES})
    inference_long_side: int | None = field(
        default=None, metadata={"help": "resize to this long side before slicing at inference (published: 1024)"}
    )
    scale_resolution: int = SicogConfig.scale_resolution
    max_slice_nums: int = SicogConfig.max_slice_nums


# The flags that name what a run starts from: a full checkpoint, or the parts and a stage-1 projector.
STARTING_CHECKPOINTS = ("model_name_or_path", "vision_tower", "language_model", "projector")


# --augment: none, or the published loader's image resizing (sicog/train/augment.py).
AUGMENT_CHOICES = ("none", "release")


@dataclass
class DataArguments:
    """What the run reads."""

    data_path: str = field(metadata={
        "help": "records: .jsonl/.json, .parquet/.arrow, a dataset folder (save_to_disk), a cached Hub dataset id "
        "(owner/name[:split]), comma-separated sources, or a .yaml mixture"})
    image_folder: str | None = field(default=None, metadata={"help": "folder that image paths are relative to"})
    model_max_length: int = field(default=4096, metadata={"help": "tokens per sample, image tokens included"})
    augment: str = field(default="none", metadata={"help": "none | release (the published loader's image resizing)",
                                                   "choices": AUGMENT_CHOICES})
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "batches of image or text-only samples of similar length"}
    )
    sample_log: str | None = field(
        default=None, metadata={"help": "append the ids each rank trains on, with the step, to FILE.rankN.jsonl (a "
                                        "resumed run appends again the steps after its checkpoint: a step's "
                                        "later lines are what the model was trained on)"}
    )


def _json_value(text: str) -> type | None:
    """The type of the JSON value ``text`` is (None when it is no JSON)."""
    try:
        return type(json.loads(text))
    except ValueError:
        return None


@dataclass
class SicogTrainingArguments(TrainingArguments):
    """HF training arguments plus the stage and what it trains."""

    stage: str = field(default="2", metadata={"help": "0 | 1 | 1.5 | 2 | dpo", "choices": tuple(STAGES)})
    tunable_parts: str | None = field(
        default=None, metadata={"help": f"comma list of {','.join(PARTS)}; overrides the stage preset"}
    )
    vision_tower_lr: float | None = field(
        default=None, metadata={"help": "separate learning rate for the vision tower"}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the LLM (0: full fine-tuning)"})
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO: inverse temperature of the sigmoid preference loss"})
    dpo_alpha: float = field(default=1.0, metadata={"help": "DPO: weight of the preference loss"})
    dpo_gamma: float = field(
        default=1.0, metadata={"help": "DPO: weight of the SFT loss (mean token NLL) on the chosen answers"}
    )
    dpo_reference_file: str | None = field(
        default=None,
        metadata={
            "help": "DPO: cache of the reference log-probabilities (default OUTPUT_DIR/reference_logps.json); "
            "reused when data and model match"
        },
    )
    loss_weighting: str = field(default="tokens", metadata={
        "help": "tokens: every supervised token of an optimizer step weighs the same, whatever the accumulation "
                "steps and processes (transformers' loss); micro_batches: the mean of the micro-batches' token "
                "means, as the published trainer computed it (DPO always averages its micro-batches)",
        "choices": LOSS_WEIGHTINGS})
    fused_loss: str = field(default="auto", metadata={
        "help": "auto: the loss straight from the hidden states (Liger's fused linear cross-entropy) on a GPU "
                "where liger-kernel is installed, without ZeRO-3; liger: that or an error; off: the LLM's logits "
                "and loss", "choices": FUSED_LOSSES})
    compile_layers: bool = field(default=False, metadata={
        "help": "torch.compile each vision and LLM layer (the first steps pay the compilation)"})
    save_remote_code: bool = field(
        default=False,
        metadata={"help": "also write the model code and an auto_map: the checkpoint then loads with "
                  "trust_remote_code=True where sicog is not installed"},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "kept False: batches carry image views and ids"}
    )
    push_at_end: bool = field(default=False, init=False)  # --push_to_hub, taken over (see __post_init__)

    def __post_init__(self):
        if isinstance(self.deepspeed, str) and self.deepspeed in ("zero2", "zero3"):
            self.deepspeed = str(resources.files("sicog.configs") / f"{self.deepspeed}.json")
        elif isinstance(self.deepspeed, str) and _json_value(self.deepspeed) not in (None, dict):
            # transformers reads JSON text as the config itself: "false" became False, and a traceback in accelerate.
            raise UsageError(f"--deepspeed {self.deepspeed}: give zero2, zero3 or a DeepSpeed JSON config (its file, "
                             "or its text as an object); leave it out to train without DeepSpeed")
        if not self.use_cpu and not torch.accelerator.is_available():
            # Without it, transformers runs each of torchrun's processes on a CPU as a one-process run of its own.
            self.use_cpu = True
        super().__post_init__()
        # The Trainer would push at save time, before the processor, projector, results and model card are
        # written; `sicog train` pushes once, after all of them (sicog/train/hub.py).
        self.push_at_end, self.push_to_hub = self.push_to_hub, False
        self._check_runnable()

    def _check_runnable(self) -> None:
        """Raise :class:`UsageError` for settings transformers accepts but that fail only once the model is loaded
        and the data measured (in the Trainer's constructor or first step), or that train nothing."""
        from transformers.integrations import get_available_reporting_integrations
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, is_flytekit_available

        # transformers' own list of installed trackers leaves out flyte, whose callback it knows all the same.
        installed = [*get_available_reporting_integrations(), *(["flyte"] if is_flytekit_available() else [])]
        for name in self.report_to:
            if name not in INTEGRATION_TO_CALLBACK:
                raise UsageError(f"--report_to {name}: no such tracker (transformers knows "
                                 f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}; none turns tracking off)")
            if name not in installed:
                have = f"installed here: {', '.join(installed)}" if installed else "none is installed here"
                raise UsageError(f"--report_to {name}: {name} is not installed ({have}); install it, or pass "
                                 "--report_to none")
        # The run has no evaluation data: the Trainer refuses to start (or, --eval_on_start, stops at its first step),
        # and a "best" checkpoint is chosen by an evaluation metric.
        evaluating = {f"--eval_strategy {self.eval_strategy.value}": self.eval_strategy != "no",
                      "--eval_on_start": self.eval_on_start, "--save_strategy best": self.save_strategy == "best"}
        flag = next((flag for flag, wanted in evaluating.items() if wanted), None)
        if flag:
            raise UsageError(f"{flag}: needs evaluation data, and sicog train has none; leave evaluation off "
                             "(evaluate a saved checkpoint with sicog eval)")
        if self.stage == "dpo" and self.dpo_alpha == 0 and self.dpo_gamma == 0:  # a zero objective: no step moves
            raise UsageError("--dpo_alpha 0 --dpo_gamma 0: the objective is then zero and trains nothing; give one of "
                             "them a weight above 0")
        if not 0 <= self.seed < 2**32:  # numpy's range: set_seed seeds numpy too
            raise UsageError(f"--seed {self.seed}: must be from 0 to {2**32 - 1}")
        # Without --max_steps the epochs set the length: 0 trained no step and saved the starting weights as the run's.
        if self.max_steps <= 0 and not 0 < self.num_train_epochs < math.inf:
            raise UsageError(f"--num_train_epochs {self.num_train_epochs:g}: must be a finite number above 0 "
                             "(or give --max_steps)")
        # accelerate's dispatcher has rank 0 load every batch and send the others tensors: a record that fails to
        # load reached it as data, not as its one-line error (a TypeError traceback); each rank loads its own.
        if getattr(self.accelerator_config, "dispatch_batches", None):
            raise UsageError("--accelerator_config dispatch_batches: true is not supported: every rank loads its "
                             "own batches of sicog train's data (leave it unset)")
        # The Trainer's label smoother shifts the labels only for the model classes transformers lists as causal LMs;
        # SICOG's model is not among them, so every position was trained to repeat its own token.
        if self.label_smoothing_factor:
            raise UsageError(f"--label_smoothing_factor {self.label_smoothing_factor:g}: not supported (the Trainer's "
                             "label smoother would score each position on its own token, not the next one)")
        if self.deepspeed:
            self._check_zero_settings()

    def _check_zero_settings(self) -> None:
        """A misspelt ``zero_optimization`` setting ("stgae") is refused by DeepSpeed only once the Trainer prepares the
        model, in a traceback; here it is one line, before anything is loaded."""
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        section = self.hf_deepspeed_config.config.get("zero_optimization")
        if not isinstance(section, dict):
            return
        known = {name for key, info in DeepSpeedZeroConfig.model_fields.items() for name in (key, info.alias) if name}
        unknown = sorted(set(section) - known)
        if unknown:
            raise UsageError(f"--deepspeed {self.deepspeed}: zero_optimization has no setting(s) {unknown} "
                             "(DeepSpeed's ZeRO settings: https://www.deepspeed.ai/docs/config-json/)")

    def half_precision(self) -> torch.dtype | None:
        """The 16-bit type of ``--bf16`` / ``--fp16``; None for an fp32 run."""
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    def weights_dtype(self) -> torch.dtype:
        """The type the model's weights are loaded and trained in.

        Under DeepSpeed, the 16-bit type of ``--bf16`` / ``--fp16``: DeepSpeed keeps fp32 master weights for
        the optimizer. Without DeepSpeed the optimizer updates the weights themselves, so they stay fp32 and
        the Trainer runs forward and backward under autocast (HF's mixed precision): in bf16 weights, an update
        smaller than half the spacing of bf16 values near the weight (about 1e-4 for a weight of 0.02; DPO's
        steps are about its learning rate, 5e-7) is rounded away at every step.
        """
        half = self.half_precision()
        return half if half is not None and self.deepspeed else torch.float32

    def autocast_dtype(self) -> torch.dtype | None:
        """The type the Trainer autocasts each forward pass to: the 16-bit type without DeepSpeed, else None
        (DeepSpeed runs the 16-bit weights as they are)."""
        return None if self.deepspeed else self.half_precision()

    def trainable_parts(self) -> tuple[str, ...]:
        """The parts this run trains: the override when given, else the stage preset."""
        if not self.tunable_parts:
            return STAGES[self.stage].parts
        parts = tuple(p.strip() for p in self.tunable_parts.split(",") if p.strip())
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise UsageError(f"unknown tunable part(s) {unknown}; choose from {PARTS}")
        if not parts:
            raise UsageError(f"--tunable_parts {self.tunable_parts!r} names no part; choose from {PARTS}")
        return parts
