"""`SicogTrainer`: the HF Trainer with length/modality-grouped batches, a vision learning rate and a sample log."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import Trainer
from transformers.trainer_callback import ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices, nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from sicog.data.crash import crash_point
from sicog.model.builders import share_weights_like_config
from sicog.train.checkpoints import COMPLETE_MARKER, checkpoint_loss_sum, mark_complete
from sicog.train.datasets import unless_failed

logger = logging.getLogger(__name__)


class EpochSeeded:
    """A sampler mixin: every epoch's shuffle comes from its own generator, seeded from the run's seed and the epoch.

    Drawing from the global torch RNG instead would make the order of an epoch depend on everything drawn
    before it, and a run resumed mid-epoch restores that RNG only after its sampler has drawn: the rest of the
    epoch would follow another order than the uninterrupted run (some samples twice, others never).
    """

    seed: int
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next pass as epoch ``epoch`` (called by the Trainer before each epoch)."""
        self.epoch = epoch

    def epoch_generator(self) -> torch.Generator:
        """A generator in the same state wherever and whenever this epoch's order is drawn."""
        return torch.Generator().manual_seed(self.seed + self.epoch)


class ModalityLengthGroupedSampler(EpochSeeded, Sampler):
    """Batches that hold only image samples or only text samples, arranged by length inside each batch.

    Mixing both in one batch wastes the vision pass on padding and makes step times uneven. As in the published
    sampler (LLaVA-NeXT's ``LengthGroupedSampler(group_by_modality=True)``), the length sort spans one batch
    only: each batch (the trainer passes the global batch of one optimizer step) is a random draw of one
    modality, sorted so that its micro-batches pad little. Sorting several batches together would make every
    step length-homogeneous, which changes the gradient statistics and the order the data is seen in.
    """

    def __init__(self, batch_size: int, lengths: list[int], has_image: list[bool], seed: int) -> None:
        self.batch_size = batch_size
        self.lengths = lengths
        self.has_image = has_image
        self.seed = seed

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = self.epoch_generator()
        groups = [[i for i, img in enumerate(self.has_image) if img == flag] for flag in (True, False)]
        batches = []
        for group in groups:
            if not group:
                continue
            order = get_length_grouped_indices([self.lengths[i] for i in group], self.batch_size,
                                               mega_batch_mult=1, generator=generator)
            members = [group[i] for i in order]
            batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
        # Full batches in random order; the ragged ends of both groups go last.
        full = [b for b in batches if len(b) == self.batch_size]
        ragged = [b for b in batches if len(b) < self.batch_size]
        order = torch.randperm(len(full), generator=generator).tolist()
        return iter([i for k in order for i in full[k]] + [i for b in ragged for i in b])


