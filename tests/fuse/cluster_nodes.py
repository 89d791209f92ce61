"""A chordfs cluster of N nodes in one trio process on 127.0.0.1, for the
cluster backend's tests: per node a MetadataGroup (Raft + metadata state
machine) and a chunk store, behind one RPC bootstrap object serving Diag,
Raft, Metadata and ChunkStore, like a real node will.

``run_cluster`` is an async context manager yielding a ``Cluster`` whose
nodes can be stopped one by one (their listener, connections, Raft group and
store go away, as with a crash of the process, minus the disk). As a script,
``python -m tests.fuse.cluster_nodes DIR PORT[,PORT...] [INDEX]`` runs the
same cluster (or only its node INDEX, so each node can be its own process
and be killed with SIGKILL) until SIGTERM, printing ``ready`` once a leader
is known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys

import trio

import rpc
from rpc import schema
from rpc.pool import Pool
from server.diag import DiagServer
from server.meta.service import MetadataGroup, MetadataServer
from server.meta.store import InitParams
from server.meta.types import CHUNK_BYTES_DEFAULT
from server.raft.config import RaftConfig
from server.raft.messages import Role
from server.raft.server import RaftServer
from server.store import AsyncChunkStore
from server.store.service import ChunkStoreServer, StoreService
from tests.netutil import free_ports

TICK_S = 0.02
RAFT = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2)
LEADER_DEADLINE_S = 15.0


ring_capnp = schema.load("ring")


class StaticRingPeer(rpc.Server, interfaces=[ring_capnp.RingPeer]):
    """RingPeer without SWIM: ``members`` reports a table the test sets
    (name -> "alive"/"suspect"/"dead"/"left"), shared by every node."""

    def __init__(self, table: dict[str, str]):
        self.ring_table = table

    @rpc.inline
    async def ring_peer_deliver(self, params, results):
        pass

    @rpc.inline
    async def ring_peer_members(self, params, results):
        out = results.init("members", len(self.ring_table))
        for i, (name, status) in enumerate(sorted(self.ring_table.items())):
            out[i].name, out[i].incarnation, out[i].status = name, 1, status


class NodeServer(DiagServer, RaftServer, MetadataServer, ChunkStoreServer, StaticRingPeer):
    def __init__(self, name: str, md: MetadataGroup, pool: Pool, store: StoreService,
                 table: dict[str, str]):
        DiagServer.__init__(self, name)
        ChunkStoreServer.__init__(self, store)
        StaticRingPeer.__init__(self, table)
        self.metadata = md
        self.raft_service, self.raft_pool, self.raft_addr_of = (
            md.group.service, pool, md.group.addr_of)


@dataclasses.dataclass
class Node:
    name: str
    scope: trio.CancelScope
    md: MetadataGroup
    stopped: trio.Event

    @property
    def role(self) -> Role:
        return self.md.group.service.core.role


@dataclasses.dataclass
class Cluster:
    nodes: list[Node]
    ring_table: dict[str, str]  # what every node's RingPeer.members reports

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def live(self) -> list[Node]:
        return [n for n in self.nodes if not n.stopped.is_set()]

    def leader(self) -> Node | None:
        return next((n for n in self.live() if n.role == Role.LEADER), None)

    async def wait_leader(self, deadline_s: float = LEADER_DEADLINE_S, voters: int = 0) -> Node:
        """A leader every live node knows (and, with ``voters``, a
        configuration of that many voters: the joiners were promoted)."""
        with trio.fail_after(deadline_s):
            while True:
                leader = self.leader()
                if (leader is not None and all(n.md.group.service.core.leader for n in self.live())
                        and len(leader.md.group.service.core.log.membership().voters) >= voters):
                    return leader
                await trio.sleep(0.01)

    async def stop(self, node: Node) -> None:
        node.scope.cancel()
        await node.stopped.wait()



async def _run_node(name: str, names: list[str], data_dir: str, node_box: list,
                    chunk_bytes: int, table: dict[str, str], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    port = int(name.rpartition(":")[2])
    os.makedirs(data_dir, exist_ok=True)
    stopped = trio.Event()
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                pool = Pool(nursery, connect_timeout_s=0.5, backoff_max_s=0.2)
                astore = await AsyncChunkStore.open(os.path.join(data_dir, "chunks"),
                                                    fsync_enabled=False)
                try:
                    # The first name founds the cluster; the others join it.
                    md = MetadataGroup(name, names, os.path.join(data_dir, "meta"), pool,
                                       tick_s=TICK_S, cfg=RAFT, init=InitParams(now_ns=0, chunk_bytes=chunk_bytes),
                                       bootstrap=name == names[0])
                    await nursery.start(md.run)
                    service = StoreService(astore, applied_index=lambda: md.reader.applied_index)
                    await nursery.start(lambda task_status: rpc.serve_tcp(
                        lambda: NodeServer(name, md, pool, service, table), port,
                        task_status=task_status))
                    node_box.append(Node(name, scope, md, stopped))
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    pool.close()
                    astore.close()
    finally:
        stopped.set()


def voters_wanted(members: int) -> int:
    return members if members % 2 else members - 1


@contextlib.asynccontextmanager
async def run_cluster(base_dir, ports: list[int], chunk_bytes: int = CHUNK_BYTES_DEFAULT,
                      only: int | None = None):
    """All nodes of ``ports``, or with ``only`` just that one (the others
    run in other processes); ready once a leader is known."""
    names = [f"127.0.0.1:{p}" for p in ports]
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        table = dict.fromkeys(names, "alive")
        for name in names if only is None else [names[only]]:
            await nursery.start(_run_node, name, names,
                                os.path.join(str(base_dir), name.replace(":", "_")), nodes,
                                chunk_bytes, table)
        cluster = Cluster(nodes, table)
        if only is None:
            await cluster.wait_leader(voters=voters_wanted(len(names)))
        else:
            # Ready once this node knows a leader and a configuration with
            # every voter promoted (tests kill the leader next).
            core = nodes[0].md.group.service.core
            with trio.fail_after(LEADER_DEADLINE_S):
                while not (core.leader and len(core.log.membership().voters)
                           >= voters_wanted(len(names))):
                    await trio.sleep(0.01)
        try:
            yield cluster
        finally:
            nursery.cancel_scope.cancel()


async def _serve_forever(base_dir: str, ports: list[int], only: int | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with run_cluster(base_dir, ports, only=only):
            print("ready", flush=True)
            async for _ in signals:
                return


def main(argv: list[str]) -> int:
    """DIR PORT[,PORT...] [INDEX]: the whole cluster, or only node INDEX."""
    base_dir, ports = argv[0], [int(p) for p in argv[1].split(",")]
    only = int(argv[2]) if len(argv) > 2 else None
    trio.run(_serve_forever, base_dir, ports, only)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
