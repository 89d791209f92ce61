"""Seeded simulation of a ring cluster: lossy network, crashes, leaves,
restarts. Everything (delays, loss, node order, the cores' randomness) comes
from one seed, so a failing run replays exactly:

    python -m tests.ring.simulation --nodes 100 --seeds 20
    python -m tests.ring.simulation --nodes 20 --seed-start 7 --seeds 1   # replay one

A tick stands for TICK_S seconds when figures are printed.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import heapq
import math
import random
import statistics
import sys
import time

from server.ring.config import RingConfig
from server.ring.messages import LookupDone, LookupFailed, MemberDown, MemberSuspect
from server.ring.node import RingNode
from server.ring.ringmath import Ring, node_id

TICK_S = 0.05


class Network:
    """Nodes plus a message queue with random delay and loss."""

    def __init__(self, seed: int, loss: float, config: RingConfig, delay_ticks=(1, 2)):
        self.seed = seed
        self.rng = random.Random(seed)
        self.loss = loss
        self.config = config
        self.delay_ticks = delay_ticks
        self.now = 0
        self.nodes: dict[str, RingNode] = {}
        self.leaving: dict[str, int] = {}   # name -> tick it stops
        self.queue: list = []
        self.qseq = 0
        self.sent = 0
        self.sent_by_type: dict[str, int] = {}
        self.events: list[tuple[int, str, object]] = []
        self.lookups: dict[tuple, object] = {}
        self.cut = None  # optional msg -> bool: drop it (a partition)
        self.lives: dict[str, list] = {}      # name -> [[start, end|None]], for false positives
        self.counters: dict[str, int] = {}    # SWIM counters of nodes now gone

    def _retire(self, name: str) -> None:
        for key, value in self.nodes[name].swim.counters.items():
            self.counters[key] = self.counters.get(key, 0) + value
        del self.nodes[name]

    def swim_counter(self, key: str) -> int:
        return self.counters.get(key, 0) + sum(n.swim.counters[key] for n in self.nodes.values())

    # --- membership of the simulated cluster --------------------------------

    def add(self, name: str, seeds: list[str]) -> RingNode:
        self.lives.setdefault(name, []).append([self.now, None])
        node = RingNode(name, seeds, self.config, random.Random(self.rng.getrandbits(64)))
        self.nodes[name] = node
        self._emit(name, node.start(self.now))
        return node

    def crash(self, name: str) -> None:
        self.lives[name][-1][1] = self.now
        self._retire(name)  # state is gone; messages to it are dropped

    def leave(self, name: str, linger_ticks: int) -> None:
        self._emit(name, self.nodes[name].leave(self.now))
        self.leaving[name] = self.now + linger_ticks
        self.lives[name][-1][1] = self.now

    def live(self) -> list[str]:
        """Nodes that are up and not leaving: the ones that should be in views."""
        return sorted(n for n in self.nodes if n not in self.leaving)

    # --- running ---------------------------------------------------------------

    def _emit(self, src: str, out) -> None:
        for msg in out.messages:
            self.sent += 1
            kind = type(msg).__name__
            self.sent_by_type[kind] = self.sent_by_type.get(kind, 0) + 1
            if self.rng.random() < self.loss or (self.cut is not None and self.cut(msg)):
                continue
            self.qseq += 1
            at = self.now + self.rng.randint(*self.delay_ticks)
            heapq.heappush(self.queue, (at, self.qseq, msg))
        for event in out.events:
            self.events.append((self.now, src, event))
            if isinstance(event, (LookupDone, LookupFailed)):
                # A restarted node counts reqs from 1 again: key by life too.
                self.lookups[(src, len(self.lives[src]), event.req)] = event

    def run(self, ticks: int, until=None, check_every: int = 5) -> int | None:
        """Advance up to ``ticks``; with ``until``, stop when it holds and
        return the ticks taken (None if it never held)."""
        for i in range(1, ticks + 1):
            self.now += 1
            while self.queue and self.queue[0][0] <= self.now:
                _, _, msg = heapq.heappop(self.queue)
                node = self.nodes.get(msg.dst)
                if node is not None:
                    self._emit(msg.dst, node.step(msg, self.now))
            names = list(self.nodes)
            self.rng.shuffle(names)
            for name in names:
                self._emit(name, self.nodes[name].tick(self.now))
            for name, stop in list(self.leaving.items()):
                if self.now >= stop:
                    del self.leaving[name]
                    self._retire(name)
            if until is not None and i % check_every == 0 and until():
                return i
        return None if until is not None else ticks

    def lookup(self, origin: str, key: int) -> tuple[str, int, int]:
        req, out = self.nodes[origin].lookup(key, self.now)
        self._emit(origin, out)
        return origin, len(self.lives[origin]), req

    # --- checks ----------------------------------------------------------------

    def true_successor(self, key: int) -> str:
        ids = sorted((node_id(n), n) for n in self.live())
        i = bisect.bisect_left(ids, (key, "")) % len(ids)
        return ids[i][1]

    def wrong_successors(self) -> list[str]:
        live = self.live()
        ids = sorted((node_id(n), n) for n in live)
        wrong = []
        for i, (_, name) in enumerate(ids):
            want = ids[(i + 1) % len(ids)][1]
            if self.nodes[name].chord.successor() != want:
                wrong.append(name)
        return wrong

    def views_converged(self) -> bool:
        live = self.live()
        return all(self.nodes[n].members() == live for n in live)

    def converged(self) -> bool:
        return self.views_converged() and not self.wrong_successors()

    def false_verdicts(self, grace_ticks: int) -> tuple[set, set]:
        """(name, incarnation) of every suspicion and death verdict about a
        node that was up, each counted once (gossip repeats it everywhere)."""
        wrong = {MemberSuspect: set(), MemberDown: set()}
        for at, _, event in self.events:
            if isinstance(event, (MemberSuspect, MemberDown)) and not getattr(event, "left", False):
                if self.was_settled_up(event.name, at, grace_ticks):
                    wrong[type(event)].add((event.name, event.incarnation))
        return wrong[MemberSuspect], wrong[MemberDown]

    def was_settled_up(self, name: str, at: int, grace_ticks: int) -> bool:
        """Up at ``at`` in a life that began ``grace_ticks`` earlier: news of
        its failure then cannot be about a previous life."""
        return any(start + grace_ticks <= at and (end is None or at < end)
                   for start, end in self.lives.get(name, ()))


@dataclasses.dataclass
class Report:
    nodes: int
    seed: int
    ok: bool = True
    problems: list = dataclasses.field(default_factory=list)
    join_converge_ticks: int | None = None
    detect_first_ticks: list = dataclasses.field(default_factory=list)
    detect_all_ticks: list = dataclasses.field(default_factory=list)
    converge_after_crash_ticks: int | None = None
    converge_after_leave_ticks: int | None = None
    converge_after_restart_ticks: int | None = None
    late_join_ticks: int | None = None
    hops: list = dataclasses.field(default_factory=list)
    lookups_ok: int = 0
    lookups_bad: int = 0
    probes: int = 0
    false_suspicions: int = 0
    false_deaths: int = 0
    msgs_per_node_s: float = 0.0

    def fail(self, what: str) -> None:
        self.ok = False
        self.problems.append(what)


def _check_lookups(net: Network, report: Report, count: int, phase: str) -> None:
    live = net.live()
    ring = Ring(live, net.config.virtual_ids)
    pending = []
    for _ in range(count):
        key = net.rng.getrandbits(64)
        pending.append((key, net.lookup(net.rng.choice(live), key)))
    net.run(400, until=lambda: all(h in net.lookups for _, h in pending), check_every=1)
    failed = 0
    for key, handle in pending:
        result = net.lookups.get(handle)
        if not isinstance(result, LookupDone):
            failed += 1
            continue
        want = net.true_successor(key), ring.replicas(key, net.config.replicas)
        if (result.successor, result.replicas) != want:
            report.lookups_bad += 1
            report.fail(f"{phase}: lookup {key:#x} got {result.successor}/{result.replicas}, "
                        f"want {want}")
            continue
        report.lookups_ok += 1
        report.hops.append(result.hops)
    if failed > max(1, count // 100):
        report.fail(f"{phase}: {failed}/{count} lookups failed")


def _converge(net: Network, report: Report, phase: str, limit_ticks: int) -> int | None:
    took = net.run(limit_ticks, until=net.converged)
    if took is None:
        wrong = net.wrong_successors()
        report.fail(f"{phase}: no convergence in {limit_ticks} ticks "
                    f"(wrong successors at {wrong[:5]}, views ok={net.views_converged()})")
    return took


def _crash_phase(net: Network, report: Report, names: list[str], limit: int) -> list[str]:
    """Crash the first seed and about a tenth of the nodes, but not the
    other seeds (a joiner needs one seed up); time detection."""
    others = [n for n in net.live() if n not in names[:3]]
    victims = [names[0], *net.rng.sample(others, max(1, len(names) // 10) - 1)]
    start = net.now
    for victim in victims:
        net.crash(victim)
    report.converge_after_crash_ticks = _converge(net, report, "crash", limit)
    for victim in victims:
        seen = [at for at, who, e in net.events
                if at >= start and isinstance(e, MemberDown) and e.name == victim]
        if seen:
            report.detect_first_ticks.append(min(seen) - start)
            report.detect_all_ticks.append(max(seen) - start)
    return victims


def run_scenario(nodes: int, seed: int, loss: float = 0.05, config: RingConfig | None = None,
                 lookups: int = 200, steady_ticks: int = 400) -> Report:
    """Joins, lookups, crashes (incl. a seed), a late join, a graceful leave,
    a restart under the same name, lookups again; checks convergence after each."""
    config = config or RingConfig()
    net = Network(seed, loss, config)
    report = Report(nodes, seed)
    limit = 4000 + 20 * nodes
    names = [f"node{i}:7070" for i in range(nodes)]
    seeds = names[:3]
    for name in names:
        net.add(name, seeds)
        net.run(1)
    report.join_converge_ticks = _converge(net, report, "join", limit)
    sent_before = net.sent
    net.run(steady_ticks)
    report.msgs_per_node_s = (net.sent - sent_before) / nodes / (steady_ticks * TICK_S)
    _check_lookups(net, report, lookups, "after join")
    victims = _crash_phase(net, report, names, limit)
    net.add("late0:7070", seeds)  # the first seed is down: others must admit it
    report.late_join_ticks = _converge(net, report, "late join", limit)
    leaver = net.rng.choice([n for n in net.live() if n not in seeds])
    net.leave(leaver, linger_ticks=3 * config.ping_period_ticks)
    report.converge_after_leave_ticks = _converge(net, report, "leave", limit)
    net.add(victims[-1], seeds)  # restart with the same name
    report.converge_after_restart_ticks = _converge(net, report, "restart", limit)
    if victims[-1] in net.nodes and net.nodes[victims[-1]].incarnation == 0:
        report.fail("restarted node did not raise its incarnation")
    _check_lookups(net, report, lookups, "final")
    report.probes = net.swim_counter("probes")
    suspicions, deaths = net.false_verdicts(
        config.suspicion_timeout_ticks + 2 * config.ping_period_ticks)
    report.false_suspicions, report.false_deaths = len(suspicions), len(deaths)
    if report.false_deaths:
        report.fail(f"{report.false_deaths} live nodes declared dead")
    return report


def summarize(reports: list[Report]) -> dict:
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.fmean(xs) if xs else float("nan")
    hops = [h for r in reports for h in r.hops]
    probes = sum(r.probes for r in reports)
    return {
        "nodes": reports[0].nodes,
        "runs": len(reports),
        "failed": sum(not r.ok for r in reports),
        "detect_first_s": mean([t for r in reports for t in r.detect_first_ticks]) * TICK_S,
        "detect_all_s": mean([t for r in reports for t in r.detect_all_ticks]) * TICK_S,
        "gossip_spread_s": mean([a - f for r in reports
                                 for f, a in zip(r.detect_first_ticks, r.detect_all_ticks)]) * TICK_S,
        "join_converge_s": mean([r.join_converge_ticks for r in reports]) * TICK_S,
        "crash_converge_s": mean([r.converge_after_crash_ticks for r in reports]) * TICK_S,
        "leave_converge_s": mean([r.converge_after_leave_ticks for r in reports]) * TICK_S,
        "restart_converge_s": mean([r.converge_after_restart_ticks for r in reports]) * TICK_S,
        "false_suspicion_rate": sum(r.false_suspicions for r in reports) / max(1, probes),
        "false_deaths": sum(r.false_deaths for r in reports),
        "hops_mean": mean(hops),
        "hops_max": max(hops, default=0),
        "log2_n": math.log2(reports[0].nodes),
        "lookups_ok": sum(r.lookups_ok for r in reports),
        "lookups_bad": sum(r.lookups_bad for r in reports),
        "msgs_per_node_s": mean([r.msgs_per_node_s for r in reports]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, action="append")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds to run")
    parser.add_argument("--seed-start", type=int, default=0)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--no-hints", action="store_true", help="pure Chord: no member-list hints")
    args = parser.parse_args(argv)
    config = RingConfig(membership_hints=not args.no_hints)
    status = 0
    for nodes in args.nodes or [5, 20, 100]:
        reports = []
        for seed in range(args.seed_start, args.seed_start + args.seeds):
            began = time.perf_counter()
            report = run_scenario(nodes, seed, args.loss, config)
            reports.append(report)
            wall = time.perf_counter() - began
            print(f"n={nodes} seed={seed} ok={report.ok} wall={wall:.1f}s", flush=True)
            if not report.ok:
                status = 1
                print("  " + "\n  ".join(report.problems))
                print(f"  replay: python -m tests.ring.simulation --nodes {nodes} "
                      f"--seed-start {seed} --seeds 1 --loss {args.loss}"
                      + (" --no-hints" if args.no_hints else ""))
        for key, value in summarize(reports).items():
            print(f"  {key:22s} {value:.4g}" if isinstance(value, float) else f"  {key:22s} {value}")
    return status


if __name__ == "__main__":
    sys.exit(main())
