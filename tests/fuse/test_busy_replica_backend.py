"""ClusterBackend's chunk path over fake replicas (tests/store/
test_replication_busy.py): the stamp ``put_chunks`` returns, the counters a
mount exposes, and honest space in ``statfs``. Autojump clock, no network."""

from __future__ import annotations

import random
import types

import pytest
import trio

from fusefs.backend import Unavailable
from fusefs.cluster import ClusterBackend, ClusterConfig, storable_bytes
from server.meta.types import StatFs
from server.ring.ringmath import Ring
from server.store.replication import ReplicatedStore
from tests.store.test_replication_busy import FakePool, FakeReplica, chunk, reply

NODES = ("127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003", "127.0.0.1:7004")
GIB = 1 << 30


class SpaceReplica(FakeReplica):
    def __init__(self, name, used_bytes=0, free_bytes=100 * GIB, reserve_bytes=GIB, **kw):
        super().__init__(name, **kw)
        self.used_bytes, self.free_bytes, self.reserve_bytes = used_bytes, free_bytes, reserve_bytes

    async def stats(self, *, timeout_s):
        figures = {"usedBytes": self.used_bytes, "freeBytes": self.free_bytes,
                   "reserveBytes": self.reserve_bytes, "chunkBytesMax": 4 << 20}
        return await self._answer("stats", timeout_s,
                                  lambda: reply(stats=types.SimpleNamespace(to_dict=lambda: figures)))


@pytest.fixture
async def backend(nursery):
    b = ClusterBackend(ClusterConfig(NODES, ring_refresh_s=0), nursery)
    replicas = {name: SpaceReplica(name) for name in NODES}
    b.pool = FakePool(replicas)
    b.ring = Ring(NODES, virtual_ids=16)
    b.chunks = ReplicatedStore(b.pool, lambda: b.ring, lambda n: n, R=3,
                               timeout_s=b.cfg.chunk_timeout_s, rng=random.Random(3))

    async def query(kind, cls, fill):
        assert kind == "statfs"
        return StatFs(inodes=7, bytes=1234, chunks=0, next_ino=8, applied_index=1)
    b.meta.query = query
    b.replicas = replicas
    yield b


async def test_put_chunks_returns_the_lowest_stamp_of_every_copy(backend, autojump_clock):
    for i, r in enumerate(backend.replicas.values()):
        r.applied_index = 20 + i
    chunks = [chunk(seed) for seed in range(12)]
    observed = await backend.put_chunks(chunks, after_index=21)
    stamps = [backend.replicas[n].chunks[cid][1] for cid, _ in chunks
              for n in backend.chunks.replicas(cid)]
    assert observed == min(stamps) == 21
    assert await backend.put_chunks([], after_index=5) == 5


async def test_busy_replica_is_counted_not_fatal(backend, autojump_clock):
    backend.replicas[NODES[1]].overload_every = 1
    chunks = [chunk(seed) for seed in range(20)]
    await backend.put_chunks(chunks)
    stats = backend.data_path_stats()
    held_by_busy = sum(NODES[1] in backend.chunks.replicas(cid) for cid, _ in chunks)
    assert held_by_busy and stats["copies_missing"] == held_by_busy
    assert stats["put_retries"] > 0 and stats["puts"] == 20


async def test_quorum_lost_is_unavailable(backend, autojump_clock):
    for r in list(backend.replicas.values())[:3]:
        r.overload_every = 1
    backend.chunks.limits = type(backend.chunks.limits)(put_attempts_max=2)
    with pytest.raises(Unavailable):
        await backend.put_chunks([chunk(seed) for seed in range(8)])


def test_storable_bytes():
    assert storable_bytes([100, 100, 100], 3) == 100
    assert storable_bytes([100, 100, 100, 100], 3) == 133  # sum / R on equal nodes
    assert storable_bytes([100, 100, 0], 3) == 0            # a full node: no third copy
    assert storable_bytes([1000, 10, 10], 2) == 20          # the big node holds one copy each
    assert storable_bytes([100, 100], 3) == 0
    assert storable_bytes([], 1) == 0
    assert storable_bytes([5, 7], 1) == 12


async def test_statfs_counts_every_copy_and_reports_a_full_node(backend, autojump_clock, caplog):
    figures = [(30 * GIB, 71 * GIB), (30 * GIB, 71 * GIB), (30 * GIB, 71 * GIB), (0, GIB)]
    for r, (used, free) in zip(backend.replicas.values(), figures):
        r.used_bytes, r.free_bytes = used, free  # free includes the 1 GiB reserve
    st = await backend.statfs()
    # Three nodes with 100 GiB (30 used + 70 free above the reserve) and one
    # with nothing above its reserve: R=3 copies fit 100 GiB in all, 70 free.
    assert st.total_bytes == 100 * GIB and st.free_bytes == 70 * GIB
    assert st.used_bytes == 1234 and st.inodes == 7
    assert backend.chunks.full_nodes() == [NODES[3]]
    assert any("cluster.node_full" in r.message and NODES[3] in r.message for r in caplog.records)
    # A node that does not answer is left out; R is capped by those that did.
    backend.pool.down.update(NODES[:3])
    st = await backend.statfs()
    assert st.total_bytes == st.free_bytes == 0
    backend.pool.down = {NODES[0], NODES[1], NODES[3]}
    assert (await backend.statfs()).free_bytes == 70 * GIB


async def test_a_full_node_gets_no_new_copies(backend, autojump_clock):
    backend.replicas[NODES[0]].free_bytes = 0
    await backend.statfs()
    calls = len(backend.replicas[NODES[0]].calls)
    chunks = [chunk(seed) for seed in range(10)]
    await backend.put_chunks(chunks)
    assert len(backend.replicas[NODES[0]].calls) == calls
    assert backend.data_path_stats()["copies_missing"] == 0  # the next successor took them
    with trio.fail_after(1):
        assert await backend.get_chunk(chunks[0][0]) == chunks[0][1]
