"""Key ranges and range iteration against a brute-force reference."""

from __future__ import annotations

import tempfile

import xxhash

from hypothesis import given, settings
from hypothesis import strategies as st

from server.store import ChunkStore, KeyRange, ring_key
from server.store.keyrange import KEY_MAX, RING_SIZE, in_ring_order

EDGE_KEYS = [0, 1, KEY_MAX, KEY_MAX - 1, 1 << 56, (1 << 56) - 1, 1 << 48, (1 << 63) + 5]

keys = st.one_of(st.integers(0, KEY_MAX), st.sampled_from(EDGE_KEYS))
ids = st.builds(
    lambda key, low: key.to_bytes(8, "big") + low, keys, st.binary(min_size=8, max_size=8)
)


def test_contains_is_half_open_and_wraps():
    r = KeyRange(10, 20)
    assert not r.contains_key(10) and r.contains_key(11) and r.contains_key(20)
    assert not r.contains_key(21)
    wrap = KeyRange(KEY_MAX - 1, 2)
    assert [wrap.contains_key(k) for k in (KEY_MAX - 1, KEY_MAX, 0, 2, 3)] == [
        False, True, True, True, False]
    full = KeyRange.full(7)
    assert full.length == RING_SIZE and all(full.contains_key(k) for k in (0, 7, 8, KEY_MAX))


@given(st.integers(0, KEY_MAX), st.integers(0, KEY_MAX), st.integers(1, 40))
def test_split_covers_the_range_exactly(start, end, parts):
    r = KeyRange(start, end)
    subs = r.split(parts)
    assert subs[0].start == start and subs[-1].end == end
    assert all(a.end == b.start for a, b in zip(subs, subs[1:]))
    assert sum(s.length for s in subs) == r.length


@given(st.integers(0, KEY_MAX), st.integers(0, KEY_MAX), keys)
def test_segments_agree_with_contains(start, end, key):
    r = KeyRange(start, end)
    in_segments = any(lo <= key <= hi for lo, hi in r.segments())
    assert in_segments == r.contains_key(key)


def _planted_store(id_set: set[bytes]) -> tuple[ChunkStore, tempfile.TemporaryDirectory]:
    """A store whose chunks/ tree names exactly these ids: iteration reads
    names only, so any key layout (wrap, shared prefixes) can be planted."""
    tmp = tempfile.TemporaryDirectory()
    with ChunkStore(tmp.name, fsync_enabled=False) as planter:
        for chunk_id in id_set:
            planter._ensure_fanout(chunk_id)
            open(planter.chunk_path(chunk_id), "wb").close()
    return ChunkStore(tmp.name, fsync_enabled=False), tmp


@settings(max_examples=100, deadline=None)
@given(st.sets(ids, max_size=30), st.data())
def test_range_iteration_matches_reference(id_set, data):
    store, tmp = _planted_store(id_set)
    with tmp, store:
        near = [ring_key(i) + d for i in id_set for d in (-1, 0, 1)]
        bound = st.one_of(keys, st.sampled_from(near or [0])).map(lambda k: k % RING_SIZE)
        r = KeyRange(data.draw(bound), data.draw(bound))
        expected = in_ring_order(r, id_set)
        assert list(store.iter_ids(r)) == expected
        page_max = data.draw(st.integers(1, 5))
        pages, after = [], None
        while True:
            page = store.list_ids(r, after, page_max)
            pages.extend(page)
            if len(page) < page_max:
                break
            after = page[-1]
        assert pages == expected
        assert store.chunk_count == len(id_set)
        parts = data.draw(st.integers(1, 9))
        summaries = store.range_summaries(r, parts)
        assert [s.key_range for s in summaries] == r.split(parts)
        for s in summaries:
            members = in_ring_order(s.key_range, id_set)
            assert (s.count, s.digest) == (len(members), xxhash.xxh3_128_digest(b"".join(members)))
