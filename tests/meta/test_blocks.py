"""The extent layout and the block lifecycle (server/meta/blocks.py).

- A rule-based model: random CommitWrites of inline and block slices
  (overlapping, adjacent, inside one extent, covering several), truncates
  and extensions, Compacts with right and stale digests, unlinks, forgets
  and ticks; after every step each file read back from its manifest equals
  a bytearray, and the layout invariants hold (``helpers.check_layout``).
- The lifecycle rules one by one: which commits may name a live, dying,
  gone or unknown block; ForgetChunks; log time, tombstones, clock rows.
- Two writers of different ranges, and a stale writer after an append.
The seeded race of GC deletes, sweeps and dedup writers is in
test_block_race.py.
"""

from __future__ import annotations

import errno

import hypothesis.strategies as st
import pytest
import xxhash
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from server.meta import types as t

from .helpers import T0_NS, Driver, bid, check_layout, fake_block, read_file

ROOT = t.ROOT_INO
W = t.UPLOAD_WINDOW_NS
POOL = [bid(n) for n in range(6)]
POOL_BYTES = {b: 24 + 8 * n for n, b in enumerate(POOL)}


def _rows(d: Driver) -> list:
    """Everything but the applied index: equal lists, nothing changed."""
    conn = d.store.conn
    return [conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
            for table in ("inode", "extent", "block", "clock", "dentry", "xattr")] + [
        conn.execute("SELECT inodes, bytes, chunks, log_ns FROM state").fetchall()]


# ---------------------------------------------------------------- the model

offsets = st.integers(0, 80)
lengths = st.integers(1, 20)


@st.composite
def slice_specs(draw):
    """(off, length, block or None, block_off, inline data)."""
    off, length = draw(offsets), draw(lengths)
    if draw(st.booleans()):
        return t.Slice(off, length, data=draw(st.binary(min_size=length, max_size=length)))
    block = draw(st.sampled_from(POOL))
    length = min(length, POOL_BYTES[block])
    block_off = draw(st.integers(0, POOL_BYTES[block] - length))
    return t.Slice(off, length, block, block_off, POOL_BYTES[block], fresh=True)


files = st.integers(0, 1)  # slots: each holds one file, replaced on unlink


class LayoutModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.d.do(t.Tick, now_ns=T0_NS)
        self.model: dict[int, bytearray] = {}
        self.contents = {b: fake_block(b, n) for b, n in POOL_BYTES.items()}
        self.names: dict[int, bytes] = {}
        self.slots = [self._create(), self._create()]

    def teardown(self) -> None:
        self.d.store.close()

    def _create(self) -> int:
        name = b"f%d" % len(self.names)
        ino = self.d.create(ROOT, name)
        self.model[ino], self.names[ino] = bytearray(), name
        return ino

    @rule(slot=files, slices=st.lists(slice_specs(), min_size=1, max_size=4),
          extra=st.sampled_from([0, 0, 0, 7]), dedup=st.booleans())
    def write(self, slot, slices, extra, dedup):
        """A writer's commit; with ``dedup`` its block slices name blocks it
        found stored (refused unless every one is live)."""
        ino = self.slots[slot]
        if dedup:
            slices = [t.Slice(s.off, s.length, s.block_id, s.block_off, s.block_size, s.data)
                      for s in slices]
        states = {self.d.store.block_state(s.block_id)[0] for s in slices if s.block_id}
        live = states <= {"live"}
        event(f"write {'dedup' if dedup else 'fresh'} of {'/'.join(sorted(states))} blocks")
        end = max(s.off + s.length for s in slices)
        before = _rows(self.d)
        r = self.d.do(t.CommitWrite, ino=ino, size=end + extra, slices=slices,
                      observed=self.d.index)
        if dedup and not live:
            assert r.err == errno.ESTALE and _rows(self.d)[1:] == before[1:], r
            return
        assert r.err == 0, r
        data = self.model[ino]
        data.extend(bytes(max(0, end + extra - len(data))))
        for s in slices:
            body = self.contents[s.block_id][s.block_off:s.block_off + s.length] \
                if s.block_id else s.data
            data[s.off:s.off + s.length] = body
        assert r.attr.size == len(data)

    @rule(slot=files, size=st.integers(0, 110))
    def truncate(self, slot, size):
        ino = self.slots[slot]
        assert self.d.do(t.SetAttr, ino=ino, size=size).err == 0
        data = self.model[ino]
        del data[size:]
        data.extend(bytes(size - len(data)))

    @rule(slot=files, off=st.integers(0, 70), length=st.integers(1, 60),
          stale=st.sampled_from([None, None, "flipped", "other range"]))
    def compact(self, slot, off, length, stale):
        """Rewrite a range into one new block holding its non-hole bytes."""
        ino = self.slots[slot]
        data, d = self.model[ino], self.d
        end = min(off + length, len(data))
        pieces = []  # the bytes extents cover in [off, end): holes stay holes
        for e_off, e_len, *_ in d.store.extents_in(ino, off, end) if end > off else []:
            a, b = max(e_off, off), min(e_off + e_len, end)
            if pieces and pieces[-1][1] == a:
                a = pieces.pop()[0]
            pieces.append((a, b))
        body = b"".join(bytes(data[a:b]) for a, b in pieces)
        block = xxhash.xxh3_128_digest(body)
        self.contents[block] = body
        slices, at = [], 0
        for a, b in pieces:
            slices.append(t.Slice(a, b - a, block, at, len(body), fresh=True))
            at += b - a
        expect = d.store.range_digest(ino, off, length)
        if stale == "flipped":
            expect = bytes([expect[0] ^ 1]) + expect[1:]
        elif stale == "other range":
            other = d.store.range_digest(ino, off + length, length)
            expect = other if other != expect else expect[::-1]
        before = _rows(d)
        r = d.do(t.Compact, ino=ino, off=off, length=length, expect=expect, slices=slices,
                 observed=d.index)
        event(f"compact {'stale' if stale else 'current'} of {len(pieces)} pieces")
        if stale:
            assert r.err == errno.EAGAIN and _rows(d) == before, r
            return
        assert r.err == 0, r
        if end > off:
            got = [tuple(e[:2]) for e in d.store.extents_in(ino, off, end)]
            assert got == [(a, b - a) for a, b in pieces]

    @rule(slot=files)
    def unlink(self, slot):
        ino = self.slots[slot]
        del self.model[ino]
        assert self.d.do(t.Unlink, parent=ROOT, name=self.names[ino]).err == 0
        assert self.d.store.getattr(ino).err == errno.ENOENT
        self.slots[slot] = self._create()

    @rule(limit=st.integers(1, 4), seconds=st.integers(0, 40))
    def gc_and_tick(self, limit, seconds):
        """What the GC deleter proposes after its deletes, then log time
        passes (tombstones and clock rows may expire)."""
        dying = self.d.store.gc_candidates(limit)
        assert self.d.do(t.ForgetChunks, chunk_ids=[i for i, _ in dying],
                         marks=[m for _, m in dying]).err == 0
        for block_id, mark in dying:
            assert self.d.store.block_state(block_id) == ("gone", mark)
        event(f"forget {len(dying)}")
        self.d.do(t.Tick, now_ns=self.d.store.log_time_ns() + seconds * 10**9)

    @invariant()
    def contents_match(self):
        for ino, data in self.model.items():
            assert self.d.attr(ino).size == len(data)
            assert read_file(self.d.store, ino, self.contents) == bytes(data), ino

    @invariant()
    def layout_is_consistent(self):
        check_layout(self.d.store)
        marks = [m for _, m in self.d.store.gc_candidates()]
        assert marks == sorted(marks)


