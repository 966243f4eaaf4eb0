"""``sicog annotate cod|cot``: stage-0 annotation (see docs/annotation.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from sicog.annotate.api import DEFAULT_MODEL, DEFAULT_TIMEOUT, RetryPolicy
from sicog.annotate.cod_job import CodJob
from sicog.data.argtypes import non_negative_float, non_negative_int, os_error_text, positive_float, positive_int
from sicog.data.jsonl import RecordError, blocked_reason, refuse_overwriting
from sicog.data.lock import OutputLocked, output_lock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Attach the ``cod`` and ``cot`` sub-commands."""
    sub = parser.add_subparsers(dest="action", metavar="action", required=True)

    cod = sub.add_parser("cod", help="rewrite captions into 5-step Chain-of-Description captions via a chat API")
    cod.add_argument("--input", required=True, type=Path,
                     help="LLaVA records (.jsonl or .json): a question and the original caption")
    cod.add_argument("--image-folder", type=Path,
                     help="folder the records' relative image paths start from (default: the working folder)")
    cod.add_argument("--allow-outside-images", action="store_true",
                     help="allow image paths that lead outside the image folder (../, absolute paths elsewhere)")
    cod.add_argument("--output-dir", type=Path, help="folder for both outputs (cod.jsonl, detailed_description.jsonl)")
    cod.add_argument("--cod-dir", type=Path, help="folder for cod.jsonl and failures.jsonl (overrides --output-dir)")
    cod.add_argument("--dd-dir", type=Path, help="folder for detailed_description.jsonl (overrides --output-dir)")
    cod.add_argument("--model", default=DEFAULT_MODEL, help="model name the server knows (default: %(default)s)")
    cod.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1 "
                                        "(default: $OPENAI_BASE_URL, else the OpenAI API)")
    cod.add_argument("--concurrency", type=positive_int, default=CodJob.concurrency,
                     help="requests in flight (default: %(default)s)")
    cod.add_argument("--limit", type=positive_int, help="annotate only the first N input records")
    cod.add_argument("--temperature", type=non_negative_float, default=CodJob.temperature,
                     help="sampling temperature (default: %(default)s)")
    cod.add_argument("--max-tokens", type=positive_int, default=CodJob.max_tokens,
                     help="reply length limit (default: %(default)s)")
    cod.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                     help="seconds the server may take to connect, and between the bytes of its reply "
                          "(default: %(default)s)")
    cod.add_argument("--max-retries", type=non_negative_int, default=RetryPolicy.max_retries,
                     help="retries of a request after 429, 5xx, timeouts, connection errors (default: %(default)s)")
    cod.add_argument("--backoff", type=positive_float, default=RetryPolicy.backoff,
                     help="first retry wait in seconds, doubled per retry (default: %(default)s)")
    cod.add_argument("--max-backoff", type=positive_float, default=RetryPolicy.max_backoff,
                     help="longest retry wait in seconds (default: %(default)s)")
    cod.add_argument("--parse-retries", type=non_negative_int, default=CodJob.parse_retries,
                     help="new requests after a reply without the five steps (default: %(default)s)")
    cod.add_argument("--retry-failures", action="store_true", help="try again the ids recorded in failures.jsonl")
    cod.add_argument("--no-progress", action="store_true", help="no progress bar")

    cot = sub.add_parser("cot", help="convert LLaVA-CoT tagged answers into 4-step CoT and short-answer records")
    cot.add_argument("--input", required=True, type=Path, help="LLaVA-CoT records (.jsonl or .json)")
    cot.add_argument("--output-dir", type=Path, help="folder for both outputs (cot.jsonl, short_answer.jsonl)")
    cot.add_argument("--cot-dir", type=Path, help="folder for cot.jsonl and errors.jsonl (overrides --output-dir)")
    cot.add_argument("--short-dir", type=Path, help="folder for short_answer.jsonl (overrides --output-dir)")
    cot.add_argument("--no-progress", action="store_true", help="no progress bar")


class _UsageError(ValueError):
    """Arguments that argparse accepts but that do not make a run."""


def _output_dirs(args: argparse.Namespace, first: str, second: str) -> tuple[Path, Path]:
    dirs = (getattr(args, first) or args.output_dir, getattr(args, second) or args.output_dir)
    if dirs[0] is None or dirs[1] is None:
        flags = [_flag(name) for name, d in zip((first, second), dirs) if d is None]
        raise _UsageError(f"give --output-dir or {' and '.join(flags)}")
    for name, folder in zip((first, second), dirs):
        _check_folder(_given_by(args, name), folder)
    return dirs


def _flag(name: str) -> str:
    """The option of the argument ``name`` (``cod_dir`` -> ``--cod-dir``)."""
    return f"--{name.replace('_', '-')}"


def _given_by(args: argparse.Namespace, name: str) -> str:
    """The option that gave the output folder ``name``: its own, or --output-dir when it was left out."""
    return _flag(name) if getattr(args, name) else "--output-dir"


def _check_folder(flag: str, path: Path) -> None:
    """Raise :class:`_UsageError` when ``path`` is a file or lies inside one, so it can never be made a folder.

    Found before the input is read and converted (cot) or a request is paid for (cod), and named by the flag
    that gave it, where mkdir would only say "File exists" or "Not a directory".
    """
    if blocked := blocked_reason(path):
        raise _UsageError(f"{flag} {path} {blocked}")


