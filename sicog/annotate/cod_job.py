"""The CoD annotation job over a whole input file: concurrent, resumable, nothing lost.

Every input id ends in exactly one place: ``cod.jsonl`` (with its twin in
``detailed_description.jsonl``) or ``failures.jsonl``. A record is appended and fsynced the moment its
reply is parsed, CoD first and then its description, so a killed run loses at most the requests in
flight; a rerun skips finished ids and rebuilds a description whose CoD line made it to disk alone.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sicog.annotate.api import ChatAPI, RequestFailed
from sicog.annotate.cod import (
    CodSource,
    ReplyError,
    build_messages,
    cod_record,
    dd_record,
    description_of,
    parse_cod_reply,
    read_source,
)
from sicog.annotate.images import ImageLoadError, image_data_url
from sicog.data.jsonl import (
    JsonlAppender,
    RecordError,
    drop_partial_tail,
    error_record,
    iter_records,
    load_records,
    record_id,
    write_jsonl,
)
from sicog.data.schema import ImageOutsideFolder, resolve_image

log = logging.getLogger(__name__)

COD_FILE = "cod.jsonl"
DD_FILE = "detailed_description.jsonl"
FAILURES_FILE = "failures.jsonl"


@dataclass
class CodJob:
    """Settings of one annotation run (see ``sicog annotate cod --help``)."""

    input: Path
    cod_dir: Path
    dd_dir: Path
    image_folder: Path | None = None
    allow_outside_images: bool = False
    temperature: float = 0.2
    max_tokens: int = 2048
    concurrency: int = 8
    limit: int | None = None
    parse_retries: int = 2
    retry_failures: bool = False
    progress: bool = True

    @property
    def cod_path(self) -> Path:
        return Path(self.cod_dir) / COD_FILE

    @property
    def dd_path(self) -> Path:
        return Path(self.dd_dir) / DD_FILE

    @property
    def failures_path(self) -> Path:
        return Path(self.cod_dir) / FAILURES_FILE


@dataclass
class CodSummary:
    """Counts of one run, over the selected input records."""

    total: int = 0
    already_done: int = 0
    already_failed: int = 0
    annotated: int = 0
    failed: int = 0
    restored_descriptions: int = 0


@dataclass
class _Outcome:
    """One record's result: its two training records, or its failure line."""

    cod: dict | None = None
    dd: dict | None = None
    failure: dict | None = None


def load_input(path: Path) -> list[tuple[int, dict]]:
    """``(line, record)`` for every input record; ids must exist and be unique, since resuming keys on them."""
    entries, first_line = [], {}
    for line, record in iter_records(path):
        rid = record_id(record, path=path, line=line)
        if rid in first_line:
            raise RecordError(f"duplicate id (first on line {first_line[rid]})", path=path, line=line,
                              record_id=rid, field="id")
        first_line[rid] = line
        entries.append((line, record))
    return entries


def _forget_failures(path: Path, ids: set[str]) -> int:
    """Remove the failures of ``ids`` (atomically) so that they are tried again; return how many."""
    if not path.exists():
        return 0
    drop_partial_tail(path)
    records = load_records(path)
    kept = [r for r in records if str(r.get("id")) not in ids]
    write_jsonl(path, kept)
    return len(records) - len(kept)


def _annotate(api: ChatAPI, job: CodJob, record: dict, source: CodSource, line: int) -> _Outcome:
    """Request, parse and build the two records of one source; runs in a worker thread."""
    try:
        path = resolve_image(source.image, job.image_folder, allow_outside=job.allow_outside_images)
        image_url = image_data_url(path)
    except ImageOutsideFolder as err:
        reason = str(RecordError(f"{err}; pass --allow-outside-images to allow paths outside it", path=job.input,
                                 line=line, record_id=source.record_id, field="image"))
        return _Outcome(failure=error_record(record, reason, requests=0))
    except ImageLoadError as err:
        reason = str(RecordError(str(err), path=job.input, line=line, record_id=source.record_id, field="image"))
        return _Outcome(failure=error_record(record, reason, requests=0))
    messages = build_messages(image_url, source)
    requests, raw, problem = 0, None, None
    for _ in range(job.parse_retries + 1):
        try:
            reply = api.complete(messages, label=f"id={source.record_id}", temperature=job.temperature,
                                 max_tokens=job.max_tokens)
        except RequestFailed as err:
            return _Outcome(failure=error_record(record, err.reason, requests=requests + err.attempts, raw_reply=raw))
        requests += reply.attempts
        try:
            bodies, caption = parse_cod_reply(reply.text, reply.finish_reason, reply.refusal)
        except ReplyError as err:
            raw, problem = api.redact(reply.text or reply.refusal or ""), api.redact(str(err))
            log.warning("id=%s: unusable reply (%s)", source.record_id, problem)
            continue
        try:
            return _Outcome(cod=cod_record(record, source, caption, api.model),
                            dd=dd_record(record, source, bodies[-1], api.model))
        except RecordError as err:
            # A reply that parses can still make an invalid training record; that fails this record, not the run.
            where = f" (field {err.field!r} of the training record)" if err.field else ""
            reason = str(RecordError(f"the annotated record is invalid{where}: {err.reason}", path=job.input,
                                     line=line, record_id=source.record_id))
            return _Outcome(failure=error_record(record, reason, requests=requests, raw_reply=api.redact(reply.text)))
    reason = f"reply did not parse after {job.parse_retries + 1} replies: {problem}"
    return _Outcome(failure=error_record(record, reason, requests=requests, raw_reply=raw))


