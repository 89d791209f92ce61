"""One chordfs node process: the supervisor of its services.

Order of start: data directory → RPC server (bootstrap ``NodeServer``) →
services → sd_notify READY.  Order of stop (SIGTERM/SIGINT): sd_notify
STOPPING → services hand over (later layers: Raft leadership transfer, ring
leave) within a deadline → RPC server closes.  Only this supervisor holds the
nursery that services run in."""

import logging
import os
import random
import signal

import trio

import rpc
from rpc.logfmt import kv
from rpc.pool import Pool

from . import sdnotify
from .config import NodeConfig
from .diag import DiagServer
from .ring.service import RingPeerServer, RingService
from .store.aiostore import AsyncChunkStore
from .store.service import ChunkStoreServer, StoreService

log = logging.getLogger("chordfs.node")
STOP_GRACE_S = 10.0
RING_LEAVE_S = 3.0  # part of STOP_GRACE_S: lets the ring hear of the leave first-hand


class NodeServer(DiagServer, ChunkStoreServer, RingPeerServer):
    """The bootstrap capability every connection gets: one object serving
    every interface of the node (Diag, ChunkStore, RingPeer; Raft and
    metadata join here as their services land)."""

    def __init__(self, node: "Node"):
        DiagServer.__init__(self, node.config.node_name)
        ChunkStoreServer.__init__(self, node.store_service)
        RingPeerServer.__init__(self, node.ring)
        self.node = node


def rpc_limits(cfg: NodeConfig) -> rpc.Limits:
    return rpc.Limits(frame_bytes_max=cfg.frame_bytes_max,
                      inflight_calls_max=cfg.calls_in_flight_max,
                      call_timeout_s=cfg.rpc_deadline_ms / 1000)


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.listeners = []
        self.store: AsyncChunkStore | None = None
        self.store_service: StoreService | None = None
        self.ring: RingService | None = None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        os.makedirs(cfg.data_dir, exist_ok=True)
        self.store = await AsyncChunkStore.open(
            os.path.join(cfg.data_dir, "chunks"), threads_max=cfg.store_threads_max,
            chunk_bytes_max=cfg.chunk_bytes_max, disk_reserve_bytes=cfg.disk_reserve_bytes)
        self.store_service = StoreService(self.store)
        try:
            await self._serve(task_status)
        finally:
            self.store.close()

    async def _serve(self, task_status) -> None:
        cfg = self.config
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                # Built before the listener so every NodeServer has its ring;
                # peers' deliveries queue until it starts. A short backoff
                # cap: a restarted peer is redialled within about a second.
                pool = Pool(nursery, limits=rpc_limits(cfg), connect_timeout_s=1.0, backoff_max_s=1.0)
                self.ring = RingService(cfg, pool, random.Random())
                self.listeners = await nursery.start(
                    lambda task_status: rpc.serve_tcp(lambda: NodeServer(self), cfg.listen_port,
                                                      host=cfg.listen_host, limits=rpc_limits(cfg),
                                                      task_status=task_status))
                await nursery.start(self.ring.run)
                sdnotify.notify("READY=1")
                log.info(kv("node.ready", node=cfg.node_name, listen=cfg.listen_addr,
                            data_dir=cfg.data_dir))
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

    async def _hand_over(self) -> None:
        """Graceful-leave hook: the services of later layers transfer what
        they own here before the process exits."""
        if self.ring is not None:
            await self.ring.leave(timeout_s=RING_LEAVE_S)
