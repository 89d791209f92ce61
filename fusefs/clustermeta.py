"""Metadata over RPC for the cluster backend: Raft proposals and
linearizable queries sent to the node believed to lead, following
``notLeader`` hints, retried with backoff until a per-call deadline.

Leader tracking: ``leader`` is the address of the node that last answered
as leader (or the one a notLeader answer named).  Answers carry the
leader's address (``leaderAddr``, from the committed configuration: node
ids are random, not derived from addresses); an answer without one only
costs trying the next node in turn.

Retry policy: a node that cannot be reached (or serves no Raft) is avoided
for ``backoff_max_s`` and the next node is tried at once; a node that
answers with an error (``Overloaded``: busy, or no quorum confirmed a read)
gets a pause, then is retried if it is the believed leader (for proposals
it is: followers answer notLeader) or else passed over; ``notLeader``
without a usable hint pauses too (an election is running). Pauses double
from ``backoff_initial_s`` up to ``backoff_max_s``; the whole call, pauses
included, ends at ``deadline_s`` with ``Unavailable``.

Exactly once. Every command the mount proposes (but its lease batches,
which carry their own sequence) goes inside a client session
(server/meta/sessions.py): ``Sessioned(session, seq, acked, [command])``.
A retry after any failure, certain or not, sends the same seq, and the
state machine answers a command it applied before with the reply it
recorded then, so a create retried after a lost reply answers success
(not EEXIST), an unlink retried answers success (not ENOENT), and a rename
exchange can be retried like the rest.  ``acked`` is the lowest seq still
waiting here: a late duplicate of a command already answered applies
nothing.  A session the cluster no longer knows (idle for an hour of log
time) is replaced by a new one and the command sent again: it cannot have
applied under the old one.  A call that gives up (Unavailable, EIO) leaves
its command applied or not, and a late entry of it applies nothing once a
later command moved ``acked`` past it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Sequence

import trio

import rpc
from rpc import trace
from rpc.logfmt import kv
from rpc.schema import load as load_schema
from server.meta import codec
from server.meta.sessions import ANSWERED, NO_SESSION
from server.meta.types import (AlreadyApplied, Command, EntryReply, LeaseBatch, OpenSession,
                               Result, Sessioned)

from .backend import BackendError, Refused, Unavailable

log = logging.getLogger("chordfs.fuse.cluster")

raft_capnp = load_schema("raft")
meta_capnp = load_schema("meta")

class _Backoff:
    """Pauses between rounds of attempts: doubling, capped, never past the
    call's deadline."""

    def __init__(self, deadline: float, initial_s: float, max_s: float) -> None:
        self.deadline, self.delay_s, self.max_s = deadline, initial_s, max_s

    async def wait(self) -> None:
        await trio.sleep(min(self.delay_s, max(0.0, self.deadline - trio.current_time())))
        self.delay_s = min(self.delay_s * 2, self.max_s)


