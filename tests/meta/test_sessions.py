"""Client sessions in the state machine (server/meta/sessions.py): a
retried command answers its first reply and applies once; a late
duplicate of a command already answered applies nothing (the unlink that
once removed a file re-created meanwhile); unknown or expired sessions
apply nothing; the reply table stays bounded; and a seeded run of
duplicated, reordered deliveries gives the same namespace as each command
applied once."""

from __future__ import annotations

import errno
import random

from server.meta import codec
from server.meta import types as t
from server.meta.sessions import ANSWERED, NO_SESSION, SESSION_IDLE_NS, SESSION_REPLIES_MAX

from .helpers import Driver

S = 77


def wrapped(d: Driver, seq: int, op, acked: int | None = None, session: int = S):
    return d.do(t.Sessioned, session=session, seq=seq, acked=acked or seq,
                ops=[codec.encode_command(op)])


def fresh() -> Driver:
    d = Driver()
    d.do(t.Tick, now_ns=d.now_ns)
    assert d.do(t.OpenSession, session=S).err == 0
    return d


def test_a_retry_answers_the_first_reply_and_applies_once():
    d = fresh()
    create = t.Create(1, b"f", 0o644, 0, 0, d.tick())
    first = wrapped(d, 1, create)
    assert first.err == 0
    again = wrapped(d, 1, create)
    assert again == first  # not EEXIST: the recorded reply
    unlink = t.Unlink(1, b"f", d.tick())
    gone = wrapped(d, 2, unlink)
    assert gone.err == 0
    assert wrapped(d, 2, unlink) == gone
    assert d.store.lookup(1, b"f").err == errno.ENOENT


def test_a_late_duplicate_of_an_answered_unlink_removes_nothing():
    d = fresh()
    assert wrapped(d, 1, t.Create(1, b"f", 0o644, 0, 0, d.tick())).err == 0
    unlink = t.Unlink(1, b"f", d.tick())
    assert wrapped(d, 2, unlink).err == 0
    # The mount got its answer and re-created the name (seq 3, acking 2).
    again = wrapped(d, 3, t.Create(1, b"f", 0o644, 0, 0, d.tick()), acked=3)
    assert again.err == 0
    # Now the first attempt of the unlink, uncertain back then, commits late.
    late = wrapped(d, 2, unlink, acked=2)
    assert late.err == ANSWERED
    assert d.store.lookup(1, b"f").attr.ino == again.attr.ino


def test_unknown_and_expired_sessions_apply_nothing():
    d = fresh()
    assert wrapped(d, 1, t.Mkdir(1, b"a", 0o755, 0, 0, d.tick()), session=99).err == NO_SESSION
    assert d.store.lookup(1, b"a").err == errno.ENOENT
    assert wrapped(d, 1, t.Mkdir(1, b"a", 0o755, 0, 0, d.tick())).err == 0
    d.do(t.Tick, now_ns=d.now_ns + SESSION_IDLE_NS + 10**9)
    assert wrapped(d, 2, t.Mkdir(1, b"b", 0o755, 0, 0, d.tick())).err == NO_SESSION
    assert d.store.lookup(1, b"b").err == errno.ENOENT
    conn = d.store.conn
    assert conn.execute("SELECT COUNT(*) FROM session_reply").fetchone()[0] == 0


def test_replies_are_dropped_below_acked_and_bounded():
    d = fresh()
    for seq in range(1, 6):
        wrapped(d, seq, t.SetXattr(1, b"user.k", str(seq).encode(), 0, 1), acked=1)
    count = d.store.conn.execute("SELECT COUNT(*) FROM session_reply").fetchone()[0]
    assert count == 5
    wrapped(d, 6, t.SetXattr(1, b"user.k", b"6", 0, 1), acked=6)
    assert d.store.conn.execute("SELECT seq FROM session_reply").fetchall() == [(6,)]
    # A client that never acks is cut at SESSION_REPLIES_MAX: the oldest go
    # and their retries are refused rather than applied again.
    for seq in range(7, 7 + SESSION_REPLIES_MAX + 3):
        wrapped(d, seq, t.SetXattr(1, b"user.k", b"x", 0, 1), acked=6)
    kept = d.store.conn.execute("SELECT COUNT(*) FROM session_reply").fetchone()[0]
    assert kept == SESSION_REPLIES_MAX
    assert wrapped(d, 6, t.SetXattr(1, b"user.k", b"6", 0, 1), acked=6).err == ANSWERED


def test_envelopes_and_the_clock_are_refused_inside():
    d = fresh()
    inner = t.Sessioned(S, 1, 1, [codec.encode_command(t.Unlink(1, b"x", 0))])
    assert wrapped(d, 1, inner).err == errno.EINVAL
    assert wrapped(d, 2, t.Tick(d.now_ns + 10**12)).err == errno.EINVAL
    bad = d.apply_decoded(t.Sessioned(S, 3, 4, [codec.encode_command(t.Unlink(1, b"x", 0))]))
    assert bad.err == errno.EINVAL  # acked above seq


def test_duplicated_late_deliveries_match_single_application():
    """Each command delivered in order once, and 0-2 duplicates of it
    landing anywhere later in the log (retries whose first attempt
    committed late): the namespace and every reply are those of a driver
    applying each command once."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    once, noisy = fresh(), fresh()
    names = [b"a", b"b", b"c"]
    pending: list[tuple[int, int, object]] = []
    acked = 1
    for seq in range(1, 150):
        name = rng.choice(names)
        kind = rng.randrange(4)
        now = once.tick()
        noisy.tick()
        cmd = (t.Create(1, name, 0o644, 0, 0, now) if kind == 0 else
               t.Unlink(1, name, now) if kind == 1 else
               t.Rename(1, name, 1, rng.choice(names), 0, now) if kind == 2 else
               t.SetXattr(1, b"user." + name, bytes([seq % 256]), 0, now))
        acked = max(acked, seq - rng.randrange(0, 6), 1)
        expected = wrapped(once, seq, cmd, acked=acked)
        got = wrapped(noisy, seq, cmd, acked=acked)
        assert got == expected, f"seed {seed}, seq {seq}"
        pending += [(seq, acked, cmd)] * rng.randrange(0, 3)
        rng.shuffle(pending)
        for _ in range(rng.randrange(0, len(pending) + 1)):
            s, a, c = pending.pop()
            late = wrapped(noisy, s, c, acked=a)
            assert late.err == ANSWERED or s >= acked, f"seed {seed}"
    for s, a, c in pending:
        wrapped(noisy, s, c, acked=a)
    for name in names:
        a, b = once.store.lookup(1, name), noisy.store.lookup(1, name)
        assert (a.err, a.attr and a.attr.ino) == (b.err, b.attr and b.attr.ino), f"seed {seed}"
        xa, xb = once.store.getxattr(1, b"user." + name), noisy.store.getxattr(1, b"user." + name)
        assert xa == xb, f"seed {seed}"
