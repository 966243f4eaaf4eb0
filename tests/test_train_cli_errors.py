"""`sicog train` settings that cannot start a run stop before anything is loaded: config values are typed as the
command line types its flags, counts are at least 1, and an output folder that cannot be made is one line."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sicog.cli import main


@pytest.fixture
def trained(monkeypatch) -> list:
    """The settings `sicog train` would train with, in place of the run itself (nothing is loaded)."""
    runs = []

    def train(model_args, data_args, training_args) -> dict:
        runs.append((model_args, data_args, training_args))
        return {}

    monkeypatch.setattr("sicog.train.run.train", train)
    return runs


def config(tmp_path: Path, text: str) -> str:
    """A YAML config of a CPU run with ``text`` added (and a data path unless ``text`` gives one)."""
    path = tmp_path / "run.yaml"
    data = "" if text.startswith("data_path") else "data_path: data.jsonl\n"
    path.write_text(f"{data}output_dir: {tmp_path / 'out'}\nuse_cpu: true\nreport_to: none\n{text}")
    return str(path)


def test_config_values_are_converted_as_the_command_line_converts_them(tmp_path, trained):
    """YAML reads 1e-4 as a string and "2" stays one: both reached the Trainer as text and failed once the model
    was loaded (AdamW, the DataLoader)."""
    yaml_config = config(tmp_path, 'stage: 1.5\nlearning_rate: 1e-4\nper_device_train_batch_size: "2"\n'
                                   "vision_tower_lr: 2e-5\nbf16: 'false'\nsave_strategy: 'no'\ndeepspeed: null\n")
    assert main(["train", yaml_config]) == 0
    json_config = tmp_path / "run.json"
    json_config.write_text('{"data_path": "d.jsonl", "output_dir": "o", "use_cpu": true, "learning_rate": "3e-4", '
                           '"gradient_accumulation_steps": 4.0e0, "report_to": ["none"]}')
    assert main(["train", str(json_config)]) == 2  # 4.0 is no integer on the command line either
    json_config.write_text(json_config.read_text().replace("4.0e0", '"4"'))
    assert main(["train", str(json_config)]) == 0
    (_, _, yaml_args), (_, _, json_args) = trained
    assert (yaml_args.stage, yaml_args.learning_rate, yaml_args.per_device_train_batch_size) == ("1.5", 1e-4, 2)
    assert (yaml_args.vision_tower_lr, yaml_args.bf16, yaml_args.save_strategy) == (2e-5, False, "no")
    assert (json_args.learning_rate, json_args.gradient_accumulation_steps, json_args.report_to) == (3e-4, 4, [])


def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path, trained, capsys):
    cases = [
        ("learning_rate: fast\n", "key 'learning_rate': expected a number, got 'fast'"),
        ("learning_rate: null\n", "key 'learning_rate': expected a number, got null"),
        ("per_device_train_batch_size: 0\n", "key 'per_device_train_batch_size': must be at least 1, got 0"),
        ("per_device_train_batch_size: 2.5\n", "key 'per_device_train_batch_size': expected an integer, got 2.5"),
        ("gradient_accumulation_steps: -1\n", "key 'gradient_accumulation_steps': must be at least 1, got -1"),
        ("dataloader_num_workers: -1\n", "key 'dataloader_num_workers': must be 0 or more, got -1"),
        # transformers keeps every checkpoint with a limit of 0; steps below 0 never save or log.
        ("save_total_limit: 0\n", "key 'save_total_limit': must be at least 1, got 0"),
        ("save_steps: -5\n", "key 'save_steps': must be greater than 0, got -5"),
        ("logging_steps: 0\n", "key 'logging_steps': must be greater than 0, got 0"),
        ("eval_steps: 0\n", "key 'eval_steps': must be greater than 0, got 0"),
        ("bf16: maybe\n", "key 'bf16': Truthy value expected: got maybe"),
        ("stage: 3\n", "key 'stage': expected one of 0, 1, 1.5, 2, dpo, got 3"),
        ("save_strategy: no\n", "key 'save_strategy': expected one of no, steps, epoch, best, got False (YAML reads "
                                "an unquoted no, off, yes or on as a boolean: quote it)"),
        ("max_steps: [1, 2]\n", "key 'max_steps': expected an integer, got [1, 2]"),
        ("data_path: null\n", "key 'data_path': expected a string, got null"),
    ]
    for text, says in cases:
        path = config(tmp_path, text)
        assert main(["train", path]) == 2, says
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and err.startswith(f"sicog train: error: config {path}: {says}"), err
    assert trained == []


def test_an_invalid_yaml_config_is_one_line_naming_file_line_and_column(tmp_path, trained, capsys):
    """PyYAML's message spans five lines; squeezed into one it named the file twice, as config and as a string."""
    path = config(tmp_path, "learning_rate: 1e-4\nlr_scheduler_type: [cosine\n")
    assert main(["train", path]) == 2
    assert capsys.readouterr().err == (f"sicog train: error: config {path}:7:1: not valid YAML: expected ',' or ']', "
                                       "but got '<stream end>'\n")
    Path(path).write_bytes(b"data_path: caf\xe9.jsonl\n")
    assert main(["train", path]) == 2
    assert capsys.readouterr().err.startswith(f"sicog train: error: config {path}:1: not UTF-8 text (byte ")
    assert trained == []


