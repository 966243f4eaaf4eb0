"""`sicog train --stage dpo` end to end on tiny pairs: step-0 loss, logged rewards, reference cache, ZeRO-2."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from ports import free_port
from train_helpers import COLORS, make_checkpoint, weights

from sicog.cli import main
from sicog.model.builders import load_pretrained
from sicog.train.dpo_reference import compute_reference
from sicog.train.pairs import PairCollator, PairDataset

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected", "loss/dpo", "loss/sft")


def make_pairs(root, n=8):
    """Pairs on plain-colour images: chosen names the colour, rejected names another one."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = list(COLORS)
    sizes = [(64, 64), (96, 64), (64, 96)]
    lines = []
    for i in range(n):
        color, wrong = names[i % len(names)], names[(i + 1) % len(names)]
        Image.new("RGB", sizes[i % len(sizes)], COLORS[color]).save(images / f"{i}.png")
        lines.append({"id": f"p{i}", "image": f"{i}.png", "prompt": "What colour is this image?",
                      "chosen": f"The image is {color}.", "rejected": f"The image is {wrong}."})
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("dpo")
    return {"root": root, "base": make_checkpoint(root, tokenizer), "pairs": make_pairs(root)}


def flags(world, out, steps, extra=()):
    return [
        "--stage", "dpo", "--model_name_or_path", str(world["base"]), "--data_path", str(world["pairs"]),
        "--image_folder", str(world["root"] / "images"), "--output_dir", str(out), "--max_steps", str(steps),
        "--per_device_train_batch_size", "4", "--learning_rate", "2e-3", "--logging_steps", "1",
        "--save_steps", str(steps), "--lr_scheduler_type", "constant", "--seed", "0", "--use_cpu",
        "--dataloader_num_workers", "0", *extra,
    ]


def training_logs(out):
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return [e for e in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"] if "loss" in e]


@pytest.mark.slow
def test_dpo_starts_at_log2_and_learns_the_preference(world, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *flags(world, out, 10)]) == 0
    logs = training_logs(out)
    assert len(logs) == 10 and all(name in entry for entry in logs for name in METRICS)
    first = logs[0]
    # policy == reference at the first step: every reward is 0 and the DPO part is exactly log 2
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/margins"]) < 1e-5
    assert first["loss"] == pytest.approx(first["loss/dpo"] + first["loss/sft"], abs=1e-4)  # alpha = gamma = 1
    assert sum(e["rewards/accuracies"] for e in logs[-4:]) / 4 > 0.5, [e["rewards/accuracies"] for e in logs]
    assert logs[-1]["rewards/margins"] > 0 and logs[-1]["loss/dpo"] < math.log(2)
    cache = json.loads((out / "reference_logps.json").read_text())
    assert cache["ids"] == [f"p{i}" for i in range(8)] and len(cache["logps"]) == 8
    assert all(c < 0 and r < 0 for c, r in cache["logps"])
    results = json.loads((out / "train_results.json").read_text())
    assert results["stage"] == "dpo" and results["samples"] == 8
    # the vision tower is frozen by the dpo preset; the language model moved
    before, after = weights(world["base"]), weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("vision_tower."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("language_model."))


def test_bf16_without_deepspeed_trains_fp32_weights_under_autocast(world, tmp_path):
    """With --bf16 and no DeepSpeed the weights stay fp32 (the Trainer autocasts the passes to bf16): one step at
    DPO's learning rate moves nearly every trained weight, where bf16 weights would round it away (about 1% moved).
    The reference is computed under the same autocast, so the first step's rewards are 0 as in fp32."""
    out = tmp_path / "bf16"
    # One batch of all 8 pairs, as the reference pass scores them: bf16 matmuls of other shapes (another padded length)
    # round differently on some CPUs, by about 2e-5 in this loss.
    one_batch = ("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8")
    assert main(["train", *flags(world, out, 1, ("--bf16", "True", "--learning_rate", "5e-7", *one_batch))]) == 0
    before, after = weights(world["base"]), weights(out)
    # the dpo preset's parts, less the resampler's fixed position table
    trained = [k for k in before if k.startswith(("language_model.", "resampler.")) and k != "resampler.query_pos"]
    assert {after[k].dtype for k in trained} == {torch.float32}
    moved = sum(int((after[k] != before[k]).sum()) for k in trained)
    assert moved > 0.8 * sum(before[k].numel() for k in trained)
    first = training_logs(out)[0]
    # (a reference computed without autocast, from the fp32 weights, gives rewards about 1e-4 off here)
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/chosen"]) < 1e-5 and abs(first["rewards/margins"]) < 1e-5


