"""The built-in benchmark runner: batched generation over torchrun ranks, resume, scoring, results.

``evaluate`` writes into ``output_dir``:

- ``predictions.jsonl``: one line per answered row ``{id, prompt, prediction, row_hash, settings}``;
- ``errors.jsonl``: one line per row that could not be evaluated, with its reason;
- ``results.json``: the headline number (VLMEvalKit's metric for the benchmark), accuracy overall and by
  category, counts, the failed rows, and for yes/no benchmarks precision, recall and F1, for MMBench-style
  ones circular accuracy (:func:`~sicog.eval.scoring.summarize`);
- ``results.xlsx``: one row per item with its prediction and correctness, and the accuracy tables.

Rank ``r`` of ``w`` answers rows ``r, r + w, ...`` into its own shard files, flushed after every
batch. A rerun skips the rows already answered or failed (in the merged files or in any shard), so
an interrupted run resumes where it stopped; rows answered with other settings (model, prompt style,
token limit) or for another row (another benchmark, or an edited row: each record stores the
:func:`~sicog.eval.tsv.row_hash` of its row) make it stop instead of mixing two runs. Rank 0 merges the
shards, checking that every row is in exactly one of the two files, and scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from sicog.data.jsonl import JsonlAppender, RecordError, error_record, iter_records, write_json
from sicog.data.sharding import done_ids, merge_shard_files, rank_and_world, shard, shard_files, shard_path
from sicog.eval.batch_size import EVAL_BATCH_SIZE
from sicog.eval.generation import encode_item, generate_replies, over_context
from sicog.eval.likelihood import encode_options, image_keys, likelihood_prompt, options_over_context, score_rows
from sicog.eval.pairing import blind_partners
from sicog.eval.prompts import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MC_SCORING,
    DEFAULT_PROMPT_STYLE,
    MC_SCORING,
    PROMPT_STYLES,
    build_prompt,
    short_answer_prompt,
)
from sicog.eval.scoring import score_items, summarize
from sicog.eval.sheet import write_xlsx
from sicog.eval.short_answers import ShortAnswers, load_synonyms
from sicog.eval.tsv import MULTIPLE_CHOICE, Benchmark, read_benchmark, row_image, row_problem
from sicog.model.processing import ENCODE_ERRORS, ConversationError, context_size

PREDICTIONS, ERRORS, RESULTS, SHEET = "predictions.jsonl", "errors.jsonl", "results.json", "results.xlsx"


@dataclass(frozen=True)
class EvalSettings:
    """What decides a prediction (stored with each one; a resumed run must use the same)."""

    model: str
    prompt_style: str = DEFAULT_PROMPT_STYLE
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS[DEFAULT_PROMPT_STYLE]
    # "generate": read the answer from a generated reply; "likelihood": the option the model finds most
    # likely (multiple choice only, sicog/eval/likelihood.py); "open": the question asked without its options,
    # the reply compared with the right option's text (multiple choice only, sicog/eval/short_answers.py).
    mc_scoring: str = DEFAULT_MC_SCORING
    # Set: ask each question with another row's picture (seeded, never its own), the blind baseline.
    blind_seed: int | None = None
    # Likelihood: score the options after the short-answer instruction (False: after the question as asked).
    short_answer: bool = True

    def __post_init__(self) -> None:
        if self.mc_scoring not in MC_SCORING:
            raise ValueError(f"unknown mc_scoring {self.mc_scoring!r}; choose from {', '.join(MC_SCORING)}")
        if self.prompt_style not in PROMPT_STYLES:
            raise ValueError(f"unknown prompt style {self.prompt_style!r}; choose from {', '.join(PROMPT_STYLES)}")
        if not self.short_answer and self.mc_scoring != "likelihood":
            raise ValueError("scoring after the question as asked (--as-asked) is for likelihood scoring only")
        if self.prompt_style != "direct" and self.mc_scoring == "likelihood":
            # Likelihood scores each option as the reply itself: no chain of thought is generated before it.
            raise ValueError(f"likelihood scoring asks the question directly; --prompt {self.prompt_style} is for "
                             "generated replies (--mc-scoring generate or open)")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


# Predictions written before a setting existed were made with its default (read from EvalSettings itself).
_SETTING_DEFAULTS = {f.name: f.default for f in fields(EvalSettings) if f.default is not MISSING}


def open_scoring(mc_scoring: str, synonyms: str | os.PathLike | None = None) -> ShortAnswers | None:
    """How open short answers are read (None for the other scorings); a synonym table goes with "open" only."""
    if mc_scoring != "open":
        if synonyms is not None:
            raise ValueError(f"a synonym table is for open short answers (mc_scoring 'open'), not {mc_scoring!r}")
        return None
    return ShortAnswers(None if synonyms is None else load_synonyms(synonyms))


def check_max_new_tokens(mc_scoring: str, max_new_tokens: int | None) -> None:
    """:class:`ValueError` for a reply length given to a scoring that generates no reply (likelihood), which would
    be ignored."""
    if mc_scoring == "likelihood" and max_new_tokens is not None:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: likelihood scoring generates no reply (leave it out)")


def _same_settings(theirs: dict, mine: dict) -> bool:
    """Whether a prediction's stored settings are this run's: a setting it predates has its default, and the
    model is the same folder however its path is spelled."""
    theirs = {**_SETTING_DEFAULTS, **theirs}
    same_model = theirs.get("model") == mine["model"] or (
        isinstance(theirs.get("model"), str) and os.path.realpath(theirs["model"]) == os.path.realpath(mine["model"]))
    return same_model and {**theirs, "model": mine["model"]} == mine


def _reusable(settings: EvalSettings, benchmark: Benchmark) -> Callable[[Path, int, dict], None]:
    """A check that an earlier prediction or error was made with ``settings`` for the row of ``benchmark``
    that has its id (benchmarks number their rows alike, 0 to N-1: the id alone does not tell)."""
    mine = asdict(settings)
    hashes = benchmark.row_hashes
    start_over = "use another output folder or delete the old files to start over"

    def check(path: Path, line: int, record: dict) -> None:
        rid = str(record.get("id"))
        theirs = record.get("settings")
        if theirs is not None and not _same_settings(theirs, mine):
            raise RecordError(f"answered with other settings ({theirs}, this run: {mine}); {start_over}",
                              path=path, line=line, record_id=rid, field="settings")
        if rid not in hashes:
            raise RecordError(f"{benchmark.path} has no row with this index; {start_over}",
                              path=path, line=line, record_id=rid, field="id")
        theirs = record.get("row_hash")
        if theirs != hashes[rid]:
            # Lines written before rows were hashed cannot be told apart from another benchmark's either.
            why = ("no row_hash: not known to be" if theirs is None else
                   f"row_hash {theirs!r} is not {hashes[rid]!r}: written")
            raise RecordError(
                f"{why} for the row with this index in {benchmark.path} (another benchmark's row, or one whose "
                f"hint, question, options or image changed since); {start_over}",
                path=path, line=line, record_id=rid, field="row_hash",
            )

    return check


def _error(row: dict[str, str], benchmark: Benchmark, field: str, reason: str) -> dict:
    # The base64 image would make the errors file as large as the benchmark; the index finds it.
    slim = {k: v for k, v in row.items() if k != "image"}
    return error_record(slim, reason, record_id=row["index"], field=field, file=str(benchmark.path),
                        row_hash=benchmark.row_hashes[row["index"]])


def run_rank(
    benchmark: Benchmark,
    model,
    processor,
    output_dir: Path,
    settings: EvalSettings,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
) -> dict[str, int]:
    """Answer this rank's rows that no earlier run answered; return counts of this run's work."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    predictions, errors = output_dir / PREDICTIONS, output_dir / ERRORS
    out_part, err_part = shard_path(predictions, rank, world), shard_path(errors, rank, world)
    # Shards of another world size come from an earlier run; those of this world size belong to live ranks.
    foreign = [p for p in shard_files(predictions) + shard_files(errors) if not p.name.endswith(f"-of-{world:05d}")]
    counts = {"answered": 0, "errors": 0, "skipped": 0}
    by_index = {row["index"]: row for row in benchmark.rows}
    partners = {} if settings.blind_seed is None else blind_partners(image_keys(benchmark), settings.blind_seed)
    images = {index: by_index[partner] for index, partner in partners.items()}
    with JsonlAppender(out_part) as outputs, JsonlAppender(err_part) as failures:
        done = done_ids([predictions, errors, out_part, err_part, *foreign], _reusable(settings, benchmark))
        rows = shard(benchmark.rows, rank, world)
        pending = [row for row in rows if row["index"] not in done]
        counts["skipped"] = len(rows) - len(pending)
        bar = tqdm(total=len(rows), initial=counts["skipped"], unit="row",
                   desc=f"eval {benchmark.name} (rank {rank}/{world})", disable=not progress)
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            _run_batch(benchmark, batch, model, processor, settings, outputs, failures, counts, images)
            bar.update(len(batch))
        bar.close()
    return counts