LayoutModel.TestCase.settings = settings(
    max_examples=100, stateful_step_count=30, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLayoutModel = LayoutModel.TestCase


# ---------------------------------------------------------------- lifecycle rules


@pytest.fixture
def d():
    d = Driver()
    d.do(t.Tick, now_ns=T0_NS)
    return d


def blk(n: int, off: int = 0, length: int = 8, fresh: bool = True) -> t.Slice:
    return t.Slice(off, length, bid(n), 0, 8, fresh=fresh)


def commit(d: Driver, ino: int, *slices: t.Slice, observed: int | None = None):
    end = max(s.off + s.length for s in slices)
    return d.do(t.CommitWrite, ino=ino, size=end, slices=list(slices),
                observed=d.index if observed is None else observed)


def kill(d: Driver, ino: int) -> int:
    """Truncate the file to nothing; returns the index its blocks died at."""
    assert d.do(t.SetAttr, ino=ino, size=0).err == 0
    return d.index


def tick(d: Driver, seconds: float) -> None:
    assert d.do(t.Tick, now_ns=d.store.log_time_ns() + int(seconds * 10**9)).err == 0


def test_live_blocks_are_always_accepted(d):
    f, g = d.create(ROOT, b"f"), d.create(ROOT, b"g")
    assert commit(d, f, blk(1)).err == 0
    tick(d, 10 * W / 10**9)  # whatever the time and the stamp
    assert commit(d, g, blk(1, fresh=False), observed=0).err == 0
    assert commit(d, g, blk(1, off=8), observed=0).err == 0
    assert d.store.block_refs(bid(1)) == 3
    check_layout(d.store)


@pytest.mark.parametrize("state", ["dying", "gone", "unknown"])
def test_dedup_of_a_block_that_is_not_live_is_refused_and_changes_nothing(d, state):
    f, g = d.create(ROOT, b"f"), d.create(ROOT, b"g")
    commit(d, g, t.Slice(0, 3, data=b"old"))
    if state != "unknown":
        commit(d, f, blk(1))
        mark = kill(d, f)
        if state == "gone":
            d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
    assert d.store.block_state(bid(1))[0] == state
    before = _rows(d)
    r = commit(d, g, t.Slice(0, 2, data=b"ne"), blk(1, off=2, fresh=False))
    assert r.err == errno.ESTALE
    assert _rows(d) == before and read_file(d.store, g) == b"old"
    # The writer stores the block itself and retries.
    assert commit(d, g, t.Slice(0, 2, data=b"ne"), blk(1, off=2)).err == 0
    assert read_file(d.store, g) == b"ne" + fake_block(bid(1), 8)
    check_layout(d.store)


@pytest.mark.parametrize("state", ["dying", "gone"])
def test_fresh_revival_needs_copies_stamped_at_or_after_the_mark(d, state):
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1))
    mark = kill(d, f)
    if state == "gone":
        d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
        tick(d, W / 10**9)  # the tombstone lasts one window
    assert d.store.block_state(bid(1)) == (state, mark)
    before = _rows(d)
    assert commit(d, f, blk(1), observed=mark - 1).err == errno.ESTALE
    assert _rows(d) == before
    assert commit(d, f, blk(1), blk(2, off=8), observed=mark - 1).err == errno.ESTALE
    assert _rows(d) == before, "one refused block refuses the whole commit"
    assert commit(d, f, blk(1), observed=mark).err == 0
    assert d.store.block_state(bid(1)) == ("live", 0) and d.store.gc_candidates() == []
    check_layout(d.store)


@pytest.mark.parametrize("state", ["dying", "gone"])
def test_fresh_revival_needs_copies_stamped_within_the_window_too(d, state):
    """A sweeper may remove a gone block's copy once its stamp is a window
    old (test_block_race.py), so a stamp at the mark is not enough then."""
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1))
    mark = kill(d, f)  # at log time T0
    tick(d, 10)
    if state == "gone":
        d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
    tick(d, W / 10**9 - 5)  # the stamp at the mark is W + 5 s old, the tombstone W - 5 s
    assert d.store.block_state(bid(1)) == (state, mark)
    before = _rows(d)
    assert commit(d, f, blk(1), observed=mark).err == errno.ESTALE
    assert _rows(d) == before
    assert commit(d, f, blk(1)).err == 0  # stored again, stamped now
    check_layout(d.store)


