"""The trio service that drives one Raft core.

Order of work, once per cycle of the driver task:
  1. step: queued peer messages and elapsed ticks go into the core;
  2. persist: the Ready's entries, hard state and snapshot are written and
     fsynced in one go (group commit: every proposal made since the last
     cycle shares this fsync);
  3. send: the Ready's messages go to the transport (never blocks);
  4. apply: committed entries go to the state machine, waiting proposers get
     their results, ReadIndex waiters whose index is applied are released;
  5. advance: the core is told the Ready was handled.
Nothing is sent before it is durable, so a vote or an append ack never
outruns the disk.

Inputs come from three places, none of which touches the core directly
except ``propose``/``read_index`` (which run in the same trio thread and only
record the request): the RPC handler's ``deliver`` (a bounded queue; beyond
it messages are dropped, which Raft tolerates), the ticker task, and local
callers.  Every wait of a caller has a deadline."""

import collections
import logging
import time

import trio

from rpc import trace
from rpc.logfmt import kv

from .messages import EntryKind, InstallSnapshot, RaftError, SnapshotFile

log = logging.getLogger("chordfs.raft")

# Disk work of a Ready runs on the driver's own thread while it is cheap:
# handing it to a worker thread and back costs two thread wake-ups (about
# 0.2 ms each on a small VM, more than an fsync on a fast disk) on every
# commit, on every replica. Above this budget it goes to a worker thread, so
# a slow disk or a large batch never stops the event loop (RPCs,
# heartbeats) for long. The costs are moving averages of what was measured.
INLINE_BUDGET_S = 0.002
INLINE_ENTRIES_MAX = 64
INLINE_BYTES_MAX = 256 << 10


class _Cost:
    """Moving average of a duration, seconds (per unit of work)."""
    __slots__ = ("avg",)

    def __init__(self) -> None:
        self.avg = 0.0

    def note(self, seconds: float) -> None:
        self.avg += (seconds - self.avg) / 8


class ProposalFailed(RaftError):
    """The proposal's index was taken by another leader's entry, or the
    deadline passed before it was applied: it may or may not apply later."""


class _Waiter:
    __slots__ = ("term", "event", "result", "error")

    def __init__(self, term: int):
        self.term = term
        self.event = trio.Event()
        self.result = None
        self.error = None


class AnswerWaiter:
    """An exchange call waiting for what the driver has for its sender once
    it has handled the call's batch (fed it, persisted and sent the Ready
    that followed)."""
    __slots__ = ("gen", "messages", "event")

    def __init__(self, gen: int):
        self.gen = gen
        self.messages: list = []
        self.event = trio.Event()

    async def answers(self, timeout_s: float) -> list:
        with trio.move_on_after(timeout_s):
            await self.event.wait()
        self.event.set()  # whatever comes later goes by the transport
        return self.messages


