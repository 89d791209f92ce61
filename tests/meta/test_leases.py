"""Directory write leases in the state machine (server/meta/leases.py):
grants, fencing by epoch and expiry in log time, other writers kept out,
batches applied whole with the holder's inode numbers, retries answered
once, and a seeded race of holders and plain writers that keeps the
namespace invariants."""

from __future__ import annotations

import errno
import random

import pytest

from server.meta import codec
from server.meta import types as t

from .helpers import Driver

A, B = 11, 22
SEC = 10**9
DURATION = 10 * SEC


def fresh() -> Driver:
    d = Driver()
    d.do(t.Tick, now_ns=d.now_ns)  # leases need log time
    return d


def acquire(d: Driver, holder: int, dir_ino: int, epoch: int, inos: int = 100):
    return d.do(t.AcquireLease, holder=holder, dir=dir_ino, epoch=epoch,
                duration_ns=DURATION, inos=inos)


def batch(d: Driver, holder: int, seq: int, ops, inos=None, leases=(), want_inos=0):
    return d.do(t.LeaseBatch, holder=holder, seq=seq,
                ops=[codec.encode_command(op) for op in ops],
                inos=list(inos) if inos is not None else [0] * len(ops),
                leases=[x for x, _ in leases], epochs=[e for _, e in leases],
                want_inos=want_inos)


def results(reply):
    """Per op: its result, or None for a success sent back empty (all but
    the last op's)."""
    return [codec.decode_result(r) if r else None for r in reply.results]


def errs(reply):
    return [r.err if r is not None else 0 for r in results(reply)]


def advance(d: Driver, ns: int) -> None:
    d.now_ns += ns
    d.do(t.Tick, now_ns=d.now_ns)


def create(d: Driver, parent: int, name: bytes) -> t.Create:
    return t.Create(parent=parent, name=name, mode=0o644, uid=0, gid=0, now_ns=d.tick())


def test_grant_gives_range_attr_and_entry_count():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    d.create(dir_ino, b"x")
    r = acquire(d, A, dir_ino, 1, inos=50)
    assert r.err == 0 and r.epoch == 1 and r.ino_hi - r.ino_next == 50
    assert r.attr.ino == dir_ino and r.entries == 1
    # Plain creates after the grant skip the range.
    assert d.create(1, b"y") >= r.ino_hi
    assert acquire(d, B, dir_ino, 7).err == errno.EBUSY
    assert acquire(d, A, d.create(1, b"f"), 2).err == errno.ENOTDIR


def test_batch_creates_with_the_holders_numbers_and_keeps_others_out():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    g = acquire(d, A, dir_ino, 1)
    ino = g.ino_next
    reply = batch(d, A, 1, [create(d, dir_ino, b"a"),
                            t.Mkdir(parent=dir_ino, name=b"sub", mode=0o755, uid=0, gid=0,
                                    now_ns=d.tick()),
                            t.AcquireLease(holder=A, dir=ino + 1, epoch=2,
                                           duration_ns=DURATION),
                            create(d, ino + 1, b"deep")],
                  inos=[ino, ino + 1, 0, ino + 2], leases=[(dir_ino, 1)])
    assert reply.err == 0, reply
    assert errs(reply) == [0, 0, 0, 0] and results(reply)[:3] == [None] * 3
    assert results(reply)[3].attr.ino == ino + 2 and results(reply)[3].parents
    for name, want in ((b"a", ino), (b"sub", ino + 1)):
        assert d.store.lookup(dir_ino, name).attr.ino == want
    assert reply.ino_next == ino + 3
    assert d.store.lookup(ino + 1, b"deep").attr.ino == ino + 2
    # Another writer is refused with LEASED and changes nothing; so is a
    # chmod of the leased directory.
    assert d.do(t.Create, parent=dir_ino, name=b"b", mode=0o644).err == t.LEASED
    assert d.do(t.SetAttr, ino=dir_ino, mode=0o700).err == t.LEASED
    assert d.do(t.Rmdir, parent=dir_ino, name=b"sub").err == t.LEASED  # sub is leased too
    assert d.store.lookup(dir_ino, b"b").err == errno.ENOENT
    # Elsewhere they work as always.
    assert d.do(t.Create, parent=1, name=b"b", mode=0o644).err == 0


