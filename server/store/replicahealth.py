"""What a client remembers about replicas between calls: recent get
latencies per node (for the hedge delay), a short penalty for nodes that
were slow or did not answer (read them last), and which nodes said they
are full (place no new copies there for a while).

Pure bookkeeping (house style 1 and 5): every method takes ``now`` in
seconds from the caller's clock (trio's in ReplicatedStore, so tests on a
MockClock are deterministic); nothing here sleeps or reads a clock.

Invariants: at most ``samples_max`` latencies per node and at most
``nodes_max`` nodes remembered (the least recently heard one is forgotten
first), so a client talking to a changing ring keeps bounded state; a
penalty or full mark only ever extends to ``now + memory``, and one that
has expired counts as absent."""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Iterable

PURE_CORE = True


@dataclasses.dataclass(frozen=True)
class HealthLimits:
    samples_max: int = 64           # latencies kept per node
    nodes_max: int = 1024           # nodes remembered at all
    hedge_delay_min_s: float = 0.005
    hedge_delay_max_s: float = 0.5
    hedge_delay_default_s: float = 0.05  # before a node has answered a get
    hedge_quantile: float = 0.95
    slow_memory_s: float = 5.0      # a node hedged past, or one that timed out
    dead_memory_s: float = 10.0     # a node that refused the connection
    full_memory_s: float = 60.0     # a node that answered noSpace

    def __post_init__(self) -> None:
        if self.samples_max < 1 or self.nodes_max < 1:
            raise ValueError("samples_max and nodes_max must be at least 1")
        if not 0 < self.hedge_delay_min_s <= self.hedge_delay_default_s <= self.hedge_delay_max_s:
            raise ValueError("need 0 < hedge_delay_min_s <= hedge_delay_default_s <= hedge_delay_max_s")
        if not 0 < self.hedge_quantile <= 1:
            raise ValueError("hedge_quantile must be in (0, 1]")
        if min(self.slow_memory_s, self.dead_memory_s, self.full_memory_s) < 0:
            raise ValueError("memories must not be negative")


@dataclasses.dataclass
class _Node:
    latencies_s: collections.deque
    penalty_until: float = -math.inf
    full_until: float = -math.inf


class ReplicaHealth:
    def __init__(self, limits: HealthLimits = HealthLimits()) -> None:
        self.limits = limits
        self._nodes: collections.OrderedDict[str, _Node] = collections.OrderedDict()

    def _node(self, name: str) -> _Node:
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = _Node(collections.deque(maxlen=self.limits.samples_max))
            while len(self._nodes) > self.limits.nodes_max:
                self._nodes.popitem(last=False)
        else:
            self._nodes.move_to_end(name)
        return node

    # ---- latency and the hedge delay ---------------------------------------------

    def record_latency(self, name: str, seconds: float) -> None:
        assert seconds >= 0, seconds
        self._node(name).latencies_s.append(seconds)

    def hedge_delay_s(self, name: str) -> float:
        """How long to wait for ``name`` before asking the next replica: the
        quantile of its recent get latencies, clamped to the limits."""
        lim = self.limits
        node = self._nodes.get(name)
        if node is None or not node.latencies_s:
            return lim.hedge_delay_default_s
        ordered = sorted(node.latencies_s)
        rank = min(len(ordered) - 1, math.ceil(lim.hedge_quantile * len(ordered)) - 1)
        return min(lim.hedge_delay_max_s, max(lim.hedge_delay_min_s, ordered[rank]))

    # ---- slow or dead: read last for a while ---------------------------------------

    def penalize(self, name: str, now: float, *, dead: bool = False) -> None:
        memory = self.limits.dead_memory_s if dead else self.limits.slow_memory_s
        node = self._node(name)
        node.penalty_until = max(node.penalty_until, now + memory)

    def penalized(self, name: str, now: float) -> bool:
        node = self._nodes.get(name)
        return node is not None and node.penalty_until > now

    def read_order(self, names: Iterable[str], now: float) -> list[str]:
        """``names`` in their (ring) order, penalized ones moved last."""
        names = list(names)
        return ([n for n in names if not self.penalized(n, now)]
                + [n for n in names if self.penalized(n, now)])

    # ---- full nodes: no new placements for a while ---------------------------------

    def mark_full(self, name: str, now: float) -> None:
        node = self._node(name)
        node.full_until = max(node.full_until, now + self.limits.full_memory_s)

    def clear_full(self, name: str) -> None:
        node = self._nodes.get(name)
        if node is not None:
            node.full_until = -math.inf

    def is_full(self, name: str, now: float) -> bool:
        node = self._nodes.get(name)
        return node is not None and node.full_until > now

    def full_nodes(self, now: float) -> list[str]:
        return sorted(n for n, node in self._nodes.items() if node.full_until > now)
