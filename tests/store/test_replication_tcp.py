"""Five chunk store servers on 127.0.0.1 TCP ports in this process, each with
its own store, driven through rpc.pool.Pool by ReplicatedStore: 200 chunks
with R=3, a server stopped (listener and connections closed), read repair,
an unreachable write quorum, a corrupt file on disk. Real clock: nothing
here waits for protocol time (a stopped server refuses connections at once)."""

from __future__ import annotations

import os

import pytest
import trio

import rpc
from rpc.pool import Pool
from server.ring.ringmath import Ring
from server.store import AsyncChunkStore, chunk_id_of
from server.store.replication import ReplicatedStore, WriteQuorumNotMet
from server.store.service import StoreService

pytestmark = pytest.mark.integration

CHUNKS = 200


class TcpNode:
    def __init__(self, astore: AsyncChunkStore):
        self.astore = astore
        self.service = StoreService(astore)
        self.scope = trio.CancelScope()
        self.addr = ""

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        with self.scope:
            await rpc.serve_tcp(self.service.server, 0, task_status=task_status)

    def stop(self):
        """Closes the listener and every accepted connection."""
        self.scope.cancel()


async def start_nodes(nursery, tmp_path, count=5) -> dict[str, TcpNode]:
    nodes = {}
    for i in range(count):
        node = TcpNode(await AsyncChunkStore.open(tmp_path / f"n{i}"))
        listeners = await nursery.start(node.serve)
        node.addr = "127.0.0.1:%d" % listeners[0].socket.getsockname()[1]
        nodes[node.addr] = node
    return nodes


def holders(nodes, cid) -> set[str]:
    return {name for name, node in nodes.items() if node.astore.store.has(cid)}


async def put_all(rs: ReplicatedStore, chunks) -> None:
    limiter = trio.CapacityLimiter(16)

    async def one(cid, data):
        async with limiter:
            await rs.put(cid, data)

    async with trio.open_nursery() as nursery:
        for cid, data in chunks:
            nursery.start_soon(one, cid, data)


async def test_five_servers_survive_a_stop_repair_and_corruption(tmp_path):
    async with trio.open_nursery() as nursery:
        nodes = await start_nodes(nursery, tmp_path)
        pool = Pool(nursery, connect_timeout_s=2)
        ring = Ring(nodes, virtual_ids=32)
        # The read repair asserted below is awaited under its own deadline
        # (2 s by default): as long as the other calls' here, so a loaded
        # machine (two test workers) does not turn it into a skipped repair.
        rs = ReplicatedStore(pool, ring, lambda name: name, R=3, timeout_s=10,
                             read_repair_timeout_s=10)
        chunks = []
        for _ in range(CHUNKS):
            data = os.urandom(16 * 1024)
            chunks.append((chunk_id_of(data), data))
        await put_all(rs, chunks)
        for cid, _ in chunks:
            assert holders(nodes, cid) == set(rs.replicas(cid))

        stopped = next(iter(nodes))
        nodes[stopped].stop()
        for cid, data in chunks:
            assert await rs.get(cid) == data
        assert rs.stats.get_fallbacks > 0

        # Read repair: a live owner lost its copy.
        cid, data = next((c, d) for c, d in chunks if rs.replicas(c)[0] != stopped)
        owner = rs.replicas(cid)[0]
        await nodes[owner].astore.delete(cid)
        # A read that the owner answers "not found" repairs it. On a loaded
        # machine a hedged read may be answered by another replica before
        # the owner speaks (then nothing is known to repair): read again.
        for _ in range(20):
            assert await rs.get(cid) == data
            if owner in holders(nodes, cid):
                break
            await trio.sleep(0.5)
        assert owner in holders(nodes, cid)

        # Corruption on disk: the owner's copy fails verification.
        cid, data = next((c, d) for c, d in chunks[1:] if rs.replicas(c)[0] not in (stopped,))
        owner = rs.replicas(cid)[0]
        with open(nodes[owner].astore.store.chunk_path(cid), "r+b") as f:
            f.write(b"\0" * 64)
        repairs = rs.stats.read_repairs
        for _ in range(20):  # as above: a hedged read may win before the owner is checked
            assert await rs.get(cid) == data
            if rs.stats.read_repairs > repairs:
                break
            await trio.sleep(0.5)
        assert rs.stats.read_repairs == repairs + 1
        assert await nodes[owner].astore.get(cid) == data

        # Write quorum out of reach: W=3 with one replica down, and the
        # default (live, >= 2) with two of three down.
        fresh = os.urandom(4096)
        fresh_id = chunk_id_of(fresh)
        strict = ReplicatedStore(pool, ring, lambda name: name, R=3, W=3, timeout_s=10)
        while stopped not in rs.replicas(fresh_id):
            fresh = os.urandom(4096)
            fresh_id = chunk_id_of(fresh)
        with pytest.raises(WriteQuorumNotMet) as info:
            await strict.put(fresh_id, fresh)
        assert set(info.value.failed) == {stopped}
        second = next(n for n in rs.replicas(fresh_id) if n != stopped)
        nodes[second].stop()
        with pytest.raises(WriteQuorumNotMet) as info:
            await rs.put(fresh_id, fresh)
        assert set(info.value.failed) == {stopped, second} and info.value.needed == 2

        pool.close()
        nursery.cancel_scope.cancel()
    for node in nodes.values():
        node.astore.close()
