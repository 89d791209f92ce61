"""Metadata on a node: the Raft group that applies the metadata state
machine, and the Metadata RPC interface that serves reads.

Writes are Raft proposals (Raft.propose with an encoded Command), so the
result a client sees is the one every replica computed.  Reads run on a
second, read-only connection to the same SQLite database: WAL lets it see
only committed transactions, never half of an apply batch.  A linearizable
read first waits for ReadIndex, i.e. until this node has applied everything
that was committed when the read arrived."""

import logging
import os

import trio

import rpc
from rpc import schema
from rpc.logfmt import kv

from ..raft.group import RaftGroup, open_group
from ..raft.config import RaftConfig
from ..raft.messages import NotLeader
from ..ring.ringmath import node_id as ring_node_id
from . import codec
from .raftsm import MetaStateMachine
from .store import InitParams, MetaStore

log = logging.getLogger("chordfs.meta")
meta_capnp = schema.load("meta")
READ_INDEX_TIMEOUT_S = 5.0


class MetadataServer(rpc.Server, interfaces=[meta_capnp.Metadata]):
    """Mixin: the serving object provides ``metadata`` (a MetadataGroup) and
    ``raft_pool`` (the node's connection pool, for forwarding)."""

    async def query(self, params, results):
        q = params.query
        md = self.metadata
        if md is None:
            raise rpc.Unimplemented("this node holds no metadata replica; ask another node")
        if q.linearizable:
            try:
                await md.group.service.read_index(timeout_s=READ_INDEX_TIMEOUT_S)
            except NotLeader as e:
                hint = e.leader_hint or 0
                addr = md.group.addr_of(hint) if hint else None
                if params.forwarded or addr is None:
                    results.notLeader, results.leaderHint = True, hint
                    return
                await self._forward_query(addr, hint, q, results)
                return
            except trio.TooSlowError:
                raise rpc.Overloaded("no quorum confirmed the read in time") from None
        results.reply = codec.encode(_run(md.reader, q))

    async def _forward_query(self, addr: str, leader: int, q, results) -> None:
        def fill(p):
            p.query = q
            p.forwarded = True
        try:
            cap = await self.raft_pool.bootstrap(addr, meta_capnp.Metadata,
                                                 timeout_s=READ_INDEX_TIMEOUT_S)
            reply = await cap.call("query", fill=fill, timeout_s=READ_INDEX_TIMEOUT_S)
        except rpc.ConnectionLost:
            results.notLeader, results.leaderHint = True, leader
            return
        results.reply, results.notLeader, results.leaderHint = (
            reply.reply, reply.notLeader, reply.leaderHint)


def _run(reader: MetaStore, q):
    which = q.which()
    if which == "lookup":
        return reader.lookup(q.lookup.parent, q.lookup.name)
    if which == "getattr":
        return reader.getattr(q.getattr.ino)
    if which == "readdir":
        g = q.readdir
        return reader.readdir(g.dirIno, g.cursor, g.limit or 1024, g.plus)
    if which == "readlink":
        return reader.readlink(q.readlink.linkIno)
    if which == "getxattr":
        return reader.getxattr(q.getxattr.xattrIno, q.getxattr.xattrName)
    if which == "listxattr":
        return reader.listxattr(q.listxattr.listIno)
    if which == "statfs":
        return reader.statfs()
    if which == "manifest":
        g = q.manifest
        return reader.manifest(g.fileIno, g.startIdx, g.pageLimit or 1024)
    raise rpc.Unimplemented(f"query {which} is not known here")


class MetadataGroup:
    """Owns the metadata database, its read-only twin and the Raft group.

    An initial voter (a seed) bootstraps the group.  Any other node starts
    with no membership and asks the leader, through a seed, to add it as a
    learner; it then receives the log or a snapshot.  The leader promotes a
    caught-up learner to voter while there are fewer than ``voters_max``."""

    def __init__(self, node_name: str, voters: list[str], data_dir: str, pool, *,
                 tick_s: float, cfg: RaftConfig, init: InitParams, voters_max: int = 5,
                 resolve=None, frame_bytes_max: int = 16 << 20):
        self.name, self.seeds, self.pool, self.voters_max = node_name, list(voters), pool, voters_max
        ids = {ring_node_id(name): name for name in voters}
        self.joining = ring_node_id(node_name) not in ids
        ids[ring_node_id(node_name)] = node_name
        os.makedirs(data_dir, exist_ok=True)
        self.store = MetaStore(os.path.join(data_dir, "meta.db"), init)
        self.reader = MetaStore(os.path.join(data_dir, "meta.db"))
        sm = MetaStateMachine(self.store, os.path.join(data_dir, "scratch"))
        self.group: RaftGroup = open_group(ring_node_id(node_name), ids, os.path.join(data_dir, "raft"),
                                           sm, pool, cfg=cfg, tick_s=tick_s,
                                           bootstrap=not self.joining, resolve=resolve,
                                           frame_bytes_max=frame_bytes_max)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.group.transport.run)
                await nursery.start(self.group.service.run)
                nursery.start_soon(self._promote_learners)
                if self.joining:
                    nursery.start_soon(self._join)
                log.info(kv("meta.ready", node=self.group.node_id, joining=self.joining,
                            applied=self.store.applied_index))
                task_status.started(self)
        finally:
            self.group.storage.close()
            self.reader.close()
            self.store.close()

    def _member(self) -> bool:
        return self.group.node_id in self.group.service.core.status().membership.members()

    async def _join(self) -> None:
        """Ask the leader (found through the seeds) to add us as a learner,
        until the membership we receive holds us."""
        from ..raft.wire import raft_capnp
        while not self._member():
            for seed in self.seeds:
                try:
                    cap = await self.pool.bootstrap(seed, raft_capnp.Raft, timeout_s=2)
                    reply = await cap.addLearner(name=self.name, timeout_s=2)
                    if reply.notLeader and reply.leaderHint:
                        leader = self.group.addr_of(reply.leaderHint)
                        if leader:
                            cap = await self.pool.bootstrap(leader, raft_capnp.Raft, timeout_s=2)
                            reply = await cap.addLearner(name=self.name, timeout_s=2)
                    if reply.added:
                        log.info(kv("meta.join_requested", node=self.name, via=seed))
                        break
                except rpc.RpcError as e:
                    log.debug(kv("meta.join_retry", node=self.name, via=seed, error=str(e)[:120]))
            with trio.move_on_after(1.0):
                while not self._member():
                    await trio.sleep(0.1)
        log.info(kv("meta.joined", node=self.name))

    async def _promote_learners(self) -> None:
        """On the leader: one caught-up learner at a time becomes a voter,
        up to voters_max (the core refuses overlapping changes)."""
        from ..raft.config import ChangeOp, ConfChange
        from ..raft.messages import RaftError, Role
        service = self.group.service
        while True:
            await trio.sleep(1.0)
            core = service.core
            st = core.status()
            if st.role != Role.LEADER or not st.membership.learners:
                continue
            if len(st.membership.voters) >= self.voters_max:
                continue
            for learner in sorted(st.membership.learners):
                progress = core.tracker.progress.get(learner) if core.tracker else None
                if progress is None or progress.match + 16 < st.commit:
                    continue  # not caught up: promoting it would slow commits
                try:
                    core.propose_conf_change(ConfChange(ChangeOp.PROMOTE, learner))
                except RaftError as e:
                    log.debug(kv("meta.promote_later", learner=learner, reason=str(e)))
                    break
                service.poke()
                log.info(kv("meta.promoted", learner=learner, term=st.term))
                break