def test_numbers_outside_the_range_are_refused():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    g = acquire(d, A, dir_ino, 1, inos=4)
    taken = d.create(1, b"other")
    reply = batch(d, A, 1, [create(d, dir_ino, b"a"), create(d, dir_ino, b"b")],
                  inos=[taken, g.ino_hi], leases=[(dir_ino, 1)])
    assert errs(reply) == [errno.EINVAL, errno.EINVAL]


def test_retried_batch_answers_once_and_older_seq_is_stale():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    g = acquire(d, A, dir_ino, 1)
    ops = [create(d, dir_ino, b"a")]
    first = batch(d, A, 5, ops, inos=[g.ino_next], leases=[(dir_ino, 1)])
    again = batch(d, A, 5, ops, inos=[g.ino_next], leases=[(dir_ino, 1)])
    assert first == again and errs(first) == [0]
    assert batch(d, A, 4, [], leases=[(dir_ino, 1)]).err == errno.ESTALE


def test_expiry_and_epoch_fence_late_batches():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    g = acquire(d, A, dir_ino, 1)
    advance(d, DURATION + SEC)
    # Expired: others proceed, the late batch is refused whole.
    assert d.do(t.Create, parent=dir_ino, name=b"b", mode=0o644).err == 0
    late = batch(d, A, 1, [create(d, dir_ino, b"a")], inos=[g.ino_next], leases=[(dir_ino, 1)])
    assert late.err == errno.ESTALE
    assert d.store.lookup(dir_ino, b"a").err == errno.ENOENT
    # Re-granted under a new epoch: the old epoch stays refused.
    g2 = acquire(d, A, dir_ino, 2)
    assert batch(d, A, 2, [], leases=[(dir_ino, 1)]).err == errno.ESTALE
    assert batch(d, A, 3, [create(d, dir_ino, b"c")], inos=[g2.ino_next],
                 leases=[(dir_ino, 2)]).err == 0