def test_unknown_fresh_block_only_within_the_upload_window(d):
    f = d.create(ROOT, b"f")
    tick(d, 5)
    stored_at = d.index  # a tick: log time known exactly here
    stamp_time = d.store.log_time_ns()
    d.create(ROOT, b"g")
    assert d.store.log_time_at(d.index) == stamp_time, "between ticks: the last tick"
    assert d.store.log_time_at(stored_at - 1) == stamp_time - 5 * 10**9
    tick(d, W / 10**9)  # exactly one window later: still fine
    assert commit(d, f, blk(1), observed=stored_at).err == 0
    tick(d, 0.000_000_001)  # one ns past the window
    before = _rows(d)
    assert commit(d, f, blk(2, off=8), observed=stored_at).err == errno.ESTALE
    assert _rows(d) == before
    assert commit(d, f, blk(2, off=8), observed=stored_at + 1).err == errno.ESTALE, \
        "a stamp between ticks counts from the tick before it"
    assert commit(d, f, blk(2, off=8), observed=d.index).err == 0
    check_layout(d.store)


def test_log_time_comes_from_ticks_and_never_goes_back(d):
    start = d.store.log_time_ns()
    assert start == T0_NS
    d.do(t.Tick, now_ns=T0_NS - 10**9)  # a leader with a slower clock
    assert d.store.log_time_ns() == T0_NS
    assert d.store.log_time_at(d.index) == T0_NS
    d.do(t.Mkdir, parent=ROOT, name=b"x", mode=0o755, now_ns=T0_NS + 10**12)
    assert d.store.log_time_ns() == T0_NS, "command times are not log time"


def test_clock_rows_expire_after_two_windows_the_newest_stays(d):
    first = d.index  # the fixture's tick
    tick(d, 1)
    second = d.index
    tick(d, 2 * W / 10**9 - 1)  # the first tick is now exactly two windows old
    assert d.store.log_time_at(first) == T0_NS
    tick(d, 0.5)
    assert d.store.log_time_at(first) is None and d.store.log_time_at(second) is not None
    tick(d, 10 * W / 10**9)
    assert d.store.log_time_at(second) is None
    assert d.store.log_time_at(d.index) == d.store.log_time_ns()
    assert d.store.log_time_at(d.index + 100) == d.store.log_time_ns()
    rows = d.store.conn.execute("SELECT count(*) FROM clock").fetchone()[0]
    assert rows == 1
    f = d.create(ROOT, b"f")
    assert commit(d, f, blk(1), observed=second).err == errno.ESTALE, "stamp too old to date"


def test_forget_only_while_dying_with_the_same_mark(d):
    f = d.create(ROOT, b"f")
    assert d.do(t.ForgetChunks, chunk_ids=[bid(9)], marks=[1]).err == 0
    assert d.store.block_state(bid(9)) == ("unknown", 0), "forgetting nothing adds no row"
    commit(d, f, blk(1))
    mark = kill(d, f)
    commit(d, f, blk(1), observed=mark)
    before = _rows(d)
    d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
    assert _rows(d) == before, "live: nothing to forget"
    mark2 = kill(d, f)
    d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
    assert d.store.block_state(bid(1)) == ("dying", mark2), "an old mark is another death"
    tick(d, 3)
    d.do(t.ForgetChunks, chunk_ids=[bid(1), bid(1)], marks=[mark2, mark2])
    assert d.store.block_state(bid(1)) == ("gone", mark2)
    gone_ns = d.store.conn.execute("SELECT gone_ns FROM block").fetchone()[0]
    assert gone_ns == d.store.log_time_ns()
    tick(d, 3)
    d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark2])
    assert d.store.conn.execute("SELECT gone_ns FROM block").fetchone()[0] == gone_ns
    assert d.store.statfs().chunks == 0
    check_layout(d.store)


def test_tombstones_expire_one_window_after_forget(d):
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1), blk(2, off=8))
    mark = kill(d, f)
    tick(d, 1)
    d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark])
    tick(d, 1)
    d.do(t.ForgetChunks, chunk_ids=[bid(2)], marks=[mark])
    tick(d, W / 10**9 - 1)  # bid(1) forgotten exactly one window ago
    assert [d.store.block_state(bid(n)) for n in (1, 2)] == [("gone", mark)] * 2
    tick(d, 0.5)
    assert d.store.block_state(bid(1)) == ("unknown", 0)
    assert d.store.block_state(bid(2)) == ("gone", mark)
    tick(d, 1)
    assert d.store.block_state(bid(2)) == ("unknown", 0)
    assert d.store.conn.execute("SELECT count(*) FROM block").fetchone()[0] == 0
    # Unknown again: a fresh commit needs a recent stamp, the old mark is no help.
    assert commit(d, f, blk(1), observed=mark).err == errno.ESTALE
    assert commit(d, f, blk(1)).err == 0
    check_layout(d.store)