@pytest.mark.slow
def test_lora_run_saves_a_merged_checkpoint(world, tmp_path):
    out = tmp_path / "lora"
    assert main(["train", *flags(world, out, 2, ("--lora_r", "4", "--dpo_gamma", "0"))]) == 0
    logs = training_logs(out)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # gamma 0: the DPO part alone
    assert logs[1]["rewards/margins"] > 0
    saved = weights(out)
    assert not any("lora" in k for k in saved) and set(saved) == set(weights(world["base"]))
    load_pretrained(out)


def test_invalid_pairs_stop_the_run_and_are_listed(world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = world["pairs"].read_text().splitlines()
    same = {"id": "same", "image": "0.png", "prompt": "Q?", "chosen": "A.", "rejected": "A."}
    no_image = {"id": "noimg", "image": "missing.png", "prompt": "Q?", "chosen": "A.", "rejected": "B."}
    # A whole header and cut-off pixels (a truncated download): only decoding finds it.
    whole = (world["root"] / "images" / "0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    cut = {"id": "cut", "image": str(tmp_path / "cut.png"), "prompt": "Q?", "chosen": "A.", "rejected": "B."}
    bad.write_text("\n".join([good[0], json.dumps(same), json.dumps(no_image), json.dumps(cut)]) + "\n")
    args = flags(world, tmp_path / "out", 1)
    args[args.index("--data_path") + 1] = str(bad)
    assert main(["train", *args]) == 2
    assert "3 invalid training records" in capsys.readouterr().err
    listed = [json.loads(line) for line in (tmp_path / "out" / "data_errors.jsonl").read_text().splitlines()]
    assert [(p["id"], p["line"], p["field"], p["category"]) for p in listed] == [
        ("same", 2, "rejected", "invalid record"), ("noimg", 3, "image", "missing image"),
        ("cut", 4, "image", "unreadable image")]
    assert "field 'rejected'" in listed[0]["reason"] and "missing.png" in listed[1]["reason"]
    assert not (tmp_path / "out" / "reference_logps.json").exists()  # stopped before any computation


def test_a_reference_file_holding_other_data_is_not_written_over(world, tmp_path, capsys):
    """--dpo_reference_file naming the pairs file by mistake: the run stops instead of replacing the pairs."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(world["pairs"].read_bytes())
    args = flags(world, tmp_path / "out", 1, ("--dpo_reference_file", str(pairs)))
    args[args.index("--data_path") + 1] = str(pairs)
    assert main(["train", *args]) == 2
    assert "holds something other than reference log-probabilities" in capsys.readouterr().err
    assert pairs.read_bytes() == world["pairs"].read_bytes()


@pytest.mark.parametrize(("extra", "message"), [
    (("--dpo_alpha", "0", "--dpo_gamma", "0"), "--dpo_alpha 0 --dpo_gamma 0: the objective is then zero"),
    (("--augment", "release"), "--augment release: --stage dpo scores its reference on the images as stored")])
def test_settings_that_train_nothing_or_not_the_pairs_scored_are_refused(world, tmp_path, capsys, extra, message):
    """Both ran with exit 0: zero weights saved the starting model as the result, --augment was ignored."""
    assert main(["train", *flags(world, tmp_path / "out", 1, extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "reference_logps.json").exists()


def test_training_steps_score_the_policy_without_dropout_as_the_reference_was(world, tmp_path):
    """LoRA's dropout (0.05 by default) was on in training steps and off in the reference pass."""
    from sicog.train.cli import build_parser
    from sicog.train.dpo import build_dpo_trainer
    from sicog.train.dpo_loss import pair_logps
    from sicog.train.run import build_model

    model_args, data_args, args = build_parser().parse_args_into_dataclasses(
        args=flags(world, tmp_path / "out", 1, ("--lora_r", "4", "--lora_dropout", "0.5")))
    model, processor = build_model(model_args, args)
    _, dataset = build_dpo_trainer(model, processor, model_args, data_args, args)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # as after some steps: the adapters no longer add zero
                parameter.normal_(0, 0.3)
        batch = PairCollator(processor)([dataset[0], dataset[1]])
        batch.pop("ids")
        model.eval()
        reference = pair_logps(model, batch)
        model.train()
        for _ in range(2):
            scored = pair_logps(model, batch)
            torch.testing.assert_close((scored.chosen, scored.rejected), (reference.chosen, reference.rejected))


def test_a_pair_that_fails_in_a_dataloader_worker_comes_back_as_its_error(world, tmp_path):
    """A pair whose image is cut after the check (a worker decodes it during training): raised in the DataLoader
    worker, its RecordError reached the trainer wrapped in torch's worker traceback, which `sicog train` printed as
    its one-line error. The batch comes back as the error itself, for the trainer to raise as the dataset did."""
    from torch.utils.data import DataLoader

    from sicog.data.jsonl import RecordError
    from sicog.train.datasets import FailedFetch, unless_failed

    _, processor = load_pretrained(world["base"])
    pairs = make_pairs(tmp_path, n=2)
    dataset = PairDataset(pairs, processor, image_folder=tmp_path / "images", show_progress=False)
    whole = (tmp_path / "images" / "1.png").read_bytes()
    (tmp_path / "images" / "1.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecordError) as in_process:
        dataset[1]
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=PairCollator(processor))))
    assert isinstance(batch, FailedFetch)
    with pytest.raises(RecordError) as from_worker:
        unless_failed(batch)
    assert str(from_worker.value) == str(in_process.value)
    assert str(in_process.value).startswith(f"{pairs}:2 id='p1': cannot read image ")