class SeededLengthGroupedSampler(EpochSeeded, LengthGroupedSampler):
    """transformers' :class:`LengthGroupedSampler` (``--train_sampling_strategy group_by_length``), seeded by epoch."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed

    def __iter__(self):
        self.generator = self.epoch_generator()
        return super().__iter__()


class SicogTrainer(Trainer):
    """Trainer for SICOG stages; the dataset must expose ``lengths`` and ``has_image``."""

    def __init__(
        self,
        *args,
        group_by_modality: bool = False,
        vision_tower_lr: float | None = None,
        sample_log: str | None = None,
        run_settings: dict | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.run_settings = run_settings  # written into every checkpoint's completion marker
        self.group_by_modality = group_by_modality
        self.vision_tower_lr = vision_tower_lr
        self.sample_log = Path(f"{sample_log}.rank{self.args.process_index}.jsonl") if sample_log else None
        self.seeded_sampler: EpochSeeded | None = None
        self.loss_before_resume: float | None = 0.0  # the loss summed over the run's steps before this call's
        if self.args.loss_weighting == "micro_batches":
            # Not told the step's token count, the model returns each micro-batch's token mean; the Trainer then
            # divides it by the accumulation steps and the ranks' gradients are averaged: the published weighting.
            self.model_accepts_loss_kwargs = False

    def train(self, resume_from_checkpoint: str | None = None, **kwargs) -> TrainOutput:
        """Train as the Trainer does; ``train_loss`` is the mean over all the run's steps, those before a resume too.

        The Trainer reports the mean over the steps of this call: a run killed after its last checkpoint but before
        its results were written trained no step on the rerun and reported 0, one resumed half way the second half's
        mean. Each checkpoint's marker holds the loss summed up to it, which completes the sum.
        """
        self.loss_before_resume = 0.0
        if resume_from_checkpoint is not None:
            self.loss_before_resume = (checkpoint_loss_sum(resume_from_checkpoint)
                                       if isinstance(resume_from_checkpoint, (str, os.PathLike)) else None)
        try:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        except BaseException:
            self._end_progress_bar()
            raise
        if self.loss_before_resume is None:
            logger.warning("%s does not hold the loss of the steps before it (saved by an older sicog): train_loss "
                           "is the mean over the steps after it only", resume_from_checkpoint)
            return output
        # The Trainer has added its last undrained steps to its sum.
        train_loss = (self.loss_before_resume + self._total_loss_scalar) / max(output.global_step, 1)
        return TrainOutput(output.global_step, train_loss, {**output.metrics, "train_loss": train_loss})

    def _end_progress_bar(self) -> None:
        """End a failed run's progress bar on its line, as a finished run's is: the one-line error that follows
        would otherwise continue the bar's line (and the bar be drawn again below it when Python exits)."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback) and getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
                callback.training_bar = None

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # A batch of the samplers is one optimizer step over all ranks: the modality sampler draws each step from
        # one modality and sorts it by length, so every rank's micro-batches pad little.
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.group_by_modality:
            self.seeded_sampler = ModalityLengthGroupedSampler(batch, dataset.lengths, dataset.has_image, seed)
        elif self.args.train_sampling_strategy == "group_by_length":
            self.seeded_sampler = SeededLengthGroupedSampler(batch, dataset.lengths, seed)
        else:
            return super()._get_train_sampler(train_dataset)
        return self.seeded_sampler

    def _run_epoch(self, model, epoch, *args, **kwargs):
        if 0 < self.state.max_steps <= self.state.global_step:
            # Resumed at the run's last step (killed before its results were written): the Trainer checks whether to
            # stop only after a step, so it would train one more than the run has and save other weights.
            self.control.should_training_stop = True
            return None
        # The Trainer's set_epoch goes through accelerate's data loader, which does not reach the sampler under
        # the batch skipping of a multi-process run resumed mid-epoch: that epoch would be drawn as epoch 0.
        if self.seeded_sampler is not None:
            self.seeded_sampler.set_epoch(epoch)
        if hasattr(self.train_dataset, "set_epoch"):  # the augmentation draws of this epoch
            self.train_dataset.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          device: torch.device) -> tuple[list, torch.Tensor | int | None]:
        """The Trainer's next batches; a batch whose record could not be built raises its RecordError (see
        :class:`~sicog.train.datasets.FailedFetch`)."""
        return super().get_batch_samples(map(unless_failed, epoch_iterator), num_batches, device)

    def create_optimizer(self, model=None):
        """The default optimizer, with the vision tower in its own groups when it has its own learning rate."""
        if self.vision_tower_lr is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = []
        for vision in (False, True):
            for with_decay in (True, False):
                params = [
                    p
                    for n, p in opt_model.named_parameters()
                    if p.requires_grad and (n in decay) == with_decay and n.startswith("vision_tower.") == vision
                ]
                if params:
                    group = {"params": params, "weight_decay": self.args.weight_decay if with_decay else 0.0}
                    if vision:
                        group["lr"] = self.vision_tower_lr
                    groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs.pop("ids", None)
        if self.sample_log is not None and ids is not None and model.training:
            with self.sample_log.open("a") as handle:
                handle.write(json.dumps({"step": self.state.global_step, "ids": ids}) + "\n")
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _save_checkpoint(self, model, trial) -> None:
        """Save ``checkpoint-N`` as the Trainer does, then mark it complete once every rank has written its part.

        A marker left from an earlier save of the same step is removed first, so that a save killed part
        way never leaves a folder that claims to be complete (see sicog/train/checkpoints.py). Older
        checkpoints beyond ``save_total_limit`` are deleted only after the marker is written: deleting them
        before (as the Trainer does) could leave no complete checkpoint at all after a kill.
        """
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        crash_point("checkpoint-unmarked")  # kill test point: everything written but the completion marker
        loss_sum = None
        if self.loss_before_resume is not None:
            # This call's steps: those already drained into the Trainer's sum and those since its last log, averaged
            # over the ranks as its logs average them (every rank takes part in the gather).
            unlogged = nested_gather(self._tr_loss, self.args.parallel_mode).mean().item()
            loss_sum = self.loss_before_resume + self._total_loss_scalar + unlogged
        if self.args.should_save:
            mark_complete(folder, self.state.global_step, self.args.stage, self.run_settings, loss_sum)
            rotate_checkpoints(run_dir, save_total_limit=limit, best_model_checkpoint=self.state.best_model_checkpoint,
                               use_mtime=True)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call and self.args.should_save and output_dir is not None:
            # Kill test point: the checkpoint folder exists, its weights are not written yet.
            os.makedirs(output_dir, exist_ok=True)
            crash_point("checkpoint-weights")
        super().save_model(output_dir, _internal_call=_internal_call)
        if self.args.should_save:
            share_weights_like_config(output_dir or self.args.output_dir)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        crash_point("checkpoint-optimizer")  # kill test point: weights written, optimizer state not
        super()._save_optimizer_and_scheduler(output_dir)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        crash_point("checkpoint-trainer-state")  # kill test point: all but the trainer state written
