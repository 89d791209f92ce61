"""Anti-entropy repair over an in-memory 5-node cluster: the plan covers
exactly the shared replica ranges, a wiped node is refilled, chunks only we
hold are pushed, unreachable peers are skipped, copies are paced, scrub's
hook restores a corrupt chunk."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from server.store import scrub
from server.store.repair import RepairPass, plan
from server.store.replication import ReplicatedStore

from .conftest import make_chunk


@pytest.fixture
def fast_clock():
    """Virtual time running 20x real time, without jumps: an autojumping
    clock would fire RPC deadlines whenever a worker thread is busy on the
    disk, and 20x keeps the (long) deadlines far from any disk call."""
    return trio.testing.MockClock(rate=20)


def repair_pass(cluster, name, **kw) -> RepairPass:
    kw.setdefault("timeout_s", 5)
    return RepairPass(cluster.stores[name], name, cluster.ring, cluster.pool, cluster.addr_of, **kw)


async def fill(cluster, count=120, size=2000):
    rs = ReplicatedStore(cluster.pool, cluster.ring, cluster.addr_of, timeout_s=5)
    chunks = [make_chunk(1000 + i, size) for i in range(count)]
    for cid, data in chunks:
        await rs.put(cid, data)
    return rs, chunks


def test_plan_covers_exactly_the_shared_ranges(tmp_path):
    from server.ring.ringmath import Ring

    ring = Ring([f"n{i}" for i in range(5)], virtual_ids=16)
    tasks = plan(ring, "n0", 3)
    rng = random.Random(7)
    for _ in range(2000):
        key = rng.getrandbits(64)
        replicas = ring.replicas(key, 3)
        covering = {t.peer for t in tasks if t.key_range.contains_key(key)}
        assert covering == (set(replicas) - {"n0"} if "n0" in replicas else set())


async def test_wiped_node_is_refilled_from_its_peers(cluster):
    rs, chunks = await fill(cluster)
    wiped = cluster.stores["n0"]
    for cid in await wiped.list_ids(None, None, 10_000):
        await wiped.delete(cid)
    progress = []
    report = await repair_pass(cluster, "n0", on_progress=lambda r: progress.append(r.tasks_done)).run()
    expected = [cid for cid, _ in chunks if "n0" in rs.replicas(cid)]
    assert expected and report.chunks_pulled == len(expected) and report.chunks_pushed == 0
    assert report.bytes_copied == 2000 * len(expected) and report.errors == []
    assert sorted(await wiped.list_ids(None, None, 10_000)) == sorted(expected)
    assert progress == list(range(1, report.tasks_total + 1))
    again = await repair_pass(cluster, "n0").run()
    assert again.chunks_copied == 0


async def test_chunks_only_we_hold_are_pushed(cluster):
    rs = ReplicatedStore(cluster.pool, cluster.ring, cluster.addr_of, timeout_s=5)
    mine = []
    seed = 0
    while len(mine) < 10:
        cid, data = make_chunk(seed, 500)
        seed += 1
        if "n1" in rs.replicas(cid):
            await cluster.stores["n1"].put(cid, data)
            mine.append(cid)
    report = await repair_pass(cluster, "n1").run()
    assert report.chunks_pushed == 20  # two other replicas each
    for cid in mine:
        assert cluster.holders(cid) == set(rs.replicas(cid))


async def test_unreachable_peer_is_skipped_and_reported(cluster):
    rs, chunks = await fill(cluster, count=60)
    for name in ("n0",):
        for cid in await cluster.stores[name].list_ids(None, None, 10_000):
            await cluster.stores[name].delete(cid)
    cluster.kill("n2")
    report = await repair_pass(cluster, "n0").run()
    assert report.peers_unreachable == {"n2"} and report.errors
    for cid, _ in chunks:
        replicas = rs.replicas(cid)
        if "n0" in replicas and set(replicas) - {"n0", "n2"}:
            assert "n0" in cluster.holders(cid)


async def test_copies_are_paced(cluster, fast_clock):
    rs = ReplicatedStore(cluster.pool, cluster.ring, cluster.addr_of, timeout_s=1000)
    expected = 0
    seed = 0
    while expected < 6:
        cid, data = make_chunk(5000 + seed, 50_000)
        seed += 1
        replicas = rs.replicas(cid)
        if "n3" in replicas:
            for name in set(replicas) - {"n3"}:
                await cluster.stores[name].put(cid, data)
            expected += 1
    started = trio.current_time()
    report = await repair_pass(cluster, "n3", bytes_per_s=100_000, copies_in_flight_max=1,
                               timeout_s=1000).run()
    assert report.chunks_pulled == 6 and report.chunks_pushed == 0
    # The first copy starts at once; each later one waits for the budget.
    assert trio.current_time() - started >= 5 * 50_000 / 100_000


async def test_scrub_hook_restores_a_corrupt_chunk(cluster):
    rs, chunks = await fill(cluster, count=10)
    cid, data = next((c, d) for c, d in chunks if "n4" in rs.replicas(c))
    with open(cluster.stores["n4"].store.chunk_path(cid), "r+b") as f:
        f.write(b"bad")
    repairer = repair_pass(cluster, "n4")
    report = await scrub(cluster.stores["n4"], bytes_per_s=1e9, on_corrupt=repairer.restore)
    assert report.corrupt_ids == [cid]
    assert await cluster.stores["n4"].get(cid) == data


async def test_copies_keep_their_stamps_when_repair_moves_them(cluster):
    """A copy must not lose its protection by moving: a pushed copy carries
    the pusher's stamp, a pulled one the source's (or the puller's applied
    index when that is higher)."""
    from server.store.keyrange import ring_key

    cid, data = make_chunk(2000, 3000)
    owner, second, third = cluster.ring.replicas(ring_key(cid), 3)
    await cluster.stores[owner].put(cid, data, 70)
    report = await repair_pass(cluster, owner).run()        # pushes to the other two
    assert report.chunks_pushed == 2
    assert {cluster.stores[n].store.stamp_of(cid) for n in (second, third)} == {70}

    await cluster.stores[second].delete(cid)
    for holder in (owner, third):
        await cluster.stores[holder].raise_stamp(cid, 90)
    report = await repair_pass(cluster, second).run()       # pulls from a holder
    assert report.chunks_pulled == 1
    assert cluster.stores[second].store.stamp_of(cid) == 90
    assert await cluster.stores[third].delete_below(cid, 0) == "deleted"
    report = await repair_pass(cluster, third, applied_index=lambda: 120).run()
    assert report.chunks_pulled == 1
    assert cluster.stores[third].store.stamp_of(cid) == 120