def _run_batch(benchmark: Benchmark, batch: list[dict], model, processor, settings: EvalSettings,
               outputs: JsonlAppender, failures: JsonlAppender, counts: dict[str, int],
               image_rows: dict[str, dict] | None = None) -> None:
    """Encode the batch's rows (a failing row, also one too long for the model's context, goes to the errors
    file), answer the rest in one call.

    ``image_rows``: row index -> the row whose image to show instead (the blind baseline)."""
    likelihood = settings.mc_scoring == "likelihood"
    ready, encoded = [], []
    for row in batch:
        problem = row_problem(row, benchmark.kind)
        if problem is not None:
            failures.write(_error(row, benchmark, *problem))
            counts["errors"] += 1
            continue
        if likelihood:
            prompt = likelihood_prompt(row, settings.short_answer)
        elif settings.mc_scoring == "open":
            prompt = short_answer_prompt(row, settings.prompt_style)
        else:
            prompt = build_prompt(row, benchmark.kind, settings.prompt_style)
        try:
            image = row_image(benchmark, (image_rows or {}).get(row["index"], row))
            if likelihood:
                item = encode_options(processor, row, image, settings.short_answer)
                problem = options_over_context(processor, item)
            else:
                item = encode_item(processor, prompt, [image])
                reason = over_context("prompt", len(item.input_ids), context_size(processor), settings.max_new_tokens)
                problem = None if reason is None else ("question", reason)
        except ENCODE_ERRORS as err:
            problem = ("question" if isinstance(err, ConversationError) else "image"), str(err)
        if problem is not None:
            failures.write(_error(row, benchmark, *problem))
            counts["errors"] += 1
            continue
        encoded.append(item)
        ready.append((row, prompt))
    if likelihood:
        replies = score_rows(model, processor, encoded, batch_size=max(len(ready), 1) * 4)
    else:
        generated = generate_replies(model, processor, encoded, max_new_tokens=settings.max_new_tokens)
        replies = [{"prediction": reply} for reply in generated]
    for (row, prompt), reply in zip(ready, replies, strict=True):
        outputs.write({"id": row["index"], "prompt": prompt, **reply, "row_hash": benchmark.row_hashes[row["index"]],
                       "settings": asdict(settings)})
        counts["answered"] += 1
    outputs.flush()
    failures.flush()


