"""Hand-off after a join: a former holder drops a copy only once every
replica of the new view confirms it, and says how many it had to keep."""

from __future__ import annotations

from server.ring.ringmath import Ring
from server.store.handoff import drop_handed_over
from server.store.keyrange import ring_key
from server.store.repair import RepairPass
from server.store.replication import ReplicatedStore

from .conftest import make_chunk
from .memcluster import NamePool

R = 3


async def _join_after_writes(cluster, first_seed: int, count: int):
    """Chunks written while n0..n3 form the ring, then n4 joins: (ids, the
    view before, the view after, the ids n0 no longer replicates)."""
    before = Ring(cluster.names[:4], virtual_ids=16)
    rs = ReplicatedStore(cluster.pool, before, cluster.addr_of, R=R, timeout_s=5)
    ids = []
    for i in range(count):
        cid, data = make_chunk(first_seed + i, 300)
        await rs.put(cid, data)
        ids.append(cid)
    after = Ring(cluster.names, virtual_ids=16)
    moved = [c for c in ids if "n0" in before.replicas(ring_key(c), R)
             and "n0" not in after.replicas(ring_key(c), R)]
    assert moved, "the join moves some of n0's ranges"
    return ids, before, after, moved


async def _pull_to_n4(cluster, after, pool):
    await RepairPass(cluster.stores["n4"], "n4", after, pool, lambda n: n, R, timeout_s=5).run()


async def test_copies_are_kept_until_the_joined_node_holds_them(cluster):
    ids, before, after, moved = await _join_after_writes(cluster, 500, 120)
    pool = NamePool(cluster)

    # n4 has pulled nothing yet: every moved copy stays on n0.
    examined, dropped, kept, cursor = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    assert (dropped, kept, cursor) == (0, len(moved), None)
    assert all(cluster.stores["n0"].store.has(c) for c in moved)

    await _pull_to_n4(cluster, after, pool)
    examined, dropped, kept, cursor = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    assert (dropped, kept) == (len(moved), 0)
    for c in ids:  # nothing under R copies, nothing left behind
        assert cluster.holders(c) >= set(after.replicas(ring_key(c), R))
        held_before = "n0" in before.replicas(ring_key(c), R)
        assert ("n0" in cluster.holders(c)) == (held_before and c not in moved)


async def test_an_unreachable_replica_keeps_our_copy(cluster):
    ids, before, after, moved = await _join_after_writes(cluster, 900, 60)
    pool = NamePool(cluster)
    await _pull_to_n4(cluster, after, pool)
    cluster.kill("n4")
    _, dropped, kept, _ = await drop_handed_over(
        cluster.stores["n0"], "n0", after, pool, R, timeout_s=5)
    assert dropped == 0 and kept == len(moved)


async def test_handed_over_copies_keep_their_protection(cluster):
    ids, before, after, moved = await _join_after_writes(cluster, 1300, 60)
    pool = NamePool(cluster)
    await _pull_to_n4(cluster, after, pool)
    n0 = cluster.stores["n0"]
    for c in moved:
        await n0.raise_stamp(c, 500)
    late = set(moved[:1])

    class RaisedMeanwhile:
        """n0's store, where a writer raises ``late`` copies right after the
        walk read their stamps: those must stay."""

        def __getattr__(self, name):
            return getattr(n0, name)

        async def stamps_of(self, chunk_ids):
            stamps = await n0.stamps_of(chunk_ids)
            for c in late & set(chunk_ids):
                await n0.raise_stamp(c, 900)
            return stamps

    _, dropped, kept, _ = await drop_handed_over(RaisedMeanwhile(), "n0", after, pool, R,
                                                 timeout_s=5)
    assert (dropped, kept) == (len(moved) - len(late), len(late))
    for c in moved:
        assert all(cluster.stores[h].store.stamp_of(c) >= 500 for h in after.replicas(ring_key(c), R))
        assert n0.store.has(c) == (c in late)


async def test_an_empty_view_keeps_every_copy_and_is_no_error(cluster):
    """Every node stopping at once leaves each one an empty ring: the
    hand-off walk then has nobody to ask (it used to raise 'empty ring',
    logged as an ERROR by every node on shutdown)."""
    ids, before, after, moved = await _join_after_writes(cluster, 1700, 20)
    pool = NamePool(cluster)
    result = await drop_handed_over(cluster.stores["n0"], "n0", Ring([], virtual_ids=16), pool,
                                    R, timeout_s=5)
    assert result == (0, 0, 0, None)
    assert all(cluster.stores["n0"].store.has(c) for c in moved)
