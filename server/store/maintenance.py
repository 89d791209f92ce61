"""Data maintenance on one node: repair, scrub and chunk GC (DESIGN "Repair").

Three loops in the service's own nursery, each of which logs a failed pass
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
* scrub: ``scrub_forever`` with ``on_corrupt`` restoring the chunk from the
  other replicas of the current view. The first pass waits
  ``min(scrub_interval_s, scrub_first_delay_s)``: a node restarting more
  often than the interval still scrubs, without re-reading the disk at
  every start.
* GC (only while this node leads the metadata group): take
  ``gc_candidates(now, grace)`` from the leader's MetaStore, delete each
  chunk on its replica set plus ``gc_extra_replicas`` successors (copies a
  recent membership change left there), then propose ``ForgetChunks`` for
  the chunks every one of those nodes confirmed deleted; the others keep
  their gc row and are retried on the next pass.

GC and dedup race. A writer whose ``ReplicatedStore.put`` finds the chunk
already on the replicas (``has``) skips the upload, then commits a manifest
that references it. If that chunk is a GC candidate and GC deletes it
between the writer's ``has`` and its commit, the file points at a chunk
nobody holds. The grace period does not help: it protects uploads that have
not yet been committed, not dedup hits on old garbage. Mitigation here:
right before deleting, GC waits for ReadIndex and re-reads the chunk's
reference count in the leader's own MetaStore, skipping chunks referenced
again; after deleting it reads again and logs ``gc.race_lost`` (an error)
if a commit slipped in meanwhile, so the loss is at least visible. The
window between the re-check and the deletes remains; closing it needs the
writer in the protocol (e.g. a Raft-ordered "dying" mark that makes a
CommitWrite referencing a dying chunk fail so the client re-uploads).

Other known gaps: copies outside the replica set plus the extra successors
(several membership changes ago) are not deleted by GC, nor are copies
repair no longer needs after a join; a repair pass racing GC can copy a
chunk back to a node GC just emptied (a leak, never a loss).

Invariants: every network call has a deadline (rpc_deadline_ms per call,
a maximum per pass); every queue and batch is bounded; only ``run`` holds a
nursery."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import trio

import rpc
from rpc.logfmt import kv
from server.meta import chunks as meta_chunks
from server.meta import codec
from server.meta.types import ForgetChunks
from server.raft.messages import RaftError, Role
from server.ring.messages import MemberDown, MemberUp, RangesChanged
from server.ring.service import Resync

from .aiostore import AsyncChunkStore
from .handoff import drop_handed_over
from .keyrange import ring_key
from .repair import RepairPass, RepairReport
from .scrub import ScrubReport, scrub_forever
from .service import RemoteStore, RemoteStoreError, store_capnp

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
    gc_interval_s: float = 30.0
    gc_batch_max: int = 256
    gc_extra_replicas: int = 2
    gc_chunks_in_flight_max: int = 8
    gc_pass_s_max: float = 120.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"{field.name} must be positive")


@dataclasses.dataclass
class GcReport:
    candidates: int = 0
    referenced_again: int = 0
    deleted: int = 0
    unconfirmed: int = 0
    forgotten: int = 0
    races_lost: int = 0


class Maintenance:
    """Repair, scrub and GC for one node; ``status()`` for a status query."""

    def __init__(self, cfg, store: AsyncChunkStore, ring, pool, metadata=None, *,
                 limits: MaintenanceLimits = MaintenanceLimits(),
                 clock_ns: Callable[[], int] = time.time_ns):
        self.cfg, self.store, self.ring, self.pool = cfg, store, ring, pool
        self.metadata = metadata
        self.limits = limits
        self.name = cfg.node_name
        self.timeout_s = cfg.rpc_deadline_ms / 1000
        # gc rows carry the proposer's wall-clock time, so GC compares to it.
        self._clock_ns = clock_ns
        self._wake = trio.Event()
        self._last_event_s = 0.0
        self._resume: tuple[object, int] | None = None  # (view, plan index)
        self._progress_logged_s = 0.0
        self.repair_passes = 0
        self.repair_running: RepairReport | None = None
        self.repair_last: RepairReport | None = None
        self.repair_last_s: float | None = None     # trio time the last pass ended
        self.scrub_last: ScrubReport | None = None
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
            "scrub_last": dataclasses.asdict(self.scrub_last) if self.scrub_last else None,
            "restored": self.restored, "restore_failed": self.restore_failed,
            "handed_off": self.handed_off,
            "gc_last": dataclasses.asdict(self.gc_last) if self.gc_last else None,
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
                log.info(kv("maintenance.started", node=self.name,
                            repair_bytes_per_s=self.cfg.repair_bytes_per_s,
                            scrub_interval_s=self.cfg.scrub_interval_s,
                            gc=self.metadata is not None))
                task_status.started(self)
        finally:
            sub.close()

    # ---- repair ---------------------------------------------------------

    async def _watch_ring(self, sub) -> None:
        async for event in sub:
            if isinstance(event, _VIEW_EVENTS):
                self._last_event_s = trio.current_time()
                self._wake.set()

    async def _repair_loop(self) -> None:
        # A first pass at start: this node may have been down while its
        # ranges changed, and no event will say so.
        self._wake.set()
        self._last_event_s = trio.current_time()
        next_s = self.limits.repair_interval_s
        while True:
            with trio.move_on_after(next_s):
                await self._wake.wait()
            await self._settle()
            self._wake = trio.Event()
            next_s = await self._repair_once()

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
                            timeout_s=self.timeout_s, on_progress=self._on_progress)
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
            self._log_pass("repair.pass_cut", partial, started_s, len(view))
            return self.limits.repair_retry_s
        self.repair_last = report
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
        await trio.sleep(min(self.cfg.scrub_interval_s, self.limits.scrub_first_delay_s))
        while True:
            try:
                await scrub_forever(self.store, interval_s=self.cfg.scrub_interval_s,
                                    bytes_per_s=self.cfg.scrub_bytes_per_s,
                                    on_corrupt=self._restore, on_pass=self._on_scrub_pass)
            except Exception as e:  # noqa: BLE001 - logged; scrub starts over
                log.error(kv("scrub.failed", node=self.name, error=f"{type(e).__name__}: {e}"),
                          exc_info=True)
                await trio.sleep(self.limits.failure_backoff_s)

    def _on_scrub_pass(self, report: ScrubReport) -> None:
        self.scrub_last = report
        log.info(kv("scrub.pass", node=self.name, chunks=report.checked_count,
                    bytes=report.checked_bytes, corrupt=report.corrupt_count,
                    restored=self.restored, restore_failed=self.restore_failed))

    async def _restore(self, chunk_id: bytes) -> None:
        """scrub's on_corrupt: fetch a good copy from the current replicas."""
        repair = RepairPass(self.store, self.name, self.ring.view(), self.pool, _identity,
                            self.cfg.replication_factor, timeout_s=self.timeout_s)
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

    # ---- GC -------------------------------------------------------------

    def _leads(self) -> bool:
        return self.metadata.group.service.core.role == Role.LEADER

    async def _gc_loop(self) -> None:
        while True:
            await trio.sleep(self.limits.gc_interval_s)
            if not self._leads():
                continue
            try:
                with trio.fail_after(self.limits.gc_pass_s_max):
                    await self._gc_once()
            except Exception as e:  # noqa: BLE001 - rows stay for the next pass
                log.warning(kv("gc.failed", node=self.name, error=f"{type(e).__name__}: {e}"))

    def _refs(self, chunk_id: bytes) -> int:
        return meta_chunks.chunk_refs(self.metadata.reader.conn, chunk_id)

    async def _gc_once(self) -> None:
        grace_ns = int(self.cfg.gc_grace_s * 1e9)
        ids = self.metadata.reader.gc_candidates(self._clock_ns(), grace_ns, self.limits.gc_batch_max)
        if not ids:
            return
        report = GcReport(candidates=len(ids))
        service = self.metadata.group.service
        # Everything committed so far applied here, so the re-check below
        # sees a CommitWrite that re-referenced a candidate.
        await service.read_index(timeout_s=self.timeout_s)
        live = [c for c in ids if self._refs(c) == 0]
        report.referenced_again = len(ids) - len(live)
        confirmed: list[bytes] = []
        slots = trio.Semaphore(self.limits.gc_chunks_in_flight_max)
        async with trio.open_nursery() as nursery:
            for chunk_id in live:
                await slots.acquire()
                nursery.start_soon(self._delete_everywhere, chunk_id, confirmed, slots)
        report.deleted, report.unconfirmed = len(confirmed), len(live) - len(confirmed)
        for chunk_id in confirmed:
            if self._refs(chunk_id):
                report.races_lost += 1
                log.error(kv("gc.race_lost", node=self.name, chunk=chunk_id.hex()))
        if confirmed:
            cmd = codec.encode_command(ForgetChunks(chunk_ids=confirmed))
            try:
                await service.propose(cmd, timeout_s=self.timeout_s)
                report.forgotten = len(confirmed)
            except RaftError as e:  # rows stay; deleting again is harmless
                log.info(kv("gc.forget_failed", node=self.name, error=str(e)))
        self.gc_last = report
        log.info(kv("gc.pass", node=self.name, **dataclasses.asdict(report)))

    async def _delete_everywhere(self, chunk_id: bytes, confirmed: list[bytes],
                                 slots: trio.Semaphore) -> None:
        try:
            view = self.ring.view()
            names = view.replicas(ring_key(chunk_id),
                                  self.cfg.replication_factor + self.limits.gc_extra_replicas)
            failed: list[str] = []
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(self._delete_on, name, chunk_id, failed)
            if not failed:
                confirmed.append(chunk_id)
        finally:
            slots.release()

    async def _delete_on(self, name: str, chunk_id: bytes, failed: list[str]) -> None:
        try:
            with trio.fail_after(self.timeout_s):
                cap = await self.pool.bootstrap(name, store_capnp.ChunkStore, timeout_s=self.timeout_s)
                await RemoteStore(cap, name, timeout_s=self.timeout_s).delete(chunk_id)
        except (rpc.RpcError, RemoteStoreError, trio.TooSlowError) as e:
            failed.append(name)
            log.info(kv("gc.delete_failed", node=self.name, on=name, chunk=chunk_id.hex(),
                        error=f"{type(e).__name__}: {e}"[:200]))


def _identity(name: str) -> str:
    """Node names are their host:port addresses."""
    return name
