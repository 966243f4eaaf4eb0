"""`sicog train --stage dpo`: preference training of the SICOG model on chosen/rejected pairs.

The loss (``sicog.train.dpo_loss``) is ``alpha * sigmoid DPO + gamma * SFT on chosen`` on the HF
Trainer; the reference log-probabilities are computed once, before training, with the starting model
(``sicog.train.dpo_reference``). Why not TRL's DPOTrainer: see docs/dpo.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from sicog.model.modeling import SicogForConditionalGeneration
from sicog.model.processing import SicogProcessor
from sicog.train.arguments import STARTING_CHECKPOINTS, DataArguments, ModelArguments, SicogTrainingArguments
from sicog.train.datasets import check_dataset
from sicog.train.dpo_loss import dpo_objective, pair_logps
from sicog.train.dpo_reference import REFERENCE_FILE, compute_reference, fingerprint, reference_settings
from sicog.train.pairs import PairCollator, PairDataset
from sicog.train.trainer import SicogTrainer


class DPOTrainer(SicogTrainer):
    """:class:`SicogTrainer` whose loss is the DPO objective on pair batches from :class:`PairCollator`.

    Batches must carry ``reference_chosen_logps`` / ``reference_rejected_logps``. The rewards,
    margins, reward accuracy, log-probabilities and both loss terms are averaged over the steps since
    the last log and over ranks, and logged beside ``loss`` (``rewards/accuracies``, ...).
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, beta: float = 0.1, alpha: float = 1.0, gamma: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.beta, self.alpha, self.gamma = beta, alpha, gamma
        self._pending: dict[str, list[float]] = defaultdict(list)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs.pop("ids", None)
        if self.sample_log is not None and ids is not None and model.training:
            with self.sample_log.open("a") as handle:
                handle.write(json.dumps({"step": self.state.global_step, "ids": ids}) + "\n")
        if "reference_chosen_logps" not in inputs:
            raise ValueError("DPO batches need reference log-probabilities (PairDataset.attach_reference)")
        reference = inputs.pop("reference_chosen_logps"), inputs.pop("reference_rejected_logps")
        logps = pair_logps(model, inputs)
        reference_chosen, reference_rejected = (
            torch.as_tensor(values, dtype=torch.float32, device=logps.chosen.device) for values in reference
        )
        loss, metrics = dpo_objective(
            logps, reference_chosen, reference_rejected, beta=self.beta, alpha=self.alpha, gamma=self.gamma
        )
        if model.training:
            for name, value in metrics.items():
                self._pending[name].append(value)
        return (loss, {"chosen_logps": logps.chosen, "rejected_logps": logps.rejected}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the DPO metrics to each training log (every rank calls this at the same steps)."""
        if "loss" in logs and self._pending:
            names = sorted(self._pending)
            means = torch.tensor(
                [sum(self._pending[n]) / len(self._pending[n]) for n in names], device=self.args.device
            )
            means = self.accelerator.reduce(means, reduction="mean")
            logs.update({name: round(float(value), 6) for name, value in zip(names, means.tolist())})
            self._pending.clear()
        super().log(logs, start_time)


def build_dpo_trainer(
    model: SicogForConditionalGeneration,
    processor: SicogProcessor,
    model_args: ModelArguments,
    data_args: DataArguments,
    args: SicogTrainingArguments,
    run_settings: dict | None = None,
) -> tuple[DPOTrainer, PairDataset]:
    """The pairs (checked; invalid ones listed and stopping the run), their reference log-probabilities
    under the starting ``model``, and the trainer (``run_settings``: see :class:`SicogTrainer`)."""
    dataset = check_dataset(
        PairDataset(
            data_args.data_path,
            processor,
            image_folder=data_args.image_folder,
            max_length=data_args.model_max_length,
            seed=args.seed,
            show_progress=args.process_index == 0,
            # The reference pass decodes every image before the first step anyway: decoded first, one that
            # cannot be is listed with the other invalid pairs instead of stopping the pass part way.
            decode_images=True,
        ),
        data_args.data_path,
        args,
    )
    # No dropout (as the published DPO trainer and TRL's): a training step must score the policy as the reference was
    # scored, in eval mode; LoRA's dropout (--lora_dropout) made every reward and margin a random sample.
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    collator = PairCollator(processor)
    checkpoints = {name: getattr(model_args, name) for name in STARTING_CHECKPOINTS}
    settings = reference_settings(
        model, processor.chat_template, checkpoints, data_args.image_folder, data_args.model_max_length, args.seed,
        autocast=args.autocast_dtype(),
    )
    dataset.attach_reference(
        compute_reference(
            model,
            dataset,
            collator,
            path=args.dpo_reference_file or Path(args.output_dir) / REFERENCE_FILE,
            key=fingerprint(dataset, settings),
            batch_size=args.per_device_eval_batch_size,
            device=args.device,
            rank=args.process_index,
            world=args.world_size,
            show_progress=args.process_index == 0 and not args.disable_tqdm,
            autocast=args.autocast_dtype(),
        )
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor.tokenizer,
        group_by_modality=data_args.group_by_modality_length,
        vision_tower_lr=args.vision_tower_lr,
        sample_log=data_args.sample_log,
        beta=args.dpo_beta,
        alpha=args.dpo_alpha,
        gamma=args.dpo_gamma,
        run_settings=run_settings,
    )
    return trainer, dataset
