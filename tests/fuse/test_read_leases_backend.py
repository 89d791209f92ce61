"""Read leases on the mount (fusefs/readleases.py), two LeasedBackends over
one in-process state machine, with a stand-in for the leader's gate that
recalls leases the way server/meta/recall.py does (real clock, short pauses):

- a mount reading a directory gets a read lease, lists the directory once
  (read-ahead), and then answers lookups (absent names too), getattrs and
  open-time manifests there with no query;
- a change by the other mount recalls it first, so the reader's next answer
  is the new one (close-to-open); its own changes never wait on itself;
- the kernel may keep an answer given under the lease for as long as the
  lease lives, and drops it before the lease goes back;
- seeded random interleavings of both mounts: every answer the reader gives
  equals the state machine's at that moment."""

from __future__ import annotations

import dataclasses
import errno
import os
import random

import pytest
import trio

from fusefs import readleases
from fusefs.backend import LocalBackend
from fusefs.leases import LeasedBackend
from server.meta import leases as sm_leases
from server.meta.types import (LEASED, ROOT_INO, CommitWrite, Create, Mkdir, SetAttr, Slice,
                               Unlink)

from .test_leased_backend import Clocked, now


class Desk:
    """The leader's recall channel for holders in this process."""

    def __init__(self) -> None:
        self.asked: dict[int, set[int]] = {}
        self.wake: dict[int, trio.Event] = {}

    def meta_for(self):
        desk = self

        class Meta:
            holder = 0

            async def lease_events(self, holder, wait_s):
                with trio.move_on_after(wait_s):
                    while not desk.asked.get(holder):
                        await desk.wake.setdefault(holder, trio.Event()).wait()
                        desk.wake.pop(holder, None)
                return sorted(desk.asked.pop(holder, ()))
        return Meta()

    def ask(self, holder: int, dir_ino: int) -> None:
        self.asked.setdefault(holder, set()).add(dir_ino)
        event = self.wake.get(holder)
        if event is not None:
            event.set()


class Gated:
    """LocalBackend with the leader's gate: LEASED → recall the holders in
    the way, wait until their leases are gone, propose again. Counts the
    queries that reach the state machine."""

    def __init__(self, inner: LocalBackend, desk: Desk) -> None:
        self.inner, self.desk = inner, desk
        self.queries = self.listings = self.batches = 0
        self.holder = 0  # the mount's, once it has one

    async def _clear_writer(self, dir_ino: int) -> None:
        """As the leader's query gate: another holder's write lease on a
        directory is recalled before we read it."""
        while True:
            owner = sm_leases.owner(self.inner.meta.conn, dir_ino)
            if owner is None or owner[0] == self.holder:
                return
            self.desk.ask(owner[0], dir_ino)
            await trio.sleep(0.01)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _in_the_way(self, cmd) -> list[tuple[int, int]]:
        conn = self.inner.meta.conn
        out = []
        for d in sm_leases.reader_dirs(conn, cmd):
            for h in sm_leases.holders(conn, d):
                out.append((d, h))
        return out

    async def submit(self, cmd):
        for _ in range(50):
            result = await self.inner.submit(cmd)
            if result.err != LEASED:
                return result
            for d, h in self._in_the_way(cmd):
                self.desk.ask(h, d)
            await trio.sleep(0.01)
        raise AssertionError(f"{cmd} kept being refused")

    async def lookup(self, parent, name):
        self.queries += 1
        await self._clear_writer(parent)
        return await self.inner.lookup(parent, name)

    async def getattr(self, ino):
        self.queries += 1
        await self._clear_writer(ino)
        return await self.inner.getattr(ino)

    async def readdir(self, ino, cursor=b"", limit=1024, plus=False):
        self.listings += 1
        await self._clear_writer(ino)
        return await self.inner.readdir(ino, cursor, limit, plus)

    async def manifest(self, ino, start=0, limit=None):
        self.queries += 1
        return await self.inner.manifest(ino, start, limit)

    async def manifests(self, inos):
        self.queries += 1
        self.batches += 1
        return await self.inner.manifests(inos)