def test_expired_holder_does_not_regain_old_leases_with_a_new_grant():
    d = fresh()
    d1, d2 = d.mkdir(1, b"d1"), d.mkdir(1, b"d2")
    acquire(d, A, d1, 1)
    advance(d, DURATION + SEC // 2)  # past expiry; the tick may not have swept yet
    acquire(d, A, d2, 2)
    assert batch(d, A, 1, [], leases=[(d1, 1)]).err == errno.ESTALE
    assert d.do(t.Create, parent=d1, name=b"x", mode=0o644).err == 0


def test_release_lets_others_in_and_batches_renew():
    d = fresh()
    dir_ino = d.mkdir(1, b"d")
    acquire(d, A, dir_ino, 1)
    for seq in range(1, 4):  # each batch renews: no expiry across 3 durations
        advance(d, DURATION // 2)
        assert batch(d, A, seq, [], leases=[(dir_ino, 1)]).err == 0
    assert d.do(t.Create, parent=dir_ino, name=b"b", mode=0o644).err == t.LEASED
    assert batch(d, A, 9, [t.ReleaseLease(holder=A, dir=dir_ino, epoch=1)]).err == 0
    assert d.do(t.Create, parent=dir_ino, name=b"b", mode=0o644).err == 0


def test_batch_touching_another_holders_directory_applies_nothing():
    d = fresh()
    da, db = d.mkdir(1, b"a"), d.mkdir(1, b"b")
    ga = acquire(d, A, da, 1)
    acquire(d, B, db, 1)
    reply = batch(d, A, 1, [create(d, da, b"x"), create(d, db, b"y")],
                  inos=[ga.ino_next, 0], leases=[(da, 1)])
    assert reply.err == t.LEASED
    assert d.store.lookup(da, b"x").err == errno.ENOENT


def test_batch_moving_another_holders_directory_is_refused_until_that_lease_ends():
    """A rename in our own leased directory that moves a subdirectory
    another holder leases: refused while that lease lives (the batch's
    check of what a rename touches), applied once it expired."""
    d = fresh()
    da = d.mkdir(1, b"a")
    sub = d.mkdir(da, b"sub")
    acquire(d, A, da, 1)
    acquire(d, B, sub, 2)
    move = t.Rename(parent=da, name=b"sub", new_parent=da, new_name=b"moved", flags=0,
                    now_ns=d.tick())
    assert batch(d, A, 1, [move], leases=[(da, 1)]).err == t.LEASED
    assert d.store.lookup(da, b"sub").attr.ino == sub
    advance(d, DURATION // 2)
    assert batch(d, A, 2, [], leases=[(da, 1)]).err == 0  # A renews; B does not
    advance(d, DURATION // 2 + 1)
    assert batch(d, A, 3, [move], leases=[(da, 1)]).err == 0
    assert d.store.lookup(da, b"moved").attr.ino == sub


def test_no_lease_before_log_time_exists():
    d = Driver()
    assert acquire(d, A, 1, 1).err == errno.EAGAIN


def test_bad_batches_are_refused_by_validate():
    d = fresh()
    assert d.do(t.LeaseBatch, holder=A, seq=1, ops=[b"x"], inos=[], leases=[],
                epochs=[]).err == errno.EINVAL
    assert d.do(t.AcquireLease, holder=A, dir=1, epoch=1, duration_ns=1).err == errno.EINVAL
    reply = d.do(t.LeaseBatch, holder=A, seq=1, ops=[b"\x00garbage"], inos=[0], leases=[],
                 epochs=[])
    assert reply.err in (errno.ESTALE, errno.EINVAL)


@pytest.mark.parametrize("seed", range(40))
def test_holders_and_plain_writers_race_without_breaking_invariants(seed):
    """Two holders and a plain writer on three directories, with expiries:
    whatever applies, every directory's entries are unique, no created node
    is lost without an unlink, and a refused command changes nothing."""
    rng = random.Random(seed)
    d = fresh()
    dirs = [d.mkdir(1, f"d{i}".encode()) for i in range(3)]
    state = {A: {}, B: {}}  # holder -> dir -> epoch
    ranges = {A: [0, 0], B: [0, 0]}
    seqs = {A: 0, B: 0}
    epoch = 0
    made: dict[tuple[int, bytes], int] = {}
    for step in range(120):
        who = rng.choice([A, B, 0])
        dir_ino = rng.choice(dirs)
        name = f"n{rng.randrange(12)}".encode()
        if rng.random() < 0.05:
            advance(d, rng.choice([SEC, DURATION]))
        if who == 0:
            r = d.do(t.Create, parent=dir_ino, name=name, mode=0o644)
            if r.err == 0:
                made[(dir_ino, name)] = r.attr.ino
            continue
        if dir_ino not in state[who] or rng.random() < 0.1:
            epoch += 1
            g = acquire(d, who, dir_ino, epoch)
            if g.err == 0:
                state[who][dir_ino] = epoch
                ranges[who] = [g.ino_next, g.ino_hi]
            continue
        seqs[who] += 1
        ino = ranges[who][0]
        reply = batch(d, who, seqs[who], [create(d, dir_ino, name)], inos=[ino],
                      leases=[(dir_ino, state[who][dir_ino])], want_inos=100)
        if reply.err == 0:
            ranges[who] = [reply.ino_next, reply.ino_hi]
            r = results(reply)[0]
            if r.err == 0:
                assert r.attr.ino == ino and r.parents[0].ino == dir_ino
                made[(dir_ino, name)] = ino
        else:
            assert reply.err in (errno.ESTALE, t.LEASED), (seed, step, reply)
            state[who].pop(dir_ino, None)
    for (dir_ino, name), ino in made.items():
        assert d.store.lookup(dir_ino, name).attr.ino == ino, seed
    inos = [ino for ino in made.values()]
    assert len(inos) == len(set(inos)), seed
