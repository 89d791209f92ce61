"""Data maintenance on one node: repair, scrub, chunk GC and the sweep of
uncommitted uploads (DESIGN "Repair").

Four loops in the service's own nursery, each of which logs a failed pass
and tries again later, so no maintenance error ever stops the node:

* repair: a ``RepairPass`` of this node over the ring's current view, after
  every view-changing ring event (MemberUp/MemberDown/RangesChanged, and a
  ``Resync`` since events were lost), debounced by ``debounce_s`` so one
  membership change gives one pass, and every ``repair_interval_s`` anyway
  (a copy skipped for a transient error is picked up then). A pass runs at
  most ``repair_pass_s_max``; one cut short resumes at its plan index while
  the view stays the same (the plan is a pure function of the view). Events
  during a pass do not cancel it: they schedule the next one, so a flapping
  member cannot starve repair. Copies are throttled to repair_bytes_per_s.
  After a complete pass, copies this node no longer replicates are dropped
  once every replica confirms (``handoff``); while some stay unconfirmed the
  next pass comes after ``repair_retry_s``, doubling up to the interval.
* scrub: a ``scrub`` pass every ``scrub_interval_s`` (start to start) with
  ``on_corrupt`` restoring the chunk from the other replicas of the current
  view. The first pass waits ``min(scrub_interval_s, scrub_first_delay_s)``:
  a node restarting more often than the interval still scrubs, without
  re-reading the disk at every start.
* census (only while this node leads the metadata group): counts the
  referenced blocks that are under-replicated or missing
  (server/store/census.py), after view changes (debounced as repair is),
  every ``census_interval_s``, and within ``census_check_s`` of the block
  count changing (at most half the time, however long a pass takes).
* on request (``chordfs heal`` and ``chordfs scrub`` through
  Diag.maintain): ``request_repair``, ``request_scrub`` and
  ``request_census`` start a pass now and return the pass count the caller
  waits for; the running pass's progress is in ``status()``.
* GC (only while this node leads the metadata group): take dying blocks
  ``gc_candidates(limit) -> [(id, mark)]`` from the metadata replica, ask
  each block's replica set plus ``gc_extra_replicas`` successors (copies a
  recent membership change left there) to ``delete(id, mark)``, which
  deletes only a copy stamped below the mark, then propose
  ``ForgetChunks(ids, marks)`` for the blocks every one of those nodes
  answered (deleted, absent, or kept a newer copy). The log decides: a
  block revived after its mark was committed needed copies stamped at or
  above the mark (server/meta/blocks.py), which these deletes spare, and
  ForgetChunks forgets a block only if it is still dying with that mark;
  so no reference re-check and no wall-clock grace is needed. A block some
  node did not answer for is retried after ``gc_retry_s`` while the rest
  drain (at most ``gc_deferred_max`` remembered). A pass that found a full
  batch and forgot some starts the next one at once: GC drains at disk
  speed, ``gc_chunks_in_flight_max`` blocks at a time.
* sweep (every node with a metadata replica): ``Sweeper`` walks the local
  store and deletes copies of blocks no commit can still use (uploads never
  committed), see server/store/sweep.py.

Known gaps: copies outside the replica set plus the extra successors
(several membership changes ago) are left to the sweeper once their block
is forgotten and its tombstone expired; a repair pass racing GC can copy
a block back to a node GC just emptied (a leak the sweeper reclaims,
never a loss).

Invariants: every network call has a deadline (rpc_deadline_ms per call,
a maximum per pass); every queue and batch is bounded; only ``run`` holds a
nursery."""

from __future__ import annotations

import dataclasses
import logging
import time

import trio

import rpc
from rpc.logfmt import kv
from server.meta import codec
from server.meta.types import ForgetChunks
from server.raft.messages import RaftError, Role
from server.ring.messages import MemberDown, MemberUp, RangesChanged
from server.ring.service import Resync

from .aiostore import AsyncChunkStore
from .census import Census, CensusReport
from .handoff import drop_handed_over
from .keyrange import ring_key
from .repair import RepairPass, RepairReport
from .scrub import ScrubReport, scrub
from .service import RemoteStore, RemoteStoreError, store_capnp
from .sweep import Sweeper, SweepLimits

log = logging.getLogger("chordfs.store.maintenance")

_VIEW_EVENTS = (RangesChanged, MemberDown, MemberUp, Resync)


