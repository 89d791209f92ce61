"""Scrub: re-hash stored chunks to find silent corruption.

One pass walks the store in ring order, verifies each chunk (a corrupt one is
quarantined by the store as it is found) and tells ``on_corrupt`` about it so
the repair service can fetch a good copy from a replica. The pass is throttled
to ``bytes_per_s`` with trio's clock, so it never starves client I/O and tests
can run it on ``autojump_clock``. A pass can be cut short (``chunks_max``) and
resumed from ``ScrubReport.last_id``.

Order of work per chunk: wait for the byte budget → verify (thread) → report.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import trio

from .aiostore import AsyncChunkStore
from .errors import ChunkNotFound, CorruptChunk
from .keyrange import KeyRange

log = logging.getLogger("chordfs.store.scrub")

CORRUPT_IDS_MAX = 10_000
PAGE_IDS_MAX = 1024

CorruptHook = Callable[[bytes], Awaitable[object]]


@dataclasses.dataclass
class ScrubReport:
    checked_count: int = 0
    checked_bytes: int = 0
    corrupt_count: int = 0
    # The first CORRUPT_IDS_MAX corrupt ids; corrupt_count has the total.
    corrupt_ids: list[bytes] = dataclasses.field(default_factory=list)
    # Deleted between listing and verifying: not an error (GC runs meanwhile).
    vanished_count: int = 0
    last_id: bytes | None = None
    complete: bool = False


async def scrub(
    store: AsyncChunkStore,
    *,
    bytes_per_s: float,
    on_corrupt: CorruptHook | None = None,
    key_range: KeyRange | None = None,
    after_id: bytes | None = None,
    chunks_max: int | None = None,
    report: ScrubReport | None = None,
) -> ScrubReport:
    """Verify the chunks of ``key_range`` (default: all) after ``after_id``.

    ``on_corrupt(chunk_id)`` is awaited for every corrupt chunk, after it has
    been quarantined; exceptions from it propagate (the hook owns its retries).
    ``complete`` is True when the range was exhausted rather than cut short by
    ``chunks_max``. A ``report`` given is filled in as the pass goes (a
    status query shows its progress).
    """
    if bytes_per_s <= 0:
        raise ValueError(f"bytes_per_s must be > 0, got {bytes_per_s}")
    if report is None:
        report = ScrubReport()
    report.last_id = after_id
    started_s = trio.current_time()
    while True:
        page = await store.list_ids(key_range, report.last_id, PAGE_IDS_MAX)
        for chunk_id in page:
            if chunks_max is not None and report.checked_count + report.corrupt_count >= chunks_max:
                return report
            # Pace by bytes done so far: average rate stays <= bytes_per_s.
            await trio.sleep_until(started_s + report.checked_bytes / bytes_per_s)
            await _check_one(store, chunk_id, report, on_corrupt)
            report.last_id = chunk_id
        if len(page) < PAGE_IDS_MAX:
            report.complete = True
            return report


async def _check_one(
    store: AsyncChunkStore, chunk_id: bytes, report: ScrubReport, on_corrupt: CorruptHook | None
) -> None:
    try:
        size = await store.verify(chunk_id)
    except ChunkNotFound:
        report.vanished_count += 1
        return
    except CorruptChunk as exc:
        report.corrupt_count += 1
        # Count the bytes read so a disk full of corrupt chunks is paced too.
        report.checked_bytes += await _quarantined_size(exc)
        if len(report.corrupt_ids) < CORRUPT_IDS_MAX:
            report.corrupt_ids.append(chunk_id)
        log.warning("scrub: chunk %s corrupt", chunk_id.hex())
        if on_corrupt is not None:
            await on_corrupt(chunk_id)
        return
    report.checked_count += 1
    report.checked_bytes += size


async def _quarantined_size(exc: CorruptChunk) -> int:
    if exc.quarantined_path is None:
        return 0
    try:
        return (await trio.Path(exc.quarantined_path).stat()).st_size
    except FileNotFoundError:
        return 0
