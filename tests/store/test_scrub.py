"""Scrub on trio's virtual clock: throttling, corruption reporting, resume."""

from __future__ import annotations

import pytest
import trio

from server.store import AsyncChunkStore, KeyRange, scrub

from .conftest import make_chunk
from .test_chunkstore import corrupt_on_disk

CHUNK_BYTES = 10_000


@pytest.fixture
async def astore(tmp_path):
    astore = await AsyncChunkStore.open(tmp_path / "node", fsync_enabled=False)
    yield astore
    astore.close()


def fill(astore, count):
    ids = []
    for seed in range(count):
        cid, data = make_chunk(seed, CHUNK_BYTES)
        astore.store.put(cid, data)
        ids.append(cid)
    return ids


async def test_clean_store_scrubs_clean_at_the_throttled_rate(astore, autojump_clock):
    fill(astore, 20)
    start = trio.current_time()
    report = await scrub(astore, bytes_per_s=10_000)
    elapsed = trio.current_time() - start
    assert report.complete and report.corrupt_count == 0
    assert (report.checked_count, report.checked_bytes) == (20, 20 * CHUNK_BYTES)
    # One chunk per second at 10 kB/s; the last one needs no wait after it.
    assert elapsed == pytest.approx(19.0)


async def test_corrupt_chunks_are_quarantined_and_reported(astore, autojump_clock):
    ids = fill(astore, 30)
    bad = {ids[3], ids[17], ids[29]}
    for cid in bad:
        corrupt_on_disk(astore.store, cid, 1234)
    repaired = []

    async def on_corrupt(chunk_id):
        await trio.sleep(1)  # a repair takes time; it must not break the scan
        repaired.append(chunk_id)

    report = await scrub(astore, bytes_per_s=1e9, on_corrupt=on_corrupt)
    assert set(report.corrupt_ids) == bad == set(repaired)
    assert (report.corrupt_count, report.checked_count) == (3, 27)
    assert astore.store.chunk_count == 27 and astore.store.quarantined_count == 3
    assert all(not astore.store.has(c) for c in bad)


async def test_scrub_resumes_from_last_id(astore, autojump_clock):
    fill(astore, 25)
    first = await scrub(astore, bytes_per_s=1e9, chunks_max=10)
    assert not first.complete and first.checked_count == 10
    rest = await scrub(astore, bytes_per_s=1e9, after_id=first.last_id)
    assert rest.complete and rest.checked_count == 15


async def test_scrub_of_a_range_checks_only_that_range(astore, autojump_clock):
    ids = fill(astore, 40)
    r = KeyRange(1 << 63, 1 << 62)
    report = await scrub(astore, bytes_per_s=1e9, key_range=r)
    assert report.checked_count == sum(1 for i in ids if r.contains_id(i))
