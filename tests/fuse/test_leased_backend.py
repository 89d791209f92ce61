"""LeasedBackend (fusefs/leases.py) over an in-process state machine
(LocalBackend applies AcquireLease and LeaseBatch like every replica does),
with trio's autojump clock: every answer the mount gives from its batch is
the one the state machine computes once the batch is applied (seeded random
sequences), directories too big to list are leased all the same, and a
holder past its lease stops answering locally and reports the loss once."""

from __future__ import annotations

import errno
import os
import random
import stat

import pytest
import trio

from fusefs import leases as leases_mod
from fusefs.backend import LocalBackend
from fusefs.leases import LeasedBackend, LeaseLost
from server.meta.types import (ROOT_INO, CommitWrite, Create, LeaseBatch, Mkdir,
                               Rename, Rmdir, SetAttr, Slice, Symlink, Tick, Unlink, Utime)

SEC = 10**9


class FakeMeta:
    """The recall channel: nothing is ever recalled here."""

    holder = 0

    async def lease_events(self, holder, wait_s):
        await trio.sleep(wait_s)
        return []


class Clocked:
    """Log time for the state machine: a Tick entry per call."""

    def __init__(self, inner):
        self.inner = inner
        self.ns = 1_800_000_000 * SEC

    async def tick(self, seconds: float = 1.0) -> None:
        self.ns += int(seconds * SEC)
        await self.inner.submit(Tick(self.ns))


@pytest.fixture
async def setup(tmp_path, nursery):
    inner = await LocalBackend.open(str(tmp_path / "data"), fsync_chunks=False)
    clock = Clocked(inner)
    await clock.tick()
    leased = LeasedBackend(inner, nursery, meta=FakeMeta())
    try:
        yield leased, inner, clock
    finally:
        await inner.aclose()


def now() -> int:
    return int(trio.current_time() * SEC) + 1_700_000_000 * SEC


async def make(b, cls, parent, name, **kw):
    if cls is Symlink:
        cmd = Symlink(parent, name, kw.get("target", b"t"), 0, 0, now())
    else:
        cmd = cls(parent, name, kw.get("mode", 0o755), 0, 0, now(), 0o022)
    return await b.submit(cmd)


async def walk(backend, top: int) -> dict[bytes, object]:
    """path -> attributes of everything below ``top``, as ``backend`` lists it."""
    out, stack = {}, [(top, b"")]
    while stack:
        d, prefix = stack.pop()
        cursor = b""
        while True:
            page = await backend.readdir(d, cursor, plus=True)
            assert page.err == 0, page
            for e in page.entries:
                path = prefix + b"/" + e.name
                out[path] = e.attr
                if stat.S_ISDIR(e.attr.mode):
                    stack.append((e.ino, path))
            if page.done:
                break
            cursor = page.cursor
    return out


async def test_answers_from_the_batch_are_what_the_state_machine_computes(setup):
    b, inner, clock = setup
    for seed in range(int(os.environ.get("LEASE_SEEDS", "6"))):
        rng = random.Random(seed)
        top = (await make(b, Mkdir, ROOT_INO, b"s%d" % seed)).attr.ino
        dirs, files, answered = [top], [], {}
        for step in range(150):
            parent = rng.choice(dirs)
            name = b"n%d" % rng.randrange(8)
            r = rng.random()
            if r < 0.4:
                cls = rng.choice([Create, Create, Mkdir, Symlink])
                reply = await make(b, cls, parent, name, mode=rng.choice([0o644, 0o2755, 0o600]))
                if reply.err == 0:
                    (dirs if cls is Mkdir else files if cls is Create else []).append(
                        reply.attr.ino)
            elif r < 0.55:
                entry = await b.lookup(parent, name)
                if entry.err == 0:
                    cmd = (Rmdir(parent, name, now()) if stat.S_ISDIR(entry.attr.mode)
                           else Unlink(parent, name, now()))
                    await b.submit(cmd)
            elif r < 0.7:
                await b.submit(Rename(parent, name, rng.choice(dirs), b"n%d" % rng.randrange(8),
                                      0, now()))
            elif files:
                ino = rng.choice(files)
                if rng.random() < 0.5:
                    data = os.urandom(rng.randrange(1, 300))
                    reply = await b.submit(CommitWrite(ino, len(data), now(),
                                                       [Slice(0, len(data), data=data)]))
                else:
                    reply = await b.submit(SetAttr(ino, now(), mode=rng.choice([0o600, 0o4755]),
                                                   mtime=rng.choice([Utime.NOW, 12345])))
                if reply.err == 0:
                    answered[ino] = reply.attr
            if rng.random() < 0.05:
                await trio.sleep(0.2)  # a batch leaves in between
            if rng.random() < 0.03:
                await b.drop_caches()  # every lease back: what follows works on older nodes
        # What the mount answers now (much of it from its batch)...
        mine = await walk(b, top)
        mine_top = (await b.getattr(top)).attr
        await b.sync()
        # ...is what the state machine says once the batch applied.
        assert mine == await walk(inner, top), seed
        assert mine_top == (await inner.getattr(top)).attr, seed
        for ino, attr in answered.items():
            truth = await inner.getattr(ino)
            if truth.err == 0 and truth.attr.ctime_ns == attr.ctime_ns:
                assert truth.attr == attr, (seed, ino)
    assert b.stats["local"] > 300 and b.stats["lost"] == 0, b.stats


