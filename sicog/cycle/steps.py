"""The cycle itself: world, base model, stage 0, generation, curation, next generation per arm, evaluation.

Every step is a `sicog` command (the same one a user would run by hand, see docs/pipeline.md), run
through :class:`StepRunner` so a rerun skips what is finished and resumes what was interrupted.
"""

from __future__ import annotations

from pathlib import Path

from sicog.cycle.arms import limited, one_random_candidate
from sicog.cycle.config import CycleConfig
from sicog.cycle.runner import StepRunner
from sicog.data.jsonl import iter_records, write_jsonl
from sicog.data.prompts import CAPTION_PROMPTS, IMAGE_TOKEN


class Cycle:
    """One seed of the cycle under ``root``."""

    def __init__(self, config: CycleConfig, root: Path, seed: int, world: dict, rerun_from: str | None = None) -> None:
        self.config = config
        self.seed = seed
        self.world = world
        self.runner = StepRunner(root, rerun_from=rerun_from, launcher=config.launcher)

    # ----- one command per kind of step ----------------------------------------------------------
    def train(self, name: str, stage: str, data: str, steps: int, lr: float, source: list[str], after: tuple[str, ...], tunable: str | None = None) -> str:
        """A training step; returns the checkpoint folder."""
        c = self.config

        def work(folder: Path) -> dict:
            argv = ["train", "--stage", stage, *source, "--data_path", data, "--image_folder", self.world["image_folder"],
                    "--output_dir", str(folder), "--max_steps", str(steps), "--per_device_train_batch_size", str(c.batch_size),
                    "--learning_rate", str(lr), "--lr_scheduler_type", "cosine", "--warmup_steps", "0.03",
                    "--weight_decay", "0.0", "--logging_steps", str(max(1, min(10, steps // 5))), "--save_steps", str(max(steps // 2, 1)),
                    "--save_total_limit", "1", "--seed", str(self.seed), "--group_by_modality_length", "True",
                    "--disable_tqdm", "True", *c.train_flags]
            if tunable:
                argv += ["--tunable_parts", tunable]
            self.runner.sicog(argv)
            return {"checkpoint": str(folder)}

        spec = {"stage": stage, "data": data, "steps": steps, "lr": lr, "source": source, "tunable": tunable,
                "batch": c.batch_size, "seed": self.seed, "flags": c.train_flags}
        return self.runner.run(name, spec, work, after)["checkpoint"]

    def generate(self, name: str, task: str, model: str, data: str, prompt: str, after: tuple[str, ...], *, n: int, temperature: float, max_new_tokens: int) -> str:
        """A generation step; returns the generated JSONL."""
        c = self.config

        def work(folder: Path) -> dict:
            output = folder / "generated.jsonl"
            self.runner.sicog(["generate", task, "--model", model, "--data", data, "--image-folder", self.world["image_folder"],
                               "--output", str(output), "--prompt", prompt, "--num-candidates", str(n),
                               "--temperature", str(temperature), "--top-p", str(c.top_p), "--max-new-tokens", str(max_new_tokens),
                               "--batch-size", str(c.generation_batch_size), "--seed", str(self.seed), "--no-progress"])
            return {"generated": str(output)}

        spec = {"task": task, "model": model, "data": data, "prompt": prompt, "n": n, "t": temperature, "top_p": c.top_p,
                "max_new_tokens": max_new_tokens, "seed": self.seed}
        return self.runner.run(name, spec, work, after)["generated"]

    def curate(self, name: str, task: str, generated: str, threshold: float, after: tuple[str, ...]) -> dict:
        """A curation step; returns its output folder's files."""
        c = self.config

        def work(folder: Path) -> dict:
            argv = ["curate", task, "--input", generated, "--output-dir", str(folder), "--threshold", str(threshold), "--seed", str(self.seed)]
            if task == "reasoning":
                argv += ["--min-agreement", str(c.min_agreement)]
            if c.encoder:
                argv += ["--encoder", c.encoder]
            self.runner.sicog(argv + c.curate_flags)
            return {"dir": str(folder), "curated": str(folder / "curated.jsonl"), "scored": str(folder / "scored.jsonl"),
                    "summary": str(folder / "summary.json")}

        spec = {"task": task, "generated": generated, "threshold": threshold, "min_agreement": c.min_agreement,
                "encoder": c.encoder, "flags": c.curate_flags, "seed": self.seed}
        return self.runner.run(name, spec, work, after)

    def mix(self, name: str, inputs: list[str], after: tuple[str, ...]) -> str:
        """The stage-1.5 mixture of an arm."""

        def work(folder: Path) -> dict:
            output = folder / "mixture.jsonl"
            self.runner.sicog(["curate", "mix", "--inputs", *inputs, "--output", str(output), "--seed", str(self.seed)])
            return {"mixture": str(output)}

        return self.runner.run(name, {"inputs": inputs, "seed": self.seed}, work, after)["mixture"]

    def evaluate(self, name: str, model: str, after: tuple[str, ...]) -> dict:
        """Multiple-choice benchmark and caption benchmark of one final model."""
        c = self.config

        def work(folder: Path) -> dict:
            self.runner.sicog(["eval", "--model", model, "--benchmark", self.world["bench_mc"], "--output-dir", str(folder / "mc"),
                               "--batch-size", str(c.eval_batch_size), "--no-progress"])
            if "bench_caption" not in self.world:
                return {"mc": str(folder / "mc" / "results.json")}
            captions = folder / "captions.jsonl"
            self.runner.sicog(["generate", "captions", "--model", model, "--data", self.world["bench_caption"],
                               "--image-folder", self.world["image_folder"], "--output", str(captions), "--prompt", "cod-default",
                               "--num-candidates", "1", "--temperature", "0", "--max-new-tokens", str(c.caption_max_new_tokens),
                               "--batch-size", str(c.eval_batch_size), "--no-progress"])
            return {"mc": str(folder / "mc" / "results.json"), "captions": str(captions)}

        return self.runner.run(name, {"model": model, "batch": c.eval_batch_size}, work, after)

    def image_use(self, name: str, model: str, references: str, after: tuple[str, ...]) -> dict:
        """Answer loss on reference texts with own vs swapped images: does the model look at the image?"""

        def work(folder: Path) -> dict:
            output = folder / "image_use.json"
            self.runner.sicog(["image-use", "--model", model, "--data", references, "--image-folder", self.world["image_folder"],
                               "--output", str(output), "--batch-size", str(self.config.eval_batch_size), "--no-progress"])
            return {"image_use": str(output)}

        return self.runner.run(name, {"model": model, "data": references}, work, after)

    # ----- the loop --------------------------------------------------------------------------------
    def run(self, rounds: int = 1, dpo: bool = False) -> dict:
        """All steps (``dpo``: also arm F, DPO on the SICOG model); returns the paths of what the report reads."""
        c, w = self.config, self.world
        vision, llm = (c.vision_tower, c.language_model) if c.toy_size is None else self._toy_parts()
        model_flags = c.model_flags
        if c.toy_size is not None:
            from sicog.toy.model import toy_model_settings

            model_flags = [f for k, v in toy_model_settings().items() for f in (f"--{k}", str(v))] + model_flags
        stage1 = self.train("stage1", "1", w["align"], c.stage1_steps, c.stage1_lr,
                            ["--vision_tower", vision, "--language_model", llm, *model_flags],
                            ("parts",) if c.toy_size else (), tunable=c.stage1_tunable_parts)
        base = self.train("A_stage2", "2", w["sft"], c.stage2_steps, c.finetune_lr, ["--model_name_or_path", stage1], ("stage1",))
        results = {"models": {"A": base}, "evals": {}, "curation": {}, "generated": {}}
        w = self.world = {**w, **self._limited_pools()}
        unlabeled_images, unlabeled_questions = w["unlabeled_images"], w["unlabeled_questions"]
        teacher, teacher_step = base, "A_stage2"
        for round_index in range(1, rounds + 1):
            p = "" if round_index == 1 else f"round{round_index}_"
            perception = self.train(f"{p}stage0_perception", "0", w["cod"], c.stage0_steps, c.finetune_lr, ["--model_name_or_path", teacher], (teacher_step,))
            reasoning = self.train(f"{p}stage0_reasoning", "0", w["cot"], c.stage0_steps, c.finetune_lr, ["--model_name_or_path", teacher], (teacher_step,))
            gen_captions = self.generate(f"{p}generate_captions", "captions", perception, unlabeled_images, "cod-default", (f"{p}stage0_perception",),
                                         n=c.num_candidates, temperature=c.temperature, max_new_tokens=c.caption_max_new_tokens)
            gen_reasoning = self.generate(f"{p}generate_reasoning", "reasoning", reasoning, unlabeled_questions, "cot-default", (f"{p}stage0_reasoning",),
                                          n=c.num_candidates, temperature=c.temperature, max_new_tokens=c.reasoning_max_new_tokens)
            cur_captions = self.curate(f"{p}curate_captions", "captions", gen_captions, c.caption_threshold, (f"{p}generate_captions",))
            cur_reasoning = self.curate(f"{p}curate_reasoning", "reasoning", gen_reasoning, c.reasoning_threshold, (f"{p}generate_reasoning",))
            results["generated"][round_index] = {"captions": gen_captions, "reasoning": gen_reasoning}
            results["curation"][round_index] = {"captions": cur_captions, "reasoning": cur_reasoning}
            arm_data = self._arm_data(p, round_index, gen_captions, gen_reasoning, cur_captions, cur_reasoning)
            for arm, (mixture, mix_step) in arm_data.items():
                s15 = self.train(f"{p}{arm}_stage15", "1.5", mixture, c.stage15_steps, c.finetune_lr, ["--model_name_or_path", stage1], ("stage1", mix_step))
                final = self.train(f"{p}{arm}_stage2", "2", w["sft"], c.stage2_steps, c.finetune_lr, ["--model_name_or_path", s15], (f"{p}{arm}_stage15",))
                results["models"][f"{p}{arm}"] = final
            teacher, teacher_step = results["models"][f"{p}D"], f"{p}D_stage2"
        if dpo:
            pairs = ",".join(results["curation"][1][task]["dir"] + "/pairs.jsonl" for task in ("captions", "reasoning"))
            results["models"]["F"] = self.train("F_stage2", "dpo", pairs, c.dpo_steps, c.dpo_lr, ["--model_name_or_path", results["models"]["D"]],
                                                ("D_stage2", "curate_captions", "curate_reasoning"))
        references, references_after = self._image_use_references()
        for arm, model in results["models"].items():
            evaluation = dict(self.evaluate(f"eval_{arm}", model, (f"{arm}_stage2",)))
            if references:
                evaluation.update(self.image_use(f"image_use_{arm}", model, references, (f"{arm}_stage2", *references_after)))
            results["evals"][arm] = evaluation
        results["seconds"] = self.runner.seconds()
        return results

    def _toy_parts(self) -> tuple[str, str]:
        """The toy world's pretrained CLIP tower and Qwen2, trained once per world and cached like downloads."""
        from sicog.toy.pretrain import parts_key, pretrained_parts

        world_dir = Path(self.world["tokenizer"]).parent

        def work(folder: Path) -> dict:
            vision, llm = pretrained_parts(world_dir)
            return {"vision_tower": str(vision), "language_model": str(llm)}

        parts = self.runner.run("parts", {"parts": parts_key(world_dir)}, work)
        return parts["vision_tower"], parts["language_model"]

    def _image_use_references(self) -> tuple[str | None, tuple[str, ...]]:
        """Records whose answers the image-use check scores, and the step that wrote them (if any):
        ``data.image_use`` of a real config, or for the toy world the caption benchmark's images with their
        ground-truth descriptions."""
        from sicog.toy.score import load_ground_truth

        w = self.world
        if "image_use" in w or "ground_truth" not in w or "bench_caption" not in w:
            return w.get("image_use"), ()

        def work(folder: Path) -> dict:
            truth = load_ground_truth(w["ground_truth"])
            records = ({"id": r["id"], "image": r["image"], "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{CAPTION_PROMPTS['default']}"},
                {"from": "gpt", "value": truth[r["image"]]["description"]}]} for _, r in iter_records(w["bench_caption"]))
            write_jsonl(folder / "references.jsonl", records)
            return {"references": str(folder / "references.jsonl")}

        return self.runner.run("image_use_references", {"captions": w["bench_caption"]}, work)["references"], ("image_use_references",)

    def _limited_pools(self) -> dict[str, str]:
        """The unlabeled pools (and their references, in the same order) cut to the configured sizes."""
        c, w, pools = self.config, self.world, {}
        limits = {"unlabeled_images": c.unlabeled_images_limit, "unlabeled_web": c.unlabeled_images_limit,
                  "oracle_captions": c.unlabeled_images_limit, "unlabeled_questions": c.unlabeled_questions_limit,
                  "oracle_reasoning": c.unlabeled_questions_limit}
        for key, limit in limits.items():
            if key in w:
                pools[key] = str(limited(Path(w[key]), self.runner.root / "pools" / f"{key}.jsonl", limit))
        return pools

    def _arm_data(self, p: str, round_index: int, gen_captions: str, gen_reasoning: str, cur_captions: dict, cur_reasoning: dict) -> dict:
        """Stage-1.5 mixtures: every arm gets the annotated CoD and CoT sets plus its own data."""
        c, w = self.config, self.world
        annotated = [w["cod"], w["cot"]]
        arms = c.arms if round_index == 1 else ("D",)
        data: dict[str, tuple[str, str]] = {}
        for arm in arms:
            if arm == "A":
                continue
            if arm == "B":
                own = [w["unlabeled_web"]]
                after = ()
            elif arm == "C":
                own = [self._random_candidates(f"{p}C_random_captions", gen_captions, f"{p}generate_captions"),
                       self._random_candidates(f"{p}C_random_reasoning", gen_reasoning, f"{p}generate_reasoning")]
                after = (f"{p}C_random_captions", f"{p}C_random_reasoning")
            elif arm == "D":
                own, after = [cur_captions["curated"], cur_reasoning["curated"]], (f"{p}curate_captions", f"{p}curate_reasoning")
            else:
                own, after = [w["oracle_captions"], w["oracle_reasoning"]], ()
            name = f"{p}{arm}_mixture"
            data[arm] = (self.mix(name, own + annotated, after), name)
        return data

    def _random_candidates(self, name: str, generated: str, after: str) -> str:
        def work(folder: Path) -> dict:
            output = folder / "random.jsonl"
            one_random_candidate(Path(generated), output, self.seed)
            return {"data": str(output)}

        return self.runner.run(name, {"generated": generated, "seed": self.seed}, work, (after,))["data"]
