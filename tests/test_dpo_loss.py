"""The DPO objective: values computed by hand on a fixed batch, and on a real tiny model."""

import math

import pytest
import torch
from PIL import Image

from sicog.model.processing import IGNORE_INDEX
from sicog.train.dpo_loss import PairLogps, dpo_objective, dpo_terms, logits_window, pair_logps, sequence_logps

LN = math.log


def fixed_batch():
    """One pair (vocabulary 3, length 4): row 0 chosen, row 1 rejected.

    Chosen: the logit at position 1 is (0, ln 2, 0) -> p(token 1) = 2/4; at position 2 it is
    (ln 3, 0, 0) -> p(token 2) = 1/5. Rejected: at position 1 (0, 0, 0) -> p(token 0) = 1/3.
    Every other position holds large values that must not count.
    """
    junk = torch.tensor([50.0, -20.0, 7.0])
    logits = junk.repeat(2, 4, 1)
    logits[0, 1] = torch.tensor([0.0, LN(2), 0.0])
    logits[0, 2] = torch.tensor([LN(3), 0.0, 0.0])
    logits[1, 1] = torch.tensor([0.0, 0.0, 0.0])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1, 2], [IGNORE_INDEX, IGNORE_INDEX, 0, IGNORE_INDEX]])
    return logits, labels


def test_sequence_logps_by_hand():
    logits, labels = fixed_batch()
    sums, counts = sequence_logps(logits, labels)
    assert sums.tolist() == pytest.approx([LN(0.5 * 0.2), LN(1 / 3)], abs=1e-6)
    assert counts.tolist() == [2, 1]


def test_objective_by_hand():
    logits, labels = fixed_batch()
    sums, counts = sequence_logps(logits, labels)
    logps = PairLogps(sums[:1], sums[1:], counts[:1], counts[1:])
    reference_chosen, reference_rejected = torch.tensor([LN(0.2)]), torch.tensor([LN(0.5)])
    loss, metrics = dpo_objective(logps, reference_chosen, reference_rejected, beta=0.5, alpha=2.0, gamma=0.5)
    # rewards: 0.5 * (ln 0.1 - ln 0.2) = 0.5 ln(1/2); 0.5 * (ln 1/3 - ln 0.5) = 0.5 ln(2/3)
    # margin 0.5 ln(3/4): DPO loss = ln(1 + exp(-margin)) = ln(1 + sqrt(4/3)); SFT = -ln(0.1) / 2 tokens
    dpo = LN(1 + math.sqrt(4 / 3))
    sft = -LN(0.1) / 2
    assert loss.item() == pytest.approx(2.0 * dpo + 0.5 * sft, abs=1e-6)
    assert metrics["loss/dpo"] == pytest.approx(dpo, abs=1e-6)
    assert metrics["loss/sft"] == pytest.approx(sft, abs=1e-6)
    assert metrics["rewards/chosen"] == pytest.approx(0.5 * LN(0.5), abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(0.5 * LN(2 / 3), abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx(0.5 * LN(0.75), abs=1e-6)
    assert metrics["rewards/accuracies"] == 0.0


def test_policy_equal_to_reference_gives_log_2():
    policy = torch.tensor([-3.2, -10.0, -0.5])
    rejected = torch.tensor([-1.0, -7.5, -2.0])
    terms = dpo_terms(policy, rejected, policy.clone(), rejected.clone(), beta=0.1)
    assert terms.losses.tolist() == pytest.approx([LN(2)] * 3, abs=1e-7)
    assert terms.chosen_rewards.abs().max() == 0 and terms.rejected_rewards.abs().max() == 0


def test_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-2.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    dpo_terms(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1).losses.sum().backward()
    assert chosen.grad.item() == pytest.approx(-0.05) and rejected.grad.item() == pytest.approx(0.05)


def test_window_scores_like_the_full_logits(tiny_model_factory):
    model, processor = tiny_model_factory()
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    prompt = {"from": "human", "value": "<image>\nWhat colour is this image?"}
    sides = [
        processor.encode([prompt, {"from": "gpt", "value": text}], [image])
        for text in ("The image is red.", "A blue one, I think.")
    ]
    batch = processor.collate(sides)
    with torch.no_grad():
        full = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
        ).logits
        expected, counts = sequence_logps(full, batch["labels"])
        got = pair_logps(model, batch)
    assert logits_window(batch["labels"]) < batch["labels"].shape[1] // 2  # image tokens are not scored
    torch.testing.assert_close(torch.cat([got.chosen, got.rejected]), expected, rtol=1e-5, atol=1e-5)
    assert torch.cat([got.chosen_tokens, got.rejected_tokens]).tolist() == counts.tolist()
    assert counts.tolist() == [sum(1 for label in s.labels if label != IGNORE_INDEX) for s in sides]


def test_batch_without_answers_is_refused():
    with pytest.raises(ValueError, match="no supervised tokens"):
        logits_window(torch.full((2, 5), IGNORE_INDEX))
