"""Ring math against a brute-force reference (hypothesis, derandomized so
every run checks the same examples)."""

import xxhash
from hypothesis import given, settings, strategies as st

from server.ring.ringmath import (
    KEY_MAX, RING_SIZE, KeyRange, Ring, gained_lost, in_open_closed, in_open_open,
    key_of_chunk, key_of_name, merge_ranges, moved_ranges, node_id, node_points,
)

names_st = st.sets(st.text(min_size=1, max_size=6), min_size=1, max_size=7)
keys_st = st.lists(st.integers(0, KEY_MAX), max_size=20)
vids_st = st.integers(1, 6)
replicas_st = st.integers(1, 4)


def ref_points(names, vids):
    return sorted((xxhash.xxh3_64_intdigest(n.encode(), seed=i), n)
                  for n in names for i in range(vids))


def ref_owner_index(points, key):
    # The point at the least clockwise distance from key (distance 0 = key itself).
    return min(range(len(points)), key=lambda i: (points[i][0] - key) % RING_SIZE)


def ref_replicas(points, key, r):
    i, out = ref_owner_index(points, key), []
    for step in range(len(points)):
        name = points[(i + step) % len(points)][1]
        if name not in out and len(out) < r:
            out.append(name)
    return tuple(out)


def probe_keys(ring_names, vids, extra):
    """Boundary keys: every point, its neighbours, both ends of the key space."""
    keys = set(extra) | {0, KEY_MAX}
    for p, _ in ref_points(ring_names, vids):
        keys |= {p, (p + 1) % RING_SIZE, (p - 1) % RING_SIZE}
    return keys


@settings(max_examples=150, deadline=None, derandomize=True)
@given(names_st, vids_st, replicas_st, keys_st)
def test_successor_and_replicas_match_reference(names, vids, r, keys):
    ring, points = Ring(names, vids), ref_points(names, vids)
    for key in probe_keys(names, vids, keys):
        assert ring.successor(key) == points[ref_owner_index(points, key)][1]
        assert ring.replicas(key, r) == ref_replicas(points, key, r)
        assert len(set(ring.replicas(key, r))) == min(r, len(names))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(names_st, vids_st, replicas_st, keys_st)
def test_ranges_match_reference(names, vids, r, keys):
    ring, points = Ring(names, vids), ref_points(names, vids)
    total = 0
    for name in names:
        primary = ring.primary_ranges(name)
        total += sum(rng.length for rng in primary)
        holds = ring.replica_ranges(name, r)
        for key in probe_keys(names, vids, keys):
            owner = points[ref_owner_index(points, key)][1]
            assert any(key in rg for rg in primary) == (owner == name)
            assert any(key in rg for rg in holds) == (name in ref_replicas(points, key, r))
    assert total == RING_SIZE  # primary ranges tile the circle exactly once


@settings(max_examples=100, deadline=None, derandomize=True)
@given(names_st, names_st, vids_st, replicas_st, keys_st)
def test_moved_ranges_are_exactly_the_changed_keys(old_names, new_names, vids, r, keys):
    before, after = Ring(old_names, vids), Ring(new_names, vids)
    moves = moved_ranges(before, after, r)
    for key in probe_keys(old_names | new_names, vids, keys):
        hits = [m for m in moves if key in m.range]
        old, new = before.replicas(key, r), after.replicas(key, r)
        if old == new:
            assert hits == []
        else:
            assert len(hits) == 1 and (hits[0].before, hits[0].after) == (old, new)
    for name in old_names | new_names:
        gained, lost = gained_lost(moves, name)
        for key in probe_keys(old_names | new_names, vids, keys):
            was, now = name in before.replicas(key, r), name in after.replicas(key, r)
            assert any(key in g for g in gained) == (now and not was)
            assert any(key in g for g in lost) == (was and not now)


def test_join_and_leave_move_only_the_neighbourhood():
    names = {f"n{i}" for i in range(10)}
    ring = Ring(names, 8)
    grown = ring.with_node("new")
    moves = moved_ranges(ring, grown, 3)
    assert moves and all("new" in m.after and "new" not in m.before for m in moves)
    moved = sum(m.range.length for m in moves) / RING_SIZE
    assert moved < 0.5  # roughly R/N of the keys, never the whole ring
    assert moved_ranges(grown, ring, 3) == tuple(
        type(m)(m.range, m.after, m.before) for m in moves)


@settings(derandomize=True)
@given(st.integers(0, KEY_MAX), st.integers(0, KEY_MAX), st.integers(0, KEY_MAX))
def test_intervals(x, a, b):
    d = (x - a) % RING_SIZE
    span = (b - a) % RING_SIZE or RING_SIZE
    assert in_open_closed(x, a, b) == (0 < d <= span or (a == b))
    assert in_open_open(x, a, b) == (0 < d < span)


@settings(derandomize=True)
@given(st.lists(st.integers(0, KEY_MAX), min_size=1, max_size=8, unique=True))
def test_merge_ranges_keeps_the_covered_keys(cuts):
    cuts.sort()
    pieces = [KeyRange(cuts[i - 1], cuts[i]) for i in range(len(cuts))]
    merged = merge_ranges(pieces)
    assert merged == (KeyRange(cuts[0], cuts[0]),)  # consecutive pieces: full circle
    some = merge_ranges(pieces[::2])
    for key in cuts:
        assert any(key in r for r in some) == any(key in r for r in pieces[::2])


def test_hashes_are_full_width_and_distinct_for_short_names():
    # The seed system kept only the name's bytes: every short name hashed
    # near zero. Here all one- and two-letter names get distinct keys spread
    # over the whole ring.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    names = letters + [a + b for a in letters for b in letters]
    keys = [key_of_name(n) for n in names]
    assert len(set(keys)) == len(names)
    assert max(keys) > RING_SIZE // 2 > min(keys)
    assert sum(k >= RING_SIZE // 2 for k in keys) / len(keys) > 0.4
    assert key_of_name("a") == xxhash.xxh3_64_intdigest(b"a")
    assert node_id("a:7070") == node_points("a:7070", 4)[0]


def test_chunk_key_is_the_high_64_bits():
    cid = xxhash.xxh3_128_digest(b"hello")
    assert key_of_chunk(cid) == xxhash.xxh3_128_intdigest(b"hello") >> 64
