"""The steps of one seed of the cycle, as data: world parts, base model, stage 0, generation, curation,
every arm's stage-1.5 data and next generation, and the evaluations (docs/pipeline.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sicog.cycle.arms import ARMS, DPO_ARM, TASKS
from sicog.cycle.config import REQUIRED, REQUIRED_FOR_DPO, CycleConfig
from sicog.cycle.engine import Arg, Joined, Out, Plan, Ref, Step
from sicog.cycle.flags import (
    DPO_SCHEDULE,
    TRAIN_SCHEDULE,
    curate_flags,
    generate_flags,
    load_flags,
    model_flags,
    setting_arg,
    train_flags,
)
from sicog.cycle.world import World, toy_input
from sicog.toy.similarity import ENCODER_NAME as TOY_ENCODER

# Pools cut to the configured sizes, with the references that are in the same order as each pool.
POOLS = {"unlabeled_images": ("unlabeled_images", "unlabeled_web", "oracle_captions"),
         "unlabeled_questions": ("unlabeled_questions", "oracle_reasoning")}
GENERATION = {"captions": ("stage0_perception", "cod", "unlabeled_images", "cod-default"),
              "reasoning": ("stage0_reasoning", "cot", "unlabeled_questions", "cot-default")}


# torchrun accepts both spellings of its process-count flags.
PROCESS_FLAGS = (("--nproc_per_node", "--nproc-per-node"), ("--nnodes",))


def launcher_processes(launcher: list[str]) -> int | None:
    """Processes a torchrun launcher starts: ``--nproc_per_node`` x ``--nnodes`` (1 without a launcher).

    None when a count is not a number before the launcher runs (torchrun's ``gpu``, ``auto`` or ``cpu``, or an
    environment variable): the global batch then depends on the machine.
    """
    def value(flags: tuple[str, ...]) -> int | None:
        for i, arg in enumerate(launcher):
            name, sep, given = arg.partition("=")
            if name not in flags:
                continue
            if not sep:
                given = launcher[i + 1] if i + 1 < len(launcher) else ""
            # An elastic range (``--nnodes=1:4``) counts its largest size.
            count = given.split(":")[-1]
            return int(count) if count.isdigit() else None
        return 1

    counts = [value(flags) for flags in PROCESS_FLAGS]
    return None if None in counts else counts[0] * counts[1]


def _option(flag: str, value: object) -> list[str]:
    """``[flag, value]``, or nothing when the value is None (the command's default applies)."""
    return [] if value is None else [flag, str(value)]


def _without(flags: list[Arg], flag: str) -> list[Arg]:
    """``flags`` less ``flag`` and its value: a stage's own setting (stage 1's tunable parts) replaces the
    one ``config.train`` gives every stage, instead of being silently overridden by it."""
    drop = {i for i, f in enumerate(flags) if f == flag}
    return [f for i, f in enumerate(flags) if i not in drop and i - 1 not in drop]


@dataclass
class SeedPlan:
    """A seed's plan and where its results are: models, evaluations and curation per arm and round."""

    plan: Plan
    models: dict[str, Ref] = field(default_factory=dict)
    evals: dict[str, dict[str, Ref]] = field(default_factory=dict)
    generated: dict[int, dict[str, Ref]] = field(default_factory=dict)
    curation: dict[int, dict[str, Ref]] = field(default_factory=dict)


class _Planner:
    """Builds the steps; one method per kind of step."""

    def __init__(self, config: CycleConfig, world: World, seed: int) -> None:
        self.c, self.w, self.seed = config, world, seed
        self.result = SeedPlan(Plan(world.steps))
        self.plan = self.result.plan
        self.train_flags = train_flags(config)
        self.load_flags = load_flags(config)
        # With embed_command, the encoder's settings go to the embedding step, which runs apart.
        apart = bool(config.embed_command)
        self.curate_flags = curate_flags(config, encoding=False if apart else None)
        self.embed_flags = curate_flags(config, encoding=True) if apart else []
        self.generate_flags = generate_flags(config)
        self.data: dict[str, Arg] = {k: world.input(k) for k in world.files}

    def train(self, name: str, stage: str, data: Arg, steps: int | None, lr: float | None, source: list[Arg],
              tunable: str | None = None) -> Ref:
        c = self.c
        batch = c.stage1_batch_size if stage == "1" and c.stage1_batch_size else c.batch_size
        if None in (steps, lr, batch):  # load_config requires them; a config built in code may lack them
            raise ValueError(f"cycle config: step {name!r} needs its step count, learning rate and batch size "
                             f"(the keys {', '.join(REQUIRED_FOR_DPO if stage == 'dpo' else REQUIRED)})")
        accumulation = c.train.get("gradient_accumulation_steps", 1)
        processes = launcher_processes(c.launcher)
        if processes is None:
            note = f"global batch not known here: {batch} per device x {accumulation} accumulation x the processes " \
                   f"the launcher starts (its process count is not a number); {steps} steps"
        else:
            total = batch * accumulation * processes
            note = f"global batch {total} = {batch} per device x {accumulation} accumulation x {processes} " \
                   f"processes; {steps} steps = {steps * total} samples"
        schedule = {**TRAIN_SCHEDULE, "logging_steps": str(max(1, min(10, steps // 5))),
                    "save_steps": str(max(steps // 2, 1))}
        if stage == "1":
            del schedule["group_by_modality_length"]
        train_flags = _without(self.train_flags, "--tunable_parts") if tunable else self.train_flags
        if stage == "dpo":  # DPO scores its reference on the images as stored and refuses --augment
            train_flags = _without(train_flags, "--augment")
            schedule.update(DPO_SCHEDULE)
        argv = ["train", "--stage", stage, *source, *(self.load_flags if stage != "1" else ()), "--data_path", data,
                "--image_folder", self.w.image_folder, "--output_dir", Out(), "--max_steps", str(steps),
                "--per_device_train_batch_size", str(batch), "--learning_rate", str(lr), "--seed", str(self.seed),
                *(flag for name, value in schedule.items() if name not in c.train for flag in (f"--{name}", value)),
                *train_flags, *_option("--tunable_parts", tunable)]
        return self.plan.add(Step(name, tuple(argv), launched=True, note=note))

    def pools(self) -> None:
        limits = {"unlabeled_images": self.c.unlabeled_images_limit,
                  "unlabeled_questions": self.c.unlabeled_questions_limit}
        for pool, keys in POOLS.items():
            for key in (k for k in keys if k in self.data and limits[pool] is not None):
                self.plan.add(Step(f"pool_{key}", ("data", "head", "--input", self.data[key],
                                                   "--output", Out("pool.jsonl"), "--limit", str(limits[pool]))))
                self.data[key] = Ref(f"pool_{key}", "pool.jsonl")

    def generate(self, name: str, task: str, model: Ref, data: Arg, prompt: str) -> Ref:
        c = self.c
        captions = task == "captions"
        max_new = c.caption_max_new_tokens if captions else c.reasoning_max_new_tokens
        candidates = c.caption_candidates if captions else c.reasoning_candidates
        temperature = c.caption_temperature if captions else c.reasoning_temperature
        argv = ("generate", task, "--model", model, "--data", data, "--image-folder", self.w.image_folder,
                "--output", Out("generated.jsonl"), "--prompt", prompt, *_option("--num-candidates", candidates),
                *_option("--temperature", temperature), *_option("--top-p", c.top_p),
                *_option("--max-new-tokens", max_new), *_option("--batch-size", c.generation_batch_size),
                "--seed", str(self.seed), "--no-progress", *self.generate_flags)
        self.plan.add(Step(name, argv, launched=True))
        return Ref(name, "generated.jsonl")

    def curate(self, name: str, task: str, generated: Ref) -> Ref:
        c = self.c
        threshold = c.caption_threshold if task == "captions" else c.reasoning_threshold
        argv = ("curate", task, "--input", generated, "--output-dir", Out(), *_option("--threshold", threshold),
                "--seed", str(self.seed), *(_option("--min-agreement", c.min_agreement) if task == "reasoning" else []),
                *self.encoder(name, task, generated), *self.curate_flags)
        return self.plan.add(Step(name, argv, launched=True))

    def encoder(self, name: str, task: str, generated: Ref) -> tuple[Arg, ...]:
        """The `sicog curate` flags that choose the encoder. The toy's fact encoder, and a sentence encoder run in
        its own environment (``embed_command``), are two steps of their own (the texts curation compares, then
        their embeddings), read back with ``--embeddings``."""
        c = self.c
        if c.encoder is None:
            return ()
        encoder = setting_arg("encoder", c.encoder)
        if c.encoder != TOY_ENCODER and not c.embed_command:
            return ("--encoder", encoder)
        texts = self.plan.add(Step(f"{name}_texts", ("curate", "texts", task, "--input", generated,
                                                     "--output", Out("texts.jsonl"))))
        embed_argv = ("--texts", Ref(texts.step, "texts.jsonl"), "--output", Out("embeddings.npy"))
        if c.encoder == TOY_ENCODER:
            embed = Step(f"{name}_embed", ("toy", "embed", task, *embed_argv))
        else:
            embed = Step(f"{name}_embed", (*embed_argv, "--encoder", encoder, *self.embed_flags),
                         program=(*c.embed_command, "-m", "sicog.curate.embed_file"))
        return ("--embeddings", Ref(self.plan.add(embed).step, "embeddings.npy"))

    def evaluate(self, arm: str, model: Ref, references: Arg | None, synonyms: Arg | None) -> None:
        c, evals = self.c, {}
        # The primary score is multiple choice by option likelihood; beside it the same with each question shown
        # another row's image (blind: what the text alone gives), with a generated letter, and asked without the
        # options (open short answers, read through the world's synonyms if it has them).
        open_flags = ("--mc-scoring", "open", *(() if synonyms is None else ("--synonyms", synonyms)))
        for kind, flags in (("eval", ("--mc-scoring", "likelihood")),
                            ("blind", ("--mc-scoring", "likelihood", "--blind-seed", str(self.seed))),
                            ("letters", ("--mc-scoring", "generate")),
                            ("open", open_flags)):
            self.plan.add(Step(f"{kind}_{arm}", ("eval", "--model", model, "--benchmark", self.data["bench_mc"],
                                                 "--output-dir", Out("mc"), *flags,
                                                 *_option("--batch-size", c.eval_batch_size), "--no-progress"),
                               launched=True))
            evals["mc" if kind == "eval" else kind] = Ref(f"{kind}_{arm}", "mc/results.json")
        if "bench_perception" in self.data:
            # The true description against the same with one fact changed, as the reply to the caption request
            # itself (a description is no short answer).
            self.plan.add(Step(f"perception_{arm}", (
                "eval", "--model", model, "--benchmark", self.data["bench_perception"], "--output-dir", Out("mc"),
                "--mc-scoring", "likelihood", "--as-asked", *_option("--batch-size", c.eval_batch_size),
                "--no-progress"), launched=True))
            evals["perception"] = Ref(f"perception_{arm}", "mc/results.json")
        if "bench_caption" in self.data:
            self.plan.add(Step(f"captions_{arm}", (
                "generate", "captions", "--model", model, "--data", self.data["bench_caption"],
                "--image-folder", self.w.image_folder, "--output", Out("captions.jsonl"), "--prompt", "cod-default",
                "--num-candidates", "1", "--temperature", "0", *_option("--max-new-tokens", c.caption_max_new_tokens),
                *_option("--batch-size", c.eval_batch_size), "--no-progress"), launched=True))
            evals["captions"] = Ref(f"captions_{arm}", "captions.jsonl")
        if references is not None:
            self.plan.add(Step(f"image_use_{arm}", (
                "image-use", "--model", model, "--data", references, "--image-folder", self.w.image_folder,
                "--output", Out("image_use.json"), *_option("--batch-size", c.eval_batch_size), "--no-progress"),
                launched=True))
            evals["image_use"] = Ref(f"image_use_{arm}", "image_use.json")
        self.result.evals[arm] = evals

    def references(self) -> Arg | None:
        """Reference answers for the image-use check: ``data.image_use`` of a real config, or the toy world's."""
        if "image_use" in self.data:
            return self.data["image_use"]
        if self.w.toy_root is None:
            return None
        world = toy_input(self.w.toy_root, "ground_truth", "bench_caption")
        self.plan.add(Step("image_use_references", ("toy", "references", "--world", world,
                                                    "--output", Out("references.jsonl"))))
        return Ref("image_use_references", "references.jsonl")

    def synonyms(self) -> Arg | None:
        """The toy language's synonym table for open short answers (None for real data: exact answers)."""
        if self.w.toy_root is None:
            return None
        self.plan.add(Step("open_synonyms", ("toy", "synonyms", "--output", Out("synonyms.json"))))
        return Ref("open_synonyms", "synonyms.json")


class _Sources:
    """What arms' data is made of in one round (the random-candidate steps are added on first use)."""

    def __init__(self, planner: _Planner, prefix: str, generated: dict[str, Ref], curated: dict[str, Ref]) -> None:
        self.planner, self.prefix, self.generated, self.curated_steps = planner, prefix, generated, curated

    def world(self, key: str) -> Arg:
        return self.planner.data[key]

    def curated(self, task: str) -> Arg:
        return Ref(self.curated_steps[task].step, "curated.jsonl")

    def random(self, task: str) -> Arg:
        name = f"{self.prefix}C_random_{task}"
        if name not in self.planner.plan.steps:
            self.planner.plan.add(Step(name, ("curate", "random", "--input", self.generated[task],
                                              "--output", Out("random.jsonl"), "--seed", str(self.planner.seed))))
        return Ref(name, "random.jsonl")


def plan_seed(config: CycleConfig, world: World, seed: int, rounds: int = 1, dpo: bool = False) -> SeedPlan:
    """Every step of one seed: ``rounds`` of self-improvement (later rounds: arm D only, taught by the
    previous round's D), and with ``dpo`` arm F (DPO on D's final model with its curation pairs)."""
    p = _Planner(config, world, seed)
    c, data, result = config, p.data, p.result
    stage1 = p.train("stage1", "1", data["align"], c.stage1_steps, c.stage1_lr,
                     ["--vision_tower", world.vision_tower, "--language_model", world.language_model,
                      *model_flags(config, world)], tunable=c.stage1_tunable_parts)
    teacher = result.models["A"] = p.train("A_stage2", "2", data["sft"], c.stage2_steps, c.finetune_lr,
                                           ["--model_name_or_path", stage1])
    p.pools()
    for round_index in range(1, rounds + 1):
        prefix = "" if round_index == 1 else f"round{round_index}_"
        generated, curated = {}, {}
        for task, (stage0, annotated, pool, prompt) in GENERATION.items():
            model = p.train(f"{prefix}{stage0}", "0", data[annotated], c.stage0_steps, c.finetune_lr,
                            ["--model_name_or_path", teacher])
            generated[task] = p.generate(f"{prefix}generate_{task}", task, model, data[pool], prompt)
        for task in TASKS:
            curated[task] = p.curate(f"{prefix}curate_{task}", task, generated[task])
        result.generated[round_index], result.curation[round_index] = generated, curated
        sources = _Sources(p, prefix, generated, curated)
        for arm in (config.arms if round_index == 1 else ("D",)):
            if ARMS[arm].data is None:
                continue
            own = ARMS[arm].data(sources)
            mixture = Ref(f"{prefix}{arm}_mixture", "mixture.jsonl")
            p.plan.add(Step(mixture.step, ("curate", "mix", "--inputs", *own, data["cod"], data["cot"],
                                           "--output", Out("mixture.jsonl"), "--seed", str(seed))))
            s15 = p.train(f"{prefix}{arm}_stage15", "1.5", mixture, c.stage15_steps, c.finetune_lr,
                          ["--model_name_or_path", stage1])
            result.models[f"{prefix}{arm}"] = p.train(f"{prefix}{arm}_stage2", "2", data["sft"], c.stage2_steps,
                                                       c.finetune_lr, ["--model_name_or_path", s15])
        teacher = result.models[f"{prefix}D"]
    if dpo:
        pairs = Joined(tuple(Ref(result.curation[1][t].step, "pairs.jsonl") for t in TASKS), ",")
        result.models[DPO_ARM.letter] = p.train(f"{DPO_ARM.letter}_stage2", "dpo", pairs, c.dpo_steps, c.dpo_lr,
                                                ["--model_name_or_path", result.models["D"]])
    references, synonyms = p.references(), p.synonyms()
    for arm, model in result.models.items():
        p.evaluate(arm, model, references, synonyms)
    return result
