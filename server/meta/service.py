"""Metadata on a node: the Raft group that applies the metadata state
machine, and the Metadata RPC interface that serves reads.

Writes are Raft proposals (Raft.propose with an encoded Command), so the
result a client sees is the one every replica computed.  Reads run on a
second, read-only connection to the same SQLite database: WAL lets it see
only committed transactions, never half of an apply batch.  A linearizable
read first waits for ReadIndex, i.e. until this node has applied everything
that was committed when the read arrived."""

import dataclasses
import logging
import os
import time

import trio

import rpc
from rpc import schema
from rpc import trace
from rpc.logfmt import kv

from .. import identity
from ..raft.group import RaftGroup, open_group
from ..raft.config import RaftConfig
from ..raft.messages import Entry, EntryKind, HardState, Membership, NotLeader
from ..raft.storage import LogStorage
from . import codec
from .raftsm import MetaStateMachine
from .recall import LeaseDesk
from .store import InitParams, MetaStore
from .types import MANIFESTS_MAX, Tick

log = logging.getLogger("chordfs.meta")
meta_capnp = schema.load("meta")
READ_INDEX_TIMEOUT_S = 5.0
# How long a read or a change waits for another mount's lease to come back
# (the holder's flush; at worst the lease's expiry) before the caller hears
# "busy" and retries.
RECALL_WAIT_S = 4.0
LEASE_POLL_MAX_S = 30.0
TICK_INTERVAL_S = 1.0


class MetadataServer(rpc.Server, interfaces=[meta_capnp.Metadata]):
    """Mixin: the serving object provides ``metadata`` (a MetadataGroup) and
    ``raft_pool`` (the node's connection pool, for forwarding)."""

    async def query(self, params, results):
        if trace.ENABLED:
            trace.mark("node.query")
        q = params.query
        md = self.metadata
        if md is None:
            raise rpc.Unimplemented("this node holds no metadata replica; ask another node")
        check = getattr(self, "check_query", None)
        if check is not None:
            await check(q)  # a --subdir client's subtree (server/access.py)
        if q.linearizable:
            try:
                await md.group.service.read_index(timeout_s=READ_INDEX_TIMEOUT_S)
            except NotLeader as e:
                hint = e.leader_hint or 0
                addr = md.group.addr_of(hint) if hint else None
                if params.forwarded or addr is None:
                    results.notLeader, results.leaderHint = True, hint
                    results.leaderAddr = addr or ""
                    return
                await self._forward_query(addr, hint, q, results)
                return
            except trio.TooSlowError:
                raise rpc.Overloaded("no quorum confirmed the read in time") from None
            leased = _leased_dir(q)
            if leased and md.desk.others((leased,), q.holder, with_readers=False):
                # Another mount may be answering changes there from its own
                # batch: it flushes and gives the lease back first.
                if not await md.desk.clear((leased,), holder=q.holder, timeout_s=RECALL_WAIT_S,
                                           with_readers=False):
                    raise rpc.Overloaded("a directory lease is being recalled; try again")
                try:
                    await md.group.service.read_index(timeout_s=READ_INDEX_TIMEOUT_S)
                except (NotLeader, trio.TooSlowError):
                    raise rpc.Overloaded("leadership moved during a lease recall") from None
        results.reply = codec.encode(_run(md.reader, q))
        if trace.ENABLED:
            trace.mark("node.query.done")

    async def _forward_query(self, addr: str, leader: int, q, results) -> None:
        def fill(p):
            p.query = q
            p.forwarded = True
        try:
            cap = await self.raft_pool.bootstrap(addr, meta_capnp.Metadata,
                                                 timeout_s=READ_INDEX_TIMEOUT_S)
            reply = await cap.call("query", fill=fill, timeout_s=READ_INDEX_TIMEOUT_S)
        except rpc.ConnectionLost:
            results.notLeader, results.leaderHint, results.leaderAddr = True, leader, addr
            return
        results.reply, results.notLeader, results.leaderHint = (
            reply.reply, reply.notLeader, reply.leaderHint)
        results.leaderAddr = reply.leaderAddr


    async def leaseEvents(self, params, results):
        md = self.metadata
        if md is None:
            raise rpc.Unimplemented("this node holds no metadata replica; ask another node")
        from ..raft.messages import Role
        st = md.group.service.core.status()
        if st.role != Role.LEADER:
            hint = st.leader or 0
            results.notLeader, results.leaderHint = True, hint
            results.leaderAddr = (md.group.addr_of(hint) or "") if hint else ""
            return
        wait_s = min(LEASE_POLL_MAX_S, params.waitMs / 1000)
        dirs = await md.desk.events(params.holder, wait_s)
        out = results.init("recall", len(dirs))
        for i, d in enumerate(dirs):
            out[i] = d