def test_dying_blocks_never_expire_without_forget(d):
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1))
    mark = kill(d, f)
    tick(d, 100 * W / 10**9)
    assert d.store.block_state(bid(1)) == ("dying", mark)
    assert d.store.gc_candidates() == [(bid(1), mark)]


def test_gc_candidates_oldest_mark_first_and_limited(d):
    files = [d.create(ROOT, b"f%d" % i) for i in range(4)]
    for i, f in enumerate(files):
        commit(d, f, blk(10 + i))
    marks = {}
    for i in (2, 0, 3, 1):
        marks[i] = kill(d, files[i])
    want = sorted(((bid(10 + i), m) for i, m in marks.items()), key=lambda p: p[1])
    assert d.store.gc_candidates() == want
    assert d.store.gc_candidates(limit=2) == want[:2]
    d.do(t.ForgetChunks, chunk_ids=[want[0][0]], marks=[want[0][1]])
    assert d.store.gc_candidates() == want[1:], "gone blocks are no candidates"


def test_a_split_extent_never_passes_through_zero_refs(d):
    f = d.create(ROOT, b"f")
    commit(d, f, t.Slice(0, 8, bid(1), 0, 8, fresh=True))
    assert commit(d, f, t.Slice(3, 2, data=b"xy")).err == 0
    assert d.store.block_refs(bid(1)) == 2 and d.store.gc_candidates() == []
    assert read_file(d.store, f) == fake_block(bid(1), 8)[:3] + b"xy" + fake_block(bid(1), 8)[5:]
    check_layout(d.store)


def test_a_new_block_overwritten_in_its_own_commit(d):
    """Once an assert (EIO): the block stays unknown, the sweeper's."""
    f = d.create(ROOT, b"f")
    r = commit(d, f, blk(1), t.Slice(0, 8, data=b"12345678"))
    assert d.store.apply_faults == 0
    assert r.err == 0 and read_file(d.store, f) == b"12345678"
    assert d.store.block_state(bid(1)) == ("unknown", 0)
    check_layout(d.store)


def test_a_dying_block_overwritten_in_its_own_commit_dies_again_later(d):
    """The same on a block with a row: its mark moves up, so the GC
    deletes the copies this commit's writer stored too."""
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1))
    mark = kill(d, f)
    assert commit(d, f, blk(1), t.Slice(0, 8, data=b"12345678")).err == 0
    assert d.store.block_state(bid(1)) == ("dying", d.index) and d.index > mark
    assert read_file(d.store, f) == b"12345678"
    check_layout(d.store)


def test_compact_checks_the_range_is_unchanged(d):
    f = d.create(ROOT, b"f")
    commit(d, f, *[t.Slice(i, 1, data=bytes([65 + i])) for i in range(6)])
    expect = d.store.range_digest(f, 0, 6)
    body = b"ABCDEF"
    new = t.Slice(0, 6, xxhash.xxh3_128_digest(body), 0, 6, fresh=True)
    commit(d, f, t.Slice(2, 1, data=b"c"))  # someone writes between read and compact
    before = _rows(d)
    assert d.do(t.Compact, ino=f, off=0, length=6, expect=expect, slices=[new],
                observed=d.index).err == errno.EAGAIN
    assert _rows(d) == before
    body = b"ABcDEF"
    new = t.Slice(0, 6, xxhash.xxh3_128_digest(body), 0, 6, fresh=True)
    expect = d.store.range_digest(f, 0, 6)
    commit(d, f, t.Slice(7, 1, data=b"z"))  # outside the range: no matter
    assert d.do(t.Compact, ino=f, off=0, length=6, expect=expect, slices=[new],
                observed=d.index).err == 0
    assert read_file(d.store, f, {new.block_id: body}) == b"ABcDEF\0z"
    assert d.store.conn.execute("SELECT nextents, inline_bytes FROM inode WHERE ino = ?",
                                (f,)).fetchone() == (2, 1)
    assert d.attr(f).size == 8
    # Slices must stay inside the range and the file; no inline bytes.
    for bad in ([t.Slice(5, 2, new.block_id, 0, 6)], [t.Slice(6, 4, new.block_id, 0, 6)],
                [t.Slice(0, 1, data=b"A")]):
        assert d.do(t.Compact, ino=f, off=0, length=6, expect=d.store.range_digest(f, 0, 6),
                    slices=bad).err == errno.EINVAL
    check_layout(d.store)


