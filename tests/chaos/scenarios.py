"""Fault schedules: each scenario is a seeded list of timed steps (seconds
after the workload starts) applied to the cluster and its network, ending
with everything healed.  Steps run in a worker thread (they call ip, nft,
tc and signals), so the workload's clocks never stop for them."""

from __future__ import annotations

import random
from collections.abc import Callable

Step = tuple[float, str, Callable[[], object]]  # a step may return a note (which node)

FAULT_S = 6.0  # how long a fault lasts; longer than the election timeout and the lease


def _leader(cluster) -> int:
    for _ in range(20):  # an election may be running: ask again shortly
        leader = cluster.leader()
        if leader is not None:
            return leader
        import time
        time.sleep(0.1)
    return 0


def _on(box, cluster, action):
    """Pick the leader now, act on it, and say which node it was."""
    box["n"] = _leader(cluster)
    action(box["n"])
    return f"(n{box['n']})"


def isolate_leader(rng, cluster, net) -> list[Step]:
    box = {}
    return [(1.0, "isolate the leader", lambda: _on(box, cluster, net.isolate)),
            (1.0 + FAULT_S, "heal", net.heal)]


def partition_minority(rng, cluster, net) -> list[Step]:
    lone = rng.randrange(net.n)
    rest = [i for i in range(net.n) if i != lone]
    return [(1.0, f"partition n{lone} | rest (clients with the majority)",
             lambda: net.partition([rest, [lone]], client_group=0)),
            (1.0 + FAULT_S, "heal", net.heal)]


def partition_clients_with_minority(rng, cluster, net) -> list[Step]:
    lone = rng.randrange(net.n)
    rest = [i for i in range(net.n) if i != lone]
    return [(1.0, f"partition n{lone} (with the clients) | rest",
             lambda: net.partition([[lone], rest], client_group=0)),
            (1.0 + FAULT_S, "heal", net.heal)]


def bridge(rng, cluster, net) -> list[Step]:
    """Node 1 sees both sides; 0 and 2 do not see each other (needs 3)."""
    def cut():
        net.block(0, [net.ip(2)])
        net.block(2, [net.ip(0)])
    return [(1.0, "bridge: n0 and n2 cut, n1 sees both", cut), (1.0 + FAULT_S, "heal", net.heal)]


def one_way_from_leader(rng, cluster, net) -> list[Step]:
    box = {}

    def cut():
        box["l"] = _leader(cluster)
        for j in range(net.n):
            if j != box["l"]:
                net.drop_one_way(box["l"], j)
        return f"(n{box['l']})"
    return [(1.0, "leader's packets to the others lost (one way)", cut),
            (1.0 + FAULT_S, "heal", net.heal)]


def pause_leader(rng, cluster, net) -> list[Step]:
    box = {}
    return [(1.0, "SIGSTOP the leader", lambda: _on(box, cluster, cluster.pause)),
            (1.0 + FAULT_S / 2, "SIGCONT it", lambda: cluster.resume(box["n"]))]


def kill_leader(rng, cluster, net) -> list[Step]:
    box = {}
    return [(1.0, "kill -9 the leader", lambda: _on(box, cluster, cluster.kill)),
            (1.0 + FAULT_S / 2, "restart it", lambda: cluster.start(box["n"]))]


def kill_random(rng, cluster, net) -> list[Step]:
    victim = rng.randrange(net.n)
    return [(1.0, f"kill -9 n{victim}", lambda: cluster.kill(victim)),
            (1.0 + FAULT_S / 2, f"restart n{victim}", lambda: cluster.start(victim))]


def wipe_and_replace(rng, cluster, net) -> list[Step]:
    """A follower's disk is lost: kill -9 it and empty its data directory;
    the operator removes its old id (``chordfs members remove``) and starts
    it again empty, to join as a learner under a new id and be promoted."""
    box = {}

    def wipe():
        leader = _leader(cluster)
        box["n"] = next(i for i in range(net.n) if i != leader)
        cluster.kill(box["n"])
        cluster.wipe(box["n"])
        return f"(n{box['n']})"
    return [(1.0, "kill -9 a follower and wipe its disk", wipe),
            (2.0, "members remove its old id", lambda: cluster.remove_member(box["n"])),
            (3.0, "start it empty (a new member)", lambda: cluster.start(box["n"], init=False))]


def lossy_leader(rng, cluster, net) -> list[Step]:
    box = {}
    return [(1.0, "80 ms delay and 20% loss at the leader",
             lambda: _on(box, cluster, lambda i: box.setdefault(
                 "how", net.netem(i, delay_ms=80, loss_pct=20)))
             + f" {box['how']}"),
            (1.0 + FAULT_S, "heal", net.heal)]


def kill_mount(rng, cluster, net) -> list[Step]:
    """Filled in by the runner, which owns the mount (``kill_mount`` hook)."""
    return []


def combined(rng, cluster, net) -> list[Step]:
    first, second = rng.sample([isolate_leader, partition_minority, pause_leader, kill_random,
                                kill_leader, lossy_leader], 2)
    steps = first(rng, cluster, net)
    steps += [(t + FAULT_S + 1.0, what, fn) for t, what, fn in second(rng, cluster, net)]
    return steps


SCENARIOS: dict[str, Callable] = {
    "isolate-leader": isolate_leader,
    "partition-minority": partition_minority,
    "partition-clients-with-minority": partition_clients_with_minority,
    "bridge": bridge,
    "one-way-from-leader": one_way_from_leader,
    "pause-leader": pause_leader,
    "kill-leader": kill_leader,
    "kill-random": kill_random,
    "lossy-leader": lossy_leader,
    "kill-mount": kill_mount,
    "wipe-and-replace": wipe_and_replace,
    "combined": combined,
}


def pick(rng: random.Random, index: int) -> str:
    """Scenario ``index`` of a run: every kind once in turn, then at random."""
    names = list(SCENARIOS)
    return names[index] if index < len(names) else rng.choice(names)