@dataclasses.dataclass(frozen=True)
class MaintenanceLimits:
    debounce_s: float = 1.0
    settle_s_max: float = 10.0          # flapping members cannot postpone a pass longer
    repair_interval_s: float = 60.0
    repair_retry_s: float = 5.0         # after a pass that skipped or truncated something
    repair_pass_s_max: float = 600.0
    progress_log_s: float = 5.0
    events_buffer_max: int = 64
    scrub_first_delay_s: float = 300.0
    restore_s_max: float = 30.0
    failure_backoff_s: float = 5.0
    gc_interval_s: float = 2.0         # a pass with nothing to do is one query
    gc_batch_max: int = 1024            # ForgetChunks takes up to 4096
    gc_extra_replicas: int = 2
    gc_chunks_in_flight_max: int = 32   # x (R + extra) delete calls
    gc_pass_s_max: float = 120.0
    gc_retry_s: float = 10.0            # a block a node did not answer for
    gc_deferred_max: int = 4096
    census_interval_s: float = 300.0
    census_check_s: float = 30.0        # a changed block count is counted again this soon
    census_lookups_per_s: float = 50_000.0
    census_pass_s_max: float = 3600.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"{field.name} must be positive")


@dataclasses.dataclass
class GcReport:
    candidates: int = 0       # dying blocks taken this pass
    copies_deleted: int = 0
    copies_kept: int = 0      # stamped at or above the mark: a newer upload
    copies_absent: int = 0
    unconfirmed: int = 0      # blocks some node did not answer for: retried later
    forgotten: int = 0
    skipped_deferred: int = 0


