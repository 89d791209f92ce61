"""Sweeper: reclaims local copies of blocks that no commit can still use.

An upload that is never committed (a replaced write, a failed or refused
commit, a crashed mount, a partial upload) leaves copies that no file
references, so the GC deleter, which works from blocks the log knows,
never sees them. Every node sweeps its own store for them, deciding from
its own metadata replica and the copy's stamp (chunkstore's docstring):

    sweep a copy stamped s  iff  s <= applied index,
                                 block_state is "unknown", or "gone" with s < mark,
                                 log_time_ns() - log_time_at(s) > upload window
                                 (log_time_at None: older than the log keeps)

and the delete is ``delete_below(id, s + 1)``, so a put that raised the
stamp after we read it (a writer storing the block again) keeps the copy.

Why no committed block loses a copy (server/meta/blocks.py): a commit
accepts an unknown block only if log_time_at(observed) is within one window
of its own log time, where observed is the least stamp its puts returned,
and every copy of the block is stamped at least that (puts only raise
stamps; repair and hand-off carry them). Log time only grows with the
index, so once our replica's time at index A is more than a window past
log_time_at(s), every commit that could still accept the block lies at or
below A, and our replica, having applied A, would know the block. The time
is read before the states, so the states are from at least that index. A
gone block is accepted again with observed >= mark at any time, so only
copies below its mark go here; the others wait until its tombstone expires
and it is unknown. Dying blocks are the GC deleter's. A stamp above the
applied index is younger than anything this replica can judge. A replica
that has applied no Tick yet (log time 0) knows nothing and sweeps nothing.

Order of work per page: list ids after the cursor → read their stamps
(thread) → read log time, then block states (this replica) → delete the
doomed ones below stamp + 1 → advance the cursor. Bounded: ``page_ids``
per page, ``page_interval_s`` between pages, a new pass of the whole store
at most every ``pass_interval_s`` (start to start), so an idle store costs
one short page per pass. The cursor survives failed pages."""

from __future__ import annotations

import dataclasses
import logging

import trio

from rpc.logfmt import kv

from .aiostore import AsyncChunkStore

log = logging.getLogger("chordfs.store.sweep")


@dataclasses.dataclass(frozen=True)
class SweepLimits:
    page_ids: int = 256
    page_interval_s: float = 0.05        # at most ~5,000 ids examined per second
    pass_interval_s: float = 10.0        # the whole store at most this often
    failure_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.page_ids < 1 or min(self.page_interval_s, self.pass_interval_s,
                                    self.failure_backoff_s) <= 0:
            raise ValueError("sweep limits must be positive")


@dataclasses.dataclass
class SweepReport:
    examined: int = 0
    swept: int = 0
    kept_known: int = 0      # live or dying here, or gone with a stamp at or above its mark
    kept_young: int = 0      # stamp within the window, or above the applied index
    kept_raised: int = 0     # a put raised the stamp between reading it and deleting
    vanished: int = 0        # deleted by something else meanwhile
    complete: bool = False


def verdict(state: str, mark: int, stamp: int, applied: int, now_ns: int,
            stamp_ns: int | None, window_ns: int) -> str:
    """"sweep", "known" or "young" for one copy (see the module docstring)."""
    # A gone block's copies are judged like an unknown block's: the state
    # machine accepts a revival only from copies stamped within one window
    # (server/meta/blocks.py), so older ones can never be referenced again.
    if state not in ("unknown", "gone"):
        return "known"
    if stamp > applied:
        return "young"
    if stamp_ns is not None and now_ns - stamp_ns <= window_ns:
        return "young"
    return "sweep"


class Sweeper:
    """Sweeps one node's store against its metadata ``reader`` (MetaStore:
    applied_index, log_time_ns(), log_time_at(i), block_state(id),
    upload_window_ns())."""

    def __init__(self, store: AsyncChunkStore, reader, name: str, *,
                 limits: SweepLimits = SweepLimits()):
        self.store, self.reader, self.name, self.limits = store, reader, name, limits
        self.cursor: bytes | None = None
        self.passes = 0
        self.swept_total = 0
        self.last: SweepReport | None = None

    async def step(self, report: SweepReport) -> bool:
        """One page after the cursor; True when it ended the pass."""
        page = await self.store.list_ids(None, self.cursor, self.limits.page_ids)
        stamps = await self.store.stamps_of(page)
        doomed = self._judge(page, stamps, report)
        for chunk_id, stamp in doomed:
            outcome = await self.store.delete_below(chunk_id, stamp + 1)
            if outcome == "deleted":
                report.swept += 1
                log.debug(kv("sweep.deleted", node=self.name, chunk=chunk_id.hex(), stamp=stamp))
            elif outcome == "kept":
                report.kept_raised += 1
            else:
                report.vanished += 1
        report.examined += len(page)
        self.cursor = page[-1] if len(page) == self.limits.page_ids else None
        return self.cursor is None

    def _judge(self, page: list[bytes], stamps: list[int | None],
               report: SweepReport) -> list[tuple[bytes, int]]:
        reader = self.reader
        # Time first, states after: the states are then from an index at
        # least as late as the time's (the module docstring's argument).
        now_ns, applied = reader.log_time_ns(), reader.applied_index
        window_ns = reader.upload_window_ns()
        if now_ns <= 0:
            report.kept_young += sum(s is not None for s in stamps)
            report.vanished += sum(s is None for s in stamps)
            return []
        doomed = []
        for chunk_id, stamp in zip(page, stamps):
            if stamp is None:
                report.vanished += 1
                continue
            state, mark = reader.block_state(chunk_id)
            stamp_ns = reader.log_time_at(stamp) if stamp <= applied else None
            outcome = verdict(state, mark, stamp, applied, now_ns, stamp_ns, window_ns)
            if outcome == "sweep":
                doomed.append((chunk_id, stamp))
            elif outcome == "known":
                report.kept_known += 1
            else:
                report.kept_young += 1
        return doomed

    async def sweep_pass(self) -> SweepReport:
        """From the cursor to the end of the store, paced."""
        report = SweepReport()
        while not await self.step(report):
            await trio.sleep(self.limits.page_interval_s)
        report.complete = True
        return report

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        log.info(kv("sweep.started", node=self.name, page_ids=self.limits.page_ids,
                    pass_interval_s=self.limits.pass_interval_s))
        task_status.started()
        while True:
            started_s = trio.current_time()
            try:
                report = await self.sweep_pass()
            except Exception as e:  # noqa: BLE001 - logged; resumes at the cursor
                log.warning(kv("sweep.failed", node=self.name, error=f"{type(e).__name__}: {e}"))
                await trio.sleep(self.limits.failure_backoff_s)
                continue
            self.passes += 1
            self.swept_total += report.swept
            self.last = report
            log.info(kv("sweep.pass", node=self.name, **dataclasses.asdict(report),
                        took_s=round(trio.current_time() - started_s, 3)))
            await trio.sleep_until(started_s + self.limits.pass_interval_s)