def single_process_reference(world):
    """The reference log-probabilities of the pairs under the base model, computed in this process."""
    model, processor = load_pretrained(world["base"])
    dataset = PairDataset(world["pairs"], processor, image_folder=world["root"] / "images", show_progress=False)
    return compute_reference(model, dataset, PairCollator(processor), path=world["root"] / "single.json", key="k",
                             batch_size=3, device="cpu", show_progress=False)


def test_deepspeed_bf16_reads_the_reference_in_full_precision(world, tmp_path):
    """Under DeepSpeed the Trainer casts a batch's float tensors to bf16, which kept 3 digits of each reference
    log-probability: the first step's rewards were off by up to 1e-3 here (0.05-0.1 on a 7B model's replies).
    They are exact: the reference is the same pass as the first step's (one batch of all 8 pairs)."""
    out = tmp_path / "zero2-bf16"
    one_batch = ("--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", str(free_port()),
           "-m", "sicog", "train", *flags(world, out, 1, ("--deepspeed", "zero2", "--bf16", "True",
                                                           "--learning_rate", "5e-7", *one_batch))]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    first = training_logs(out)[0]
    assert first["loss/dpo"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == first["rewards/rejected"] == first["rewards/margins"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_complete_and_save_a_loadable_checkpoint(world, tmp_path, zero):
    out = tmp_path / zero
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()),
           "-m", "sicog", "train", *flags(world, out, 2, ("--deepspeed", zero, "--per_device_train_batch_size", "2"))]
    result = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    logs = training_logs(out)
    assert [e["step"] for e in logs] == [1, 2] and logs[0]["loss/dpo"] == pytest.approx(math.log(2), abs=1e-5)
    # each rank scored half of the pairs (under ZeRO-3 with the gathered weights): together, all of them,
    # as one process does
    cache = json.loads((out / "reference_logps.json").read_text())
    assert cache["ids"] == [f"p{i}" for i in range(8)]
    torch.testing.assert_close(
        torch.tensor(cache["logps"]), torch.tensor(single_process_reference(world)), rtol=0, atol=1e-4
    )
    assert not list(out.glob(".reference_logps-*"))  # rank shards are removed once merged
    model, processor = load_pretrained(out)
    base = weights(world["base"])
    assert all(v.numel() > 0 for v in model.state_dict().values())
    assert any(
        not torch.equal(base[k], v)
        for k, v in model.state_dict().items()
        if k.startswith("language_model.") and k in base
    )
    assert processor.image_token_id == model.config.image_token_id
