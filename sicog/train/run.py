"""One training run of any stage: build the model for the stage, the data, the trainer; train; save."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import set_seed

from sicog.data.argtypes import os_error_text
from sicog.data.crash import crash_point
from sicog.data.jsonl import write_json
from sicog.data.lock import output_lock
from sicog.data.sources import resolved_data_path
from sicog.model.builders import (
    CheckpointError,
    build_from_parts,
    load_pretrained,
    load_projector,
    mistyped_path,
    projector_from_checkpoint,
    with_remote_code,
)
from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.processing import SicogProcessor
from sicog.model.release_format import first_line
from sicog.train.arguments import (
    STAGES,
    STARTING_CHECKPOINTS,
    DataArguments,
    ModelArguments,
    SicogTrainingArguments,
    UsageError,
)
from sicog.train.checkpoints import (
    check_resume_target,
    deepspeed_processes,
    is_last_step,
    last_complete_checkpoint,
)
from sicog.train.datasets import SupervisedCollator, SupervisedDataset, check_dataset
from sicog.train.fast_paths import compile_layers, fused_loss
from sicog.train.hub import create_repo, push_output, write_model_card
from sicog.train.trainer import SicogTrainer

logger = logging.getLogger(__name__)
# The paper's global batch per stage (seed README: 256 for alignment, 128 for every fine-tuning stage).
PAPER_GLOBAL_BATCH = {"0": 128, "1": 256, "1.5": 128, "2": 128}


def check_model_sources(model_args: ModelArguments) -> None:
    """Stop with a :class:`UsageError` when a model source names a local path that does not exist.

    Here, before anything loads, so the message names the flag. A name that can be a Hub id (``owner/name``) is
    left to the loader, except for the projector, which is only read from disk.
    """
    for flag in ("model_name_or_path", "vision_tower", "language_model", "projector"):
        value = getattr(model_args, flag)
        if value and (not Path(value).exists() if flag == "projector" else mistyped_path(value)):
            raise UsageError(f"--{flag} {value}: no such file or folder")


def check_attn_implementation(model_args: ModelArguments) -> None:
    """Stop with a :class:`UsageError` when ``--attn_implementation flash_attention_2`` cannot run here.

    transformers finds out only while it loads the model, and then fails in tracebacks (its Hub-kernel fallback's, then
    its own ImportError).
    """
    from transformers.utils import is_flash_attn_2_available

    if model_args.attn_implementation != "flash_attention_2":
        return
    # Without flash-attn, transformers loads the Hub's flash-attn kernel where the kernels package is installed: that
    # works too (the check fetches it, as loading the model would).
    if not is_flash_attn_2_available(kernels_fallback_ok=True):
        raise UsageError("--attn_implementation flash_attention_2: flash-attn cannot run here (it needs the flash-attn "
                         "package, 2.3.3 or later, and a CUDA GPU; nor could transformers load its flash-attn kernel "
                         "from the Hub instead): pip install flash-attn, or use --attn_implementation sdpa")


def build_model(
    model_args: ModelArguments, args: SicogTrainingArguments
) -> tuple[SicogForConditionalGeneration, SicogProcessor]:
    """The stage's starting model: a full checkpoint, or vision tower + LLM (+ projector) joined."""
    preset = STAGES[args.stage]
    dtype = args.weights_dtype()
    check_model_sources(model_args)
    if model_args.model_name_or_path:
        if model_args.vision_tower or model_args.language_model:
            raise UsageError("give either --model_name_or_path or --vision_tower/--language_model, not both")
        try:
            model, processor = load_pretrained(
                model_args.model_name_or_path, dtype=dtype, attn_implementation=model_args.attn_implementation
            )
        except CheckpointError as err:  # it names the folder, or the damaged file in it
            raise UsageError(f"--model_name_or_path: {str(err).splitlines()[0]}") from None
    elif model_args.vision_tower and model_args.language_model:
        try:
            model, processor = build_from_parts(
                model_args.vision_tower,
                model_args.language_model,
                dtype=dtype,
                attn_implementation=model_args.attn_implementation,
                resampler_num_queries=model_args.resampler_num_queries,
                resampler_attention=model_args.resampler_attention,
                resampler_pooling=model_args.resampler_pooling,
                image_layout=model_args.image_layout,
                label_masking=model_args.label_masking,
                separators=model_args.slice_separators,
                inference_long_side=model_args.inference_long_side,
                scale_resolution=model_args.scale_resolution,
                max_slice_nums=model_args.max_slice_nums,
            )
        except OSError as err:  # a folder that is no model, or a Hub id neither cached nor reachable
            raise UsageError(f"cannot load --vision_tower {model_args.vision_tower} / --language_model "
                             f"{model_args.language_model}: {str(err).splitlines()[0]}") from None
        except (ValueError, StrictDataclassError) as err:  # settings that cannot work together (SicogConfig's check)
            raise UsageError(first_line(err.__cause__ or err)) from None
    else:
        if preset.source == "checkpoint":
            need = "--model_name_or_path"
        else:
            need = "--vision_tower and --language_model (or --model_name_or_path)"
        raise UsageError(f"stage {args.stage} needs {need}")
    if model_args.projector:
        # Before the Trainer wraps the model. Under ZeRO-3 a model built from parts is partitioned only then (with
        # the loaded values); one from --model_name_or_path already is, and load_projector gathers its resampler.
        try:
            load_projector(model, model_args.projector)
        except (FileNotFoundError, ValueError) as err:  # no projector checkpoint there, or one for another shape
            raise UsageError(f"--projector {model_args.projector}: {err}") from None
    parts = args.trainable_parts()
    model.set_trainable(vision="vision_tower" in parts, resampler="resampler" in parts, llm="language_model" in parts)
    if args.lora_r:
        from peft import LoraConfig, get_peft_model
        from transformers.integrations import is_deepspeed_zero3_enabled

        if "language_model" not in parts:
            raise UsageError("--lora_r needs language_model among the trainable parts")
        if is_deepspeed_zero3_enabled():
            # The adapters are merged into the saved weights, which needs whole (not partitioned) tensors.
            raise UsageError("--lora_r works with ZeRO-2 or without DeepSpeed, not with ZeRO-3")
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        model.language_model = get_peft_model(model.language_model, lora)
    model.config.use_cache = False
    return model, processor


