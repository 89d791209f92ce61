"""One chordfs node process: the supervisor of its services.

Order of start: data directory → RPC server (bootstrap ``NodeServer``) →
services (ring, metadata, then data maintenance) → sd_notify READY.  Order
of stop (SIGTERM/SIGINT): sd_notify STOPPING → services hand over (later
layers: Raft leadership transfer, ring leave) within a deadline → RPC
server closes.  Only this supervisor holds the nursery that services run
in."""

import json
import logging
import os
import random
import signal

import trio

import rpc
from rpc.logfmt import kv
from rpc.pool import Pool

from . import clusterparams, identity, sdnotify
from .access import Guarded
from .config import NodeConfig
from .diag import DiagServer
from .meta.service import MetadataGroup, MetadataServer
from .meta.store import InitParams
from .pki import PeerIdentity, PkiError, TlsFiles, identity_of_cert
from .raft.config import RaftConfig
from .raft.messages import RaftError, Role
from .raft.server import RaftServer
from .report import node_report, to_json
from .ring.service import RingPeerServer, RingService
from .store.aiostore import AsyncChunkStore
from .store.compactor import Compactor
from .store.maintenance import Maintenance
from .store.replication import ReplicatedStore
from .store.service import ChunkStoreServer, StoreService

log = logging.getLogger("chordfs.node")
STOP_GRACE_S = 10.0
RING_LEAVE_S = 3.0  # part of STOP_GRACE_S: lets the ring hear of the leave first-hand
ISOLATION_CHECK_S = 5.0
TRANSFER_S = 2.0  # part of STOP_GRACE_S: a leader hands leadership over before it exits


class NodeServer(Guarded, DiagServer, ChunkStoreServer, RingPeerServer, RaftServer, MetadataServer):
    """The bootstrap capability every connection gets: one object serving
    every interface of the node (Diag, ChunkStore, RingPeer, Raft,
    Metadata), each call checked against the peer's certificate
    (server/access.py)."""

    def __init__(self, node: "Node", peer: PeerIdentity | None = None):
        DiagServer.__init__(self, node.config.node_name)
        ChunkStoreServer.__init__(self, node.store_service)
        self.peer = peer
        self.node = node
        self.metadata = node.metadata
        self.raft_service = node.metadata.group.service if node.metadata else None
        self.raft_pool = node.pool
        self.raft_addr_of = node.metadata.group.addr_of if node.metadata else (lambda _: None)

    async def report(self, params, results):
        results.json = to_json(await node_report(self.node))

    async def maintain(self, params, results):
        maintenance = self.node.maintenance
        if maintenance is None:
            raise rpc.Unimplemented("this node runs no maintenance yet")
        action = params.action
        try:
            args = json.loads(params.argsJson or "{}")
            if not isinstance(args, dict):
                raise ValueError("argsJson must be a JSON object")
        except ValueError as e:
            raise rpc.Failed(f"bad argsJson: {e}") from None
        if action == "heal":
            target = maintenance.request_repair()
        elif action == "scrub":
            rate = args.get("bytes_per_s")
            if rate is not None and not (isinstance(rate, (int, float)) and rate > 0):
                raise rpc.Failed("bytes_per_s must be a positive number")
            target = maintenance.request_scrub(rate)
        elif action == "census":
            try:
                target = maintenance.request_census()
            except LookupError as e:
                raise rpc.Failed(str(e)) from None
        else:
            raise rpc.Failed(f"unknown maintenance action {action!r} (heal, scrub, census)")
        log.info(kv("maintain.requested", node=self.node.config.node_name, action=action,
                    target=target, peer=self.peer.name if self.peer else "-"))
        results.json = json.dumps({"target": target})

    @property
    def ring_service(self) -> RingService:
        # A joining node serves Raft before it has the cluster's map, so its
        # ring starts later than its listener.
        if self.node.ring is None:
            raise rpc.Unimplemented("this node has not joined the ring yet")
        return self.node.ring


