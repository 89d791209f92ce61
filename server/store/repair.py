"""Anti-entropy repair: one pass that makes a node and each of its replica
peers hold the same chunks in the ranges they share (DESIGN "Repair").

Plan: for every other node P, the ranges where both this node and P are in
the replica set (from the ring's segments, merged) — those are exactly the
chunks both must store. The plan is a pure function of the ring, so a pass
cut short can resume at a plan index (``RepairReport.next_index``).

Per (peer, range), order of work: reconcile summaries (summary.reconcile
over the local store and a RemoteStore stub: equal sub-range digests are
skipped, differing ones descended into) → copy what the peer lacks to it →
copy what we lack from it → report progress. Copies both ways are paced to
``bytes_per_s`` with trio's clock (by bytes done so far, as scrub does), at
most ``copies_in_flight_max`` at once.

Failures stay local to what they touch: an unreachable peer skips that
peer's ranges for this pass, a chunk that vanished (GC) or turned out
corrupt on the reading side is skipped; each is counted and the first few
reasons are kept. The next pass picks up whatever was skipped. Every remote
call has the stub's deadline.

Stamps: a copy keeps its protection when it moves (chunkstore's docstring).
A push sends the local copy's stamp as ``afterIndex``; a pull asks the
source's stamp after reading the bytes and stores the copy with at least
that and this node's applied index (``applied_index()``). A source whose
copy vanished between the two (GC) gives nothing to store."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import trio

import rpc
from server.ring.ringmath import merge_ranges

from .aiostore import AsyncChunkStore
from .errors import ChunkNotFound, CorruptChunk, StoreError
from .keyrange import KeyRange, ring_key
from .service import RemoteStore, RemoteStoreError, store_capnp
from .summary import reconcile

log = logging.getLogger("chordfs.store.repair")

ERRORS_KEPT_MAX = 100
_PEER_DOWN = (rpc.ConnectionLost, rpc.CallTimeout, trio.TooSlowError)


@dataclasses.dataclass(frozen=True)
class RepairTask:
    peer: str
    key_range: KeyRange


@dataclasses.dataclass
class RepairReport:
    tasks_total: int = 0
    tasks_done: int = 0
    next_index: int = 0            # resume point in the plan
    chunks_pulled: int = 0         # copied from a peer to us
    chunks_pushed: int = 0         # copied from us to a peer
    bytes_copied: int = 0
    summaries_compared: int = 0
    chunks_skipped: int = 0
    peers_unreachable: set[str] = dataclasses.field(default_factory=set)
    truncated: bool = False        # a diff hit diff_ids_max: run again
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def chunks_copied(self) -> int:
        return self.chunks_pulled + self.chunks_pushed

    def note(self, reason: str) -> None:
        if len(self.errors) < ERRORS_KEPT_MAX:
            self.errors.append(reason)


def plan(ring, self_name: str, R: int) -> list[RepairTask]:
    """(peer, range) pairs this node must agree on, in a stable order."""
    shared: dict[str, list] = {}
    for rng, replicas in ring.segments(R):
        if self_name in replicas:
            for peer in replicas:
                if peer != self_name:
                    shared.setdefault(peer, []).append(rng)
    tasks = []
    for peer in sorted(shared):
        for rng in merge_ranges(shared[peer]):
            tasks.append(RepairTask(peer, KeyRange(rng.start, rng.end)))
    return tasks


class RepairPass:
    """One repair pass of ``self_name``'s local store against its peers."""

    def __init__(self, local: AsyncChunkStore, self_name: str, ring, pool,
                 addr_of: Mapping[str, str] | Callable[[str], str], R: int = 3, *,
                 bytes_per_s: float = 50e6, timeout_s: float = 10.0, parts: int = 16,
                 leaf_ids_max: int = 256, diff_ids_max: int = 100_000,
                 copies_in_flight_max: int = 4,
                 on_progress: Callable[[RepairReport], object] | None = None,
                 applied_index: Callable[[], int] = lambda: 0):
        if bytes_per_s <= 0 or copies_in_flight_max < 1:
            raise ValueError("bytes_per_s must be > 0 and copies_in_flight_max >= 1")
        self.local, self.self_name, self.ring, self.R = local, self_name, ring, R
        self._pool, self._addr_of = pool, addr_of
        self.bytes_per_s, self.timeout_s = bytes_per_s, timeout_s
        self._reconcile_opts = dict(parts=parts, leaf_ids_max=leaf_ids_max, diff_ids_max=diff_ids_max)
        self._copy_slots = trio.Semaphore(copies_in_flight_max)
        self._on_progress = on_progress
        self._applied_index = applied_index
        self._started_s = 0.0
        self._paced_bytes = 0

    async def stub(self, name: str) -> RemoteStore:
        addr = self._addr_of(name) if callable(self._addr_of) else self._addr_of[name]
        with trio.fail_after(self.timeout_s):
            cap = await self._pool.bootstrap(addr, store_capnp.ChunkStore, timeout_s=self.timeout_s)
        return RemoteStore(cap, name, timeout_s=self.timeout_s)

    async def run(self, resume_index: int = 0) -> RepairReport:
        tasks = plan(self.ring, self.self_name, self.R)
        report = RepairReport(tasks_total=len(tasks), next_index=resume_index)
        self._started_s, self._paced_bytes = trio.current_time(), 0
        for index in range(resume_index, len(tasks)):
            task = tasks[index]
            if task.peer not in report.peers_unreachable:
                await self._repair_task(task, report)
            report.tasks_done += 1
            report.next_index = index + 1
            if self._on_progress is not None:
                self._on_progress(report)
        log.info("repair pass of %s: %d chunks (%d bytes) copied, %d skipped, unreachable %s",
                 self.self_name, report.chunks_copied, report.bytes_copied, report.chunks_skipped,
                 sorted(report.peers_unreachable))
        return report

    async def _repair_task(self, task: RepairTask, report: RepairReport) -> None:
        try:
            remote = await self.stub(task.peer)
            diff = await reconcile(self.local, remote, task.key_range, **self._reconcile_opts)
        except (*_PEER_DOWN, RemoteStoreError, rpc.RpcError) as e:
            report.peers_unreachable.add(task.peer)
            report.note(f"{task.peer}: {type(e).__name__}: {e}")
            return
        report.summaries_compared += diff.summaries_compared
        report.truncated |= diff.truncated
        async with trio.open_nursery() as nursery:
            for chunk_id in diff.missing_remote:
                await self._start_copy(nursery, "push", remote, chunk_id, report)
            for chunk_id in diff.missing_local:
                await self._start_copy(nursery, "pull", remote, chunk_id, report)

    async def _start_copy(self, nursery, direction: str, remote, chunk_id, report) -> None:
        await self._copy_slots.acquire()
        # Pace by bytes done so far, counted once a slot is ours so copies
        # in flight are the only lag: the average rate stays <= bytes_per_s
        # up to copies_in_flight_max - 1 chunks.
        try:
            await trio.sleep_until(self._started_s + self._paced_bytes / self.bytes_per_s)
        except BaseException:
            self._copy_slots.release()
            raise
        nursery.start_soon(self._copy_one, direction, remote, chunk_id, report)

    async def _copy_one(self, direction: str, remote, chunk_id, report) -> None:
        try:
            if direction == "push":
                size = await self._push(remote, chunk_id)
                report.chunks_pushed += 1
            else:
                size = await self._pull(remote, chunk_id)
                report.chunks_pulled += 1
            report.bytes_copied += size
            self._paced_bytes += size
        except (ChunkNotFound, CorruptChunk, RemoteStoreError, rpc.RpcError, trio.TooSlowError) as e:
            report.chunks_skipped += 1
            report.note(f"{chunk_id.hex()} with {remote.peer}: {type(e).__name__}: {e}")
        finally:
            self._copy_slots.release()

    async def _push(self, remote: RemoteStore, chunk_id: bytes) -> int:
        data = await self.local.get(chunk_id)
        stamp = await self.local.stamp_of(chunk_id)
        if stamp is None:
            raise ChunkNotFound(chunk_id)
        await remote.put(chunk_id, data, after_index=stamp)
        return len(data)

    async def _pull(self, remote: RemoteStore, chunk_id: bytes) -> int:
        data = await remote.get(chunk_id)  # verified against the id by the stub
        stamp = await remote.stamp_of(chunk_id)
        if stamp is None:
            raise RemoteStoreError("notFound", "copy deleted while being pulled", remote.peer)
        await self.local.put(chunk_id, data, max(stamp, self._applied_index()))
        return len(data)

    async def restore(self, chunk_id: bytes) -> bool:
        """Fetch a good copy of one chunk from the other replicas (the scrub
        ``on_corrupt`` hook). True if a copy was stored locally."""
        key = ring_key(chunk_id)
        for name in self.ring.replicas(key, self.R + 1):
            if name == self.self_name:
                continue
            try:
                await self._pull(await self.stub(name), chunk_id)
                return True
            except (*_PEER_DOWN, RemoteStoreError, rpc.RpcError, StoreError) as e:
                log.info("restore of %s from %s failed: %s", chunk_id.hex(), name, e)
        return False
