"""The linearizability checker on histories whose verdict is known: real
time is respected, concurrent operations may take either order, an
operation whose outcome is unknown may or may not have happened, and the
anomalies a broken system shows (two creates of one name both succeeding,
a late duplicate unlink) are caught; random histories produced by a
linearizable execution always pass."""

from __future__ import annotations

import errno
import random

from .linearizability import Op, check, step


def op(client, call, ret, kind, *args, out=0):
    return Op(client, call, ret, kind, tuple(args), out)


def test_sequential_history_passes_and_a_wrong_answer_fails():
    good = [op(1, 0, 1, "create", "a"), op(1, 2, 3, "setx", "a", b"v"),
            op(1, 4, 5, "getx", "a", out=b"v"), op(1, 6, 7, "rename", "a", "b"),
            op(1, 8, 9, "lookup", "a", out=errno.ENOENT), op(1, 10, 11, "getx", "b", out=b"v")]
    assert check(good).linearizable is True
    bad = good[:-1] + [op(1, 10, 11, "getx", "b", out=errno.ENODATA)]
    verdict = check(bad)
    assert verdict.linearizable is False and verdict.longest_prefix == 5


def test_concurrent_operations_may_take_either_order_but_real_time_holds():
    overlapping = [op(1, 0, 10, "create", "a"), op(2, 1, 2, "lookup", "a", out=errno.ENOENT),
                   op(3, 3, 11, "lookup", "a", out=0)]
    assert check(overlapping).linearizable is True
    after = [op(1, 0, 1, "create", "a"), op(2, 2, 3, "lookup", "a", out=errno.ENOENT)]
    assert check(after).linearizable is False


def test_two_successful_creates_of_one_name_are_caught():
    both = [op(1, 0, 5, "create", "a"), op(2, 1, 6, "create", "a")]
    assert check(both).linearizable is False
    one = [op(1, 0, 5, "create", "a"), op(2, 1, 6, "create", "a", out=errno.EEXIST)]
    assert check(one).linearizable is True


def test_an_unknown_outcome_may_or_may_not_have_happened():
    base = [op(1, 0, 1, "create", "a"), op(2, 2, None, "unlink", "a")]
    assert check(base + [op(3, 5, 6, "lookup", "a", out=errno.ENOENT)]).linearizable is True
    assert check(base + [op(3, 5, 6, "lookup", "a", out=0)]).linearizable is True
    # ...but not before it was invoked.
    early = [op(1, 0, 1, "create", "a"), op(3, 2, 3, "lookup", "a", out=errno.ENOENT),
             op(2, 4, None, "unlink", "a")]
    assert check(early).linearizable is False


def test_a_late_duplicate_unlink_is_caught():
    """The anomaly sessions prevent: an unlink applied twice removes a
    file created again in between."""
    history = [op(1, 0, 1, "create", "a"), op(1, 2, 3, "unlink", "a"),
               op(2, 4, 5, "create", "a"), op(3, 6, 7, "lookup", "a", out=errno.ENOENT)]
    assert check(history).linearizable is False


def test_time_bound_gives_no_verdict_rather_than_a_guess():
    """Sixty unknown outcomes, any subset of which may have happened, and
    one answer no subset explains: the search gives up at its bound."""
    many = []
    for c in range(60):
        kind = ("create", "unlink", "setx")[c % 3]
        many.append(op(c, 0, None, kind, "a", *([bytes([c])] if kind == "setx" else [])))
    many.append(op(99, 1, 2, "getx", "a", out=b"never"))
    verdict = check(many, time_limit_s=0.2)
    assert verdict.linearizable is None and verdict.took_s < 2


def _run(seed: int, clients: int = 4, count: int = 150):
    """A linearizable execution: each op takes effect at a random instant
    inside its interval; some outcomes are hidden from their caller."""
    rng = random.Random(seed)
    names = ["a", "b", "c"]
    events = []
    clock = [0.0] * clients
    for _ in range(count):
        c = rng.randrange(clients)
        call = clock[c] + rng.random()
        effect = call + rng.random() * 2
        ret = effect + rng.random()
        clock[c] = ret
        kind = rng.choice(["create", "unlink", "rename", "setx", "lookup", "getx"])
        args = ((rng.choice(names), rng.choice(names)) if kind == "rename" else
                (rng.choice(names), bytes([rng.randrange(3)])) if kind == "setx" else
                (rng.choice(names),))
        events.append((effect, c, call, ret, kind, args))
    state, ops = frozenset(), []
    for effect, c, call, ret, kind, args in sorted(events):
        out, state = step(state, Op(c, call, ret, kind, args))
        hidden = rng.random() < 0.05
        ops.append(Op(c, call, None if hidden else ret, kind, args, None if hidden else out))
    return ops


def test_random_linearizable_executions_pass():
    for seed in range(30):
        verdict = check(_run(seed))
        assert verdict.linearizable is True, f"seed {seed}: {verdict}"
