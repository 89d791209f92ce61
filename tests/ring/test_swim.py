"""SWIM core, message by message (no network: the test is the network)."""

import random

import pytest

from server.ring.config import RingConfig
from server.ring.messages import (
    Ack, Join, MemberDown, MemberSuspect, MemberUp, Output, Ping, PingReq, ProtocolError, Refuted,
    Status, Update,
)
from server.ring.swim import Swim

CFG = RingConfig()


class Pump:
    """Delivers messages between Swim cores, one tick per round, with a
    drop filter standing in for loss and crashes."""

    def __init__(self, cores):
        self.cores = {c.me: c for c in cores}
        self.now = 0
        self.inbox = []
        self.events = []
        self.drop = lambda msg: False

    def take(self, who, out):
        self.inbox.extend(out.messages)
        self.events.extend((who, e) for e in out.events)

    def start(self, *names):
        for n in names:
            self.take(n, self.cores[n].start(self.now))

    def run(self, ticks):
        for _ in range(ticks):
            self.now += 1
            inbox, self.inbox = self.inbox, []
            for msg in inbox:
                if msg.dst in self.cores and not self.drop(msg):
                    self.take(msg.dst, self.cores[msg.dst].step(msg, self.now))
            for name in sorted(self.cores):
                self.take(name, self.cores[name].tick(self.now))

    def events_of(self, kind, who=None):
        return [e for w, e in self.events if isinstance(e, kind) and who in (None, w)]


def cluster(n=3, seed=1):
    names = [f"n{i}" for i in range(n)]
    cores = [Swim(name, [] if i == 0 else ["n0"], CFG, random.Random(seed + i))
             for i, name in enumerate(names)]
    pump = Pump(cores)
    pump.start(*names)
    pump.run(60)
    return pump


def test_join_through_a_seed_gives_everyone_the_full_list():
    pump = cluster(4)
    for core in pump.cores.values():
        assert core.joined and core.in_view() == ["n0", "n1", "n2", "n3"]
    assert {e.name for e in pump.events_of(MemberUp, "n1")} == {"n0", "n2", "n3"}


def test_any_seed_admits_a_joiner():
    pump = cluster(3)
    late = Swim("late", ["dead-seed", "n2"], CFG, random.Random(9))
    pump.cores["late"] = late
    pump.start("late")
    pump.run(CFG.join_timeout_ticks * 3 + 60)
    assert late.in_view() == ["late", "n0", "n1", "n2"]
    assert "late" in pump.cores["n0"].in_view()


def test_indirect_probe_keeps_a_node_alive_when_the_direct_path_fails():
    pump = cluster(4)
    pump.drop = lambda m: {m.src, m.dst} == {"n0", "n1"}
    pump.run(CFG.ping_period_ticks * 12)
    assert not pump.events_of(MemberSuspect)
    assert pump.cores["n0"].counters["indirect"] > 0


def test_crashed_node_is_suspected_then_declared_dead():
    pump = cluster(3)
    del pump.cores["n2"]
    pump.run(CFG.ping_period_ticks * 3 + CFG.suspicion_timeout_ticks + 20)
    assert {e.name for e in pump.events_of(MemberSuspect)} == {"n2"}
    downs = pump.events_of(MemberDown)
    assert {(e.name, e.left) for e in downs} == {("n2", False)}
    assert pump.cores["n0"].in_view() == ["n0", "n1"]


def test_suspected_live_node_refutes_with_a_higher_incarnation():
    pump = cluster(3)
    n0, n1 = pump.cores["n0"], pump.cores["n1"]
    n0._apply(Update("n1", 0, Status.SUSPECT), Output())  # as if a probe failed
    pump.run(CFG.ping_period_ticks * 2)
    assert n1.incarnation == 1 and pump.events_of(Refuted, "n1")
    assert n0.members["n1"] == Update("n1", 1, Status.ALIVE)
    assert not pump.events_of(MemberDown)


