"""Hand-off after a join: a former holder drops a copy only once every
replica of the new view confirms it, and says how many it had to keep."""

from __future__ import annotations

import pytest

from server.ring.ringmath import Ring
from server.store.handoff import drop_handed_over
from server.store.keyrange import ring_key
from server.store.repair import RepairPass
from server.store.replication import ReplicatedStore

from .conftest import make_chunk
from .memcluster import open_cluster

R = 3


class _ByName:
    """Maintenance dials node names; the memory pool knows addresses."""

    def __init__(self, cluster):
        self.cluster = cluster

    async def bootstrap(self, name, interface, *, timeout_s=None):
        return await self.cluster.pool.bootstrap(self.cluster.addr_of[name], interface,
                                                 timeout_s=timeout_s)


@pytest.fixture
async def cluster(nursery, tmp_path):
    c = await open_cluster(nursery, tmp_path)
    yield c
    c.close()


async def test_copies_are_kept_until_the_joined_node_holds_them(cluster):
    before = Ring(cluster.names[:4], virtual_ids=16)
    rs = ReplicatedStore(cluster.pool, before, cluster.addr_of, R=R, timeout_s=5)
    ids = []
    for i in range(120):
        cid, data = make_chunk(500 + i, 300)
        await rs.put(cid, data)
        ids.append(cid)
    after = Ring(cluster.names, virtual_ids=16)  # n4 joins
    pool = _ByName(cluster)
    moved = [c for c in ids if "n0" in before.replicas(ring_key(c), R)
             and "n0" not in after.replicas(ring_key(c), R)]
    assert moved, "the join moves some of n0's ranges"

    # n4 has pulled nothing yet: every moved copy stays on n0.
    examined, dropped, kept, cursor = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    assert (dropped, kept, cursor) == (0, len(moved), None)
    assert all(cluster.stores["n0"].store.has(c) for c in moved)

    await RepairPass(cluster.stores["n4"], "n4", after, pool, lambda n: n, R, timeout_s=5).run()
    examined, dropped, kept, cursor = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    assert (dropped, kept) == (len(moved), 0)
    for c in ids:  # nothing under R copies, nothing left behind
        assert cluster.holders(c) >= set(after.replicas(ring_key(c), R))
        held_before = "n0" in before.replicas(ring_key(c), R)
        assert ("n0" in cluster.holders(c)) == (held_before and c not in moved)


async def test_an_unreachable_replica_keeps_our_copy(cluster):
    before = Ring(cluster.names[:4], virtual_ids=16)
    rs = ReplicatedStore(cluster.pool, before, cluster.addr_of, R=R, timeout_s=5)
    ids = []
    for i in range(60):
        cid, data = make_chunk(900 + i, 300)
        await rs.put(cid, data)
        ids.append(cid)
    after = Ring(cluster.names, virtual_ids=16)
    pool = _ByName(cluster)
    await RepairPass(cluster.stores["n4"], "n4", after, pool, lambda n: n, R, timeout_s=5).run()
    cluster.kill("n4")
    _, dropped, kept, _ = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    moved = [c for c in ids if "n0" in before.replicas(ring_key(c), R)
             and "n0" not in after.replicas(ring_key(c), R)]
    assert moved and dropped == 0 and kept == len(moved)
