"""The linearizability checker on histories whose verdict is known: real
time is respected, concurrent operations may take either order, an
operation whose outcome is unknown may or may not have happened, and the
anomalies a broken system shows (two creates of one name both succeeding,
a late duplicate unlink) are caught; random histories produced by a
linearizable execution always pass."""

from __future__ import annotations

import errno
import random

from .linearizability import EMPTY, MODE, Op, check, step


def op(client, call, ret, kind, *args, out=0):
    return Op(client, call, ret, kind, tuple(args), out)


def test_sequential_history_passes_and_a_wrong_answer_fails():
    good = [op(1, 0, 1, "create", "a", 7), op(1, 2, 3, "setx", 7, b"v"),
            op(1, 4, 5, "getx", 7, out=b"v"), op(1, 6, 7, "rename", "a", "b"),
            op(1, 8, 9, "lookup", "a", out=errno.ENOENT), op(1, 10, 11, "lookup", "b", out=7),
            op(1, 12, 13, "getx", 7, out=b"v")]
    assert check(good).linearizable is True
    bad = good[:-1] + [op(1, 12, 13, "getx", 7, out=errno.ENODATA)]
    verdict = check(bad)
    assert verdict.linearizable is False and verdict.longest_prefix == 6


def test_links_share_one_inode_and_it_goes_with_its_last_name():
    history = [op(1, 0, 1, "create", "a", 7), op(1, 2, 3, "link", 7, "b"),
               op(1, 4, 5, "chmod", 7, 0o600), op(1, 6, 7, "getattr", 7, out=(0o600, 2)),
               op(1, 8, 9, "link", 7, "a", out=errno.EEXIST),
               op(1, 10, 11, "rename", "a", "b"),  # one inode: nothing happens
               op(1, 12, 13, "getattr", 7, out=(0o600, 2)),
               op(1, 14, 15, "unlink", "a"), op(1, 16, 17, "lookup", "b", out=7),
               op(1, 18, 19, "unlink", "b"),
               op(1, 20, 21, "getattr", 7, out=errno.ENOENT),
               op(1, 22, 23, "link", 7, "c", out=errno.ENOENT),
               op(1, 24, 25, "setx", 7, b"v", out=errno.ENOENT)]
    assert check(history).linearizable is True
    # A link that brought a freed inode back, or a rename over a hard link
    # of the same inode that dropped one name, is caught.
    assert check(history[:-2] + [op(1, 22, 23, "link", 7, "c")]).linearizable is False
    assert check(history[:6] + [op(1, 12, 13, "getattr", 7, out=(0o600, 1))]
                 ).linearizable is False
    # A rename over another inode's name frees that inode.
    over = [op(1, 0, 1, "create", "a", 7), op(1, 2, 3, "create", "b", 8),
            op(1, 4, 5, "rename", "a", "b"), op(1, 6, 7, "getattr", 8, out=errno.ENOENT),
            op(1, 8, 9, "getattr", 7, out=(MODE, 1))]
    assert check(over).linearizable is True


def test_concurrent_operations_may_take_either_order_but_real_time_holds():
    overlapping = [op(1, 0, 10, "create", "a", 7),
                   op(2, 1, 2, "lookup", "a", out=errno.ENOENT),
                   op(3, 3, 11, "lookup", "a", out=7)]
    assert check(overlapping).linearizable is True
    after = [op(1, 0, 1, "create", "a", 7), op(2, 2, 3, "lookup", "a", out=errno.ENOENT)]
    assert check(after).linearizable is False


def test_two_successful_creates_of_one_name_are_caught():
    both = [op(1, 0, 5, "create", "a", 7), op(2, 1, 6, "create", "a", 8)]
    assert check(both).linearizable is False
    one = [op(1, 0, 5, "create", "a", 7), op(2, 1, 6, "create", "a", 8, out=errno.EEXIST)]
    assert check(one).linearizable is True


def test_an_unknown_outcome_may_or_may_not_have_happened():
    base = [op(1, 0, 1, "create", "a", 7), op(2, 2, None, "unlink", "a")]
    assert check(base + [op(3, 5, 6, "lookup", "a", out=errno.ENOENT)]).linearizable is True
    assert check(base + [op(3, 5, 6, "lookup", "a", out=7)]).linearizable is True
    # ...but not before it was invoked.
    early = [op(1, 0, 1, "create", "a", 7), op(3, 2, 3, "lookup", "a", out=errno.ENOENT),
             op(2, 4, None, "unlink", "a")]
    assert check(early).linearizable is False


def test_a_late_duplicate_unlink_is_caught():
    """The anomaly sessions prevent: an unlink applied twice removes a
    file created again in between."""
    history = [op(1, 0, 1, "create", "a", 7), op(1, 2, 3, "unlink", "a"),
               op(2, 4, 5, "create", "a", 8), op(3, 6, 7, "lookup", "a", out=errno.ENOENT)]
    assert check(history).linearizable is False


def test_time_bound_gives_no_verdict_rather_than_a_guess():
    """Sixty unknown outcomes, any subset of which may have happened, and
    one answer no subset explains: the search gives up at its bound."""
    many = [op(98, 0, 0.5, "create", "a", 7)]
    for c in range(60):
        kind = ("link", "unlink", "setx")[c % 3]
        args = ((7, "a") if kind == "link" else ("a",) if kind == "unlink" else (7, bytes([c])))
        many.append(op(c, 1, None, kind, *args))
    many.append(op(99, 2, 3, "getx", 7, out=b"never"))
    verdict = check(many, time_limit_s=0.2)
    assert verdict.linearizable is None and verdict.took_s < 2


def _run(seed: int, clients: int = 4, count: int = 150):
    """A linearizable execution: each op takes effect at a random instant
    inside its interval; some outcomes are hidden from their caller."""
    rng = random.Random(seed)
    names = ["a", "b", "c"]
    tags = [0]
    events = []
    clock = [0.0] * clients
    for _ in range(count):
        c = rng.randrange(clients)
        call = clock[c] + rng.random()
        effect = call + rng.random() * 2
        ret = effect + rng.random()
        clock[c] = ret
        kind = rng.choice(["create", "unlink", "rename", "lookup", "link", "chmod",
                           "getattr", "setx", "getx"])
        tag = rng.randrange(1, tags[0] + 1) if tags[0] else 1
        if kind == "create":
            tags[0] += 1
            args = (rng.choice(names), tags[0])
        elif kind == "rename":
            args = (rng.choice(names), rng.choice(names))
        elif kind == "link":
            args = (tag, rng.choice(names))
        elif kind in ("chmod", "setx"):
            args = (tag, rng.choice([0o600, 0o644]) if kind == "chmod" else
                    bytes([rng.randrange(3)]))
        elif kind in ("getattr", "getx"):
            args = (tag,)
        else:
            args = (rng.choice(names),)
        events.append((effect, c, call, ret, kind, args))
    state, ops = EMPTY, []
    for effect, c, call, ret, kind, args in sorted(events):
        out, state = step(state, Op(c, call, ret, kind, args))
        hidden = rng.random() < 0.05
        ops.append(Op(c, call, None if hidden else ret, kind, args, None if hidden else out))
    return ops


def test_random_linearizable_executions_pass():
    for seed in range(30):
        verdict = check(_run(seed))
        assert verdict.linearizable is True, f"seed {seed}: {verdict}"
