"""The GC deleter against a fake metadata replica on the in-memory cluster:
dying blocks are deleted below their mark on their replica set plus the
extra successors and forgotten only once every one of those nodes answered
(deleted, absent or kept a newer copy); a copy stamped at or above the mark
is never deleted; a block a node did not answer for waits while the rest
drain; a full batch that made progress is followed at once by the next."""

from __future__ import annotations

import errno

import random

import trio

from server.config import NodeConfig
from server.meta import codec
from server.meta.types import ForgetChunks
from server.raft.messages import Role
from server.store.keyrange import ring_key
from server.store.maintenance import Maintenance, MaintenanceLimits

from .conftest import make_chunk
from .memcluster import NamePool, open_cluster

R = 3
EXTRA = 2


class FakeReader:
    """The metadata reader GC reads: dying blocks and their marks."""

    def __init__(self) -> None:
        self.dying: dict[bytes, int] = {}
        self.applied_index = 1000
        self.asked: list[int] = []

    def gc_candidates(self, limit: int) -> list[tuple[bytes, int]]:
        self.asked.append(limit)
        return sorted(self.dying.items(), key=lambda item: (item[1], item[0]))[:limit]

    def log_time_ns(self) -> int:
        return 0  # no Tick applied: the sweeper sweeps nothing


class FakeMetadata:
    """MetadataGroup as GC sees it: a leader whose proposals apply at once,
    forgetting a block only while it is still dying with the same mark."""

    def __init__(self) -> None:
        self.reader = FakeReader()
        self.group = self.service = self.core = self
        self.role = Role.LEADER
        self.forgotten: list[tuple[bytes, int]] = []
        self.drained = trio.Event()

    async def propose(self, data: bytes, *, timeout_s: float):
        cmd = codec.decode_command(data)
        assert isinstance(cmd, ForgetChunks) and len(cmd.chunk_ids) == len(cmd.marks)
        for chunk_id, mark in zip(cmd.chunk_ids, cmd.marks):
            if self.reader.dying.get(chunk_id) == mark:
                del self.reader.dying[chunk_id]
                self.forgotten.append((chunk_id, mark))
        if not self.reader.dying:
            self.drained.set()
        return self.reader.applied_index, 1, None


def deleter(cluster, metadata, **limits) -> Maintenance:
    cfg = NodeConfig(data_dir="/nonexistent", node_name="n0", replication_factor=R)
    ring = type("RingStub", (), {"view": lambda self: cluster.ring})()
    limits.setdefault("gc_extra_replicas", EXTRA)
    return Maintenance(cfg, cluster.stores["n0"], ring, NamePool(cluster), metadata,
                       limits=MaintenanceLimits(**limits))


def gc_set(cluster, chunk_id) -> list[str]:
    return list(cluster.ring.replicas(ring_key(chunk_id), R + EXTRA))


async def store_copies(cluster, chunk_id, data, stamps: dict[str, int]) -> None:
    for name, stamp in stamps.items():
        await cluster.stores[name].put(chunk_id, data, stamp)


async def test_dying_blocks_are_deleted_below_their_mark_and_forgotten(cluster):
    metadata = FakeMetadata()
    blocks = [make_chunk(400 + i, 700) for i in range(12)]
    newer = blocks[0][0]
    for i, (cid, data) in enumerate(blocks):
        names = gc_set(cluster, cid)
        # Copies on the replica set and a stray one on the last extra successor.
        await store_copies(cluster, cid, data, {n: 10 + i for n in names[:R] + names[-1:]})
        metadata.reader.dying[cid] = 50
    # A writer stored `newer` again after it died (stamp >= mark) on one node.
    keeper = gc_set(cluster, newer)[1]
    await cluster.stores[keeper].raise_stamp(newer, 50)

    report = await deleter(cluster, metadata)._gc_once()

    assert sorted(metadata.forgotten) == sorted((cid, 50) for cid, _ in blocks)
    assert metadata.reader.dying == {}
    assert cluster.holders(newer) == {keeper}, "the copy stamped at the mark stays"
    assert all(not cluster.holders(cid) for cid, _ in blocks[1:])
    assert (report.candidates, report.forgotten, report.unconfirmed) == (12, 12, 0)
    assert report.copies_kept == 1 and report.copies_deleted == 12 * 4 - 1
    assert report.copies_absent == 12 * (R + EXTRA) - 12 * 4


async def test_a_node_that_does_not_answer_holds_back_only_its_blocks(nursery, tmp_path,
                                                                     patient_clock):
    cluster = await open_cluster(nursery, tmp_path, count=8)
    metadata = FakeMetadata()
    blocks = [make_chunk(500 + i, 300) for i in range(40)]
    for i, (cid, data) in enumerate(blocks):
        await store_copies(cluster, cid, data, {n: 5 for n in gc_set(cluster, cid)[:R]})
        metadata.reader.dying[cid] = 6 + i  # oldest mark first
    cluster.kill("n3")
    gc = deleter(cluster, metadata, gc_batch_max=8, gc_retry_s=60.0)
    stuck = {cid for cid, _ in blocks if "n3" in gc_set(cluster, cid)}
    assert stuck and len(stuck) < len(blocks)

    for _ in range(10):
        await gc._gc_once()
    # Everything not involving n3 drained past the stuck ones at the head.
    assert set(metadata.reader.dying) == stuck
    assert all(cluster.holders(cid) <= {"n3"} for cid, _ in blocks if cid in stuck)
    assert gc.gc_last.candidates == 0 and gc.gc_last.skipped_deferred == len(stuck)

    cluster.pool.revive(cluster.addr_of["n3"])
    await gc._gc_once()
    assert gc.gc_last.candidates == 0, "deferred blocks wait for gc_retry_s"
    await trio.sleep(61)
    for _ in range(10):
        await gc._gc_once()
    assert metadata.reader.dying == {}
    assert all(not cluster.holders(cid) for cid, _ in blocks)
    cluster.close()


