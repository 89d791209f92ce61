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

Uncertain outcomes. A proposal is *certainly not applied* when the answer is
``notLeader`` from the node asked (we propose with ``forwarded=true`` to the
node we chose, so ``notLeader`` is that node's own refusal, never a failed
forward whose leader may have taken the entry), when the connection could
not be made, or when the node does not serve Raft. Everything after the
call was sent is *uncertain*: a lost connection, a deadline, and also
``rpc.Overloaded``, because the Raft server maps both "dropped before
proposing" and "appended but not applied in time" to it. Retrying is what
we do in every case; the answer to a retry after an uncertain attempt is
then interpreted (``_resolve``):

- create/mkdir/mknod/symlink answering EEXIST: a linearizable lookup; an
  entry whose ctime equals the command's ``now_ns`` (stamped once by this
  client, nanoseconds) and whose uid/gid match is ours → success;
- link answering EEXIST: the name points at the inode we linked → success;
- unlink/rmdir answering ENOENT, rename answering ENOENT with the target
  name present, removexattr answering ENODATA, release-orphan answering
  ENOENT: our first attempt did it → success (without the removed inode's
  number, so an orphan it left is not released by this mount);
- rename with RENAME_EXCHANGE is never retried after an uncertain attempt
  (a second exchange would swap back): Unavailable, i.e. EIO;
- setattr, setxattr, commit-write, forget-chunks are idempotent: the
  retry's answer stands.
What this cannot prevent (needs client sessions with sequence numbers in
the state machine): an uncertain entry that commits *after* our retry
succeeded applies a second time; harmless for the idempotent commands, but
a late unlink could remove a file re-created under the same name meanwhile.
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Callable, Sequence

import trio

import rpc
from rpc import trace
from rpc.logfmt import kv
from rpc.schema import load as load_schema
from server.meta import codec
from server.meta.types import (RENAME_EXCHANGE, AlreadyApplied, Command, Create,
                               EntryReply, Link, Mkdir, Mknod, ReleaseOrphan,
                               RemoveReply, RemoveXattr, Rename, Result, Rmdir,
                               Status, Symlink, Unlink)

from .backend import BackendError, Refused, Unavailable

log = logging.getLogger("chordfs.fuse.cluster")

raft_capnp = load_schema("raft")
meta_capnp = load_schema("meta")

_CREATES = (Create, Mkdir, Mknod, Symlink)


class _Uncertain(Exception):
    """An attempt whose command may have been applied, for callers that
    must not retry then."""


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
        self.resolved = 0
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

    async def _call(self, op: str, rid: int, attempt, *, retry_uncertain: bool = True,
                    busy_means_leader: bool = False, attempt_timeout_s: float | None = None,
                    deadline_s: float | None = None):
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
                if doubt and not retry_uncertain:
                    raise _Uncertain(last) from None
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
        rid = next(self._rids)
        try:
            data = codec.encode_command(command)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc

        async def attempt(addr, timeout_s, sent):
            cap = await self.pool.bootstrap(addr, raft_capnp.Raft, timeout_s=timeout_s)
            sent[0] = True
            if trace.ENABLED:
                trace.mark(f"client.propose {type(command).__name__}")
            try:
                return await cap.propose(command=data, forwarded=True, timeout_s=timeout_s)
            finally:
                if trace.ENABLED:
                    trace.mark("client.propose.done")

        exchange = isinstance(command, Rename) and command.flags & RENAME_EXCHANGE
        try:
            reply, uncertain = await self._call("submit", rid, attempt, busy_means_leader=True,
                                                retry_uncertain=not exchange)
        except _Uncertain as exc:
            raise Unavailable(f"rename exchange: outcome unknown ({exc})") from None
        try:
            result = codec.decode_result(reply.result)
        except ValueError as exc:
            raise BackendError(f"undecodable result: {exc}") from exc
        if isinstance(result, AlreadyApplied):
            raise BackendError(f"proposal answered AlreadyApplied at index {result.index}")
        log.debug(kv("cluster.submit", rid=rid, cmd=type(command).__name__,
                     index=reply.index, err=result.err, uncertain=uncertain))
        if uncertain and result.err:
            return await self._resolve(rid, command, result)
        return result

    async def _resolve(self, rid: int, cmd: Command, result: Result) -> Result:
        """A retry after an uncertain attempt failed: was the failure caused
        by our own first attempt? (module docstring)"""
        err, fixed = result.err, None
        if isinstance(cmd, _CREATES) and err == errno.EEXIST:
            entry = await self.lookup(cmd.parent, cmd.name)
            attr = entry.attr
            if (not entry.err and attr.ctime_ns == cmd.now_ns
                    and (attr.uid, attr.gid) == (cmd.uid, cmd.gid)):
                fixed = EntryReply(0, attr)
        elif isinstance(cmd, Link) and err == errno.EEXIST:
            entry = await self.lookup(cmd.new_parent, cmd.new_name)
            if not entry.err and entry.attr.ino == cmd.ino:
                fixed = EntryReply(0, entry.attr)
        elif isinstance(cmd, (Unlink, Rmdir)) and err == errno.ENOENT:
            fixed = RemoveReply(0)
        elif isinstance(cmd, Rename) and err == errno.ENOENT:
            if not (await self.lookup(cmd.new_parent, cmd.new_name)).err:
                fixed = RemoveReply(0)
        elif isinstance(cmd, RemoveXattr) and err == errno.ENODATA:
            fixed = Status(0)
        elif isinstance(cmd, ReleaseOrphan) and err == errno.ENOENT:
            fixed = Status(0)
        log.info(kv("cluster.uncertain_resolved", rid=rid, cmd=type(cmd).__name__,
                    err=err, ours=fixed is not None))
        if fixed is None:
            return result
        self.resolved += 1
        return fixed

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