def load_data(data_args: DataArguments, processor: SicogProcessor, args: SicogTrainingArguments) -> SupervisedDataset:
    """The training set; invalid records stop the run (all listed), unfittable ones are skipped and listed."""
    dataset = SupervisedDataset(
        data_args.data_path,
        processor,
        image_folder=data_args.image_folder,
        max_length=data_args.model_max_length,
        never_split=STAGES[args.stage].never_split,
        seed=args.seed,
        augment=data_args.augment,
        show_progress=args.process_index == 0,
    )
    return check_dataset(dataset, data_args.data_path, args)


def train(model_args: ModelArguments, data_args: DataArguments, args: SicogTrainingArguments) -> dict:
    """Run one stage end to end; returns the trainer's metrics. Reruns resume from the newest complete checkpoint.

    The output folder is locked for the run (rank 0 holds the lock): a second run on it stops at once, and so does a
    run whose output folder holds a checkpoint of another stage (before anything is loaded).
    With ``--push_to_hub`` rank 0 creates the Hub repository first (a run that cannot push stops before training)
    and uploads the output folder once everything is saved, the model card included.
    """
    if args.resume_from_checkpoint:
        check_resume_target(args.resume_from_checkpoint)
    if data_args.sample_log:  # its folder, before the model is loaded: it is first written at the first step
        try:
            Path(data_args.sample_log).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"--sample_log {data_args.sample_log}: {os_error_text(err)}") from None
    check_attn_implementation(model_args)
    if args.deepspeed and "WORLD_SIZE" not in os.environ and importlib.util.find_spec("mpi4py") is None:
        # DeepSpeed meets its processes through a launcher's variables, else through MPI: without either it stopped
        # at the first step with a traceback about mpi4py.
        raise UsageError("--deepspeed needs a launcher, even for one process: torchrun --nproc_per_node 1 -m sicog "
                         "train ... (the training scripts start one)")
    if args.stage == "dpo" and data_args.augment != "none":
        # The reference log-probabilities are scored once, on the images as stored: the policy must see the same ones.
        raise UsageError(f"--augment {data_args.augment}: --stage dpo scores its reference on the images as stored, "
                         "so it trains on them too (leave --augment unset)")
    if args.stage == "dpo" and args.dpo_reference_file:
        from sicog.train.dpo_reference import check_reference_file

        try:
            check_reference_file(args.dpo_reference_file)
        except ValueError as err:
            raise UsageError(str(err)) from None
    settings = run_settings(model_args, data_args, args)
    with output_lock(args.output_dir, folder=True, enabled=args.process_index == 0):
        resume = args.resume_from_checkpoint or last_complete_checkpoint(args.output_dir, args.stage, settings)
        saved = deepspeed_processes(resume) if resume and args.deepspeed else None
        if saved and saved != args.world_size:  # DeepSpeed stops on it, with a traceback, once the model is loaded
            raise UsageError(f"{resume} was saved by {saved} DeepSpeed processes and this run has {args.world_size}: "
                             f"its ZeRO optimizer shards load only into {saved}; rerun with {saved}, or start a new "
                             "--output_dir from its weights (the checkpoint's zero_to_fp32.py gathers them)")
        if args.push_at_end and args.process_index == 0:
            args.hub_model_id = create_repo(args)
        results = Path(args.output_dir) / "train_results.json"
        if resume is not None and not args.resume_from_checkpoint and is_last_step(resume) and results.is_file():
            # The run finished: resuming would train no step and write a train loss of 0 over its results.
            logger.info("%s holds this run's last step and %s: nothing to train (remove the folder to train again)",
                        resume, results.name)
            metrics = json.loads(results.read_text(encoding="utf-8"))
            if args.push_at_end and args.process_index == 0:  # the card names the repository it now goes to
                write_model_card(model_args, data_args, args, metrics)
        else:
            metrics = _train(model_args, data_args, args, resume, settings)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank leaves together and closes the process group itself: left to interpreter exit, the gloo
            # threads of a rank that finished first can abort it ("terminate called without an active
            # exception"). Before the upload, which may take longer than a collective's timeout.
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        if args.push_at_end and args.process_index == 0:
            push_output(args)
    return metrics


