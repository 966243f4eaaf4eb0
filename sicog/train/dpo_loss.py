"""The DPO objective on SICOG pair batches: sequence log-probabilities, sigmoid DPO loss, SFT term.

A pair batch holds ``2B`` rows: the ``B`` chosen conversations first, then the ``B`` rejected ones
(row ``i`` and row ``B + i`` share prompt and image views). Only supervised tokens (assistant reply
and its end marker, ``labels != -100``) count in a sequence's log-probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sicog.model.processing import IGNORE_INDEX

METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
    "logps/chosen", "logps/rejected", "loss/dpo", "loss/sft",
)


@dataclass
class PairLogps:
    """Summed log-probabilities of the supervised tokens of each side, and how many tokens each has."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass
class DPOTerms:
    """Per-pair DPO losses and implicit rewards ``beta * (log pi - log pi_ref)``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def logits_window(labels: torch.Tensor) -> int:
    """How many trailing positions need logits to score every supervised token of the batch.

    The image tokens and the prompt come before the answer, so skipping the LM head there saves
    most of the ``positions x vocabulary`` logits (for Qwen2 152K floats per position).
    """
    supervised = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if supervised.numel() == 0:
        raise ValueError("the batch has no supervised tokens to score")
    first = int(supervised[0])
    # The logit at position p predicts token p + 1: the first scored token needs position first - 1.
    return min(labels.shape[1], labels.shape[1] - first + 1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of log-probabilities of the supervised tokens, and their count.

    ``logits`` (rows, k, vocab) may cover only the last ``k`` positions of ``labels`` (rows, length).
    Log-softmax runs in float32 on the supervised positions only.
    """
    labels = labels[:, -logits.shape[1] :]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()
    token_logps = picked.log_softmax(dim=-1).gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(mask)[mask]
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    sums = sums.index_add(0, rows, token_logps)
    return sums, mask.sum(dim=1)


def pair_logps(model: nn.Module, batch: dict) -> PairLogps:
    """Run ``model`` once on a pair batch (chosen rows, then rejected rows) and score both sides."""
    labels = batch["labels"]
    if labels.shape[0] % 2:
        raise ValueError(f"a pair batch needs an even number of rows (chosen then rejected), got {labels.shape[0]}")
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch.get("pixel_values"),
        logits_to_keep=logits_window(labels),
    )
    sums, counts = sequence_logps(outputs.logits, labels)
    half = labels.shape[0] // 2
    return PairLogps(sums[:half], sums[half:], counts[:half], counts[half:])


def dpo_terms(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> DPOTerms:
    """Sigmoid DPO: ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` for each pair."""
    chosen_rewards = beta * (policy_chosen - reference_chosen.to(policy_chosen.dtype))
    rejected_rewards = beta * (policy_rejected - reference_rejected.to(policy_rejected.dtype))
    return DPOTerms(-F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards)


def sft_loss(logps: PairLogps) -> torch.Tensor:
    """Mean negative log-likelihood per supervised token of the chosen answers (the usual LM loss)."""
    return -logps.chosen.sum() / logps.chosen_tokens.sum().clamp(min=1)


def dpo_objective(
    logps: PairLogps,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    gamma: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``alpha * mean DPO loss + gamma * SFT loss on chosen``, and the batch's metrics for the log."""
    terms = dpo_terms(logps.chosen, logps.rejected, reference_chosen, reference_rejected, beta)
    dpo = terms.losses.mean()
    sft = sft_loss(logps)
    loss = alpha * dpo + gamma * sft
    chosen_r, rejected_r = terms.chosen_rewards.detach(), terms.rejected_rewards.detach()
    values = torch.stack([
        chosen_r.mean(), rejected_r.mean(), (chosen_r - rejected_r).mean(), (chosen_r > rejected_r).float().mean(),
        logps.chosen.detach().mean(), logps.rejected.detach().mean(), dpo.detach(), sft.detach(),
    ]).tolist()  # one device sync for all metrics
    return loss, dict(zip(METRICS, values))