async def test_a_full_batch_with_progress_starts_the_next_pass_at_once(cluster, patient_clock):
    metadata = FakeMetadata()
    for i in range(30):
        cid, data = make_chunk(600 + i, 100)
        await cluster.stores["n1"].put(cid, data, 1)
        metadata.reader.dying[cid] = 2
    gc = deleter(cluster, metadata, gc_batch_max=8, gc_interval_s=30.0)
    started_s = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gc._gc_loop)
        await metadata.drained.wait()
        drained_s = trio.current_time() - started_s
        await trio.sleep(31)
        nursery.cancel_scope.cancel()
    # The first pass after the interval, the next three without a pause
    # (8, 8, 8, 6 blocks), then a pass every interval again.
    assert 30 <= drained_s < 45
    assert metadata.reader.asked == [8, 8, 8, 8, 8]


async def test_no_copy_stamped_at_or_above_its_mark_is_ever_deleted(cluster):
    rng = random.Random(11)
    metadata = FakeMetadata()
    expected_left = set()
    for i in range(30):
        cid, data = make_chunk(700 + i, 200)
        mark = rng.randrange(10, 20)
        for name in gc_set(cluster, cid):
            if rng.random() < 0.6:
                stamp = rng.randrange(0, 30)
                await cluster.stores[name].put(cid, data, stamp)
                if stamp >= mark:
                    expected_left.add((cid, name))
        metadata.reader.dying[cid] = mark
    await deleter(cluster, metadata)._gc_once()
    left = {(cid, name) for name, store in cluster.stores.items()
            for cid in store.store.list_ids(None, None, 10_000)}
    assert left == expected_left
    assert metadata.reader.dying == {}


async def test_with_the_real_state_machine_blocks_go_from_dying_to_gone_to_swept(cluster):
    """The reader methods GC and the sweeper call, on a real MetaStore:
    a file's blocks die, GC deletes below the mark and forgets them; the copy
    a writer stored again after the death stays, and the sweeper removes it
    once its stamp is a window old in log time (no revival can use it then)."""
    from server.meta import types as t
    from server.store.sweep import Sweeper
    from tests.meta.helpers import Driver

    d = Driver()
    d.do(t.Tick, now_ns=d.now_ns)
    window_s = d.store.upload_window_ns() // 10**9
    f = d.create(t.ROOT_INO, b"f")
    blocks = [make_chunk(800 + i, 900) for i in range(3)]
    slices, stamps = [], []
    for i, (cid, data) in enumerate(blocks):
        for name in gc_set(cluster, cid)[:R]:
            stamps.append((await cluster.stores[name].put(cid, data, d.index)).stamp)
        slices.append(t.Slice(900 * i, 900, cid, 0, 900, fresh=True))
    assert d.do(t.CommitWrite, ino=f, size=2700, slices=slices, observed=min(stamps)).err == 0
    assert d.do(t.SetAttr, ino=f, size=0).err == 0
    mark = d.index
    assert sorted(d.store.gc_candidates(10)) == sorted((cid, mark) for cid, _ in blocks)
    # A writer stores blocks[0] again after its death, on one node; never commits.
    keeper = gc_set(cluster, blocks[0][0])[0]
    await cluster.stores[keeper].put(*blocks[0], d.index)
    d.do(t.Tick, now_ns=d.store.log_time_ns() + (window_s + 1) * 10**9)  # GC comes late

    metadata = FakeMetadata()
    metadata.reader = d.store

    async def propose(data, *, timeout_s):
        return d.index + 1, 1, d.apply(codec.decode_command(data))

    metadata.propose = propose
    report = await deleter(cluster, metadata)._gc_once()
    assert report.forgotten == 3 and report.copies_kept == 1
    assert [d.store.block_state(cid)[0] for cid, _ in blocks] == ["gone"] * 3
    assert {n for cid, _ in blocks for n in cluster.holders(cid)} == {keeper}

    # Gone, and stamped after the mark, but a window old in log time: no
    # commit can revive the block from this copy any more (blocks.py), so
    # the sweeper need not wait for the tombstone to expire.
    sweeper = Sweeper(cluster.stores[keeper], d.store, keeper)
    report = await sweeper.sweep_pass()
    assert report.swept == 1 and not cluster.holders(blocks[0][0])
    refused = d.do(t.CommitWrite, ino=f, size=0, now_ns=d.tick(),
                   slices=slices[:1], observed=min(stamps))
    assert refused.err == errno.ESTALE, "a revival from the swept copy is refused"
