"""ReplicatedStore over an in-memory 5-node cluster: placement, write
quorum, dedup, fallback on down / hung / empty / corrupt replicas, read repair."""

from __future__ import annotations

import errno

import pytest
import trio

from server.store import HashMismatch
from server.store.replication import (ChunkUnavailable, ReplicatedStore, ReplicationLimits,
                                     WriteQuorumNotMet)

from .conftest import FakeDisk, make_chunk
from .memcluster import open_cluster



def client(cluster, **kw) -> ReplicatedStore:
    kw.setdefault("timeout_s", 5)
    return ReplicatedStore(cluster.pool, cluster.ring, cluster.addr_of, **kw)


async def test_put_lands_on_exactly_the_replica_set(cluster):
    rs = client(cluster)
    for seed in range(20):
        cid, data = make_chunk(seed)
        result = await rs.put(cid, data)
        assert set(result.acked) == set(rs.replicas(cid)) == cluster.holders(cid)
        assert len(result.acked) == 3 and result.failed == {}
        assert await rs.get(cid) == data
    assert rs.stats.get_fallbacks == 0


async def test_second_put_is_deduplicated(cluster):
    rs = client(cluster)
    cid, data = make_chunk(1, 100_000)  # above dedup_bytes_min: looked up first
    assert len((await rs.put(cid, data)).uploaded) == 3
    again = await rs.put(cid, data)
    assert again.uploaded == () and len(again.acked) == 3
    assert rs.stats.dedup_skips == 3 and rs.stats.bytes_uploaded == 3 * 100_000


async def test_put_refuses_data_that_does_not_match_its_id(cluster):
    rs = client(cluster)
    cid, data = make_chunk(2)
    with pytest.raises(HashMismatch):
        await rs.put(cid, data + b"!")
    assert cluster.holders(cid) == set()


async def test_owner_down_reads_fall_back_and_writes_need_live_replicas(cluster):
    rs = client(cluster)
    cid, data = make_chunk(3)
    await rs.put(cid, data)
    owner = rs.replicas(cid)[0]
    cluster.kill(owner)
    assert await rs.get(cid) == data
    assert rs.stats.get_fallbacks == 1
    other, other_data = make_chunk(4)
    while rs.replicas(other)[0] != owner:  # a chunk the dead node owns
        other, other_data = make_chunk(int.from_bytes(other[:4], "big"))
    result = await rs.put(other, other_data)  # default W: the live ones, >= 2
    assert len(result.acked) == 2 and owner in result.failed
    with pytest.raises(WriteQuorumNotMet) as info:
        await client(cluster, W=3).put(other, other_data)
    assert info.value.failed.keys() == {owner} and len(info.value.acked) == 2
    assert "ConnectionLost" in str(info.value) and info.value.errno == errno.EIO


async def test_one_live_replica_is_not_enough(cluster):
    rs = client(cluster)
    cid, data = make_chunk(5)
    for name in rs.replicas(cid)[:2]:
        cluster.kill(name)
    with pytest.raises(WriteQuorumNotMet) as info:
        await rs.put(cid, data)
    assert info.value.needed == 2 and len(info.value.acked) == 1
    assert await client(cluster, W=1).put(cid, data)


async def test_a_full_replica_sends_the_copy_to_the_next_successor(nursery, tmp_path):
    cluster = await open_cluster(nursery, tmp_path, statvfs=FakeDisk())
    try:
        rs = client(cluster)
        cid, data = make_chunk(6, 8192)
        full = rs.replicas(cid)[2]
        cluster.stores[full].store._statvfs = FakeDisk(free_bytes=0)
        result = await rs.put(cid, data)
        spill = rs.replicas(cid, 4)[3]
        assert "noSpace" in result.failed[full] and len(result.acked) == 3
        assert cluster.holders(cid) == set(rs.replicas(cid, 4)) - {full} and spill in result.acked
        assert rs.full_nodes() == [full] and rs.stats.put_redirects == 1
        assert await rs.get(cid) == data
        with pytest.raises(WriteQuorumNotMet) as info:  # every copy wanted: the full one counts
            await client(cluster, W=3, limits=ReplicationLimits(spill_replicas_max=0)).put(cid, data)
        assert info.value.failed.keys() == {full}
    finally:
        cluster.close()


async def test_hung_owner_costs_a_read_the_hedge_delay_not_the_deadline(cluster, patient_clock):
    rs = client(cluster, timeout_s=3)
    cid, data = make_chunk(7)
    await client(cluster, timeout_s=1000).put(cid, data)
    cluster.hang(rs.replicas(cid)[0])
    started = trio.current_time()
    assert await rs.get(cid) == data
    assert trio.current_time() - started < 1 and rs.stats.hedges == 1
    assert rs.read_candidates(cid)[-1] == rs.replicas(cid)[0]  # read last for a while


async def test_read_repair_restores_a_missing_copy(cluster):
    rs = client(cluster)
    cid, data = make_chunk(8)
    await rs.put(cid, data)
    owner = rs.replicas(cid)[0]
    await cluster.stores[owner].delete(cid)
    assert await rs.get(cid) == data
    assert owner in cluster.holders(cid) and rs.stats.read_repairs == 1


async def test_corrupt_copy_is_skipped_and_replaced(cluster):
    rs = client(cluster)
    cid, data = make_chunk(9, 10_000)
    await rs.put(cid, data)
    owner = rs.replicas(cid)[0]
    with open(cluster.stores[owner].store.chunk_path(cid), "r+b") as f:
        f.seek(5000)
        f.write(b"rot")
    assert await rs.get(cid) == data
    assert rs.stats.read_repairs == 1
    assert await cluster.stores[owner].get(cid) == data  # verified read of the new copy


async def test_background_read_repair(cluster, nursery):
    rs = client(cluster, repair_nursery=nursery)
    cid, data = make_chunk(10)
    await rs.put(cid, data)
    for name in rs.replicas(cid)[:2]:
        await cluster.stores[name].delete(cid)
    assert await rs.get(cid) == data
    with trio.fail_after(5):
        while rs.stats.read_repairs < 2:
            await trio.sleep(0.01)
    assert cluster.holders(cid) == set(rs.replicas(cid))


async def test_missing_everywhere_is_enoent_and_unreachable_is_eio(cluster):
    rs = client(cluster)
    cid, _ = make_chunk(11)
    with pytest.raises(ChunkUnavailable) as info:
        await rs.get(cid)
    assert info.value.errno == errno.ENOENT and len(info.value.tried) == len(rs.read_candidates(cid))
    cluster.kill(rs.replicas(cid)[1])
    with pytest.raises(ChunkUnavailable) as info:
        await rs.get(cid)
    assert info.value.errno == errno.EIO
