"""RingNode glue: events for the chunk store, handover plan, driver misuse."""

import random

import pytest

from server.ring.config import RingConfig
from server.ring.messages import (
    FindNext, MemberDown, MemberUp, Ping, ProtocolError, RangesChanged,
)
from server.ring.node import RingNode
from server.ring.ringmath import Ring

from .simulation import Network

CFG = RingConfig(virtual_ids=16)


def small_cluster(n=5, seed=11):
    net = Network(seed, loss=0.0, config=CFG)
    names = [f"n{i}" for i in range(n)]
    for name in names:
        net.add(name, names[:2])
        net.run(2)
    assert net.run(3000, until=net.converged) is not None
    return net


def test_ranges_changed_after_a_crash_names_what_each_node_must_now_hold():
    net = small_cluster()
    before = Ring(net.live(), CFG.virtual_ids)
    mark = len(net.events)
    net.crash("n3")
    assert net.run(3000, until=net.converged) is not None
    after = Ring(net.live(), CFG.virtual_ids)
    for name in net.live():
        changes = [e for at, who, e in net.events[mark:]
                   if who == name and isinstance(e, RangesChanged)]
        assert len(changes) == 1 and changes[0].after == after and changes[0].before == before
        gained, lost = changes[0].gained_lost()
        assert not lost  # a node leaving only adds responsibility to the others
        for r in gained:
            assert name in after.replicas(r.end, CFG.replicas)
            assert name not in before.replicas(r.end, CFG.replicas)
    downs = {(who, e.name) for at, who, e in net.events[mark:] if isinstance(e, MemberDown)}
    assert downs == {(n, "n3") for n in net.live()}


def test_first_ranges_changed_gives_the_whole_responsibility():
    net = small_cluster(3)
    first = next(e for at, who, e in net.events if who == "n2" and isinstance(e, RangesChanged))
    gained, lost = first.gained_lost()
    assert not lost and gained == first.after.replica_ranges("n2", CFG.replicas)


def test_handover_plan_moves_exactly_the_leavers_ranges():
    net = small_cluster()
    plan = net.nodes["n1"].handover_plan()
    assert plan and all("n1" in m.before and "n1" not in m.after for m in plan)
    net.leave("n1", linger_ticks=60)
    assert net.run(3000, until=net.converged) is not None
    lefts = [e for at, who, e in net.events if isinstance(e, MemberDown) and e.name == "n1"]
    assert lefts and all(e.left for e in lefts)


def test_restart_with_the_same_name_is_member_up_again():
    net = small_cluster()
    net.crash("n4")
    assert net.run(3000, until=net.converged) is not None
    mark = len(net.events)
    net.add("n4", ["n0", "n1"])
    assert net.run(3000, until=net.converged) is not None
    assert net.nodes["n4"].incarnation >= 1
    ups = {who for at, who, e in net.events[mark:] if isinstance(e, MemberUp) and e.name == "n4"}
    assert ups == set(net.live()) - {"n4"}


def test_lookup_answers_carry_the_replica_set_of_the_view():
    net = small_cluster()
    handle = net.lookup("n0", 42)
    net.run(50)
    done = net.lookups[handle]
    assert done.replicas == Ring(net.live(), CFG.virtual_ids).replicas(42, CFG.replicas)


def test_driver_misuse_is_an_error():
    node = RingNode("a", [], CFG, random.Random(1))
    with pytest.raises(ProtocolError):
        node.tick(1)
    node.start(0)
    with pytest.raises(ProtocolError):
        node.start(0)
    with pytest.raises(ProtocolError):
        node.step(object(), 1)
    with pytest.raises(ProtocolError):
        node.step(Ping("b", "zzz", 1), 1)
    with pytest.raises(ProtocolError):
        node.step(FindNext("b", "zzz", 1, 5), 1)
    assert node.members() == ["a"]


def test_config_rejects_unknown_keys_and_bad_values():
    assert RingConfig.from_dict({"replicas": 2}).replicas == 2
    with pytest.raises(ValueError):
        RingConfig.from_dict({"replicaz": 2})
    with pytest.raises(ValueError):
        RingConfig(replicas=3, successors_len=4)
    with pytest.raises(ValueError):
        RingConfig(ack_timeout_ticks=30)


def test_two_rings_formed_apart_merge_after_the_partition_heals():
    # The seeds cannot reach each other at start, so each forms a ring and
    # admits a joiner; once healed, sync with seeds merges the member tables
    # and the member-list hints merge the Chord rings.
    net = Network(5, loss=0.0, config=CFG)
    left = {"s0", "a"}  # s1 and b on the other side
    net.cut = lambda m: (m.src in left) != (m.dst in left)
    net.add("s0", ["s0", "s1"])
    net.add("s1", ["s0", "s1"])
    net.run(400)
    net.add("a", ["s0"])
    net.add("b", ["s1"])
    net.run(200)
    assert net.nodes["s0"].members() == ["a", "s0"] and net.nodes["s1"].members() == ["b", "s1"]
    net.cut = None
    assert net.run(3000, until=net.converged) is not None
    assert all(len(n.members()) == 4 for n in net.nodes.values())