async def test_a_directory_too_big_to_list_is_leased_all_the_same(setup, monkeypatch):
    b, inner, clock = setup
    monkeypatch.setattr(leases_mod, "LEASE_LISTING_MAX", 3)
    big = (await inner.submit(Mkdir(ROOT_INO, b"big", 0o755, 0, 0, now()))).attr.ino
    for i in range(6):
        await inner.submit(Create(big, b"old%d" % i, 0o644, 0, 0, now()))
    assert (await make(b, Create, big, b"old2")).err == errno.EEXIST
    assert b.leases[big].complete is False
    assert (await b.lookup(big, b"old4")).err == 0
    assert (await b.lookup(big, b"nothing")).err == errno.ENOENT
    reply = await make(b, Create, big, b"new")
    assert reply.err == 0 and reply.attr.ino in b.owned
    assert (await b.lookup(big, b"new")).attr == reply.attr
    # An older entry goes through the leader, inside a batch of its own.
    assert (await b.submit(Unlink(big, b"old0", now()))).err == 0
    assert (await b.lookup(big, b"old0")).err == errno.ENOENT
    page = await b.readdir(big)
    assert sorted(e.name for e in page.entries) == sorted(
        [b"new"] + [b"old%d" % i for i in range(1, 6)])
    assert (await inner.lookup(big, b"new")).attr == reply.attr


async def test_past_its_lease_the_holder_stops_answering_and_reports_the_loss(setup):
    b, inner, clock = setup
    b.flush_age_s = 1000.0  # nothing leaves on its own
    d = (await make(b, Mkdir, ROOT_INO, b"d")).attr.ino
    await b.sync()
    assert (await make(b, Create, d, b"kept")).err == 0
    await b.sync()
    assert (await make(b, Create, d, b"lost")).err == 0
    assert b._live(d) is not None
    # The leader's log time passes the lease (the holder heard nothing).
    for _ in range(12):
        await clock.tick()
    b.valid_until = trio.current_time()  # and so does our own deadline
    assert b._live(d) is None
    with pytest.raises(LeaseLost):
        await b.sync()
    await b.sync()  # reported once
    assert (await inner.lookup(d, b"kept")).err == 0
    assert (await inner.lookup(d, b"lost")).err == errno.ENOENT
    # A new grant works again.
    assert (await make(b, Create, d, b"again")).err == 0
    await b.sync()
    assert (await inner.lookup(d, b"again")).err == 0
    assert isinstance(LeaseBatch, type)


async def test_a_change_after_a_recall_waits_for_the_batch_that_made_its_node(setup):
    """A recall drops what we owned while the create is still queued; a
    change the leader must answer (a truncate) then waits for that batch
    (it raced to ENOENT on a real two-mount run once)."""
    b, inner, clock = setup
    b.flush_age_s = 1000.0
    d = (await make(b, Mkdir, ROOT_INO, b"d")).attr.ino
    await b.sync()
    f = (await make(b, Create, d, b"f")).attr.ino
    b._give_back([d], recalled=True)  # what a recall does first
    assert f not in b.owned and b.queue
    reply = await b.submit(SetAttr(f, now(), size=3))
    assert reply.err == 0 and reply.attr.size == 3
    assert (await b.getattr(f)).attr.size == 3


async def test_older_names_are_answered_from_a_page_read_ahead(setup):
    """`rm -r` and `mv` of older files: the kernel looks each name up first;
    one readdirplus page answers many, never for a node this mount changed,
    and never older than AHEAD_S."""
    b, inner, clock = setup
    d = (await inner.submit(Mkdir(ROOT_INO, b"ahead", 0o755, 0, 0, now()))).attr.ino
    olds = [(await inner.submit(Create(d, b"o%02d" % i, 0o644, 0, 0, now()))).attr
            for i in range(20)]
    assert (await make(b, Create, d, b"new")).err == 0  # the lease, with the listing
    assert b.leases[d].complete
    for i, attr in enumerate(olds):
        got = await b.lookup(d, b"o%02d" % i)
        assert got.err == 0 and got.attr == attr
    assert (b.stats["ahead_pages"], b.stats["ahead_hits"]) == (1, 20)
    # Our own changes are not answered from it.
    assert (await b.submit(SetAttr(olds[3].ino, now(), mode=0o600))).err == 0
    assert (await b.lookup(d, b"o03")).attr.mode & 0o777 == 0o600
    assert (await b.submit(Rename(d, b"o04", d, b"moved", 0, now()))).err == 0
    moved = await b.lookup(d, b"moved")
    assert (await inner.lookup(d, b"moved")).attr == moved.attr
    pages = b.stats["ahead_pages"]
    # Another mount's chmod (a node's attributes are not the directory's:
    # the lease does not keep it out) shows once AHEAD_S has passed, as
    # one cached by the kernel would after attr_timeout.
    assert (await inner.submit(SetAttr(olds[5].ino, now(), mode=0o640))).err == 0
    assert (await b.lookup(d, b"o05")).attr.mode & 0o777 == 0o644
    assert 0 <= b.ahead_age(olds[5].ino) <= leases_mod.AHEAD_S
    await trio.sleep(leases_mod.AHEAD_S + 0.01)
    assert (await b.lookup(d, b"o05")).attr.mode & 0o777 == 0o640
    assert b.stats["ahead_pages"] == pages + 1
