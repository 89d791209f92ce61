"""Chord core without SWIM: joins, stabilization, fingers, lookups, leave."""

import bisect
import random

import pytest

from server.ring.chord import Chord
from server.ring.config import RingConfig
from server.ring.messages import Joined, LookupDone, Notify, ProtocolError
from server.ring.ringmath import node_id

CFG = RingConfig(membership_hints=False)


class Pump:
    def __init__(self):
        self.cores: dict[str, Chord] = {}
        self.now = 0
        self.inbox = []
        self.events = []

    def take(self, who, out):
        self.inbox.extend(out.messages)
        self.events.extend((who, e) for e in out.events)

    def run(self, ticks):
        for _ in range(ticks):
            self.now += 1
            inbox, self.inbox = self.inbox, []
            for msg in inbox:
                if msg.dst in self.cores:
                    self.take(msg.dst, self.cores[msg.dst].step(msg, self.now))
            for name in sorted(self.cores):
                self.take(name, self.cores[name].tick(self.now))

    def true_successor(self, key):
        ids = sorted((node_id(n), n) for n in self.cores)
        return ids[bisect.bisect_left(ids, (key, "")) % len(ids)][1]

    def correct(self):
        return all(c.successor() == self.true_successor((c.id + 1) % 2**64)
                   for c in self.cores.values())


def build(n, seed=3):
    rng = random.Random(seed)
    pump = Pump()
    first = Chord("c0", CFG)
    pump.cores["c0"] = first
    pump.take("c0", first.create(0))
    for i in range(1, n):
        core = Chord(f"c{i}", CFG)
        pump.cores[core.me] = core
        members = sorted(n for n, c in pump.cores.items() if c.joined)
        pump.take(core.me, core.join(rng.sample(members, min(3, len(members))), pump.now))
        pump.run(5)
    for _ in range(200):
        pump.run(20)
        if pump.correct():
            break
    return pump


def test_ring_of_one_answers_every_lookup_itself():
    core = Chord("solo", CFG)
    core.create(0)
    req, out = core.lookup(12345, 1)
    assert out.events == [LookupDone(req, 12345, "solo", (), 0)]


def test_joins_converge_to_correct_successors_and_predecessors():
    pump = build(12)
    assert pump.correct()
    ids = sorted((c.id, c.me) for c in pump.cores.values())
    for i, (_, name) in enumerate(ids):
        assert pump.cores[name].predecessor == ids[i - 1][1]
        assert len(pump.cores[name].successors) == CFG.successors_len
    assert sum(isinstance(e, Joined) for _, e in pump.events) == 12


def test_lookups_reach_the_owner_in_few_hops_once_fingers_are_fixed():
    pump = build(32)
    pump.run(64 * CFG.fix_fingers_period_ticks)
    rng = random.Random(5)
    reqs = []
    for _ in range(100):
        key, origin = rng.getrandbits(64), rng.choice(sorted(pump.cores))
        req, out = pump.cores[origin].lookup(key, pump.now)
        pump.take(origin, out)
        reqs.append((origin, req, key))
    pump.run(50)
    done = {(w, e.req): e for w, e in pump.events if isinstance(e, LookupDone)}
    hops = []
    for origin, req, key in reqs:
        assert done[(origin, req)].successor == pump.true_successor(key)
        hops.append(done[(origin, req)].hops)
    assert sum(hops) / len(hops) <= 5 and max(hops) <= 10  # ~log2(32)/2, not N


def test_graceful_leave_relinks_neighbours_at_once():
    pump = build(6)
    ids = sorted((c.id, c.me) for c in pump.cores.values())
    pred, leaver, succ = ids[1][1], ids[2][1], ids[3][1]
    pump.take(leaver, pump.cores[leaver].leave(pump.now))
    pump.run(3)
    del pump.cores[leaver]
    assert pump.cores[pred].successor() == succ
    assert pump.cores[succ].predecessor == pred


def test_excluded_node_vanishes_from_every_table():
    pump = build(8)
    pump.run(64 * CFG.fix_fingers_period_ticks)
    victim = "c3"
    for core in pump.cores.values():
        core.exclude(victim)
        assert victim not in core.successors and victim not in core.fingers
        assert core.predecessor != victim
    del pump.cores[victim]
    pump.run(200)
    assert pump.correct()


def test_quick_restart_finds_the_node_after_its_old_self():
    pump = build(5)
    name = "c2"
    reborn = Chord(name, CFG)
    pump.cores[name] = reborn
    pump.take(name, reborn.join(["c0"], pump.now))
    pump.run(100)
    assert pump.correct()


def test_misrouted_messages_raise_and_change_nothing():
    core = Chord("a", CFG)
    core.create(0)
    with pytest.raises(ProtocolError):
        core.step(Notify("b", "c"), 1)
    with pytest.raises(ProtocolError):
        core.step(object(), 1)  # type: ignore[arg-type]
    assert core.successors == ["a"] and core.predecessor is None
