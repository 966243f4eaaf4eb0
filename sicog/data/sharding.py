"""Splitting work over torchrun ranks and merging the per-rank outputs with an exactly-once check."""

from __future__ import annotations

import glob
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from sicog.data.crash import crash_point
from sicog.data.jsonl import RecordError, drop_partial_tail, iter_records, unfinished_line, write_jsonl

T = TypeVar("T")

_SHARD_SUFFIX = re.compile(r"\.rank(\d{5})-of-(\d{5})$")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size, from torchrun's environment (1 process without it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard(items: Sequence, rank: int, world: int) -> list:
    """The items of one rank: every ``world``-th item from ``rank``, so all items (the tail too) are covered."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return list(items[rank::world])


def gather_shares(share: dict[int, T]) -> dict[int, T]:
    """Every rank's ``share`` (item index -> value) merged, when a process group is initialised; ``share`` itself
    otherwise. Every rank must call it."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return share
    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, share)
    return {index: value for part in shares for index, value in part.items()}


def shard_path(output: str | os.PathLike, rank: int, world: int) -> Path:
    """Where rank ``rank`` of ``world`` writes its part of ``output``."""
    output = Path(output)
    return output.with_name(f"{output.name}.rank{rank:05d}-of-{world:05d}")


def shard_files(target: str | os.PathLike) -> list[Path]:
    """Every per-rank shard file of ``target``, whatever world size wrote it."""
    pattern = glob.escape(str(target)) + ".rank*-of-*"
    return sorted(Path(p) for p in glob.glob(pattern) if _SHARD_SUFFIX.search(p))


def shard_world(path: str | os.PathLike) -> int:
    """The world size that wrote shard file ``path``."""
    return int(_SHARD_SUFFIX.search(str(path)).group(2))


def merge_shards(
    output: str | os.PathLike,
    parts: Sequence[str | os.PathLike],
    expected_ids: Sequence[str],
    *,
    error_parts: Sequence[str | os.PathLike] = (),
    errors_output: str | os.PathLike | None = None,
) -> tuple[int, int]:
    """Merge per-rank outputs (and an earlier merged ``output``/``errors_output``) in input order, checking
    every expected id appears exactly once.

    An id may be in the outputs or in the errors, never both, never twice, never missing. A shard record
    identical to the earlier merged one of its id is a copy left by a merge killed before it removed the
    shards (or a stale shard of a finished run) and is not counted again, so a rerun of the merge finishes.
    Returns ``(n_outputs, n_errors)``; raises :class:`RecordError` naming the offending ids.
    """
    by_id: dict[str, dict] = {}
    errors: dict[str, dict] = {}
    merged: dict[str, dict] = {}
    seen: Counter[str] = Counter()
    for target, previous, files in ((by_id, output, parts), (errors, errors_output, error_parts)):
        if previous is not None and Path(previous).exists():
            for _, record in iter_records(previous):
                rid = str(record.get("id"))
                seen[rid] += 1
                target[rid] = merged[rid] = record
        for part in files:
            if Path(part) == Path(previous or "") or not Path(part).exists():
                continue
            for _, record in iter_records(part):
                rid = str(record.get("id"))
                if merged.get(rid) == record:
                    continue
                seen[rid] += 1
                target[rid] = record
    expected = [str(i) for i in expected_ids]
    missing = [i for i in expected if seen[i] == 0]
    duplicated = [i for i, n in seen.items() if n > 1]
    unexpected = sorted(set(seen) - set(expected))
    if missing or duplicated or unexpected:
        raise RecordError(
            f"shard merge failed: {len(missing)} missing {missing[:5]}, {len(duplicated)} duplicated "
            f"{duplicated[:5]}, {len(unexpected)} unexpected {unexpected[:5]}",
            path=output,
        )
    n_out = write_jsonl(output, (by_id[i] for i in expected if i in by_id))
    crash_point("merge-output-written")
    n_err = 0
    if errors_output is not None:
        n_err = write_jsonl(errors_output, (errors[i] for i in expected if i in errors))
    return n_out, n_err


def merge_shard_files(
    output: str | os.PathLike, errors_output: str | os.PathLike, expected_ids: Sequence[str]
) -> tuple[int, int]:
    """Merge every shard of ``output`` and ``errors_output`` into them (see :func:`merge_shards`), then
    remove the shards. Safe to rerun after a kill at any point. Returns ``(n_outputs, n_errors)``."""
    out_shards, err_shards = shard_files(output), shard_files(errors_output)
    # A killed run of another world size may have left half a line in a shard, and a cut copy or a full disk in an
    # earlier merged file; the resume skipped such a line (written_records), so its record is in a shard again.
    for part in [Path(output), Path(errors_output), *out_shards, *err_shards]:
        drop_partial_tail(part)
    counts = merge_shards(output, out_shards, expected_ids, error_parts=err_shards, errors_output=errors_output)
    crash_point("merge-written")
    for part in out_shards + err_shards:
        part.unlink()
    return counts


@contextmanager
def process_group(world: int) -> Iterator[None]:
    """A gloo process group for the ranks' barriers when running under torchrun with several ranks.

    The timeout is generous: ranks wait at a barrier for the slowest one, which may be resuming a large
    remainder of the work.
    """
    import torch.distributed as dist

    if world <= 1 or dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", timeout=timedelta(hours=48))
    try:
        yield
    finally:
        dist.destroy_process_group()


def written_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Records an earlier run wrote to ``path`` (nothing when it does not exist).

    A last line without its newline is skipped even when it holds a whole record: a killed writer may
    have stopped just before the newline, and appending or merging cuts that line
    (:func:`sicog.data.jsonl.drop_partial_tail`), so its record must be written again.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_file():
        raise RecordError("is not a file (a folder?): give a .jsonl file path", path=path)
    unfinished = unfinished_line(path)
    try:
        for line, record in iter_records(path):
            if line != unfinished:
                yield line, record
    except RecordError as err:
        if unfinished is None or err.line != unfinished:
            raise


def done_ids(paths: Sequence[Path], check: Callable[[Path, int, dict], None] | None = None) -> set[str]:
    """Ids that earlier runs already wrote to ``paths`` (outputs, errors, shards of any world size).
    ``check(path, line, record)`` raises :class:`RecordError` for a record made with other settings."""
    done: set[str] = set()
    for path in paths:
        for line, record in written_records(path):
            if check is not None:
                check(path, line, record)
            done.add(str(record.get("id")))
    return done