class Maintenance:
    """Repair, scrub and GC for one node; ``status()`` for a status query."""

    def __init__(self, cfg, store: AsyncChunkStore, ring, pool, metadata=None, *,
                 limits: MaintenanceLimits = MaintenanceLimits(),
                 sweep_limits: SweepLimits = SweepLimits()):
        self.cfg, self.store, self.ring, self.pool = cfg, store, ring, pool
        self.metadata = metadata
        self.limits = limits
        self.name = cfg.node_name
        self.timeout_s = cfg.rpc_deadline_ms / 1000
        self.sweeper = (Sweeper(store, metadata.reader, self.name, limits=sweep_limits)
                        if metadata is not None else None)
        self._gc_deferred: dict[bytes, float] = {}  # block id -> trio time to retry
        self._wake = trio.Event()
        self._last_event_s = 0.0
        self._resume: tuple[object, int] | None = None  # (view, plan index)
        self._progress_logged_s = 0.0
        self.repair_passes = 0
        self.repair_running: RepairReport | None = None
        self.repair_last: RepairReport | None = None
        self.repair_last_s: float | None = None     # trio time the last pass ended
        self.repair_copied_bytes_total = self.repair_copied_blocks_total = 0
        self.scrub_last: ScrubReport | None = None
        self.scrub_running: ScrubReport | None = None
        self.scrub_last_wall_s: float | None = None
        self.scrub_total_bytes = 0          # what the running pass will read, about
        self.scrub_passes = 0
        self._scrub_wake = trio.Event()
        self._scrub_rate: float | None = None  # a requested pass's own rate
        self._urgent_repair = False
        self.census_last: CensusReport | None = None
        self.census_running: CensusReport | None = None
        self.census_passes = 0
        self._census_wake = trio.Event()
        self._urgent_census = False
        self.restored = self.restore_failed = 0
        self.gc_last: GcReport | None = None
        self.handed_off = 0
        self._handoff_after: bytes | None = None  # where the walk resumes
        self._handoff_retry_s = limits.repair_retry_s  # grows while copies stay unconfirmed

    def status(self) -> dict:
        last = self.repair_last
        return {
            "repair_passes": self.repair_passes,
            "repair_running": self.repair_running is not None,
            "repair_last": dataclasses.asdict(last) if last else None,
            "repair_copied_bytes_total": self.repair_copied_bytes_total,
            "repair_copied_blocks_total": self.repair_copied_blocks_total,
            "scrub_last": _scrub_dict(self.scrub_last, self.scrub_last_wall_s),
            "scrub_passes": self.scrub_passes,
            "scrub_running": ({"checked_bytes": self.scrub_running.checked_bytes,
                               "total_bytes": self.scrub_total_bytes,
                               "corrupt": self.scrub_running.corrupt_count}
                              if self.scrub_running else None),
            "census_passes": self.census_passes,
            "census_last": dataclasses.asdict(self.census_last) if self.census_last else None,
            "census_running": ({"checked": self.census_running.blocks_checked,
                                "total": self.census_running.blocks_total}
                               if self.census_running else None),
            "restored": self.restored, "restore_failed": self.restore_failed,
            "handed_off": self.handed_off,
            "gc_last": dataclasses.asdict(self.gc_last) if self.gc_last else None,
            "sweep_last": (dataclasses.asdict(self.sweeper.last)
                           if self.sweeper and self.sweeper.last else None),
        }

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sub = self.ring.subscribe(self.limits.events_buffer_max)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_ring, sub)
                nursery.start_soon(self._repair_loop)
                nursery.start_soon(self._scrub_loop)
                if self.metadata is not None:
                    nursery.start_soon(self._gc_loop)
                    nursery.start_soon(self._census_loop)
                    await nursery.start(self.sweeper.run)
                log.info(kv("maintenance.started", node=self.name,
                            repair_bytes_per_s=self.cfg.repair_bytes_per_s,
                            scrub_interval_s=self.cfg.scrub_interval_s,
                            gc=self.metadata is not None, sweep=self.sweeper is not None))
                task_status.started(self)
        finally:
            sub.close()

    # ---- repair ---------------------------------------------------------

    async def _watch_ring(self, sub) -> None:
        async for event in sub:
            if isinstance(event, _VIEW_EVENTS):
                self._last_event_s = trio.current_time()
                self._wake.set()
                self._census_wake.set()

    async def _repair_loop(self) -> None:
        # A first pass at start: this node may have been down while its
        # ranges changed, and no event will say so.
        self._wake.set()
        self._last_event_s = trio.current_time()
        next_s = self.limits.repair_interval_s
        while True:
            with trio.move_on_after(next_s):
                await self._wake.wait()
            if not self._urgent_repair:
                await self._settle()
            self._urgent_repair = False
            self._wake = trio.Event()
            next_s = await self._repair_once()

    def request_repair(self) -> int:
        """Start a repair pass now (``chordfs heal``); returns the value of
        ``repair_passes`` once a pass started after this call has ended."""
        self._urgent_repair = True
        self._wake.set()
        return _done_after(self.repair_passes, self.repair_running)

    async def _settle(self) -> None:
        """Wait until no view event came for debounce_s (at most settle_s_max)."""
        give_up_s = trio.current_time() + self.limits.settle_s_max
        while True:
            quiet_s = self._last_event_s + self.limits.debounce_s
            if quiet_s <= trio.current_time() or trio.current_time() >= give_up_s:
                return
            await trio.sleep_until(min(quiet_s, give_up_s))

    async def _repair_once(self) -> float:
        """One pass; returns the seconds until the next periodic pass."""
        view = self.ring.view()
        resume = self._resume[1] if self._resume and self._resume[0] == view else 0
        self._resume = None
        repair = RepairPass(self.store, self.name, view, self.pool, _identity,
                            self.cfg.replication_factor, bytes_per_s=self.cfg.repair_bytes_per_s,
                            timeout_s=self.timeout_s, on_progress=self._on_progress,
                            applied_index=self._applied_index)
        started_s = trio.current_time()
        self.repair_running = RepairReport(next_index=resume)
        report = None
        with trio.move_on_after(self.limits.repair_pass_s_max):
            try:
                report = await repair.run(resume)
            except Exception as e:  # noqa: BLE001 - logged; the next pass retries
                log.error(kv("repair.failed", node=self.name, error=f"{type(e).__name__}: {e}"),
                          exc_info=True)
                self.repair_running = None
                return self.limits.failure_backoff_s
        partial, self.repair_running = self.repair_running, None
        self.repair_passes += 1
        self.repair_last_s = trio.current_time()
        if report is None:  # cut short by the pass deadline: resume soon
            self._resume = (view, partial.next_index)
            self.repair_last = partial
            self._count_copies(partial)
            self._log_pass("repair.pass_cut", partial, started_s, len(view))
            return self.limits.repair_retry_s
        self.repair_last = report
        self._count_copies(report)
        self._log_pass("repair.pass", report, started_s, len(view))
        incomplete = report.chunks_skipped or report.truncated or report.peers_unreachable
        if incomplete:
            return self.limits.repair_retry_s
        kept = await self._hand_off(view)
        if self._handoff_after:
            return self.limits.repair_retry_s
        if kept:
            # A new holder confirms once its own pass has pulled the chunk,
            # typically seconds after ours: ask again soon, then less often
            # (a holder that never confirms must not cost a pass every few s).
            retry_s, self._handoff_retry_s = self._handoff_retry_s, min(
                2 * self._handoff_retry_s, self.limits.repair_interval_s)
            return retry_s
        self._handoff_retry_s = self.limits.repair_retry_s
        return self.limits.repair_interval_s

    def _count_copies(self, report: RepairReport) -> None:
        self.repair_copied_bytes_total += report.bytes_copied
        self.repair_copied_blocks_total += report.chunks_copied

    async def _hand_off(self, view) -> int:
        """After a complete pass, drop copies whose replicas all confirm;
        returns how many such copies stayed unconfirmed."""
        try:
            _, dropped, kept, self._handoff_after = await drop_handed_over(
                self.store, self.name, view, self.pool, self.cfg.replication_factor,
                timeout_s=self.timeout_s, after_id=self._handoff_after)
            self.handed_off += dropped
            return kept
        except Exception as e:  # noqa: BLE001 - logged; the next pass retries
            log.error(kv("handoff.failed", node=self.name, error=f"{type(e).__name__}: {e}"))
            return 1

    def _on_progress(self, report: RepairReport) -> None:
        self.repair_running = report
        now = trio.current_time()
        if now - self._progress_logged_s >= self.limits.progress_log_s:
            self._progress_logged_s = now
            log.info(kv("repair.progress", node=self.name, tasks_done=report.tasks_done,
                        tasks_total=report.tasks_total, copied=report.chunks_copied,
                        bytes=report.bytes_copied))

    def _log_pass(self, event: str, report: RepairReport, started_s: float, members: int) -> None:
        log.info(kv(event, node=self.name, members=members, tasks=report.tasks_total,
                    done=report.tasks_done, pulled=report.chunks_pulled,
                    pushed=report.chunks_pushed, bytes=report.bytes_copied,
                    skipped=report.chunks_skipped, truncated=report.truncated,
                    unreachable=",".join(sorted(report.peers_unreachable)) or "-",
                    took_s=round(trio.current_time() - started_s, 3)))
        for reason in report.errors[:3]:
            log.info(kv("repair.skip_reason", node=self.name, reason=reason[:200]))

    # ---- scrub ----------------------------------------------------------

    async def _scrub_loop(self) -> None:
        delay_s = min(self.cfg.scrub_interval_s, self.limits.scrub_first_delay_s)
        while True:
            with trio.move_on_after(delay_s):
                await self._scrub_wake.wait()
            self._scrub_wake = trio.Event()
            started_s = trio.current_time()
            try:
                await self._scrub_once()
            except Exception as e:  # noqa: BLE001 - logged; scrub starts over
                log.error(kv("scrub.failed", node=self.name, error=f"{type(e).__name__}: {e}"),
                          exc_info=True)
                self.scrub_running = None
                delay_s = self.limits.failure_backoff_s
                continue
            delay_s = max(0.0, started_s + self.cfg.scrub_interval_s - trio.current_time())

    async def _scrub_once(self) -> None:
        rate, self._scrub_rate = self._scrub_rate or self.cfg.scrub_bytes_per_s, None
        self.scrub_total_bytes = (await self.store.stats()).used_bytes
        report = self.scrub_running = ScrubReport()
        await scrub(self.store, bytes_per_s=rate, on_corrupt=self._restore, report=report)
        self.scrub_running = None
        self.scrub_passes += 1
        self._on_scrub_pass(report)

    def request_scrub(self, bytes_per_s: float | None = None) -> int:
        """Start a scrub pass now (``chordfs scrub``), at ``bytes_per_s`` if
        given; returns the ``scrub_passes`` value that marks it done."""
        if bytes_per_s is not None:
            self._scrub_rate = bytes_per_s
        self._scrub_wake.set()
        return _done_after(self.scrub_passes, self.scrub_running)

    def _on_scrub_pass(self, report: ScrubReport) -> None:
        self.scrub_last = report
        self.scrub_last_wall_s = time.time()
        log.info(kv("scrub.pass", node=self.name, chunks=report.checked_count,
                    bytes=report.checked_bytes, corrupt=report.corrupt_count,
                    restored=self.restored, restore_failed=self.restore_failed))

    async def _restore(self, chunk_id: bytes) -> None:
        """scrub's on_corrupt: fetch a good copy from the current replicas."""
        repair = RepairPass(self.store, self.name, self.ring.view(), self.pool, _identity,
                            self.cfg.replication_factor, timeout_s=self.timeout_s,
                            applied_index=self._applied_index)
        ok = False
        with trio.move_on_after(self.limits.restore_s_max):
            try:
                ok = await repair.restore(chunk_id)
            except Exception as e:  # noqa: BLE001 - scrub must go on
                log.warning(kv("scrub.restore_error", node=self.name, chunk=chunk_id.hex(),
                               error=f"{type(e).__name__}: {e}"))
        if ok:
            self.restored += 1
        else:
            self.restore_failed += 1
        log.info(kv("scrub.restore", node=self.name, chunk=chunk_id.hex(), ok=ok))

    def _applied_index(self) -> int:
        """This node's applied metadata index: the least stamp its copies get."""
        return self.metadata.reader.applied_index if self.metadata is not None else 0

    # ---- GC -------------------------------------------------------------

    def _leads(self) -> bool:
        return self.metadata.group.service.core.role == Role.LEADER

    async def _gc_loop(self) -> None:
        next_s = self.limits.gc_interval_s
        while True:
            await trio.sleep(next_s)
            next_s = self.limits.gc_interval_s
            if not self._leads():
                continue
            try:
                with trio.fail_after(self.limits.gc_pass_s_max):
                    report = await self._gc_once()
            except Exception as e:  # noqa: BLE001 - blocks stay dying for the next pass
                log.warning(kv("gc.failed", node=self.name, error=f"{type(e).__name__}: {e}"))
                continue
            if report.candidates >= self.limits.gc_batch_max and report.forgotten:
                next_s = 0  # more are waiting and the pass got somewhere: no pause

    def _gc_batch(self, report: GcReport) -> list[tuple[bytes, int]]:
        """Dying blocks to delete now, oldest mark first, passing over the
        ones deferred after a node did not answer for them."""
        now = trio.current_time()
        self._gc_deferred = {c: t for c, t in self._gc_deferred.items() if t > now}
        wanted = self.limits.gc_batch_max + len(self._gc_deferred)
        batch = []
        for chunk_id, mark in self.metadata.reader.gc_candidates(wanted):
            if chunk_id in self._gc_deferred:
                report.skipped_deferred += 1
            elif len(batch) < self.limits.gc_batch_max:
                batch.append((chunk_id, mark))
        return batch

    async def _gc_once(self) -> GcReport:
        report = self.gc_last = GcReport()
        batch = self._gc_batch(report)
        report.candidates = len(batch)
        if not batch:
            return report
        done: list[tuple[bytes, int]] = []
        slots = trio.Semaphore(self.limits.gc_chunks_in_flight_max)
        async with trio.open_nursery() as nursery:
            for chunk_id, mark in batch:
                await slots.acquire()
                nursery.start_soon(self._delete_everywhere, chunk_id, mark, done, report, slots)
        report.unconfirmed = len(batch) - len(done)
        answered = {c for c, _ in done}
        self._defer([c for c, _ in batch if c not in answered])
        if done:
            cmd = ForgetChunks(chunk_ids=[c for c, _ in done], marks=[m for _, m in done])
            try:
                await self.metadata.group.service.propose(codec.encode_command(cmd),
                                                          timeout_s=self.timeout_s)
                report.forgotten = len(done)
            except RaftError as e:  # still dying; deleting again is harmless
                log.info(kv("gc.forget_failed", node=self.name, error=str(e)))
        log.info(kv("gc.pass", node=self.name, **dataclasses.asdict(report)))
        return report

    def _defer(self, chunk_ids: list[bytes]) -> None:
        retry_s = trio.current_time() + self.limits.gc_retry_s
        for chunk_id in chunk_ids:
            if len(self._gc_deferred) >= self.limits.gc_deferred_max:
                break  # the rest is simply retried on the next pass
            self._gc_deferred[chunk_id] = retry_s

    async def _delete_everywhere(self, chunk_id: bytes, mark: int, done: list,
                                 report: GcReport, slots: trio.Semaphore) -> None:
        try:
            names = self.ring.view().replicas(
                ring_key(chunk_id), self.cfg.replication_factor + self.limits.gc_extra_replicas)
            outcomes: dict[str, str] = {}
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(self._delete_on, name, chunk_id, mark, outcomes)
            report.copies_deleted += sum(o == "deleted" for o in outcomes.values())
            report.copies_kept += sum(o == "kept" for o in outcomes.values())
            report.copies_absent += sum(o == "absent" for o in outcomes.values())
            if len(outcomes) == len(names):
                done.append((chunk_id, mark))
        finally:
            slots.release()

    async def _delete_on(self, name: str, chunk_id: bytes, mark: int,
                         outcomes: dict[str, str]) -> None:
        try:
            with trio.fail_after(self.timeout_s):
                cap = await self.pool.bootstrap(name, store_capnp.ChunkStore, timeout_s=self.timeout_s)
                remote = RemoteStore(cap, name, timeout_s=self.timeout_s)
                outcomes[name] = await remote.delete_below(chunk_id, mark)
        except (rpc.RpcError, RemoteStoreError, trio.TooSlowError) as e:
            log.info(kv("gc.delete_failed", node=self.name, on=name, chunk=chunk_id.hex(),
                        error=f"{type(e).__name__}: {e}"[:200]))

    # ---- census -----------------------------------------------------------

    async def _census_loop(self) -> None:
        census = Census(self.metadata.reader, self.ring.view, self.pool,
                        self.cfg.replication_factor, extra=self.limits.gc_extra_replicas,
                        lookups_per_s=self.limits.census_lookups_per_s, timeout_s=self.timeout_s)
        last_end_s, last_took_s = trio.current_time(), 0.0
        while True:
            with trio.move_on_after(self.limits.census_check_s):
                await self._census_wake.wait()
            if not self._leads():
                self._census_wake = trio.Event()
                continue
            if not self._census_wake.is_set() and not self._census_due(last_end_s, last_took_s):
                continue
            if not self._urgent_census:
                await self._settle()
            self._urgent_census = False
            self._census_wake = trio.Event()
            report = self.census_running = CensusReport()
            try:
                with trio.fail_after(self.limits.census_pass_s_max):
                    await census.run(report)
                self.census_last = report
                log.info(kv("census.pass", node=self.name, blocks=report.blocks_checked,
                            under_replicated=report.under_replicated, missing=report.missing,
                            unreachable=",".join(report.nodes_unreachable) or "-",
                            took_s=report.took_s))
            except Exception as e:  # noqa: BLE001 - logged; the next pass counts again
                log.warning(kv("census.failed", node=self.name,
                               error=f"{type(e).__name__}: {e}"))
                await trio.sleep(self.limits.failure_backoff_s)
            finally:
                self.census_running = None
                self.census_passes += 1
                last_end_s = trio.current_time()
                last_took_s = report.took_s or 0.0

    def _census_due(self, last_end_s: float, last_took_s: float) -> bool:
        """Without an event: every census_interval_s, and sooner when the
        number of referenced blocks changed (new files are counted within
        a minute), but never more than half the time."""
        since_s = trio.current_time() - last_end_s
        if since_s >= self.limits.census_interval_s:
            return True
        last = self.census_last
        changed = last is None or self.metadata.reader.live_block_count() != last.blocks_total
        return changed and since_s >= max(self.limits.census_check_s, 2 * last_took_s)

    def request_census(self) -> int:
        """Count now (``chordfs heal`` asks after repair); returns the
        ``census_passes`` value that marks it done.  Only the metadata
        leader counts: elsewhere this raises LookupError."""
        if self.metadata is None or not self._leads():
            raise LookupError("this node does not lead the metadata group")
        self._urgent_census = True
        self._census_wake.set()
        return _done_after(self.census_passes, self.census_running)


def _done_after(passes: int, running) -> int:
    """The pass count that marks done a pass requested now: the next one to
    start, which is the one after the running pass if there is one."""
    return passes + (2 if running is not None else 1)


def _scrub_dict(report: ScrubReport | None, wall_s: float | None) -> dict | None:
    if report is None:
        return None
    out = dataclasses.asdict(report)
    # Ids as hex: the report is JSON, and the count is what operators read.
    out["corrupt_ids"] = [c.hex() for c in report.corrupt_ids[:10]]
    out["last_id"] = report.last_id.hex() if report.last_id else None
    out["finished_wall_s"] = wall_s
    return out


def _identity(name: str) -> str:
    """Node names are their host:port addresses."""
    return name