class RaftService:
    def __init__(self, core, storage, state_machine, transport, *, tick_s: float,
                 inbox_messages_max: int = 4096, snapshot_entries: int = 10_000):
        self.core = core
        self.storage = storage
        self.sm = state_machine
        self.transport = transport
        self.tick_s = tick_s
        self._inbox: collections.deque = collections.deque()
        self._reports: collections.deque = collections.deque(maxlen=inbox_messages_max)
        self._inbox_max = inbox_messages_max
        self._fed = 0  # batches of inbox messages fed to the core so far
        self._waiters_by_peer: dict[int, AnswerWaiter] = {}
        self._ticks = 0
        self._next_tick_due = float("inf")  # set by the ticker
        self._wake = trio.Event()
        self._waiters: dict[int, _Waiter] = {}
        self._reads: list[tuple[int, trio.Event]] = []  # (read index, event)
        self._read_ctx = 0
        self._pending_reads: dict[bytes, trio.Event] = {}
        self._snapshot_entries = snapshot_entries
        self._nursery: trio.Nursery | None = None
        self._compacting = False  # an image is being taken or saved
        self.on_persist = None  # on_persist(seconds) after each log write (metrics)
        self.on_proposal = None  # on_proposal(seconds) from propose to applied, here (metrics)
        self._image: tuple[int, bytes] | None = None  # taken, not handed to the core yet
        self.applied = state_machine.applied_index()
        self._persist_cost = _Cost()  # per Ready
        self._apply_cost = _Cost()  # per entry
        self.dropped_messages = 0
        self.refused_steps = 0
        # The cluster this replica belongs to ("" for test groups and for a
        # joining node until the leader admits it); the transport stamps it
        # on what it sends, the server refuses steps that carry another.
        self.cluster_id = ""

    # ---------------------------------------------------------------- inputs

    def deliver(self, messages) -> int:
        """Queue peer messages for the core; returns how many were taken."""
        room = self._inbox_max - len(self._inbox)
        taken = messages[:room] if room < len(messages) else messages
        if trace.ENABLED:
            for m in taken:
                trace.mark(f"raft.recv {type(m).__name__} {len(getattr(m, 'entries', ()))}")
        self._inbox.extend(taken)
        self.dropped_messages += len(messages) - len(taken)
        self._wake.set()
        return len(taken)

    def deliver_and_answer(self, messages) -> tuple[int, AnswerWaiter | None]:
        """deliver(), and a waiter for the driver's answers to the sender
        (one exchange per peer at a time; None when nothing was taken)."""
        taken = self.deliver(messages)
        if not taken:
            return 0, None
        peer = messages[0].frm
        old = self._waiters_by_peer.get(peer)
        if old is not None:
            old.event.set()
        waiter = self._waiters_by_peer[peer] = AnswerWaiter(self._fed + 1)
        return taken, waiter

    def _send(self, messages) -> None:
        """To the transport, except what an exchange call waits for."""
        if not self._waiters_by_peer:
            self.transport.send(messages)
            return
        rest = []
        for m in messages:
            waiter = self._waiters_by_peer.get(m.to)
            if waiter is not None and not waiter.event.is_set():
                waiter.messages.append(m)
            else:
                rest.append(m)
        if rest:
            self.transport.send(rest)

    def _answer_waiters(self, fed: int) -> None:
        """Release the exchanges whose batches the Readies so far handled."""
        for peer, waiter in list(self._waiters_by_peer.items()):
            if waiter.event.is_set() or waiter.gen <= fed:
                waiter.event.set()
                del self._waiters_by_peer[peer]

    def poke(self) -> None:
        """Wake the driver after calling the core directly (e.g. transfer)."""
        self._wake.set()

    def report(self, kind: str, node_id: int, ok: bool) -> None:
        """Transport outcome for the core (see RaftTransport's on_report)."""
        self._reports.append((kind, node_id, ok))
        self._wake.set()

    async def propose(self, data: bytes, *, timeout_s: float):
        """Commit ``data`` and return (index, term, state machine result).
        Raises the core's NotLeader(hint) or ProposalDropped, or
        ProposalFailed."""
        proposed = self.core.propose(data)  # raises NotLeader / ProposalDropped
        waiter = self._waiters[proposed.index] = _Waiter(proposed.term)
        self._wake.set()
        started_s = trio.current_time()
        with trio.move_on_after(timeout_s):
            await waiter.event.wait()
        if waiter.event.is_set() and self.on_proposal is not None:
            self.on_proposal(trio.current_time() - started_s)
        if not waiter.event.is_set():
            self._waiters.pop(proposed.index, None)
            raise ProposalFailed(f"proposal at index {proposed.index} not applied within {timeout_s}s")
        if waiter.error is not None:
            raise waiter.error
        return proposed.index, proposed.term, waiter.result

    async def read_index(self, *, timeout_s: float) -> int:
        """Linearizable read barrier: returns once this node has applied
        everything committed when the call began (ReadIndex; with a valid
        leader lease, the commit index at once, with no round and no trip
        through the driver)."""
        self._check_stall()
        index = self.core.lease_read_index()
        if index is not None:
            if self.applied >= index:
                return self.applied
            event = trio.Event()
            self._reads.append((index, event))
        else:
            self._read_ctx += 1
            ctx = self._read_ctx.to_bytes(8, "big")
            event = self._pending_reads[ctx] = trio.Event()
            try:
                self.core.read_index(ctx)  # raises NotLeader when no leader is known
            except BaseException:
                del self._pending_reads[ctx]
                raise
            self._wake.set()
        try:
            with trio.fail_after(timeout_s):
                await event.wait()
        finally:
            if not event.is_set():
                # Lost leadership drops a read silently; do not keep it.
                self._pending_reads = {c: e for c, e in self._pending_reads.items() if e is not event}
                self._reads = [(i, e) for i, e in self._reads if e is not event]
        return self.applied

    def _check_stall(self) -> None:
        """A lease counts ticks; if this process stalled, ticks lag real
        time and the lease would outlive what the followers granted. Expire
        it once the lag reaches the margin the lease keeps, less the one
        tick a follower's first timeout tick may come early."""
        # The core's clock stands at the last tick fed to it. Ticks counted
        # but not yet fed (the driver is busy persisting) lag as much as
        # ticks not counted at all.
        last_counted = self._next_tick_due - self.tick_s
        lag_s = trio.current_time() - last_counted + self._ticks * self.tick_s
        if lag_s >= (self.core.cfg.lease_margin_ticks - 1) * self.tick_s:
            self.core.expire_lease()

    @property
    def leader_id(self):
        return self.core.leader

    # ---------------------------------------------------------------- driver

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._ticker)
            task_status.started(self)
            await self._drive()

    async def _ticker(self) -> None:
        # _next_tick_due is when the first tick not yet counted falls due:
        # how far now is past it is how far the core's clock lags.
        self._next_tick_due = trio.current_time() + self.tick_s
        while True:
            await trio.sleep_until(self._next_tick_due)
            self._ticks += 1
            self._wake.set()
            self._next_tick_due += self.tick_s
            if trio.current_time() - self._next_tick_due > 10 * self.tick_s:
                # Do not burst ticks after a stall (a burst of elections helps
                # nobody); the ticks skipped are time the lease cannot count.
                self.core.expire_lease()
                self._next_tick_due = trio.current_time() + self.tick_s

    async def _drive(self) -> None:
        core = self.core
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._feed()
            while core.has_ready():
                fed = self._fed  # what this Ready answers
                rd = core.ready()
                early = core.may_send_before_persist(rd)
                if early:  # followers write while we write: one fsync less per commit
                    self._send(rd.messages)
                # Early messages leave only once the driver yields: their
                # Ready's write goes to a worker thread, overlapping it.
                await self._persist(rd, inline=not (early and rd.messages))
                if not early:
                    self._send(rd.messages)
                if self._waiters_by_peer:
                    self._answer_waiters(fed)
                await self._apply(rd)
                core.advance(rd)
                self._feed()
                await trio.lowlevel.checkpoint()  # inline disk work never starves the others
            if self._waiters_by_peer:
                self._answer_waiters(self._fed)
            self._maybe_compact()

    def _feed(self) -> None:
        core = self.core
        if self._inbox:
            self._fed += 1
        received = []  # snapshots that came as files
        while self._inbox:
            m = self._inbox.popleft()
            if type(m) is InstallSnapshot and isinstance(m.snapshot.data, SnapshotFile):
                received.append(m.snapshot)
            try:
                core.step(m)
            except RaftError as e:
                log.info(kv("raft.step_rejected", node=core.id, term=core.term, frm=m.frm,
                            kind=type(m).__name__, error=str(e)))
        for snap in received:
            # One the core did not take (stale, or overtaken by a newer one
            # before its Ready) would stay on disk until the next start.
            if snap is not core.log.pending_snapshot and snap is not core.log.snapshot:
                self.storage.discard(snap)
        while self._reports:
            kind, node_id, ok = self._reports.popleft()
            if kind == "snapshot":
                core.report_snapshot(node_id, ok)
            else:
                core.report_unreachable(node_id)
        while self._ticks:
            self._ticks -= 1
            core.tick()

    def _small(self, entries) -> bool:
        return (len(entries) <= INLINE_ENTRIES_MAX
                and sum(len(e.data) for e in entries) <= INLINE_BYTES_MAX)

    async def _run_disk(self, cost: _Cost, units: int, inline: bool, fn, *args):
        """``fn(*args)`` here when ``inline`` and its expected cost fits the
        budget, else in a worker thread; its time feeds ``cost``."""
        started = time.perf_counter()
        if inline and cost.avg * units <= INLINE_BUDGET_S:
            result = fn(*args)
        else:
            result = await trio.to_thread.run_sync(fn, *args)
        cost.note((time.perf_counter() - started) / max(1, units))
        return result

    async def _persist(self, rd, inline: bool = True) -> None:
        if rd.entries or rd.hard_state is not None or rd.snapshot is not None:
            if trace.ENABLED:
                trace.mark(f"raft.persist {len(rd.entries)}")
            started = time.perf_counter()
            await self._run_disk(self._persist_cost, 1,
                                 inline and rd.snapshot is None and self._small(rd.entries),
                                 self.storage.save, rd.hard_state, rd.entries, rd.snapshot)
            if self.on_persist is not None:
                self.on_persist(time.perf_counter() - started)
            if trace.ENABLED:
                trace.mark("raft.persist.done")

    async def _apply(self, rd) -> None:
        if rd.snapshot is not None:
            await trio.to_thread.run_sync(self.sm.restore, rd.snapshot.meta.index, rd.snapshot.data)
            self.applied = rd.snapshot.meta.index
            self._fail_waiters_upto(self.applied)
        if rd.committed:
            if trace.ENABLED:
                trace.mark(f"raft.apply {len(rd.committed)}")
            results = await self._run_disk(self._apply_cost, len(rd.committed),
                                           self._small(rd.committed),
                                           self._apply_entries, rd.committed)
            if trace.ENABLED:
                trace.mark("raft.apply.done")
            for entry, result in zip(rd.committed, results):
                waiter = self._waiters.pop(entry.index, None)
                if waiter is None:
                    continue
                if entry.term == waiter.term:
                    waiter.result = result
                else:
                    waiter.error = ProposalFailed(f"index {entry.index} was taken by term {entry.term}")
                waiter.event.set()
            self.applied = rd.committed[-1].index
        for rs in rd.read_states:
            event = self._pending_reads.pop(rs.context, None)
            if event is not None:
                self._reads.append((rs.index, event))
        self._release_reads()

    def _apply_entries(self, entries) -> list:
        # Runs in a worker thread: the state machine may block on its disk.
        # One batch per Ready lets a database apply them in one transaction.
        commands = [(e.index, e.data) for e in entries if e.kind == EntryKind.COMMAND]
        batch = getattr(self.sm, "apply_batch", None)
        if batch is not None:
            results = dict(zip((i for i, _ in commands), batch(commands))) if commands else {}
        else:
            results = {i: self.sm.apply(i, d) for i, d in commands}
        return [results.get(e.index) for e in entries]

    def _release_reads(self) -> None:
        keep = []
        for index, event in self._reads:
            if index <= self.applied:
                event.set()
            else:
                keep.append((index, event))
        self._reads = keep

    def _fail_waiters_upto(self, index: int) -> None:
        for i in [i for i in self._waiters if i <= index]:
            waiter = self._waiters.pop(i)
            waiter.error = ProposalFailed(f"index {i} was replaced by a snapshot")
            waiter.event.set()

    # ------------------------------------------------------------ compaction
    # Taking the state machine's image (a VACUUM INTO of the whole database)
    # and writing the snapshot file take seconds at millions of inodes:
    # both run in worker threads while the driver goes on stepping,
    # persisting and applying. The driver only hands the finished image to
    # the core, between two Readies, and that is an in-memory operation.

    def _maybe_compact(self) -> None:
        if self._image is not None:
            self._install_image()
        if self._compacting:
            return
        retained = self.applied - self.core.log.first_index()
        if retained < self._snapshot_entries:
            return
        if retained < 4 * self._snapshot_entries and self.core.followers_behind(self.applied):
            # Under load a follower is always a few entries behind; wait for
            # a moment it has caught up rather than send it the whole
            # database. A follower that never catches up stops this at 4x.
            return
        self._compacting = True
        self._nursery.start_soon(self._take_image)

    async def _take_image(self) -> None:
        try:
            self._image = await trio.to_thread.run_sync(self.sm.snapshot_image)
        except Exception as e:  # noqa: BLE001 - the next cycle tries again
            log.warning(kv("raft.snapshot_failed", node=self.core.id, term=self.core.term,
                           error=f"{type(e).__name__}: {e}"))
            self._compacting = False
            return
        self._wake.set()

    def _install_image(self) -> None:
        (index, data), self._image = self._image, None
        try:
            snap = self.core.compact(index, data)
        except RaftError as e:
            # e.g. a leader's snapshot arrived while ours was being taken:
            # skip this round, a later cycle tries again.
            log.info(kv("raft.compact_skipped", node=self.core.id, term=self.core.term,
                        index=index, reason=str(e)))
            self.storage.discard(data)
            self._compacting = False
            return
        self._nursery.start_soon(self._save_image, snap)

    async def _save_image(self, snap) -> None:
        started = trio.current_time()
        try:
            saved = await trio.to_thread.run_sync(self.storage.save_own_snapshot, snap)
        except OSError as e:
            # The log still holds everything the snapshot covers; without
            # a disk to write to, the next persist fails loudly anyway.
            log.error(kv("raft.snapshot_save_failed", node=self.core.id, term=self.core.term,
                         index=snap.meta.index, error=str(e)))
            return
        finally:
            self._compacting = False
        log.info(kv("raft.compacted", node=self.core.id, term=self.core.term,
                    index=snap.meta.index, snapshot_bytes=len(snap.data), saved=saved,
                    took_s=round(trio.current_time() - started, 3)))
