"""The census against the in-memory cluster: blocks with a copy on each of
their R placed nodes are healthy, fewer is under-replicated (a copy only on
an extra successor included), none is missing; a node that does not answer
holds nothing and is named; a cluster with fewer live nodes than R has
every block under-replicated.  And the maintenance loops' requests: a
scrub or census asked for runs now, and its pass counter says when it is
done."""

from __future__ import annotations

import trio

from server.config import NodeConfig
from server.raft.messages import Role
from server.ring.ringmath import Ring
from server.store.census import Census, CensusReport
from server.store.keyrange import ring_key
from server.store.maintenance import Maintenance, MaintenanceLimits

from .conftest import make_chunk
from .memcluster import NamePool

R = 3


class Reader:
    def __init__(self, ids):
        self.ids = sorted(ids)
        self.applied_index = 10

    def live_blocks(self, after_id: bytes, limit: int) -> list[bytes]:
        return [i for i in self.ids if i > after_id][:limit]

    def live_block_count(self) -> int:
        return len(self.ids)

    def gc_candidates(self, limit):
        return []

    def log_time_ns(self):
        return 0


async def _place(cluster, blocks, how_many):
    """Copies of each block on the first ``how_many[i]`` of its R + 2 nodes
    (a negative count: only on the last extra successor)."""
    for (cid, data), n in zip(blocks, how_many):
        names = list(cluster.ring.replicas(ring_key(cid), R + 2))
        for name in (names[-1:] if n < 0 else names[:n]):
            await cluster.stores[name].put(cid, data, 1)


async def test_census_counts_healthy_under_replicated_and_missing(cluster):
    blocks = [make_chunk(900 + i, 300) for i in range(40)]
    plan = [3] * 25 + [2] * 6 + [1] * 4 + [0] * 3 + [-1] * 2
    await _place(cluster, blocks, plan)
    census = Census(Reader([c for c, _ in blocks]), lambda: cluster.ring, NamePool(cluster), R,
                    page_max=7)
    report = await census.run()
    assert report.complete and report.blocks_total == report.blocks_checked == 40
    assert (report.healthy, report.under_replicated, report.missing) == (25, 12, 3)
    assert sorted(report.missing_examples) == sorted(c.hex() for (c, _), n in zip(blocks, plan)
                                                     if n == 0)
    assert report.copies_seen == 25 * 3 + 6 * 2 + 4 + 2
    assert report.nodes_unreachable == []


async def test_a_node_that_does_not_answer_holds_nothing(cluster):
    blocks = [make_chunk(1000 + i, 200) for i in range(30)]
    await _place(cluster, blocks, [3] * 30)
    cluster.kill("n2")
    report = await Census(Reader([c for c, _ in blocks]), lambda: cluster.ring,
                          NamePool(cluster), R).run()
    on_n2 = sum("n2" in cluster.ring.replicas(ring_key(c), R) for c, _ in blocks)
    assert on_n2 > 0
    assert (report.under_replicated, report.missing) == (on_n2, 0)
    assert report.nodes_unreachable == ["n2"]


async def test_fewer_live_nodes_than_copies_leaves_every_block_short(cluster):
    blocks = [make_chunk(1100 + i, 200) for i in range(10)]
    two = Ring(["n0", "n1"], virtual_ids=16)
    for cid, data in blocks:
        for name in ("n0", "n1"):
            await cluster.stores[name].put(cid, data, 1)
    report = CensusReport()
    await Census(Reader([c for c, _ in blocks]), lambda: two, NamePool(cluster), R).run(report)
    assert (report.healthy, report.under_replicated, report.missing) == (0, 10, 0)


class _Leader:
    def __init__(self, reader):
        self.reader = reader
        self.group = self.service = self.core = self
        self.role = Role.LEADER


def _maintenance(cluster, reader, **limits) -> Maintenance:
    cfg = NodeConfig(data_dir="/nonexistent", node_name="n0", replication_factor=R,
                     scrub_interval_s=86400.0)
    ring = type("RingStub", (), {"view": lambda self: cluster.ring})()
    return Maintenance(cfg, cluster.stores["n0"], ring, NamePool(cluster), _Leader(reader),
                       limits=MaintenanceLimits(**limits))


async def _until(predicate) -> None:
    while not predicate():
        await trio.sleep(1.0)


async def test_requested_scrub_and_census_run_now(nursery, tmp_path, patient_clock):
    from .memcluster import open_cluster
    cluster = await open_cluster(nursery, tmp_path)
    blocks = [make_chunk(1200 + i, 500) for i in range(12)]
    await _place(cluster, blocks, [3] * 10 + [1] * 2)
    m = _maintenance(cluster, Reader([c for c, _ in blocks]), scrub_first_delay_s=3600.0,
                     census_interval_s=1e6, census_check_s=1e6, debounce_s=1.0)
    nursery.start_soon(m._scrub_loop)
    nursery.start_soon(m._census_loop)
    started_s = trio.current_time()

    target = m.request_scrub(bytes_per_s=1e9)
    assert target == 1
    await _until(lambda: m.scrub_passes >= target)
    held = cluster.stores["n0"].store.stats().chunk_count
    assert m.scrub_last.checked_count == held > 0
    assert m.status()["scrub_last"]["finished_wall_s"] is not None

    target = m.request_census()
    await _until(lambda: m.census_passes >= target)
    assert trio.current_time() - started_s < 60, "requests must not wait for the intervals"
    last = m.status()["census_last"]
    assert (last["healthy"], last["under_replicated"], last["missing"]) == (10, 2, 0)

    # Untouched, the next pass comes at its interval.
    await trio.sleep(86400.0 - 120)
    assert m.scrub_passes == 1
    await trio.sleep(240)
    assert m.scrub_passes == 2
    cluster.close()


async def test_only_the_leader_counts(cluster):
    m = _maintenance(cluster, Reader([]))
    m.metadata.role = Role.FOLLOWER
    try:
        m.request_census()
    except LookupError as e:
        assert "does not lead" in str(e)
    else:
        raise AssertionError("a follower accepted a census request")