class MetaClient:
    """Proposals and queries against the Raft group of ``nodes``.

    ``deadline_s`` bounds one whole call (every retry included);
    ``attempt_timeout_s`` one RPC; after every node failed once in a round
    the next round waits ``backoff`` (doubling up to ``backoff_max_s``)."""

    def __init__(self, pool, nodes: Sequence[str], *, deadline_s: float,
                 attempt_timeout_s: float, backoff_initial_s: float,
                 backoff_max_s: float) -> None:
        assert nodes and deadline_s > 0 and attempt_timeout_s > 0
        self.pool = pool
        self.nodes = tuple(nodes)
        self.deadline_s = deadline_s
        self.attempt_timeout_s = attempt_timeout_s
        self.backoff = (backoff_initial_s, backoff_max_s)
        self.leader: str | None = None
        self._turn = 0
        self._failed_at: dict[str, float] = {}  # addr -> trio time of its last failure
        self._rids = itertools.count(1)
        self.retries = 0
        # The client session (module docstring): opened before the first
        # command, replaced if the cluster forgot it.
        self.session = random.getrandbits(62) + 1
        self._session_open = False
        self._session_lock = trio.Lock()
        self._seqs = itertools.count(1)
        self._waiting: set[int] = set()  # seqs sent and not answered yet
        self.sessions_opened = 0
        # This mount's lease session (fusefs/leases.py), sent with every
        # query so the leader does not recall our own leases to answer us.
        self.holder = 0

    # ------------------------------------------------------------ targets

    def _target(self) -> str:
        if self.leader is not None:
            return self.leader
        for _ in range(len(self.nodes)):
            addr = self.nodes[self._turn % len(self.nodes)]
            self._turn += 1
            if not self._failed_recently(addr):
                return addr
        return addr  # every node failed lately: keep turning anyway

    def _failed_recently(self, addr: str) -> bool:
        failed_at = self._failed_at.get(addr)
        return failed_at is not None and trio.current_time() - failed_at < self.backoff[1]

    def _follow(self, addr: str, hinted: str) -> bool:
        """Take a notLeader answer; True when it named a new node to try.
        Followers keep naming a dead leader until their election timeout:
        a hint to a node that just failed us is not followed."""
        if hinted == addr or (hinted and self._failed_recently(hinted)):
            hinted = ""
        self.leader = hinted or None
        return bool(hinted)

    # ------------------------------------------------------------ the loop

    async def _call(self, op: str, rid: int, attempt, *, busy_means_leader: bool = False,
                    attempt_timeout_s: float | None = None, deadline_s: float | None = None):
        """Run ``attempt(addr, timeout_s, sent)`` against the leader until it
        answers without ``notLeader``; returns (reply, uncertain). ``sent``
        is a one-item list the attempt sets once its call left: a failure
        after that makes the outcome uncertain. ``busy_means_leader``: only
        a leader answers this call with an error other than notLeader (true
        of proposals), so such a node is the one to retry."""
        deadline = trio.current_time() + (deadline_s or self.deadline_s)
        attempt_s = attempt_timeout_s or self.attempt_timeout_s
        pause = _Backoff(deadline, *self.backoff)
        uncertain, unreachable, redirects, last = False, 0, 0, "none"
        while True:
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise Unavailable(f"{op}: the cluster did not answer within "
                                  f"{deadline_s or self.deadline_s:g}s "
                                  f"(last: {last})")
            addr = self._target()
            sent = [False]
            try:
                with trio.fail_after(min(attempt_s, remaining)):
                    reply = await attempt(addr, min(attempt_s, remaining), sent)
            except (rpc.RpcError, trio.TooSlowError) as exc:
                if isinstance(exc, rpc.RemoteError) and exc.remote_type == "PermissionDenied":
                    raise Refused(str(exc)) from None  # the same on every node: no retry
                doubt = sent[0] and not isinstance(exc, rpc.Unimplemented)
                uncertain = uncertain or doubt
                last = f"{addr} {type(exc).__name__}: {exc}"
                self.retries += 1
                log.info(kv("cluster.retry", rid=rid, op=op, node=addr,
                            kind=type(exc).__name__, uncertain=uncertain))
                if self._unreachable(addr, exc):
                    unreachable += 1
                    if unreachable % len(self.nodes):
                        continue  # try the next node at once
                elif busy_means_leader:
                    self.leader = addr
                await pause.wait()
                continue
            if reply.notLeader:
                last = f"{addr} is not the leader"
                redirects += 1
                if not self._follow(addr, reply.leaderAddr) or redirects % len(self.nodes) == 0:
                    await pause.wait()  # no (new) leader known: an election runs
                continue
            self.leader = addr
            self._failed_at.pop(addr, None)
            return reply, uncertain

    def _unreachable(self, addr: str, exc: Exception) -> bool:
        """Book a failed attempt. A node that answered with an error (busy,
        no quorum for a read) is kept as the target, to be retried after a
        pause; one that could not be reached, or serves no such interface,
        is avoided for a while (True)."""
        if isinstance(exc, rpc.RemoteError) and not isinstance(
                exc, (rpc.Unimplemented, rpc.Disconnected)):
            return False
        self._failed_at[addr] = trio.current_time()
        if self.leader == addr:
            self.leader = None
        return True

    # ------------------------------------------------------------ submit

    async def submit(self, command: Command) -> Result:
        """Commit ``command`` once (module docstring) and return its result."""
        if isinstance(command, (LeaseBatch, OpenSession)):
            return await self._propose(command)  # a batch has its own sequence
        try:
            data = codec.encode_command(command)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        for _ in range(2):
            session = await self._open_session()
            seq = next(self._seqs)
            self._waiting.add(seq)
            try:
                wrapped = Sessioned(session, seq, min(self._waiting), [data])
                result = await self._propose(wrapped, type(command).__name__)
            finally:
                self._waiting.discard(seq)
            if result.err == NO_SESSION:
                log.info(kv("cluster.session_lost", session=f"{session:x}"))
                if self.session == session:
                    self._session_open = False
                    self.session = random.getrandbits(62) + 1
                continue  # not applied under the old session: send it again
            if result.err == ANSWERED:
                # Our own seq below our acked: cannot happen unless the
                # cluster's session state went back; say so, never guess.
                raise Unavailable(f"{type(command).__name__}: session {session:x} seq {seq} "
                                  "was answered before")
            return result
        raise Unavailable(f"{type(command).__name__}: the cluster keeps forgetting our session")

    async def _open_session(self) -> int:
        async with self._session_lock:
            if not self._session_open:
                result = await self._propose(OpenSession(self.session))
                if result.err:
                    raise BackendError(f"opening a client session answered errno {result.err}")
                self._session_open = True
                self.sessions_opened += 1
                log.info(kv("cluster.session_open", session=f"{self.session:x}"))
            return self.session

    async def _propose(self, command, name: str | None = None) -> Result:
        rid = next(self._rids)
        try:
            data = codec.encode_command(command)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

        async def attempt(addr, timeout_s, sent):
            cap = await self.pool.bootstrap(addr, raft_capnp.Raft, timeout_s=timeout_s)
            sent[0] = True
            if trace.ENABLED:
                trace.mark(f"client.propose {name or type(command).__name__}")
            try:
                return await cap.propose(command=data, forwarded=True, timeout_s=timeout_s)
            finally:
                if trace.ENABLED:
                    trace.mark("client.propose.done")

        reply, uncertain = await self._call("submit", rid, attempt, busy_means_leader=True)
        try:
            result = codec.decode_result(reply.result)
        except ValueError as exc:
            raise BackendError(f"undecodable result: {exc}") from exc
        if isinstance(result, AlreadyApplied):
            raise BackendError(f"proposal answered AlreadyApplied at index {result.index}")
        log.debug(kv("cluster.submit", rid=rid, cmd=name or type(command).__name__,
                     index=reply.index, err=result.err, uncertain=uncertain))
        return result

    # ------------------------------------------------------------ queries

    async def query(self, op: str, reply_cls: type, fill: Callable[[object], None], *,
                    deadline_s: float | None = None):
        """A linearizable query; ``fill`` sets the Query union member."""
        rid = next(self._rids)

        def params(p):
            q = p.init("query")
            q.linearizable = True
            q.holder = self.holder
            fill(q)
            p.forwarded = False

        async def attempt(addr, timeout_s, sent):
            cap = await self.pool.bootstrap(addr, meta_capnp.Metadata, timeout_s=timeout_s)
            if trace.ENABLED:
                trace.mark(f"client.query {op}")
            try:
                return await cap.call("query", fill=params, timeout_s=timeout_s)
            finally:
                if trace.ENABLED:
                    trace.mark("client.query.done")

        reply, _ = await self._call(op, rid, attempt, deadline_s=deadline_s)
        try:
            return codec.decode(reply_cls, reply.reply)
        except Exception as exc:  # noqa: BLE001 - capnp raises its own kinds
            raise BackendError(f"{op}: undecodable reply: {exc}") from exc

    async def lease_events(self, holder: int, wait_s: float) -> list[int]:
        """The leader's recall requests for ``holder`` (a long poll)."""
        rid = next(self._rids)

        async def attempt(addr, timeout_s, sent):
            cap = await self.pool.bootstrap(addr, meta_capnp.Metadata, timeout_s=timeout_s)
            return await cap.call("leaseEvents", {"holder": holder, "waitMs": int(wait_s * 1000)},
                                  timeout_s=timeout_s)

        # The poll itself waits up to wait_s: its attempts may take that long.
        reply, _ = await self._call("leaseEvents", rid, attempt,
                                    attempt_timeout_s=wait_s + self.attempt_timeout_s,
                                    deadline_s=wait_s + self.deadline_s)
        return list(reply.recall)

    async def lookup(self, parent: int, name: bytes) -> EntryReply:
        def fill(q):
            g = q.init("lookup")
            g.parent, g.name = parent, name
        return await self.query("lookup", EntryReply, fill)

