"""The sweeper of uncommitted uploads against a fake metadata reader: old
copies of blocks the replica does not know (or forgot, below their mark)
go; live, dying and young ones stay, as do copies stamped above the applied
index and a copy whose stamp a put raised between listing and deleting.
The walk is paged, resumable and paced."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from server.store import AsyncChunkStore
from server.store.sweep import Sweeper, SweepLimits, SweepReport, verdict

from .conftest import make_chunk

S = 10**9
WINDOW_NS = 30 * S


class FakeReader:
    """MetaStore's sweeper-facing reads: block states, and a log clock with
    a Tick at every tenth index (index i has log time i * 1 s)."""

    def __init__(self, applied: int = 1000) -> None:
        self.states: dict[bytes, tuple[str, int]] = {}
        self.applied_index = applied
        self.kept_from = 0  # clock rows below this index were pruned

    def block_state(self, block_id: bytes) -> tuple[str, int]:
        return self.states.get(block_id, ("unknown", 0))

    def log_time_ns(self) -> int:
        return self.applied_index * S

    def log_time_at(self, index: int) -> int | None:
        tick = index - index % 10
        return tick * S if tick >= self.kept_from else None

    def upload_window_ns(self) -> int:
        return WINDOW_NS


@pytest.fixture
async def astore(tmp_path):
    store = await AsyncChunkStore.open(tmp_path / "node", fsync_enabled=False)
    yield store
    store.close()


async def put(astore, seed: int, stamp: int) -> bytes:
    cid, data = make_chunk(seed, 200)
    await astore.put(cid, data, stamp)
    return cid


def test_verdict():
    now = 1000 * S
    old, young = 900 * S, 980 * S
    assert verdict("unknown", 0, 900, 1000, now, old, WINDOW_NS) == "sweep"
    assert verdict("unknown", 0, 900, 1000, now, None, WINDOW_NS) == "sweep"  # older than kept
    assert verdict("unknown", 0, 980, 1000, now, young, WINDOW_NS) == "young"
    assert verdict("unknown", 0, 1001, 1000, now, None, WINDOW_NS) == "young"  # not applied yet
    assert verdict("gone", 950, 900, 1000, now, old, WINDOW_NS) == "sweep"
    # A gone block's copy stamped after its mark: revivals need a stamp
    # within the window too (server/meta/blocks.py), so only age matters.
    assert verdict("gone", 900, 900, 1000, now, old, WINDOW_NS) == "sweep"
    assert verdict("gone", 900, 980, 1000, now, young, WINDOW_NS) == "young"
    assert verdict("dying", 950, 900, 1000, now, old, WINDOW_NS) == "known"  # GC's
    assert verdict("live", 0, 900, 1000, now, old, WINDOW_NS) == "known"
    # Exactly one window old is still young: commits accept within it.
    assert verdict("unknown", 0, 970, 1000, now, 970 * S, WINDOW_NS) == "young"


async def test_a_pass_sweeps_old_unknown_copies_and_keeps_the_rest(astore):
    reader = FakeReader(applied=1000)
    old_unknown = await put(astore, 1, 900)
    ancient = await put(astore, 2, 5)
    young_unknown = await put(astore, 3, 985)
    live = await put(astore, 4, 900)
    dying = await put(astore, 5, 900)
    gone_below = await put(astore, 6, 900)
    gone_above = await put(astore, 7, 960)
    ahead = await put(astore, 8, 1200)     # a put carrying an index we have not applied
    reader.states.update({live: ("live", 0), dying: ("dying", 950),
                          gone_below: ("gone", 950), gone_above: ("gone", 950)})
    reader.kept_from = 100                 # index 5's time is no longer kept: very old

    report = await Sweeper(astore, reader, "n1").sweep_pass()

    left = set(await astore.list_ids(None, None, 100))
    assert left == {young_unknown, live, dying, ahead}
    assert not left & {old_unknown, ancient, gone_below, gone_above}
    assert (report.examined, report.swept, report.kept_known, report.kept_young) == (8, 4, 2, 2)
    assert report.complete and astore.store.chunk_count == 4


async def test_a_copy_raised_between_listing_and_deleting_stays(astore):
    reader = FakeReader(applied=1000)
    raced = await put(astore, 10, 100)
    other = await put(astore, 11, 100)

    class RaisedMeanwhile:
        """The store, where a writer stores ``raced`` again right after the
        sweeper read its stamp."""

        def __getattr__(self, name):
            return getattr(astore, name)

        async def stamps_of(self, chunk_ids):
            stamps = await astore.stamps_of(chunk_ids)
            await astore.put(*make_chunk(10, 200), reader.applied_index)
            return stamps

    report = await Sweeper(RaisedMeanwhile(), reader, "n1").sweep_pass()
    assert astore.store.has(raced) and not astore.store.has(other)
    assert (report.swept, report.kept_raised) == (1, 1)
    assert astore.store.stamp_of(raced) == 1000


async def test_a_replica_without_log_time_sweeps_nothing(astore):
    reader = FakeReader(applied=0)
    await put(astore, 20, 0)
    report = await Sweeper(astore, reader, "n1").sweep_pass()
    assert report.swept == 0 and astore.store.chunk_count == 1


async def test_the_walk_is_paged_and_resumes_at_its_cursor(astore):
    reader = FakeReader(applied=1000)
    ids = sorted([await put(astore, 30 + i, 10) for i in range(10)])
    reader.states.update({cid: ("live", 0) for cid in ids})
    sweeper = Sweeper(astore, reader, "n1", limits=SweepLimits(page_ids=4))
    report = SweepReport()
    ends = [await sweeper.step(report) for _ in range(3)]
    assert ends == [False, False, True] and report.examined == 10
    assert sweeper.cursor is None
    # Blocks the replica forgets later are swept by a later pass.
    reader.states.clear()
    assert await sweeper.step(report) is False
    assert astore.store.chunk_count == 6


class MemoryStore:
    """The three store calls the sweeper makes, without worker threads, so
    the autojump clock moves only when the sweeper sleeps."""

    def __init__(self, stamps: dict[bytes, int]) -> None:
        self.stamps = stamps

    async def list_ids(self, key_range, after_id, ids_max):
        return sorted(c for c in self.stamps if after_id is None or c > after_id)[:ids_max]

    async def stamps_of(self, chunk_ids):
        return [self.stamps.get(c) for c in chunk_ids]

    async def delete_below(self, chunk_id, mark):
        raise AssertionError("nothing here may be swept")


async def test_passes_are_paced_and_survive_failures(autojump_clock):
    reader = FakeReader(applied=1000)
    calls = []

    def flaky_state(block_id):
        calls.append(trio.current_time())
        if len(calls) == 2:
            raise RuntimeError("replica busy")
        return ("live", 0)

    reader.block_state = flaky_state
    sweeper = Sweeper(MemoryStore({make_chunk(40)[0]: 10}), reader, "n1",
                      limits=SweepLimits(pass_interval_s=180.0, failure_backoff_s=5.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(sweeper.run)
        await trio.sleep(400)
        nursery.cancel_scope.cancel()
    # A pass at 0; the one at 180 fails and is retried 5 s later; the next
    # comes a whole interval after that one started.
    assert [round(t) for t in calls] == [0, 180, 185, 365]
    assert sweeper.passes == 3 and sweeper.last.kept_known == 1


def test_nodes_without_metadata_do_not_sweep(tmp_path):
    from server.config import NodeConfig
    from server.store.maintenance import Maintenance

    cfg = NodeConfig(data_dir=str(tmp_path), node_name="n0")
    assert Maintenance(cfg, None, None, None, None).sweeper is None
    with_meta = Maintenance(cfg, None, None, None, type("M", (), {"reader": FakeReader()})())
    assert with_meta.sweeper is not None and with_meta.sweeper.reader is with_meta.metadata.reader
