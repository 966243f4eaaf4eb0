"""Publishing a finished run: its model card (``README.md``) and one upload of the output folder to the Hub.

The Trainer's own ``--push_to_hub`` uploads when it saves the weights, before ``sicog train`` writes the
processor, the projector, ``train_results.json`` and the card; :class:`SicogTrainingArguments` therefore
takes the flag over and the run uploads once, when every file is in place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from sicog.data.sources import HUB_ID, split_data_path
from sicog.train.arguments import STAGES, DataArguments, ModelArguments, SicogTrainingArguments

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
# Trainer checkpoints (optimizer state), the run's lock and temporary files stay local, as with the Trainer's push;
# so does training_args.bin, the Trainer's pickle of the arguments, which holds any --hub_token it was given.
LOCAL_ONLY = ["_*", ".*", "checkpoint-*", "training_args.bin"]
PAPER = "https://arxiv.org/abs/2503.12303"


class PushError(RuntimeError):
    """The upload to the Hub failed (the run itself is saved)."""


def hub_repo_id(args: SicogTrainingArguments) -> str:
    """The repository the run goes to: ``--hub_model_id``, else the output folder's name (as the Trainer does)."""
    return args.hub_model_id or Path(args.output_dir).absolute().name


def _hub_ids(names: list[str | None]) -> list[str]:
    """The Hub repositories among ``names`` (not local paths; a dataset's ``:split`` dropped): only those are
    valid card metadata."""
    matches = [HUB_ID.match(n.strip()) for n in names if n and not os.path.exists(n.strip())]
    return [m["repo"] for m in matches if m]


def _value(setting: object) -> str:
    return str(getattr(setting, "value", setting))


def _warmup(steps: float) -> str:
    # transformers reads a value below 1 as a fraction of the training steps.
    return f"{steps:.0%} of the steps" if 0 < steps < 1 else f"{steps:g} steps"