def open_metadata(cfg: NodeConfig, pool, resolve=None, init: bool = False,
                  cluster_id: str | None = None) -> MetadataGroup:
    """This node's metadata replica: with ``init`` on a directory that
    belongs to no cluster, the first voter of a new one; otherwise it joins
    through its seeds as a learner (promoted later by the leader)."""
    # A lease keeps 30% of the election timeout in hand: rate drift between
    # the nodes' monotonic clocks is parts per million, so the margin is
    # really for scheduling jitter, and a stall beyond it expires the lease.
    raft_cfg = RaftConfig(election_timeout_ticks=cfg.election_timeout_ticks,
                          heartbeat_interval_ticks=cfg.heartbeat_ticks,
                          lease_reads=cfg.metadata_reads == "lease",
                          lease_margin_ticks=max(1, cfg.election_timeout_ticks * 3 // 10),
                          append_bytes_max=min(1 << 20, cfg.frame_bytes_max // 4))
    return MetadataGroup(cfg.node_name, list(cfg.seeds), os.path.join(cfg.data_dir, "meta"), pool,
                         tick_s=cfg.tick_ms / 1000, cfg=raft_cfg,
                         init=InitParams(now_ns=0, chunk_bytes=cfg.chunk_bytes_max),
                         voters_max=cfg.voters_max, resolve=resolve,
                         frame_bytes_max=cfg.frame_bytes_max, bootstrap=init,
                         identity_dir=cfg.data_dir, params=clusterparams.params_of(cfg),
                         cluster_id=cluster_id)


def _metrics():
    # Imported only on a node that serves metrics: prometheus-client costs
    # every other start 40 ms.
    from .metrics import NodeMetrics
    return NodeMetrics()


def rpc_limits(cfg: NodeConfig) -> rpc.Limits:
    return rpc.Limits(frame_bytes_max=cfg.frame_bytes_max,
                      inflight_calls_max=cfg.calls_in_flight_max,
                      call_timeout_s=cfg.rpc_deadline_ms / 1000)


def tls_files(cfg: NodeConfig) -> TlsFiles | None:
    """The node's checked TLS files, or None on an ``insecure`` node.
    PkiError (one sentence) when they are missing, unusable or not this
    node's."""
    if cfg.insecure:
        return None
    if not cfg.tls_cert:
        raise PkiError("a node needs tls_ca, tls_cert and tls_key (chordfs ca init, then "
                       f"chordfs cert issue --node {cfg.node_name}), or insecure = true for tests")
    files = TlsFiles(cfg.tls_ca, cfg.tls_cert, cfg.tls_key)
    files.check()
    ident = files.identity()
    if not ident.is_node:
        raise PkiError(f"{cfg.tls_cert} is a {ident.kind} certificate; a node needs one issued "
                       f"with --node {cfg.node_name}")
    if ident.name != cfg.node_name:
        raise PkiError(f"{cfg.tls_cert} is node {ident.name}'s certificate, but this node is "
                       f"{cfg.node_name} (node_name)")
    try:
        member = identity.load(cfg.data_dir)
    except identity.IdentityError:
        member = None  # the node's start reports a damaged identity in its own words
    if member is not None and member.cluster_id and member.cluster_id != ident.cluster_id:
        raise PkiError(f"{cfg.data_dir} belongs to cluster {member.cluster_id} but {cfg.tls_cert} "
                       f"is for cluster {ident.cluster_id}; certificates of this cluster come "
                       f"from a CA made with chordfs ca init --cluster-id {member.cluster_id}")
    return files


def identify_peer(own: PeerIdentity):
    """The serve_tcp ``identify`` of a TLS node: the peer's role from its
    certificate (the handshake already proved the CA signed it)."""
    def identify(stream) -> PeerIdentity:
        try:
            peer = identity_of_cert(stream.getpeercert())
        except PkiError as e:
            raise ValueError(str(e)) from None
        if peer.cluster_id != own.cluster_id:
            raise ValueError(f"certificate of cluster {peer.cluster_id}, this is cluster "
                             f"{own.cluster_id}")
        if peer.kind not in ("node", "client"):
            raise ValueError(f"a {peer.kind} certificate cannot connect")
        return peer
    return identify


class Node:
    def __init__(self, config: NodeConfig, *, init: bool = False, tls: TlsFiles | None = None):
        self.config = config
        self.tls = tls
        self.init = init
        self.listeners = []
        self.store: AsyncChunkStore | None = None
        self.store_service: StoreService | None = None
        self.ring: RingService | None = None
        self.metadata: MetadataGroup | None = None
        self.pool: Pool | None = None
        self.maintenance: Maintenance | None = None
        self.compactor: Compactor | None = None
        self.effective: NodeConfig = config  # with the cluster's settings once known
        self.started_s = 0.0  # trio time of run()
        self.metrics = None  # NodeMetrics when metrics_port is set

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self.started_s = trio.current_time()
        os.makedirs(cfg.data_dir, exist_ok=True)
        self.store = await AsyncChunkStore.open(
            os.path.join(cfg.data_dir, "chunks"), threads_max=cfg.store_threads_max,
            chunk_bytes_max=cfg.chunk_bytes_max, disk_reserve_bytes=cfg.disk_reserve_bytes)
        # Copies are stamped with this node's applied metadata index (at
        # least): the block lifecycle's proof (server/meta/blocks.py) needs it.
        self.store_service = StoreService(self.store, applied_index=self._applied_index)
        try:
            await self._serve(task_status)
        finally:
            self.store.close()

    async def _serve(self, task_status) -> None:
        cfg = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # A short backoff cap: a restarted peer is redialled within
                # about a second.
                tls = self.tls
                pool = Pool(nursery, limits=rpc_limits(cfg), connect_timeout_s=1.0, backoff_max_s=1.0,
                            ssl_context=tls.client_context() if tls else None)
                self.pool = pool
                # A TLS cluster's id is its CA's: founding takes it from there.
                self.metadata = open_metadata(cfg, pool, init=self.init,
                                              cluster_id=tls.identity().cluster_id if tls else None)
                if tls is None:
                    log.warning(kv("node.insecure", node=cfg.node_name,
                                   detail="plain TCP, no certificates: anyone who reaches "
                                          f"{cfg.listen_addr} controls this cluster"))
                metrics = self.metrics = _metrics() if cfg.metrics_port else None
                self.listeners = await nursery.start(
                    lambda task_status: rpc.serve_tcp(
                        (lambda peer: NodeServer(self, peer)) if tls else (lambda: NodeServer(self)),
                        cfg.listen_port, host=cfg.listen_host, limits=rpc_limits(cfg),
                        ssl_context=tls.server_context() if tls else None,
                        identify=identify_peer(tls.identity()) if tls else None,
                        per_address_max=cfg.connections_per_address_max,
                        observe=metrics.observe_call if metrics else None,
                        task_status=task_status))
                await nursery.start(self.metadata.run)
                if metrics is not None:
                    self.metadata.group.service.on_persist = metrics.observe_persist
                    self.metadata.group.service.on_proposal = metrics.observe_proposal
                    self.store.store.on_fsync = metrics.observe_fsync
                    await nursery.start(self._serve_http, metrics)
                # Placement comes from the committed configuration: a joiner
                # has it once admitted (its ring waits for that).
                if not await self._wait_joined(signals):
                    nursery.cancel_scope.cancel()
                    return
                cfg = self.effective = clusterparams.effective(cfg, self.metadata.config().params)
                self.store.store.chunk_bytes_max = max(self.store.store.chunk_bytes_max,
                                                       cfg.chunk_bytes_max)
                self.ring = RingService(cfg, pool, random.Random())
                await nursery.start(self.ring.run)
                # After the ring and metadata: repair reads the ring's view
                # and GC proposes through the metadata group.
                self.maintenance = Maintenance(cfg, self.store, self.ring, pool, self.metadata)
                await nursery.start(self.maintenance.run)
                self.compactor = self._compactor(cfg, pool, nursery)
                nursery.start_soon(self.compactor.run)
                sdnotify.notify("READY=1")
                log.info(kv("node.ready", node=cfg.node_name, listen=cfg.listen_addr,
                            data_dir=cfg.data_dir))
                nursery.start_soon(self._watch_isolation)
                task_status.started(self)
                async for signum in signals:
                    log.info(kv("node.stopping", node=cfg.node_name, signal=signal.Signals(signum).name))
                    sdnotify.notify("STOPPING=1")
                    with trio.move_on_after(STOP_GRACE_S) as scope:
                        scope.shield = True
                        await self._hand_over()
                    nursery.cancel_scope.cancel()
                    break
        log.info(kv("node.stopped", node=cfg.node_name))

    async def _watch_isolation(self) -> None:
        """Say so, once, when this node reaches no other member (all its
        seeds and peers down or unreachable), and again when it does: a
        node alone answers RPCs but commits and stores nothing for anyone."""
        from .report import isolated
        alone = False
        while True:
            await trio.sleep(ISOLATION_CHECK_S)
            now = isolated(self)
            if now and not alone:
                log.warning(kv("node.isolated", node=self.config.node_name,
                               seeds=",".join(self.config.seeds) or "-",
                               detail="no other member answers: no leader, nothing is served "
                                      "until one does"))
            elif alone and not now:
                log.info(kv("node.connected", node=self.config.node_name))
            alone = now

    async def _serve_http(self, metrics, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from .httpstatus import StatusHttp
        from .statuscli import gather
        cfg, tls = self.config, self.tls
        context = tls.client_context() if tls else None
        http = StatusHttp(self, metrics, lambda addrs, timeout_s: gather(addrs, timeout_s, context))
        try:
            await http.serve(cfg.listen_host, cfg.metrics_port, task_status=task_status)
        except OSError as e:
            # The filesystem matters more than its dashboard: say so and go on.
            log.error(kv("http.unavailable", node=cfg.node_name, port=cfg.metrics_port,
                         error=e.strerror or str(e)))
            task_status.started()

    def _applied_index(self) -> int:
        return self.metadata.reader.applied_index if self.metadata is not None else 0

    def _compactor(self, cfg, pool, nursery) -> Compactor:
        """Rewrites fragmented file ranges while this node leads metadata;
        it stores blocks like a mount does, through the ring's view."""
        chunks = ReplicatedStore(pool, self.ring.view, lambda name: name,
                                 R=cfg.replication_factor, repair_nursery=nursery)
        chunks.W_min = cfg.write_quorum_min
        return Compactor(cfg.node_name, self.metadata, chunks)

    async def _wait_joined(self, signals) -> bool:
        """Until the metadata replica holds the cluster's configuration;
        False if SIGTERM/SIGINT came first (a node refused or waiting for
        its leader can still be stopped)."""
        if self.metadata.joined.is_set():
            return True
        log.info(kv("node.waiting_to_join", node=self.config.node_name,
                    seeds=",".join(self.config.seeds)))
        stopped = False
        async with trio.open_nursery() as nursery:
            async def watch():
                nonlocal stopped
                async for _ in signals:
                    stopped = True
                    nursery.cancel_scope.cancel()
            nursery.start_soon(watch)
            await self.metadata.joined.wait()
            nursery.cancel_scope.cancel()
        if stopped:
            log.info(kv("node.stopped", node=self.config.node_name, reason="signal before joining"))
        return not stopped

    async def _hand_over(self) -> None:
        """Graceful-leave hook: the services of later layers transfer what
        they own here before the process exits."""
        if self.metadata is not None:
            await self._transfer_leadership()
        if self.ring is not None:
            await self.ring.leave(timeout_s=RING_LEAVE_S)

    async def _transfer_leadership(self) -> None:
        service = self.metadata.group.service
        core = service.core
        if core.role != Role.LEADER:
            return
        others = sorted(core.status().membership.voters - {core.id})
        if not others:
            return
        try:
            core.transfer_leadership(others[0])
        except RaftError as e:
            log.info(kv("node.transfer_skipped", node=self.config.node_name, reason=str(e)))
            return
        service.poke()
        with trio.move_on_after(TRANSFER_S):
            while core.role == Role.LEADER:
                await trio.sleep(0.01)
        log.info(kv("node.transferred", node=self.config.node_name, term=core.term,
                    leader=core.leader))