def run_settings(model_args: ModelArguments, data_args: DataArguments, args: SicogTrainingArguments) -> dict:
    """What decides a run's course, as its checkpoints' markers record it: a run resumes a checkpoint of its output
    folder only when these are the same (paths that exist are compared resolved, so a relative one from another
    working folder is the same path)."""

    def where(value: str | None) -> str | None:
        return os.path.realpath(value) if value and os.path.exists(value) else value

    settings = {
        **{name: where(getattr(model_args, name)) for name in STARTING_CHECKPOINTS},
        "data_path": resolved_data_path(data_args.data_path),
        "image_folder": where(data_args.image_folder),
        "tunable_parts": list(args.trainable_parts()), "learning_rate": args.learning_rate,
        "max_steps": args.max_steps, "num_train_epochs": args.num_train_epochs, "global_batch": global_batch(args),
        "seed": args.seed, "lora_r": args.lora_r,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
    }
    if args.stage == "dpo":  # the objective's weights: a beta sweep into one folder would continue the last beta's run
        settings.update(dpo_beta=args.dpo_beta, dpo_alpha=args.dpo_alpha, dpo_gamma=args.dpo_gamma)
    return settings


def global_batch(args: SicogTrainingArguments) -> int:
    """Samples per optimizer step: per-device batch x gradient accumulation x processes."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def check_global_batch(args: SicogTrainingArguments) -> int:
    """Log the run's global batch, and warn when the paper trains this stage with another one."""
    total = global_batch(args)
    logger.info("global batch %d = %d per device x %d accumulation steps x %d processes", total,
                args.per_device_train_batch_size, args.gradient_accumulation_steps, args.world_size)
    paper = PAPER_GLOBAL_BATCH.get(args.stage)
    if paper is not None and total != paper:
        logger.warning("global batch %d differs from the paper's %d for stage %s", total, paper, args.stage)
    return total


def warn_inference_resize(model: SicogForConditionalGeneration, args: SicogTrainingArguments) -> None:
    """Warn once (rank 0) when the model's config resizes images at inference: training does not.

    The published system trains on images at their own size and generates on images resized to a long
    side of 1024; this package keeps that mismatch for parity, and says so rather than hiding it.
    """
    side = model.config.inference_long_side
    if side is not None and args.process_index == 0:
        logger.warning(
            "training encodes images at their native size, but generation and evaluation with this model "
            "resize them to a long side of %d pixels first (config inference_long_side), so they see other "
            "slices and token counts than training did; to generate as trained, set \"inference_long_side\": "
            "null in config.json (of the starting checkpoint, or of this run's output) or, building from "
            "parts, leave out --inference_long_side",
            side,
        )


def _train(model_args: ModelArguments, data_args: DataArguments, args: SicogTrainingArguments,
           resume: str | None, settings: dict) -> dict:
    set_seed(args.seed)
    total_batch = check_global_batch(args)
    if args.deepspeed and torch.distributed.is_initialized():
        import deepspeed

        # ZeRO-3 partitions weights while loading; DeepSpeed must see the process group first
        # (accelerate sets it up for GPUs, not for CPU runs).
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    loss = fused_loss(args.fused_loss, args.device)  # checked before the (possibly large) model is built
    model, processor = build_model(model_args, args)
    warn_inference_resize(model, args)
    model.fused_loss = loss
    if args.compile_layers:
        logger.info("compiled %d layers", compile_layers(model))
    if args.stage == "dpo":
        from sicog.train.dpo import build_dpo_trainer

        trainer, dataset = build_dpo_trainer(model, processor, model_args, data_args, args, settings)
    else:
        dataset = load_data(data_args, processor, args)
        trainer = SicogTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=SupervisedCollator(processor),
            processing_class=processor.tokenizer,
            group_by_modality=data_args.group_by_modality_length,
            vision_tower_lr=args.vision_tower_lr,
            sample_log=data_args.sample_log,
            run_settings=settings,
        )
    result = trainer.train(resume_from_checkpoint=resume)
    if args.lora_r:
        trainer.model.language_model = trainer.model.language_model.merge_and_unload()
    model.config.use_cache = True
    with with_remote_code(model, processor, enabled=args.save_remote_code):
        trainer.save_model(args.output_dir)
        if trainer.is_world_process_zero():
            processor.save_pretrained(args.output_dir)
    crash_point("train-results")  # kill test point: the last checkpoint and the model saved, the results not
    if trainer.is_world_process_zero():
        if "resampler" in args.trainable_parts():
            projector_from_checkpoint(args.output_dir, args.output_dir)
        metrics = {**result.metrics, "stage": args.stage, "samples": len(dataset), "skipped": len(dataset.skipped),
                   "global_batch": total_batch}
        write_json(Path(args.output_dir) / "train_results.json", metrics)
        write_model_card(model_args, data_args, args, metrics)
    return result.metrics