def test_a_count_below_1_on_the_command_line_stops_in_argparse(tmp_path, trained, capsys):
    for flag in ("--per_device_train_batch_size", "--gradient_accumulation_steps"):
        with pytest.raises(SystemExit) as stop:
            main(["train", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), flag, "0"])
        assert stop.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err.splitlines()[-1]
    assert trained == []


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--model_max_length", "-5", "must be at least 1, got -5"),  # cut every sample to input_ids[:-5]
    ("--learning_rate", "-1", "must be 0 or more, got -1"),
    ("--vision_tower_lr", "-1", "must be 0 or more, got -1"),  # gradient ascent on the tower, exit 0
    ("--learning_rate", "nan", "must be a finite number, got nan"),
    ("--lora_r", "-1", "must be 0 or more, got -1"),
    ("--dpo_beta", "nan", "must be a finite number, got nan"),  # trained to NaN weights, exit 0, loss logged 0
    ("--dpo_beta", "-0.1", "must be greater than 0, got -0.1"),  # trained towards the rejected answers
    ("--dpo_gamma", "inf", "must be a finite number, got inf"),
    ("--dpo_alpha", "-1", "must be 0 or more, got -1"),
    ("--max_slice_nums", "0", "must be at least 1, got 0"),
    ("--inference_long_side", "-3", "must be at least 1, got -3"),
    ("--augment", "foo", "invalid choice: 'foo' (choose from 'none', 'release')"),
    ("--resampler_pooling", "max", "invalid choice: 'max' (choose from 'roi_align', 'average')"),
    ("--slice_separators", "foo", "invalid choice: 'foo' (choose from 'auto', 'release', 'tokenizer')"),
])
def test_a_size_rate_or_choice_out_of_range_stops_in_argparse(tmp_path, trained, capsys, flag, value, says):
    """Each failed only once the model was loaded, in a traceback, or trained wrongly without a word."""
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), flag, value])
    assert stop.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("sicog train: error: argument " + flag) and last.endswith(says)
    assert trained == []