def test_compact_with_a_dying_block_needs_fresh_copies_too(d):
    f, g = d.create(ROOT, b"f"), d.create(ROOT, b"g")
    commit(d, g, blk(1))
    mark = kill(d, g)
    commit(d, f, t.Slice(0, 8, data=fake_block(bid(1), 8)))
    expect = d.store.range_digest(f, 0, 8)
    assert d.do(t.Compact, ino=f, off=0, length=8, expect=expect, slices=[blk(1, fresh=False)],
                observed=d.index).err == errno.ESTALE
    assert d.do(t.Compact, ino=f, off=0, length=8, expect=expect, slices=[blk(1)],
                observed=mark - 1).err == errno.ESTALE
    assert d.do(t.Compact, ino=f, off=0, length=8, expect=expect, slices=[blk(1)],
                observed=mark).err == 0
    assert d.store.block_state(bid(1)) == ("live", 0)
    check_layout(d.store)


def test_clone_shares_blocks_and_later_writes_stay_apart(d):
    f = d.create(ROOT, b"f")
    commit(d, f, blk(1), t.Slice(8, 3, data=b"abc"), blk(2, off=20))
    r = d.do(t.Clone, src=f, parent=ROOT, name=b"g", mode=0o600, uid=1, gid=2)
    assert r.err == 0 and r.attr.size == 28 and r.attr.mode & 0o7777 == 0o600
    g = r.attr.ino
    assert read_file(d.store, g) == read_file(d.store, f)
    assert [d.store.block_refs(bid(n)) for n in (1, 2)] == [2, 2]
    commit(d, g, t.Slice(0, 8, data=b"GGGGGGGG"))
    d.do(t.SetAttr, ino=f, size=4)
    assert read_file(d.store, f) == fake_block(bid(1), 8)[:4]
    assert read_file(d.store, g)[:11] == b"GGGGGGGGabc"
    assert [d.store.block_refs(bid(n)) for n in (1, 2)] == [1, 1]
    assert d.store.statfs().bytes == 4 + 28
    check_layout(d.store)


# ---------------------------------------------------------------- two writers

MIB = 1 << 20


@pytest.mark.parametrize("order", ["A then B", "B then A"])
def test_two_writers_of_different_ranges_both_keep_theirs(d, order):
    f = d.create(ROOT, b"f")
    a = t.CommitWrite(f, 10, T0_NS, [t.Slice(0, 10, data=b"A" * 10)])
    b = t.CommitWrite(f, MIB, T0_NS, [t.Slice(100, MIB - 100, bid(7), 0, MIB, fresh=True)],
                      observed=d.index)
    for cmd in ((a, b) if order == "A then B" else (b, a)):
        assert d.apply(cmd).err == 0
    data = read_file(d.store, f)
    assert len(data) == MIB and d.attr(f).size == MIB
    assert data[:10] == b"A" * 10 and data[10:100] == bytes(90)
    assert data[100:] == fake_block(bid(7), MIB)[:MIB - 100]
    check_layout(d.store)


def test_a_stale_writer_keeps_the_others_append(d):
    f = d.create(ROOT, b"f")
    commit(d, f, t.Slice(0, 10, data=b"0123456789"))
    # B appends a MiB; A, who last saw 10 bytes, rewrites one byte at 5.
    b = commit(d, f, t.Slice(10, MIB, bid(7), 0, MIB, fresh=True))
    assert b.attr.size == MIB + 10
    r = d.do(t.CommitWrite, ino=f, size=10, slices=[t.Slice(5, 1, data=b"x")])
    assert r.err == 0 and r.attr.size == MIB + 10
    data = read_file(d.store, f)
    assert data[:10] == b"01234x6789" and data[10:] == fake_block(bid(7), MIB)[:MIB]
    assert d.store.block_refs(bid(7)) == 1
    check_layout(d.store)
