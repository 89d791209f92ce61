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
    """Owns the metadata database, its read-only twin and the Raft group."""

    def __init__(self, node_name: str, voters: list[str], data_dir: str, pool, *,
                 tick_s: float, cfg: RaftConfig, init: InitParams):
        ids = {ring_node_id(name): name for name in voters}
        if ring_node_id(node_name) not in ids:
            raise ValueError(f"node {node_name} is not among the Raft voters {', '.join(voters)}; "
                             "joining an existing group as a learner is not built yet")
        os.makedirs(data_dir, exist_ok=True)
        self.store = MetaStore(os.path.join(data_dir, "meta.db"), init)
        self.reader = MetaStore(os.path.join(data_dir, "meta.db"))
        sm = MetaStateMachine(self.store, os.path.join(data_dir, "scratch"))
        self.group: RaftGroup = open_group(ring_node_id(node_name), ids, os.path.join(data_dir, "raft"),
                                           sm, pool, cfg=cfg, tick_s=tick_s)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.group.transport.run)
                await nursery.start(self.group.service.run)
                log.info(kv("meta.ready", node=self.group.node_id,
                            applied=self.store.applied_index))
                task_status.started(self)
        finally:
            self.group.storage.close()
            self.reader.close()
            self.store.close()