def merge_and_score(benchmark: Benchmark, output_dir: Path, short_answers: ShortAnswers | None = None) -> dict:
    """Merge every shard into predictions.jsonl and errors.jsonl (each row in exactly one), remove the
    shards, score (with ``short_answers``: as open short answers), and write results.json and results.xlsx;
    return the summary."""
    predictions, errors = output_dir / PREDICTIONS, output_dir / ERRORS
    merge_shard_files(predictions, errors, benchmark.indices)
    records = [r for _, r in iter_records(predictions)]
    answers = {str(r["id"]): r["prediction"] for r in records}
    reasons = {str(r["id"]): r["reason"] for _, r in iter_records(errors)}
    items = score_items(benchmark, answers, reasons, short_answers)
    summary = summarize(benchmark, items)
    if records and "prediction_normalised" in records[0]:
        normalised = {str(r["id"]): r["prediction_normalised"] for r in records}
        scored = summarize(benchmark, score_items(benchmark, normalised, reasons))
        kept = ("headline", "correct", "scored", "accuracy", "by_category", "circular")
        summary["length_normalised"] = {k: scored[k] for k in kept if k in scored}
    if records:
        summary["settings"] = records[0]["settings"]
    summary["files"] = {name: str(output_dir / name) for name in (PREDICTIONS, ERRORS, RESULTS, SHEET)}
    write_xlsx(output_dir / SHEET, items, summary)
    write_json(output_dir / RESULTS, summary)
    return summary