def _leased_dir(q) -> int:
    """The directory a query reads whose lease matters: its entries
    (lookup, readdir) or its own attributes (getattr)."""
    which = q.which()
    if which == "lookup":
        return q.lookup.parent
    if which == "readdir":
        return q.readdir.dirIno
    if which == "getattr":
        return q.getattr.ino
    return 0


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
        return reader.manifest(g.fileIno, g.startOff, g.pageLimit or 1024)
    if which == "manifests":
        inos = q.manifests.manifestInos  # read no more of a long list than is answered
        return reader.manifests([inos[i] for i in range(min(len(inos), MANIFESTS_MAX))])
    raise rpc.Unimplemented(f"query {which} is not known here")


def found_cluster(identity_dir: str, raft_dir: str, node_name: str,
                  params: tuple[tuple[str, int], ...] = (),
                  cluster_id: str | None = None) -> identity.Identity:
    """Make this node the first member of a new cluster (chordfs cluster
    init, node --init): a cluster id, then the first configuration -- this
    node, the only voter, and the cluster-wide settings ``params`` -- written
    to the Raft log as the core's bootstrap does, then the member mark.  Each step is durable before the next, and a
    crash between them is finished by the next call; a directory that joined
    another cluster (not the founder) is left as it is."""
    ident = identity.load_or_create(identity_dir)
    if not ident.cluster_id:
        ident = identity.init_cluster(identity_dir, cluster_id)
    elif not ident.founder or ident.member:
        log.info(kv("meta.init_skipped", node=node_name, cluster=ident.cluster_id,
                    reason="this data directory already belongs to a cluster"))
        return ident
    if not LogStorage.has_state(raft_dir):
        first = Membership(frozenset({ident.node_id}), names=((ident.node_id, node_name),),
                           params=params)
        storage = LogStorage(raft_dir)
        try:
            storage.save(HardState(term=1, vote=None, commit=1),
                         [Entry(1, 1, EntryKind.CONFIG, first.encode())], None)
        finally:
            storage.close()
    ident = dataclasses.replace(ident, member=True)
    identity.save(identity_dir, ident)
    log.info(kv("meta.cluster_founded", node=node_name, id=f"{ident.node_id:x}",
                cluster=ident.cluster_id))
    return ident


class JoinRefused(Exception):
    """The leader will not admit this node; str() is one sentence."""