def test_an_output_folder_that_is_or_lies_in_a_file_is_one_line(tmp_path, capsys):
    """Stopped by the output lock, before the model source is even looked at."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for output, says in ((afile, f"{afile} is a file, not a folder"),
                         (afile / "sub", f"{afile / 'sub'} cannot be made a folder ({afile} is a file)")):
        assert main(["train", "--stage", "2", "--model_name_or_path", str(tmp_path / "model"), "--data_path",
                     "d.jsonl", "--output_dir", str(output), "--use_cpu", "--report_to", "none"]) == 2
        assert capsys.readouterr().err.splitlines()[-1] == f"sicog train: error: {says}"


def test_a_damaged_or_missing_checkpoint_is_one_line_naming_it_once(tmp_path, capsys, tiny_model_factory):
    from sicog.model.builders import save_pretrained

    checkpoint = tmp_path / "ck"
    save_pretrained(*tiny_model_factory(), checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a save cut short
    (tmp_path / "d.jsonl").write_text('{"id": "a", "conversations": []}\n')
    (tmp_path / "empty").mkdir()
    for source, says in ((checkpoint, f"{weights}: not a readable safetensors file ("),
                         (tmp_path / "empty", "")):  # transformers' message names the folder
        assert main(["train", "--stage", "2", "--model_name_or_path", str(source), "--data_path",
                     str(tmp_path / "d.jsonl"), "--output_dir", str(tmp_path / "out"), "--use_cpu",
                     "--report_to", "none"]) == 2
        line = capsys.readouterr().err.splitlines()[-1]
        assert line.startswith(f"sicog train: error: --model_name_or_path: {says}") and line.count(str(source)) == 1


def test_a_load_error_names_the_checkpoint_unless_it_names_it_already():
    from sicog.model.builders import _load_problem

    offline = OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them.")
    assert _load_problem(Path("files"), offline).startswith("cannot load the checkpoint files: We couldn't")
    missing = OSError("Error no file named model.safetensors found in directory /data/ck.")
    assert _load_problem(Path("/data/ck"), missing) == str(missing)
    assert _load_problem(Path("/data/c"), missing).startswith("cannot load the checkpoint /data/c: ")


@pytest.mark.parametrize(("flags", "says"), [
    # wandb is what the published scripts report to; not installed, the Trainer's constructor failed in a traceback.
    (["--report_to", "wandb"], "--report_to wandb: wandb is not installed (installed here: tensorboard); install it, "
                               "or pass --report_to none"),
    # DPO failed only after its whole reference pass.
    (["--stage", "dpo", "--report_to", "wandb"], "--report_to wandb: wandb is not installed"),
    (["--report_to", "nonesuch"], "--report_to nonesuch: no such tracker (transformers knows azure_ml, "),
    (["--eval_strategy", "steps", "--eval_steps", "1"], "--eval_strategy steps: needs evaluation data, and sicog "
                                                        "train has none"),
    (["--eval_on_start", "True"], "--eval_on_start: needs evaluation data"),
    (["--save_strategy", "best"], "--save_strategy best: needs evaluation data"),
    (["--seed", "-1"], "--seed -1: must be from 0 to 4294967295"),  # numpy's range, seeded before the model is built
    (["--seed", str(2**32)], f"--seed {2**32}: must be from 0 to 4294967295"),
    # Trained no step and saved the starting weights as the run's, exit 0.
    (["--num_train_epochs", "0"], "--num_train_epochs 0: must be a finite number above 0 (or give --max_steps)"),
    (["--num_train_epochs", "-2"], "--num_train_epochs -2: must be a finite number above 0"),
    # A record failing to load reached accelerate's dispatcher as data: a TypeError traceback mid-run.
    (["--accelerator_config", '{"dispatch_batches": true}'], "--accelerator_config dispatch_batches: true is not "
                                                              "supported"),
    # Trained each position to repeat its input token, with no word said.
    (["--label_smoothing_factor", "0.1"], "--label_smoothing_factor 0.1: not supported (the Trainer's label smoother "
                                          "would score each position on its own token"),
])
def test_settings_that_failed_once_the_model_was_loaded_stop_before(tmp_path, trained, capsys, monkeypatch, flags,
                                                                     says):
    """Each failed in a traceback (exit 1) once the model was loaded and the data measured, or trained nothing."""
    monkeypatch.setattr("transformers.integrations.get_available_reporting_integrations", lambda: ["tensorboard"])
    assert main(["train", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), "--use_cpu", *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"sicog train: error: {says}"), err
    assert trained == []


def test_the_settings_around_those_refused_still_start(tmp_path, trained, monkeypatch):
    monkeypatch.setattr("transformers.integrations.get_available_reporting_integrations", lambda: ["tensorboard"])
    for flags in (["--report_to", "tensorboard"], ["--report_to", "all"], ["--seed", "0"], ["--seed", str(2**32 - 1)],
                  ["--num_train_epochs", "0.5"], ["--num_train_epochs", "0", "--max_steps", "3"],
                  ["--accelerator_config", '{"dispatch_batches": false}'], ["--label_smoothing_factor", "0"]):
        assert main(["train", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), "--use_cpu", *flags]) == 0
    assert [args.report_to for _, _, args in trained[:2]] == [["tensorboard"], ["tensorboard"]]
    assert len(trained) == 8


def test_a_tracker_in_a_config_file_is_checked_as_on_the_command_line(tmp_path, trained, capsys, monkeypatch):
    monkeypatch.setattr("transformers.integrations.get_available_reporting_integrations", lambda: [])
    path = tmp_path / "run.yaml"
    path.write_text(f"data_path: d.jsonl\noutput_dir: {tmp_path / 'out'}\nreport_to: [wandb]\n")
    assert main(["train", str(path)]) == 2
    assert capsys.readouterr().err == (f"sicog train: error: config {path}: --report_to wandb: wandb is not installed "
                                       "(none is installed here); install it, or pass --report_to none\n")
    assert trained == []


@pytest.mark.parametrize("source", [["--stage", "2", "--model_name_or_path"],
                                    ["--stage", "1", "--language_model", "llm", "--vision_tower"]])
def test_flash_attention_that_cannot_run_is_one_line_before_the_model_is_looked_at(tmp_path, capsys, monkeypatch,
                                                                                    source):
    """Without flash-attn, loading the model failed in two tracebacks (the Hub-kernel fallback's, then an
    ImportError). Checked first: the missing model folder is not even reached."""
    asked = []

    def available(kernels_fallback_ok=False):
        asked.append(kernels_fallback_ok)
        return False

    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", available)
    argv = ["train", *source, str(tmp_path / "gone"), "--data_path", "d.jsonl", "--output_dir", str(tmp_path / "out"),
            "--use_cpu", "--report_to", "none", "--attn_implementation", "flash_attention_2"]
    assert main(argv) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("sicog train: error: --attn_implementation flash_attention_2: flash-attn cannot run here")
    assert line.endswith("pip install flash-attn, or use --attn_implementation sdpa")
    assert asked == [True]  # transformers' own fallback to the Hub's flash-attn kernel counts as usable
    monkeypatch.setattr("transformers.utils.is_flash_attn_2_available", lambda kernels_fallback_ok=False: True)
    assert main(argv) == 2
    says = f"sicog train: error: {source[-1]} {tmp_path / 'gone'}: no such file or folder"
    assert capsys.readouterr().err.splitlines()[-1] == says


def test_deepspeed_without_a_launcher_is_one_line_before_anything_is_loaded(tmp_path, monkeypatch, capsys):
    """DeepSpeed, finding no launcher's variables, looked for MPI at the first step: a traceback about mpi4py."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    find_spec = importlib.util.find_spec  # no mpi4py, as on most machines (other packages found as they are)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *args: None if name == "mpi4py" else find_spec(name,
                                                                                                             *args))
    assert main(["train", config(tmp_path, "deepspeed: zero2\nmodel_name_or_path: /no/such/model\n")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "sicog train: error: --deepspeed needs a launcher, even for one process: torchrun --nproc_per_node 1 -m "
        "sicog train ... (the training scripts start one)"]


def test_a_json_config_is_read_as_a_yaml_one_a_bom_dropped_and_a_repeated_key_refused(tmp_path, trained, capsys):
    """A repeated key kept its last value without a word, and a BOM (which YAML configs may have) was refused."""
    path = tmp_path / "run.json"
    path.write_text('\ufeff{"data_path": "d.jsonl", "output_dir": "o", "use_cpu": true, "report_to": "none", '
                    '"learning_rate": 2e-4}', encoding="utf-8")
    assert main(["train", str(path)]) == 0 and trained[-1][2].learning_rate == 2e-4
    path.write_text(path.read_text(encoding="utf-8-sig").replace('"learning_rate"', '"learning_rate": 1e-5, '
                                                                  '"learning_rate"'))
    assert main(["train", str(path)]) == 2
    assert "key 'learning_rate': given twice" in capsys.readouterr().err


def test_a_misspelt_zero_setting_is_one_line_before_anything_is_loaded(tmp_path, trained, capsys):
    """DeepSpeed refused `"stgae": 2` only once the Trainer prepared the model: a pydantic traceback, exit 1."""
    path = tmp_path / "ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stgae": 2, "overlap_comm": 1}}')
    run = config(tmp_path, f"deepspeed: {path}\n")
    assert main(["train", run]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sicog train: error: config {run}: --deepspeed {path}: zero_optimization has no setting(s) ['stgae'] "
        "(DeepSpeed's ZeRO settings: https://www.deepspeed.ai/docs/config-json/)"]
    for packaged in ("zero2", "zero3"):  # every setting of the packaged configs is one DeepSpeed knows
        assert main(["train", config(tmp_path, f"deepspeed: {packaged}\n")]) == 0
    assert trained


@pytest.mark.parametrize("value", ["false", "true", "1"])
def test_a_deepspeed_value_that_is_json_but_no_config_is_one_line(tmp_path, trained, capsys, value):
    """transformers read `--deepspeed false` as the config False: a traceback in accelerate once training started."""
    assert main(["train", "--data_path", "d.jsonl", "--output_dir", str(tmp_path), "--deepspeed", value]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"sicog train: error: --deepspeed {value}: give zero2, zero3 or a DeepSpeed JSON config (its file, or its "
        "text as an object); leave it out to train without DeepSpeed"]