@pytest.fixture(params=[readleases.WANT_QUERIES])
async def pair(tmp_path, nursery, monkeypatch, request):
    # Real time (LocalBackend works in threads, which an autojump clock
    # would race), with short pauses so the test stays quick.
    monkeypatch.setattr(readleases, "COOLDOWN_S", 0.3)
    monkeypatch.setattr(readleases, "IDLE_S", 1.0)
    monkeypatch.setattr(readleases, "WANT_QUERIES", request.param)
    local = await LocalBackend.open(str(tmp_path / "data"), fsync_chunks=False)
    clock = Clocked(local)
    await clock.tick()
    desk = Desk()
    gated, gated_b = Gated(local, desk), Gated(local, desk)
    a = LeasedBackend(gated, nursery, meta=desk.meta_for())
    b = LeasedBackend(gated_b, nursery, meta=desk.meta_for())
    gated.holder, gated_b.holder = a.holder, b.holder

    async def ticker():
        while True:
            await trio.sleep(1)
            await clock.tick()
    nursery.start_soon(ticker)
    try:
        yield a, b, gated, local
    finally:
        await local.aclose()


def inline(ino: int, data: bytes) -> CommitWrite:
    return CommitWrite(ino, len(data), now(), [Slice(0, len(data), data=data)])


async def read_file(m, ino: int) -> bytes:
    page = await m.manifest(ino)
    assert page.err == 0 and page.done
    return b"".join(s.data for s in page.slices)


async def _setup_dir(b, files=5):
    d = (await b.submit(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, now(), 0o022))).attr.ino
    inos = []
    for i in range(files):
        f = (await b.submit(Create(d, b"f%d" % i, 0o644, 0, 0, now(), 0o022))).attr.ino
        assert (await b.submit(inline(f, b"v0-%d" % i))).err == 0
        inos.append(f)
    await b.sync()
    return d, inos


async def test_a_reader_answers_from_its_cache_and_sees_every_change_closed_before(pair):
    a, b, gated, _ = pair
    d, inos = await _setup_dir(b)
    for _ in range(4):  # enough queries to want a read lease
        for i, f in enumerate(inos):
            assert (await a.lookup(d, b"f%d" % i)).attr.ino == f
            assert await read_file(a, f) == b"v0-%d" % i
    await trio.sleep(0.1)
    assert a.reads.stats["grants"] == 1
    # The grant brought a read-ahead: the whole directory listed with
    # attributes, in one page.
    assert gated.listings == 1 and a.reads.stats["prefetched"] == len(inos)
    assert d in a.reads.complete
    before = gated.queries
    for i, f in enumerate(inos):
        assert (await a.lookup(d, b"f%d" % i)).attr.ino == f
        assert (await a.getattr(f)).attr.size == 4
    assert (await a.lookup(d, b"nothing")).err == errno.ENOENT  # not in the whole listing
    assert gated.queries == before
    for f in inos:  # each file's layout is asked once under the lease, then cached
        await read_file(a, f)
    assert gated.queries - before == len(inos)
    for i, f in enumerate(inos):
        assert await read_file(a, f) == b"v0-%d" % i
    assert gated.queries - before == len(inos)
    # B changes a file there and closes: recalled first, A reads the new bytes.
    assert (await b.submit(inline(inos[0], b"version-1"))).err == 0
    assert a.reads.stats["recalled"] == 1
    assert await read_file(a, inos[0]) == b"version-1"
    # B creates a name A had seen absent.
    await trio.sleep(0.4)  # past A's cooldown: it may read-lease again
    for _ in range(20):
        await a.lookup(d, b"f1")
    await trio.sleep(0.1)
    assert d in a.reads.leases
    assert (await b.submit(Create(d, b"nothing", 0o644, 0, 0, now(), 0o022))).err == 0
    assert (await a.lookup(d, b"nothing")).err == 0


async def test_read_ahead_stops_at_its_bound_and_then_asks_for_absent_names(pair, monkeypatch):
    a, b, gated, _ = pair
    monkeypatch.setattr(readleases, "READDIR_PAGE_MAX", 2)
    monkeypatch.setattr(readleases, "PREFETCH_ENTRIES_MAX", 2)
    d, inos = await _setup_dir(b)
    for _ in range(4):
        for i in range(len(inos)):
            await a.lookup(d, b"f%d" % i)
    await trio.sleep(0.1)
    assert d in a.reads.leases and gated.listings == 1
    assert a.reads.stats["prefetched"] == 2 and d not in a.reads.complete
    before = gated.queries
    assert (await a.lookup(d, b"f0")).attr.ino == inos[0]   # read ahead
    assert gated.queries == before
    assert (await a.lookup(d, b"nothing")).err == errno.ENOENT  # not known absent: asked
    assert gated.queries == before + 1


