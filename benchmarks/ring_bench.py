"""Simulated ring benchmark: failure detection time, gossip convergence time
and protocol messages per node per second for N = 10, 50, 100.

Runs the pure cores in the seeded network of ``tests/ring/simulation.py``
(message loss, 1-2 tick delays; a tick stands for 50 ms). Per N and seed it
converges a cluster, measures steady-state traffic, then crashes nodes one
at a time (timing first detection and detection by every live node) and
adds nodes (timing until every live node lists them).

    python benchmarks/ring_bench.py [--nodes 10 --nodes 50] [--seeds 3] [--loss 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.ring.config import RingConfig  # noqa: E402
from server.ring.messages import MemberDown  # noqa: E402
from tests.ring.simulation import TICK_S, Network  # noqa: E402


def _crash_trial(net: Network, victim: str, limit: int) -> tuple[int, int] | None:
    """Ticks until someone declares ``victim`` dead, and until all do."""
    start, mark = net.now, len(net.events)
    net.crash(victim)
    live = set(net.live())

    def everyone_knows():
        return all(victim not in net.nodes[n].members() for n in live)

    if net.run(limit, until=everyone_knows, check_every=1) is None:
        return None
    seen = [at for at, who, e in net.events[mark:] if isinstance(e, MemberDown) and e.name == victim]
    return min(seen) - start, max(seen) - start


def _join_trial(net: Network, name: str, seeds: list[str], limit: int) -> int | None:
    """Ticks from start until every live node lists the newcomer."""
    net.add(name, seeds)
    return net.run(limit, until=lambda: all(name in net.nodes[n].members() for n in net.live()),
                   check_every=1)


def bench(nodes: int, seed: int, loss: float, trials: int, steady_ticks: int) -> dict:
    net = Network(seed, loss, RingConfig())
    names = [f"node{i}:7070" for i in range(nodes)]
    for name in names:
        net.add(name, names[:3])
        net.run(1)
    if net.run(20_000, until=net.converged) is None:
        raise RuntimeError(f"n={nodes} seed={seed}: cluster did not converge")
    sent, by_type = net.sent, dict(net.sent_by_type)
    net.run(steady_ticks)
    seconds = steady_ticks * TICK_S
    rate = (net.sent - sent) / nodes / seconds
    mix = {k: (v - by_type.get(k, 0)) / nodes / seconds for k, v in net.sent_by_type.items()}
    first, full, joins = [], [], []
    for t in range(trials):
        victim = net.rng.choice([n for n in net.live() if n not in names[:3]])
        result = _crash_trial(net, victim, 5_000)
        if result is None:
            raise RuntimeError(f"n={nodes} seed={seed}: crash of {victim} never detected by all")
        first.append(result[0])
        full.append(result[1])
        took = _join_trial(net, f"new{t}:7070", names[:3], 5_000)
        if took is None:
            raise RuntimeError(f"n={nodes} seed={seed}: join of new{t} never seen by all")
        joins.append(took)
    config = net.config
    false_suspicions, false_deaths = net.false_verdicts(
        config.suspicion_timeout_ticks + 2 * config.ping_period_ticks)
    return {"rate": rate, "mix": mix, "first": first, "full": full, "joins": joins,
            "false_suspicions": len(false_suspicions), "false_deaths": len(false_deaths),
            "probes": net.swim_counter("probes")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="simulated ring benchmark")
    parser.add_argument("--nodes", type=int, action="append")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4, help="crashes and joins per seed")
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--steady-ticks", type=int, default=1200)
    args = parser.parse_args(argv)
    config = RingConfig()
    print(f"tick={TICK_S * 1000:.0f} ms, loss={args.loss:.0%}, ping period="
          f"{config.ping_period_ticks * TICK_S:.1f} s, suspicion timeout="
          f"{config.suspicion_timeout_ticks * TICK_S:.1f} s, k={config.indirect_probes}, "
          f"virtual ids={config.virtual_ids}, seeds={args.seeds}, trials/seed={args.trials}")
    print(f"{'N':>4} {'detect first s':>15} {'detect all s':>13} {'gossip spread s':>16} "
          f"{'join seen by all s':>19} {'msgs/node/s':>12} {'false susp/probe':>17} "
          f"{'false deaths':>13} {'wall s':>7}")
    for nodes in args.nodes or [10, 50, 100]:
        began = time.perf_counter()
        runs = [bench(nodes, s, args.loss, args.trials, args.steady_ticks) for s in range(args.seeds)]
        first = [x * TICK_S for r in runs for x in r["first"]]
        full = [x * TICK_S for r in runs for x in r["full"]]
        spread = [b - a for a, b in zip(first, full)]
        joins = [x * TICK_S for r in runs for x in r["joins"]]
        rate = statistics.fmean(r["rate"] for r in runs)
        susp = sum(r["false_suspicions"] for r in runs) / max(1, sum(r["probes"] for r in runs))
        deaths = sum(r["false_deaths"] for r in runs)
        print(f"{nodes:>4} {_ms(first):>15} {_ms(full):>13} {_ms(spread):>16} {_ms(joins):>19} "
              f"{rate:>12.1f} {susp:>17.5f} {deaths:>13} {time.perf_counter() - began:>7.1f}",
              flush=True)
        mix = {k: statistics.fmean(r["mix"].get(k, 0.0) for r in runs) for k in runs[0]["mix"]}
        print("      steady msgs/node/s by type: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(mix.items(), key=lambda kv: -kv[1]) if v >= 0.005))
    print("mean±stdev over all trials. detect first: crash -> first MemberDown anywhere; "
          "detect all: -> every live node; gossip spread: the difference; false susp/probe: "
          "suspicions of live nodes per probe")
    return 0


def _ms(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.2f}±{statistics.pstdev(xs):.2f}"


if __name__ == "__main__":
    sys.exit(main())