class MetadataGroup:
    """Owns the metadata database, its read-only twin and the Raft group.

    Only an explicit init bootstraps: ``init=True`` on a directory with no
    cluster makes this node the single voter of a new cluster (``chordfs
    cluster init`` / ``chordfs node --init``).  Every other node has seeds,
    which are only contact points: it asks the leader, through them, to add
    it as a learner under its own node id (``server/identity.py``), then
    receives the log or a snapshot.  The leader promotes a caught-up learner
    to voter while there are fewer than ``voters_max``; operators remove
    voters (``chordfs members``)."""

    def __init__(self, node_name: str, seeds: list[str], data_dir: str, pool, *,
                 tick_s: float, cfg: RaftConfig, init: InitParams, voters_max: int = 5,
                 resolve=None, frame_bytes_max: int = 16 << 20, bootstrap: bool = False,
                 identity_dir: str | None = None, params: tuple[tuple[str, int], ...] = (),
                 cluster_id: str | None = None):
        self.name, self.pool, self.voters_max = node_name, pool, voters_max
        self.seeds = [s for s in seeds if s != node_name]
        self.identity_dir = identity_dir or data_dir
        os.makedirs(data_dir, exist_ok=True)
        raft_dir = os.path.join(data_dir, "raft")
        ident = identity.load_or_create(self.identity_dir)
        if bootstrap:
            ident = found_cluster(self.identity_dir, raft_dir, node_name,
                                  params or (("chunk_bytes_max", init.chunk_bytes),), cluster_id)
        if not LogStorage.has_state(raft_dir):
            identity.check_storage(ident, has_raft_state=False)
        elif not ident.cluster_id:
            raise identity.IdentityError(
                f"{data_dir} holds Raft state but no cluster id (written by an older chordfs?): "
                "start this node with an empty data directory to re-add it as a new member")
        self.identity = ident
        self.store = MetaStore(os.path.join(data_dir, "meta.db"), init)
        self.reader = MetaStore(os.path.join(data_dir, "meta.db"))
        self.desk = LeaseDesk(self.reader, node_name)
        sm = MetaStateMachine(self.store, os.path.join(data_dir, "scratch"), image_dir=raft_dir)
        self.group: RaftGroup = open_group(ident.node_id, {}, raft_dir, sm, pool, cfg=cfg,
                                           tick_s=tick_s, bootstrap=False,
                                           resolve=resolve, frame_bytes_max=frame_bytes_max)
        self.group.service.cluster_id = self.group.transport.cluster_id = ident.cluster_id
        self.group.transport.self_addr = node_name
        self.group.service.propose_gate = (
            lambda command, propose: self.desk.gated_propose(command, propose,
                                                             timeout_s=RECALL_WAIT_S))
        if not self.group.fresh:
            self._mark_member()
        self.joining = not self._member()
        self.join_refused: str | None = None
        self.joined = trio.Event()  # set once this replica holds the cluster's configuration
        if not self.joining:
            self.joined.set()
        if self.joining and not self.seeds:
            raise JoinRefused("this node belongs to no cluster and has no seeds: start the first "
                              "node with --init (or run `chordfs cluster init`), the others with "
                              "--seeds pointing at it")

    @property
    def node_id(self) -> int:
        return self.identity.node_id

    @property
    def cluster_id(self) -> str:
        return self.identity.cluster_id

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.group.transport.run)
                await nursery.start(self.group.service.run)
                nursery.start_soon(self._promote_learners)
                nursery.start_soon(self._tick_clock)
                if self.joining:
                    nursery.start_soon(self._join)
                log.info(kv("meta.ready", node=self.name, id=f"{self.node_id:x}",
                            cluster=self.cluster_id or "-", joining=self.joining,
                            applied=self.store.applied_index))
                task_status.started(self)
        finally:
            self.group.storage.close()
            self.reader.close()
            self.store.close()

    def _member(self) -> bool:
        return self.group.node_id in self.group.service.core.status().membership.members()

    def _mark_member(self) -> None:
        if not self.identity.member:
            self.identity = dataclasses.replace(self.identity, member=True)
            identity.save(self.identity_dir, self.identity)

    def config(self) -> Membership:
        """The cluster configuration this replica holds (settings included)."""
        return self.group.service.core.log.membership()

    def _admitted(self, cluster_id: str, config: bytes) -> None:
        chunk_bytes = Membership.decode(config).param("chunk_bytes_max") if config else None
        if chunk_bytes and self.store.applied_index == 0:
            # The database was created with this node's own chunk size; the
            # cluster's must be in place before the first entry applies, or
            # truncates would cut at other offsets than on the other replicas.
            with self.store.conn:
                self.store.conn.execute("UPDATE state SET chunk_bytes = ? WHERE id = 0",
                                        (chunk_bytes,))
        if not self.identity.cluster_id:
            self.identity = dataclasses.replace(self.identity, cluster_id=cluster_id)
            identity.save(self.identity_dir, self.identity)
        self.group.service.cluster_id = self.group.transport.cluster_id = cluster_id

    async def _ask_to_join(self, addr: str):
        """One addLearner call, following one leader redirect."""
        from ..raft.wire import raft_capnp
        for _ in range(2):
            cap = await self.pool.bootstrap(addr, raft_capnp.Raft, timeout_s=2)
            reply = await cap.addLearner(name=self.name, nodeId=self.node_id,
                                         clusterId=self.cluster_id, timeout_s=2)
            if not (reply.notLeader and reply.leaderAddr):
                return reply
            addr = reply.leaderAddr
        return reply

    async def _join(self) -> None:
        """Ask the leader (found through the seeds) to add us as a learner,
        until the membership we receive holds us.  A refusal is final: the
        operator has to act (see JoinRefused)."""
        while not self._member():
            for seed in self.seeds:
                try:
                    reply = await self._ask_to_join(seed)
                except rpc.RpcError as e:
                    log.debug(kv("meta.join_retry", node=self.name, via=seed, error=str(e)[:120]))
                    continue
                if reply.refused:
                    self.join_refused = reply.refused
                    log.error(kv("meta.join_refused", node=self.name, id=f"{self.node_id:x}",
                                 via=seed, reason=reply.refused))
                    raise JoinRefused(f"the cluster refused this node: {reply.refused}")
                if reply.added:
                    self._admitted(reply.clusterId, reply.config)
                    log.info(kv("meta.join_requested", node=self.name, id=f"{self.node_id:x}",
                                via=seed, cluster=reply.clusterId))
                    break
            with trio.move_on_after(1.0):
                while not self._member():
                    await trio.sleep(0.05)
        while self.group.storage.last_index() == 0 and self.group.storage.snapshot is None:
            await trio.sleep(0.05)  # member once our own storage holds the cluster's log
        self._mark_member()
        self.joined.set()
        log.info(kv("meta.joined", node=self.name, id=f"{self.node_id:x}", cluster=self.cluster_id))

    def voters_wanted(self, members: int) -> int:
        """How many voters a configuration of ``members`` nodes should have:
        an odd number (an even one tolerates no more failures and needs a
        larger quorum), at most voters_max."""
        return max(1, min(self.voters_max, members if members % 2 else members - 1))

    async def _tick_clock(self) -> None:
        """On the leader: a Tick entry every TICK_INTERVAL_S, the log time
        upload windows and tombstones are measured in (blocks.py). A clock
        that jumps back is harmless: apply keeps the maximum."""
        from ..raft.messages import Role
        service = self.group.service
        while True:
            await trio.sleep(TICK_INTERVAL_S)
            if service.core.status().role != Role.LEADER:
                continue
            try:
                await service.propose(codec.encode_command(Tick(time.time_ns())),
                                      timeout_s=TICK_INTERVAL_S * 5)
            except Exception as e:  # noqa: BLE001 - the next tick tries again
                log.info(kv("meta.tick_failed", node=self.name, error=f"{type(e).__name__}: {e}"))

    async def _promote_learners(self) -> None:
        """On the leader: one live, caught-up learner at a time becomes a
        voter while there are fewer than voters_wanted (the core refuses
        overlapping changes).  Learners stay learners otherwise: they are
        the spares that replace a voter an operator removes."""
        from ..raft.config import ChangeOp, ConfChange
        from ..raft.messages import RaftError, Role
        service = self.group.service
        while True:
            await trio.sleep(max(0.05, service.tick_s * 5))
            core = service.core
            st = core.status()
            if st.role != Role.LEADER or not st.membership.learners:
                continue
            wanted = self.voters_wanted(len(st.membership.members()))
            if len(st.membership.voters) >= wanted:
                continue
            live = core.live_members()
            for learner in sorted(st.membership.learners):
                progress = core.tracker.progress.get(learner) if core.tracker else None
                if learner not in live or progress is None or progress.match + 16 < st.commit:
                    continue  # not caught up: promoting it would slow commits
                try:
                    core.propose_conf_change(ConfChange(ChangeOp.PROMOTE, learner))
                except RaftError as e:
                    log.debug(kv("meta.promote_later", learner=f"{learner:x}", reason=str(e)))
                    break
                service.poke()
                log.info(kv("meta.promoted", node=f"{core.id:x}", learner=f"{learner:x}",
                            term=st.term))
                break