def check_scoring(benchmark: Benchmark, mc_scoring: str, blind_seed: int | None) -> None:
    """Refuse a scoring ``benchmark`` cannot take (``ValueError``): option scoring without options, a blind score
    with fewer than two pictures. Reads the benchmark only, so a caller checks before loading a model."""
    if mc_scoring != "generate" and benchmark.kind != MULTIPLE_CHOICE:
        raise ValueError(f"{benchmark.path}: {mc_scoring} scoring needs a multiple-choice benchmark, not "
                         f"{benchmark.kind}")
    if blind_seed is not None:
        blind_partners(image_keys(benchmark), blind_seed)


def evaluate(
    model,
    processor,
    tsv_path: str | os.PathLike | Benchmark,
    output_dir: str | os.PathLike,
    prompt: str = DEFAULT_PROMPT_STYLE,
    batch_size: int = EVAL_BATCH_SIZE,
    *,
    max_new_tokens: int | None = None,
    image_root: str | os.PathLike | None = None,
    model_name: str | None = None,
    progress: bool = True,
    mc_scoring: str = DEFAULT_MC_SCORING,
    blind_seed: int | None = None,
    synonyms: str | os.PathLike | None = None,
    short_answer: bool = True,
) -> dict | None:
    """Evaluate ``model`` on a VLMEvalKit-style TSV benchmark; return the results (rank 0) or None.

    ``prompt``: "direct" (answer with the option's letter) or "cot" (step by step); ``max_new_tokens``
    defaults to 64 for direct and 1024 for cot answers; ``model_name`` (default: the checkpoint path the
    model was loaded from) is stored with each prediction so that a resumed run cannot mix models (``sicog eval``
    also records the checkpoint's weights in the output folder: :data:`sicog.eval.cli.CHECKPOINT_RECORD`).
    ``mc_scoring="likelihood"`` picks the most likely option instead of generating (multiple choice only);
    ``mc_scoring="open"`` asks each question without its options and compares the reply with the right
    option's text, reading phrasings through the ``synonyms`` table file if given (multiple choice only);
    ``blind_seed`` asks each question with a picture other than its own (``ValueError`` when the benchmark has
    only one distinct picture); ``short_answer=False`` scores the options of
    likelihood scoring after the question as asked, without the short-answer instruction (a caption request
    scored against descriptions, as the toy world's perception check is).
    Under torchrun every rank calls this with the process group initialised; rank 0 merges and scores
    after every rank is done.
    """
    benchmark = tsv_path if isinstance(tsv_path, Benchmark) else read_benchmark(tsv_path, image_root)
    name = model_name if model_name is not None else str(getattr(model, "name_or_path", "") or type(model).__name__)
    check_max_new_tokens(mc_scoring, max_new_tokens)
    # An unknown style gets 1 here and is named by EvalSettings.
    tokens = max_new_tokens if max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS.get(prompt, 1)
    settings = EvalSettings(model=name, prompt_style=prompt, max_new_tokens=tokens, mc_scoring=mc_scoring,
                            blind_seed=blind_seed, short_answer=short_answer)
    short_answers = open_scoring(mc_scoring, synonyms)
    check_scoring(benchmark, mc_scoring, blind_seed)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank, world = rank_and_world()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"WORLD_SIZE is {world} but no torch.distributed process group is initialised")
    was_training = model.training
    model.eval()
    try:
        run_rank(benchmark, model, processor, output_dir, settings, batch_size=batch_size, rank=rank, world=world,
                 progress=progress and rank == 0)
    finally:
        model.train(was_training)
    if world > 1:
        dist.barrier()
    return merge_and_score(benchmark, output_dir, short_answers) if rank == 0 else None