def _restore_descriptions(job: CodJob, cod: JsonlAppender, dd: JsonlAppender, by_id: dict[str, tuple]) -> int:
    """Write the description of every CoD record whose description line a killed run never wrote."""
    missing = cod.done_ids - dd.done_ids
    if not missing:
        return 0
    restored = 0
    for cod_line, cod_rec in iter_records(job.cod_path):
        rid = str(cod_rec.get("id"))
        if rid not in missing or rid not in by_id:
            continue
        line, record = by_id[rid]
        source = read_source(record, path=job.input, line=line)
        annotation = cod_rec.get("annotation")
        model = annotation.get("model", "") if isinstance(annotation, dict) else ""
        dd.write(dd_record(record, source, _written_description(job.cod_path, cod_line, cod_rec), model))
        restored += 1
    dd.flush()
    return restored


def _written_description(path: Path, line: int, cod_rec: dict) -> str:
    """Step 5 of a CoD record already in ``path``; :class:`RecordError` names the line when it is not one this
    command writes (edited by hand, another stage's file), which a resume must not guess at."""
    turns = cod_rec.get("conversations")
    answer = turns[1] if isinstance(turns, list) and len(turns) > 1 else None
    caption = answer.get("value") if isinstance(answer, dict) else None
    where = {"path": path, "line": line, "record_id": cod_rec.get("id"), "field": "conversations[1].value"}
    if not isinstance(caption, str):
        raise RecordError("no CoD caption to rebuild the missing description from; fix or delete this line",
                          **where)
    try:
        return description_of(caption)
    except ReplyError as err:
        raise RecordError(f"the CoD caption does not parse back ({err}), so its missing description cannot be "
                          "rebuilt; fix or delete this line", **where) from None


def run_cod_job(job: CodJob, api: ChatAPI) -> CodSummary:
    """Annotate every selected input record not already done (or failed, unless ``retry_failures``)."""
    entries = load_input(job.input)
    if not entries:  # a truncated download would "succeed" with empty outputs, found out at training
        raise RecordError("holds no records", path=job.input)
    by_id = {str(record["id"]): (line, record) for line, record in entries}
    selected = entries[: job.limit] if job.limit is not None else entries
    if job.retry_failures:
        forgotten = _forget_failures(job.failures_path, {str(r["id"]) for _, r in selected})
        log.info("retrying %d earlier failure(s)", forgotten)
    summary = CodSummary(total=len(selected))
    with JsonlAppender(job.cod_path) as cod, JsonlAppender(job.dd_path) as dd, \
            JsonlAppender(job.failures_path) as failures:
        orphans = sorted(dd.done_ids - cod.done_ids)
        if orphans:
            # Written CoD first, a description always has its CoD line: these are another run's (another --cod-dir),
            # and annotating on would add a second description of each id.
            raise RecordError(f"holds descriptions of {len(orphans)} id(s) without a line in {job.cod_path} (first: "
                              f"{orphans[0]!r}): another run's file; give this run its own --dd-dir",
                              path=job.dd_path)
        summary.restored_descriptions = _restore_descriptions(job, cod, dd, by_id)
        pending = []
        for line, record in selected:
            rid = str(record["id"])
            if rid in cod.done_ids:
                summary.already_done += 1
            elif rid in failures.done_ids:
                summary.already_failed += 1
            else:
                try:
                    pending.append((record, read_source(record, path=job.input, line=line), line))
                except RecordError as err:
                    failures.write(error_record(record, str(err), requests=0))
                    summary.failed += 1
        failures.flush()
        _run_pending(job, api, pending, cod, dd, failures, summary)
    return summary


def _run_pending(job: CodJob, api: ChatAPI, pending: list, cod: JsonlAppender, dd: JsonlAppender,
                 failures: JsonlAppender, summary: CodSummary) -> None:
    """Annotate ``pending`` with ``job.concurrency`` requests at a time, writing each outcome as it comes.

    The workers are daemon threads, not a ThreadPoolExecutor's: the interpreter waits at exit for a pool's threads,
    and a thread blocked reading a reply cannot be interrupted, so a fatal error or Ctrl-C would wait for every
    reply under way (up to --timeout). Instead the run stops at once: the requests under way are cut off
    (:meth:`ChatAPI.stop`) and their threads left to end with the process.
    """
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    outcomes: queue.SimpleQueue = queue.SimpleQueue()
    for item in pending:
        tasks.put(item)

    def work() -> None:
        while True:
            try:
                record, source, line = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                outcomes.put((_annotate(api, job, record, source, line), None))
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, which stops the run
                outcomes.put((None, err))
                return

    for n in range(min(max(1, job.concurrency), len(pending))):
        threading.Thread(target=work, name=f"annotate-{n}", daemon=True).start()
    bar = tqdm(total=summary.total, initial=summary.total - len(pending), desc="annotate cod", unit="rec",
               disable=not job.progress, dynamic_ncols=True)
    try:
        with logging_redirect_tqdm():
            for _ in pending:
                outcome, error = outcomes.get()
                if error is not None:
                    raise error
                if outcome.failure is not None:
                    failures.write(outcome.failure)
                    failures.flush()
                    summary.failed += 1
                else:
                    # CoD first: a description on disk always has its CoD record (see the module docstring).
                    cod.write(outcome.cod)
                    cod.flush()
                    dd.write(outcome.dd)
                    dd.flush()
                    summary.annotated += 1
                bar.update(1)
                bar.set_postfix(done=summary.already_done + summary.annotated,
                                failed=summary.already_failed + summary.failed)
    except BaseException:
        api.stop()  # the requests under way raise Stopped; none is sent after
        raise
    finally:
        bar.close()
