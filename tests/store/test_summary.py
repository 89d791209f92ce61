"""Range summaries let two replicas find their differences without sending
every id."""

from __future__ import annotations

import random

import pytest

from server.store import AsyncChunkStore, ChunkStore, KeyRange, reconcile, summarize
from server.store.keyrange import KEY_MAX

from .conftest import make_chunk


def fill(store: ChunkStore, seeds) -> dict[int, bytes]:
    ids = {}
    for seed in seeds:
        cid, data = make_chunk(seed, 64)
        store.put(cid, data)
        ids[seed] = cid
    return ids


@pytest.fixture
def pair(tmp_path):
    with ChunkStore(tmp_path / "a", fsync_enabled=False) as a, \
            ChunkStore(tmp_path / "b", fsync_enabled=False) as b:
        yield a, b


def test_equal_sets_have_equal_summaries(pair):
    a, b = pair
    fill(a, range(150))
    fill(b, reversed(range(150)))
    for r in (KeyRange.full(), KeyRange(KEY_MAX - 1000, 1 << 62), KeyRange(5, 1 << 63)):
        assert a.range_summaries(r, 16) == b.range_summaries(r, 16)


def test_summary_counts_match_ids_in_each_subrange(pair):
    a, _ = pair
    ids = list(fill(a, range(200)).values())
    r = KeyRange(1 << 63, 1 << 62)  # wraps
    summaries = a.range_summaries(r, 7)
    assert len(summaries) == 7
    for s in summaries:
        assert s.count == sum(1 for i in ids if s.key_range.contains_id(i))
    assert sum(s.count for s in summaries) == sum(1 for i in ids if r.contains_id(i))


def test_one_missing_id_changes_exactly_one_subrange(pair):
    a, b = pair
    ids = fill(a, range(100))
    fill(b, range(100))
    b.delete(ids[42])
    differing = [
        (x.key_range, x.count - y.count)
        for x, y in zip(a.range_summaries(KeyRange.full(), 16), b.range_summaries(KeyRange.full(), 16))
        if x != y
    ]
    assert len(differing) == 1
    assert differing[0][0].contains_id(ids[42]) and differing[0][1] == 1


def test_summarize_rejects_out_of_order_ids():
    ids = [make_chunk(s)[0] for s in range(5)]
    r = KeyRange.full()
    with pytest.raises(AssertionError):
        summarize(sorted(ids, key=r.order_key, reverse=True), r, 4)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_reconcile_finds_exactly_the_differences(pair, seed):
    rng = random.Random(seed)
    a, b = pair
    shared = range(400)
    only_a = [rng.randrange(10_000, 20_000) for _ in range(rng.randrange(0, 20))]
    only_b = [rng.randrange(20_000, 30_000) for _ in range(rng.randrange(1, 20))]
    fill(a, shared)
    fill(b, shared)
    a_ids = fill(a, only_a)
    b_ids = fill(b, only_b)
    r = KeyRange.full(rng.randrange(1 << 64))
    diff = await reconcile(AsyncChunkStore(a), AsyncChunkStore(b), r, parts=8, leaf_ids_max=32)
    print(f"seed={seed} {diff.summaries_compared=} {diff.ids_listed=}")
    assert sorted(diff.missing_remote) == sorted(set(a_ids.values()))
    assert sorted(diff.missing_local) == sorted(set(b_ids.values()))
    assert not diff.truncated
    # Far fewer ids travel than a full exchange would send.
    assert diff.ids_listed < 800


async def test_reconcile_of_identical_replicas_compares_only_the_top(pair):
    a, b = pair
    fill(a, range(200))
    fill(b, range(200))
    diff = await reconcile(AsyncChunkStore(a), AsyncChunkStore(b), KeyRange.full(), parts=16)
    assert (diff.missing_local, diff.missing_remote, diff.ids_listed) == ([], [], 0)
    assert diff.summaries_compared == 16


async def test_reconcile_stops_at_the_diff_limit(pair):
    a, b = pair
    fill(a, range(300))
    diff = await reconcile(
        AsyncChunkStore(a), AsyncChunkStore(b), KeyRange.full(), parts=4, leaf_ids_max=16,
        diff_ids_max=50,
    )
    assert diff.truncated
    assert 50 <= len(diff.missing_remote) < 300