def _refuse_input_as_output(args: argparse.Namespace, outputs: dict[str, list[Path]]) -> None:
    """Raise :class:`_UsageError` when ``--input`` is one of the files written (``outputs``: the files of each
    output folder, by argument name), however spelled (relative, through a link): the run would write over the
    records it reads, and a rerun would find them gone."""
    for name, files in outputs.items():
        folder = getattr(args, name) or args.output_dir
        try:
            refuse_overwriting([("--input", args.input)], _given_by(args, name), folder, also=files)
        except ValueError as err:  # a usage error: one line naming the command, like the other refusals here
            raise _UsageError(str(err)) from None


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # One INFO line per HTTP request from the client library would drown the progress bar.
    for name in ("openai", "httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    """Run ``annotate cod`` or ``annotate cot``: 0 when the run completed (failures are listed, not fatal), 1 when
    the API refused the configuration (cod) or every record failed (cot), 2 on unusable arguments (no API key for
    the official endpoint included), input or output paths (one line naming the file, line and field, or the path
    and the cause)."""
    _setup_logging()
    try:
        return _run_cod(args) if args.action == "cod" else _run_cot(args)
    except (_UsageError, OutputLocked) as err:
        print(f"sicog annotate {args.action}: error: {err}", file=sys.stderr)
        return 2
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an input that cannot be read, an output that cannot be written (no permission, disk full)
        print(f"sicog annotate {args.action}: error: {os_error_text(err)}", file=sys.stderr)
        return 2


def _run_cod(args: argparse.Namespace) -> int:
    from sicog.annotate.api import ChatAPI, FatalAPIError, resolve_endpoint
    from sicog.annotate.cod_job import run_cod_job

    cod_dir, dd_dir = _output_dirs(args, "cod_dir", "dd_dir")
    if args.image_folder is not None and not Path(args.image_folder).is_dir():
        # Else every record would fail alone and be kept failed until --retry-failures.
        raise _UsageError(f"--image-folder {args.image_folder}: not a folder")
    job = CodJob(
        input=args.input, cod_dir=cod_dir, dd_dir=dd_dir, image_folder=args.image_folder,
        allow_outside_images=args.allow_outside_images,
        temperature=args.temperature, max_tokens=args.max_tokens, concurrency=args.concurrency, limit=args.limit,
        parse_retries=args.parse_retries, retry_failures=args.retry_failures, progress=not args.no_progress,
    )
    _refuse_input_as_output(args, {"cod_dir": [job.cod_path, job.failures_path], "dd_dir": [job.dd_path]})
    try:
        base_url, api_key = resolve_endpoint(args.base_url)
    except FatalAPIError as err:  # no key for the official endpoint: an argument missing, not the API's refusal
        raise _UsageError(str(err)) from None
    try:
        api = ChatAPI(args.model, base_url=base_url, api_key=api_key, timeout=args.timeout,
                      policy=RetryPolicy(args.max_retries, args.backoff, args.max_backoff))
        # One run per output: two runs appending to the same files would annotate (and pay for) every record twice.
        with ExitStack() as locks:
            for output in (job.cod_path, job.dd_path):
                locks.enter_context(output_lock(output))
            try:
                summary = run_cod_job(job, api)
            finally:
                api.close()
    except FatalAPIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(
        f"annotate cod: {summary.annotated} annotated, {summary.failed} failed in this run; "
        f"{summary.already_done} already done, {summary.already_failed} failed earlier "
        f"(of {summary.total} records)\n  CoD: {job.cod_path}\n  descriptions: {job.dd_path}",
        file=sys.stderr,
    )
    if summary.restored_descriptions:
        print(f"  {summary.restored_descriptions} description(s) rebuilt from CoD lines an interrupted run wrote "
              "without them (no request)", file=sys.stderr)
    if summary.failed or summary.already_failed:
        print(f"  failures: {job.failures_path} (rerun with --retry-failures to try them again)", file=sys.stderr)
    if summary.total and not summary.annotated + summary.already_done:
        print(f"error: every one of the {summary.total} records failed; the reasons are in {job.failures_path}",
              file=sys.stderr)
        return 1
    return 0


def _run_cot(args: argparse.Namespace) -> int:
    from sicog.annotate.cot import COT_FILE, ERRORS_FILE, SHORT_FILE, run_cot_job

    cot_dir, short_dir = _output_dirs(args, "cot_dir", "short_dir")
    errors_file = Path(cot_dir) / ERRORS_FILE
    _refuse_input_as_output(args, {"cot_dir": [Path(cot_dir) / COT_FILE, errors_file],
                                   "short_dir": [Path(short_dir) / SHORT_FILE]})
    summary = run_cot_job(args.input, cot_dir, short_dir, progress=not args.no_progress)
    short_only = f" ({summary.short_only} of them with a short answer only)" if summary.short_only else ""
    print(
        f"annotate cot: {summary.converted} of {summary.total} records converted, {summary.errors} errors"
        f"{short_only}\n"
        f"  CoT: {Path(cot_dir) / COT_FILE}\n  short answers: {Path(short_dir) / SHORT_FILE}",
        file=sys.stderr,
    )
    if summary.errors:
        print(f"  errors: {errors_file}", file=sys.stderr)
    if summary.total and not summary.converted:
        print(f"error: every one of the {summary.total} records failed; the reasons are in {errors_file}",
              file=sys.stderr)
        return 1
    return 0