async def test_layouts_of_small_files_are_read_ahead_once_files_are_opened(pair, monkeypatch):
    a, b, gated, _ = pair
    monkeypatch.setattr(readleases, "LAYOUTS_BATCH", 3)  # several batches, the last one short
    d, inos = await _setup_dir(b, files=readleases.LAYOUTS_AHEAD_AFTER + 7)
    for _ in range(2):
        for i in range(len(inos)):
            await a.lookup(d, b"f%d" % i)
    await trio.sleep(0.1)
    assert d in a.reads.leases and d in a.reads.complete
    before = gated.queries
    opened = inos[:readleases.LAYOUTS_AHEAD_AFTER]
    for f in opened:  # asked one by one...
        await read_file(a, f)
    assert gated.queries - before == len(opened)
    await trio.sleep(0.1)  # ...then the rest come ahead of the reader, 3 per query
    assert a.reads.stats["layouts_ahead"] == len(inos) - len(opened)
    assert gated.batches == 3
    for i, f in enumerate(inos):
        assert await read_file(a, f) == b"v0-%d" % i
    assert gated.queries - before == len(opened) + gated.batches
    # A change recalls the lease; nothing read ahead is answered after it.
    assert (await b.submit(inline(inos[-1], b"changed"))).err == 0
    assert await read_file(a, inos[-1]) == b"changed"


async def test_own_changes_never_wait_for_the_own_read_lease(pair):
    a, b, gated, _ = pair
    d, inos = await _setup_dir(b)
    for _ in range(4):
        for i, f in enumerate(inos):
            await a.lookup(d, b"f%d" % i)
            await a.getattr(f)
            await read_file(a, f)
    await trio.sleep(0.1)
    assert d in a.reads.leases
    for i in range(len(inos)):
        await a.lookup(d, b"f%d" % i)  # cached: A knows which directory names them
    reply = await a.submit(SetAttr(inos[0], now(), mode=0o600))
    assert reply.err == 0 and (await a.getattr(inos[0])).attr.mode & 0o777 == 0o600
    assert a.reads.stats["recalled"] == 0  # given back by itself, not recalled
    assert (await a.submit(inline(inos[1], b"mine"))).err == 0
    assert await read_file(a, inos[1]) == b"mine"
    # A change to a node whose directory A did not learn: the leader's
    # recall makes A give its own lease back; the change still goes through.
    await trio.sleep(0.4)
    for _ in range(4):
        for i in range(len(inos)):
            await a.lookup(d, b"f%d" % i)
    await trio.sleep(0.1)
    assert d in a.reads.leases
    a.reads.attrs.clear()
    assert (await a.submit(SetAttr(inos[2], now(), mode=0o600))).err == 0
    assert a.reads.stats["recalled"] == 1 and d not in a.reads.leases
    assert (await a.getattr(inos[2])).attr.mode & 0o777 == 0o600


class Kernel:
    """Stands in for the mount's Invalidator: records what it is told to
    drop, and whether the lease was still in the log when it was."""

    def __init__(self, conn, holder: int) -> None:
        self.conn, self.holder = conn, holder
        self.attrs: list[tuple[int, bool]] = []
        self.entries_seen: list[tuple[int, bytes, bool]] = []

    def _leased(self, d: int) -> bool:
        return self.holder in sm_leases.readers(self.conn, d)

    def attr_now(self, ino: int) -> None:
        d = sm_leases.parents_of(self.conn, ino)
        self.attrs.append((ino, any(self._leased(x) for x in d)))

    def entries(self, pairs, done=None) -> None:
        for parent, name in pairs:
            self.entries_seen.append((parent, name, self._leased(parent)))
        if done is not None:
            done()