def model_card(
    model_args: ModelArguments, data_args: DataArguments, args: SicogTrainingArguments, results: dict
) -> ModelCard:
    """The model card of a finished run: what it started from, what it trained on and how, and how to load it."""
    preset = STAGES[args.stage]
    if model_args.model_name_or_path:
        bases = [model_args.model_name_or_path]
        base_lines = [f"- checkpoint: `{model_args.model_name_or_path}`"]
    else:
        bases = [model_args.vision_tower, model_args.language_model]
        base_lines = [f"- vision tower: `{model_args.vision_tower}`",
                      f"- language model: `{model_args.language_model}`"]
    if model_args.projector:
        base_lines.append(f"- projector: `{model_args.projector}`")
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    length = args.max_steps if args.max_steps > 0 else None
    lora = f" (LoRA r={args.lora_r} on the LLM)" if args.lora_r else ""
    settings = [
        ("trained parts", ", ".join(args.trainable_parts()) + lora),
        ("global batch", f"{results['global_batch']} ({args.per_device_train_batch_size} per device x "
                         f"{args.gradient_accumulation_steps} accumulation steps x {args.world_size} processes)"),
        ("learning rate", f"{args.learning_rate:g}" + (f" (vision tower {args.vision_tower_lr:g})"
                                                       if args.vision_tower_lr is not None else "")),
        ("schedule", f"{_value(args.lr_scheduler_type)}, warm-up {_warmup(args.warmup_steps)}, "
                     f"weight decay {args.weight_decay:g}"),
        ("length", f"{length} steps" if length else f"{args.num_train_epochs:g} epochs"),
        ("max length", f"{data_args.model_max_length} tokens (image tokens included)"),
        ("precision", precision + _deepspeed(args.deepspeed)),
        ("seed", str(args.seed)),
    ]
    if args.stage == "dpo":
        settings.append(("DPO", f"beta {args.dpo_beta:g}, alpha {args.dpo_alpha:g}, gamma {args.dpo_gamma:g}"))
    if "train_loss" in results:
        settings.append(("train loss (mean over the run)", f"{results['train_loss']:.4f}"))
    table = "\n".join(["| setting | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in settings)])
    remote = (
        "\n\nThe checkpoint carries its own code: without the `sicog` package, pass `trust_remote_code=True` to "
        "`from_pretrained` and `pipeline`."
        if args.save_remote_code
        else "\n\nWithout the `sicog` package installed this checkpoint does not load (it was saved without "
        "`--save_remote_code`)."
    )
    repo = hub_repo_id(args)
    body = f"""# {repo.split("/")[-1]}

A [SICOG]({PAPER}) (Self-Improving Cognition) multimodal model: stage {args.stage}, {preset.title}.

## Starting point

{chr(10).join(base_lines)}

## Data

`{data_args.data_path}`: {results['samples']} usable samples, {results['skipped']} skipped as over-long.

## Training

{table}

## Use

```python
import sicog  # registers SICOG with the transformers Auto classes
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{repo}")
processor = AutoProcessor.from_pretrained("{repo}")
pipe = pipeline("image-text-to-text", model="{repo}")
```{remote}

## License

The weights derive from the starting point above; its licences apply to this model. The SICOG code
that trained it is Apache-2.0.
"""
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        tags=["sicog", f"stage-{args.stage}"],
        base_model=_hub_ids(bases) or None,
        datasets=_hub_ids(split_data_path(data_args.data_path)) or None,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _deepspeed(config: str | dict | None) -> str:
    """How the card names the run's DeepSpeed config: its file, or its ZeRO stage when given as JSON text or a mapping
    (transformers reads the text into a mapping)."""
    if not config:
        return ""
    if isinstance(config, dict):
        stage = (config.get("zero_optimization") or {}).get("stage")
        return f", DeepSpeed ZeRO-{stage}" if stage is not None else ", DeepSpeed"
    return f", DeepSpeed `{Path(config).name}`"


def write_model_card(
    model_args: ModelArguments, data_args: DataArguments, args: SicogTrainingArguments, results: dict
) -> Path:
    """Write the run's model card to ``OUTPUT_DIR/README.md``."""
    path = Path(args.output_dir) / CARD_FILE
    model_card(model_args, data_args, args, results).save(path)
    return path


def _push_failed(args: SicogTrainingArguments, repo_id: str, err: Exception, after: str) -> PushError:
    return PushError(f"pushing {args.output_dir} to the Hub repository {repo_id} failed ({type(err).__name__}: "
                     f"{err}){after}")


def create_repo(args: SicogTrainingArguments) -> str:
    """Create the run's Hub repository when missing (``--hub_private_repo``) and return its full id.

    Called before training, so that a run that cannot push (offline, no write access) stops at once
    rather than after hours, and the model card names the repository as it will be loaded.
    """
    from huggingface_hub import HfApi

    repo_id = hub_repo_id(args)
    try:
        return HfApi(token=args.hub_token).create_repo(repo_id, private=args.hub_private_repo, exist_ok=True).repo_id
    # Network, authentication, offline mode: the Hub client raises many kinds; each stops the run the same way.
    except Exception as err:
        raise _push_failed(args, repo_id, err, " before training") from err


def push_output(args: SicogTrainingArguments) -> str:
    """Upload the finished output folder (Trainer checkpoints excluded) to the repository of :func:`create_repo`.

    ``--hub_revision`` picks the branch. Returns the commit URL; a failure raises :class:`PushError`
    naming the repository, the folder and how to upload it later.
    """
    from huggingface_hub import HfApi

    repo_id = hub_repo_id(args)
    try:
        commit = HfApi(token=args.hub_token).upload_folder(
            repo_id=repo_id,
            folder_path=args.output_dir,
            commit_message=f"sicog train --stage {args.stage}",
            revision=args.hub_revision,
            ignore_patterns=LOCAL_ONLY,
        )
    except Exception as err:  # as in create_repo
        exclude = " ".join(f'--exclude "{pattern}"' for pattern in LOCAL_ONLY)
        raise _push_failed(args, repo_id, err, f"; the run is saved: upload it with "
                           f"`hf upload {repo_id} {args.output_dir} {exclude}`") from err
    logger.info("pushed %s to %s", args.output_dir, commit.commit_url)
    return commit.commit_url