def test_restart_under_the_same_name_rejoins_with_a_higher_incarnation():
    pump = cluster(3)
    del pump.cores["n2"]
    pump.run(CFG.ping_period_ticks * 3 + CFG.suspicion_timeout_ticks + 20)
    assert pump.cores["n0"].status_of("n2") == Status.DEAD
    reborn = Swim("n2", ["n0"], CFG, random.Random(77))
    pump.cores["n2"] = reborn
    pump.start("n2")
    pump.run(60)
    assert reborn.incarnation >= 1
    assert all(c.in_view() == ["n0", "n1", "n2"] for c in pump.cores.values())


def test_graceful_leave_is_gossiped_as_left():
    pump = cluster(3)
    pump.take("n2", pump.cores["n2"].leave(pump.now, fanout=2))
    pump.run(10)
    del pump.cores["n2"]
    pump.run(CFG.suspicion_timeout_ticks * 2)
    assert {(e.name, e.left) for e in pump.events_of(MemberDown)} == {("n2", True)}


def test_updates_override_by_incarnation_then_status():
    alive0, suspect0 = Update("x", 0, Status.ALIVE), Update("x", 0, Status.SUSPECT)
    dead0, alive1 = Update("x", 0, Status.DEAD), Update("x", 1, Status.ALIVE)
    assert suspect0.overrides(alive0) and dead0.overrides(suspect0)
    assert alive1.overrides(dead0) and not alive0.overrides(suspect0)
    assert not dead0.overrides(dead0)


def test_protocol_violations_are_errors_and_change_nothing():
    core = Swim("a", [], CFG, random.Random(1))
    core.start(0)
    before = dict(core.members)
    with pytest.raises(ProtocolError):
        core.step(Ping("b", "c", 1), 1)
    with pytest.raises(ProtocolError):
        core.step(Ping("a", "a", 1), 1)
    with pytest.raises(ProtocolError):
        core.tick(5), core.tick(4)
    assert core.members == before


def test_not_yet_joined_seed_refuses_and_joiner_moves_on():
    a = Swim("a", ["b"], CFG, random.Random(1))
    out = a.start(0)
    assert [type(m) for m in out.messages] == [Join]
    b = Swim("b", ["a"], CFG, random.Random(2))
    b.start(0)
    reply = b.step(out.messages[0], 1).messages[0]
    assert reply.accepted is False
    a.step(reply, 2)
    assert [m.dst for m in a.tick(3).messages] == ["b"]  # retried at once


def test_ack_carries_the_sender_incarnation():
    a, b = Swim("a", [], CFG, random.Random(1)), Swim("b", [], CFG, random.Random(2))
    a.start(0), b.start(0)
    ack = b.step(Ping("a", "b", 7), 1).messages[0]
    assert isinstance(ack, Ack) and Update("b", 0, Status.ALIVE) in ack.updates


def test_fresh_cluster_forms_even_when_the_first_seed_never_starts():
    seeds = ["s0", "s1", "s2"]
    cores = [Swim(n, seeds, CFG, random.Random(i)) for i, n in enumerate(seeds[1:])]
    pump = Pump(cores)
    pump.start("s1", "s2")
    # s1 (rank 1) forms a ring alone after 2 * bootstrap_after_rounds rounds;
    # s2 (rank 2) would wait longer, so it joins s1 instead of splitting.
    rounds = 2 * CFG.bootstrap_after_rounds + 2
    pump.run(rounds * len(seeds) * CFG.join_timeout_ticks)
    assert all(c.joined and c.in_view() == ["s1", "s2"] for c in cores)


def test_relays_are_bounded():
    cfg = RingConfig(relays_in_flight_max=2)
    core = Swim("h", [], cfg, random.Random(1))
    core.start(0)
    sent = [core.step(PingReq("a", "h", i, f"t{i}"), 1).messages for i in range(4)]
    assert [len(m) for m in sent] == [1, 1, 0, 0] and len(core.relays) == 2