async def test_the_kernel_keeps_answers_for_the_lease_and_drops_them_before_it_goes(pair):
    a, b, gated, local = pair
    kernel = Kernel(local.meta.conn, a.holder)
    a.reads.kernel = kernel
    d, inos = await _setup_dir(b)
    for _ in range(4):
        for i, f in enumerate(inos):
            await a.lookup(d, b"f%d" % i)
    await trio.sleep(0.1)
    assert d in a.reads.leases
    left = a.reads.leases[d].valid_until - trio.current_time()
    for i, f in enumerate(inos):
        reply = await a.lookup(d, b"f%d" % i)
        hold = a.hold_entry(d, b"f%d" % i, reply.attr)
        assert readleases.KERNEL_HOLD_MIN_S <= hold <= left  # never past the lease
        assert a.hold_attr((await a.getattr(f)).attr) > 0
    # An answer that is not what the lease holds is kept for the default time.
    stale = dataclasses.replace(reply.attr, size=reply.attr.size + 1)
    assert a.hold_entry(d, b"f0", stale) == 0 and a.hold_attr(stale) == 0
    assert a.hold_entry(d, b"nothing", reply.attr) == 0
    # B's change recalls the lease: the kernel drops every dentry and
    # attribute it kept, while A's lease is still in the log.
    assert (await b.submit(SetAttr(inos[0], now(), mode=0o600))).err == 0
    assert sorted(name for _, name, _ in kernel.entries_seen) == sorted(
        b"f%d" % i for i in range(len(inos)))
    assert {ino for ino, _ in kernel.attrs} == set(inos)
    assert all(leased for *_, leased in kernel.entries_seen)
    assert all(leased for _, leased in kernel.attrs)
    assert a.hold_entry(d, b"f1", (await a.lookup(d, b"f1")).attr) == 0  # no lease now


async def test_a_kernel_hold_is_dropped_when_the_lease_goes_idle_or_for_own_changes(pair,
                                                                                   monkeypatch):
    a, b, gated, local = pair
    kernel = Kernel(local.meta.conn, a.holder)
    a.reads.kernel = kernel
    d, inos = await _setup_dir(b)

    async def lease_and_hold():
        for _ in range(4):
            for i in range(len(inos)):
                await a.lookup(d, b"f%d" % i)
        await trio.sleep(0.1)
        assert d in a.reads.leases
        reply = await a.lookup(d, b"f1")
        assert a.hold_entry(d, b"f1", reply.attr) > 0
        kernel.entries_seen, kernel.attrs = [], []

    await lease_and_hold()
    await trio.sleep(readleases.IDLE_S + 1.0)  # unused: given back by upkeep
    assert d not in a.reads.leases
    assert [(p, n) for p, n, _ in kernel.entries_seen] == [(d, b"f1")]
    assert all(leased for *_, leased in kernel.entries_seen)
    await trio.sleep(0.4)  # past the cooldown
    await lease_and_hold()
    assert (await a.submit(SetAttr(inos[1], now(), mode=0o600))).err == 0
    assert [(p, n) for p, n, _ in kernel.entries_seen] == [(d, b"f1")]
    assert inos[1] in {ino for ino, _ in kernel.attrs}


SEEDS = int(os.environ.get("READ_LEASE_SEEDS", "2"))


@pytest.mark.parametrize("pair", [3], indirect=True)
async def test_every_answer_of_a_reader_is_the_state_machines_at_that_moment(pair):
    a, b, gated, local = pair
    d, inos = await _setup_dir(b, files=4)
    names = [b"f%d" % i for i in range(6)]
    for seed in range(SEEDS):
        rng = random.Random(seed)
        for step in range(200):
            name = rng.choice(names)
            writer = a if rng.random() < 0.2 else b
            r = rng.random()
            if r < 0.85:
                # A reads: lookup, getattr, manifest; each must equal the truth.
                got = await a.lookup(d, name)
                want = await local.lookup(d, name)
                assert (got.err, got.attr) == (want.err, want.attr), (seed, step, name)
                if not got.err:
                    ino = got.attr.ino
                    got_attr, want_attr = await a.getattr(ino), await local.getattr(ino)
                    assert got_attr.attr == want_attr.attr, (seed, step, name)
                    assert await read_file(a, ino) == await read_file(local, ino), (seed, step)
            elif r < 0.9:
                await writer.submit(Create(d, name, 0o644, 0, 0, now(), 0o022))
            elif r < 0.93:
                await writer.submit(Unlink(d, name, now()))
            else:
                entry = await local.lookup(d, name)
                if not entry.err:
                    cmd = (inline(entry.attr.ino, rng.randbytes(rng.randrange(1, 20)))
                           if r < 0.97 else SetAttr(entry.attr.ino, now(),
                                                   mode=rng.choice((0o600, 0o644))))
                    assert (await writer.submit(cmd)).err == 0
            await writer.sync()
            if rng.random() < 0.1:
                await trio.sleep(rng.choice((0.05, 0.4, 1.2)))
    assert a.reads.stats["hits"] > 0 and a.reads.stats["grants"] > 0, a.reads.stats
