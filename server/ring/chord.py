"""Chord maintenance and routing on the ring of primary node ids (pure core).

State: a successor list (``successors_len`` >= R+2 entries, nearest first),
a predecessor and 64 fingers (``finger[i]`` = successor of id + 2^i). Every
``stabilize_period_ticks`` a node asks its successor for (predecessor,
successor list), adopts a closer successor if one appeared, copies the list
and notifies the successor; every ``fix_fingers_period_ticks`` it refreshes
the next finger by a lookup. Lookups are iterative: the asker sends FindNext
to the closest preceding node it knows, each answer is either "done: the
successor is S" or "ask N (or F if N is silent)", so the asker owns all
timeouts and retries and counts hops; with correct fingers a lookup takes
O(log N) hops.

Failures come from SWIM: ``exclude(name)`` removes a node declared dead or
gone from every table, ``include(name)`` readmits it after it refuted.
Standalone, Chord can also drop a successor after ``successor_timeouts_max``
silent stabilize rounds (off by default: message loss would drop live ones).
``hint`` (set by the node layer from the member list) is a
live member Chord may not have found yet; it is adopted as successor if it
lies between us and our successor, which also merges rings formed apart.

Joining: look up our own id through a node that is already in the ring
(``join(candidates)``: the first that answers wins). Graceful leave hands the
leaver's predecessor and successor list to its neighbours (LeaveNotice).

Invariants: ``me`` is never in ``successors`` unless it is the only entry
(a ring of one); excluded nodes are never in successors, fingers or
predecessor; at most one stabilize query and one finger lookup in flight.
"""

from __future__ import annotations

import dataclasses

from .config import RingConfig
from .messages import (
    FindNext, FindNextReply, GetNeighbours, Joined, LeaveNotice, LookupDone,
    LookupFailed, Neighbours, Notify, Output, ProtocolError,
)
from .ringmath import KEY_BITS, RING_SIZE, distance, in_open_closed, in_open_open, node_id

PURE_CORE = True


@dataclasses.dataclass(slots=True)
class _Lookup:
    req: int
    key: int
    purpose: object         # "user", "join" or ("finger", i)
    want_replicas: bool
    asking: str = ""
    deadline_tick: int = 0
    hops: int = 0
    steps: int = 0
    retries: int = 0
    fallbacks: list = dataclasses.field(default_factory=list)


class Chord:
    def __init__(self, me: str, config: RingConfig) -> None:
        self.me = me
        self.config = config
        self.id = node_id(me)
        self.successors: list[str] = []
        self.predecessor: str | None = None
        self.fingers: list[str | None] = [None] * KEY_BITS
        self.excluded: set[str] = set()
        self.hint: str | None = None
        self.now = 0
        self.req = 0
        self.lookups: dict[int, _Lookup] = {}
        self.neigh_query: tuple[int, str, int] | None = None  # req, dst, deadline
        self.succ_timeouts = 0
        self.next_stabilize_tick = 0
        self.next_fix_tick = 0
        self.next_finger = 0
        self.finger_req: int | None = None
        self.join_req: int | None = None
        self.join_candidates: list[str] = []
        self.leaving = False
        self._ids: dict[str, int] = {me: self.id}

    @property
    def joined(self) -> bool:
        return bool(self.successors)

    def successor(self) -> str | None:
        return self.successors[0] if self.successors else None

    def _id(self, name: str) -> int:
        found = self._ids.get(name)
        if found is None:
            found = self._ids[name] = node_id(name)
        return found

    # --- membership input ----------------------------------------------------

    def create(self, now: int) -> Output:
        """Start a ring of one (the first node of a cluster)."""
        self.now = now
        self.successors = [self.me]
        return Output(events=[Joined(self.me)])

    def join(self, candidates: list[str], now: int) -> Output:
        """Find our successor through any of ``candidates`` (ring members)."""
        self.now = now
        out = Output()
        if self.joined or self.join_req is not None:
            return out
        self.join_candidates = [c for c in candidates if c != self.me and c not in self.excluded]
        if not self.join_candidates:
            return out
        first = self.join_candidates.pop(0)
        self.join_req = self._start(self.id, "join", False, first, out)
        return out

    def exclude(self, name: str) -> None:
        if name == self.me:
            return
        self.excluded.add(name)
        was_joined = self.joined
        self.successors = [s for s in self.successors if s != name]
        self.fingers = [None if f == name else f for f in self.fingers]
        if self.predecessor == name:
            self.predecessor = None
        if was_joined and not self.successors:
            # Every listed successor is gone. The nearest finger still lies
            # ahead of us, so stabilize can walk back from it via predecessor
            # pointers; only with no finger left do we stand alone.
            ahead = sorted({f for f in self.fingers if f is not None},
                           key=lambda f: distance(self.id, self._id(f)))
            self.successors = ahead[:1] or [self.me]

    def include(self, name: str) -> None:
        self.excluded.discard(name)

    # --- driver entry points -------------------------------------------------

    def tick(self, now: int) -> Output:
        if now < self.now:
            raise ProtocolError(f"time went backwards: {now} < {self.now}")
        self.now = now
        out = Output()
        for look in [l for l in self.lookups.values() if l.deadline_tick <= now]:
            self._retry(look, out)
        if not self.joined or self.leaving:
            return out
        if now >= self.next_stabilize_tick:
            self.next_stabilize_tick = now + self.config.stabilize_period_ticks
            self._stabilize(out)
        if now >= self.next_fix_tick:
            self.next_fix_tick = now + self.config.fix_fingers_period_ticks
            self._fix_next_finger(out)
        return out

    def step(self, msg, now: int) -> Output:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise ProtocolError(f"not a Chord message: {type(msg).__name__}")
        if msg.dst != self.me or msg.src == self.me:
            raise ProtocolError(f"misrouted {type(msg).__name__} {msg.src}->{msg.dst} at {self.me}")
        self.now = max(self.now, now)
        out = Output()
        handler(self, msg, out)
        return out

    def lookup(self, key: int, now: int, want_replicas: bool = True) -> tuple[int, Output]:
        """Start a lookup of ``key``; a LookupDone or LookupFailed event with
        the returned req follows (possibly in the returned Output)."""
        self.now = now
        out = Output()
        if not self.joined or len(self.lookups) >= self.config.lookups_in_flight_max:
            self.req += 1
            out.events.append(LookupFailed(self.req, key, 0))
            return self.req, out
        return self._start(key, "user", want_replicas, self.me, out), out

    def leave(self, now: int) -> Output:
        """Hand our neighbours to each other; afterwards we answer no lookups."""
        if self.leaving:
            raise ProtocolError("leave() called twice")
        self.now = now
        out = Output()
        self.leaving = True
        pred, succs = self.predecessor or "", tuple(s for s in self.successors if s != self.me)
        for dst in dict.fromkeys([*succs[:1], pred]):
            if dst and dst != self.me:
                out.messages.append(LeaveNotice(self.me, dst, pred, succs))
        self.successors, self.predecessor = [], None
        self.fingers = [None] * KEY_BITS
        return out

    # --- routing -------------------------------------------------------------

    def _live_successors(self) -> list[str]:
        return [s for s in self.successors if s not in self.excluded]

    def closest_preceding(self, key: int) -> str:
        """The known node whose id is closest before ``key`` (or ``me``)."""
        limit = distance(self.id, key)
        best, best_d = self.me, 0
        for name in (*self.fingers, *self.successors):
            if name is None or name == self.me or name in self.excluded:
                continue
            d = distance(self.id, self._id(name))
            if best_d < d < limit:
                best, best_d = name, d
        return best

    def answer(self, key: int) -> tuple[bool, str, str]:
        """One routing step as this node sees it: (done, node, fallback).
        ``node`` is "" when this node is not in a ring and cannot help."""
        succs = self._live_successors()
        if not succs or self.leaving:
            return False, "", ""
        s0 = succs[0]
        after = succs[1] if len(succs) > 1 else ""
        if s0 == self.me or in_open_closed(key, self.id, self._id(s0)):
            return True, s0, after
        cp = self.closest_preceding(key)
        if cp == self.me:
            return False, s0, after  # no finger helps: walk the successor list
        return False, cp, s0

    def _start(self, key: int, purpose, want: bool, first: str, out: Output) -> int:
        self.req += 1
        look = _Lookup(self.req, key, purpose, want)
        self.lookups[look.req] = look
        self._ask(look, first, out)
        return look.req

    def _ask(self, look: _Lookup, node: str, out: Output) -> None:
        """Send the next FindNext; steps through our own tables locally."""
        while node == self.me:
            look.steps += 1
            done, nxt, fallback = self.answer(look.key)
            if not nxt or look.steps > self.config.lookup_hops_max:
                self._fail(look, out)
                return
            if done:
                self._finish(look, nxt, fallback, self.me, (), out)
                return
            if fallback:
                look.fallbacks.append(fallback)
            node = nxt
        look.asking = node
        look.deadline_tick = self.now + self.config.lookup_timeout_ticks
        out.messages.append(FindNext(self.me, node, look.req, look.key, look.want_replicas))

    def _retry(self, look: _Lookup, out: Output) -> None:
        """The asked node was silent: resend (the loss may have been the
        network's), then its predecessor's fallback, then give up."""
        if look.retries < self.config.lookup_retries_max and look.asking not in self.excluded:
            look.retries += 1
            self._ask(look, look.asking, out)
            return
        self._next_fallback(look, out)

    def _next_fallback(self, look: _Lookup, out: Output) -> None:
        """The asked node cannot help (not in a ring, or gone)."""
        while look.fallbacks:
            node = look.fallbacks.pop()
            if node != look.asking and node not in self.excluded:
                look.retries = 0
                self._ask(look, node, out)
                return
        self._fail(look, out)

    def _fail(self, look: _Lookup, out: Output) -> None:
        self.lookups.pop(look.req, None)
        if look.purpose == "user":
            out.events.append(LookupFailed(look.req, look.key, look.hops))
        elif look.purpose == "join":
            self.join_req = None
            if self.join_candidates:
                self.join_req = self._start(
                    self.id, "join", False, self.join_candidates.pop(0), out)
        else:
            self.finger_req = None

    def _finish(self, look, node: str, fallback: str, answerer: str, replicas, out: Output) -> None:
        self.lookups.pop(look.req, None)
        if look.purpose == "user":
            out.events.append(LookupDone(look.req, look.key, node, tuple(replicas), look.hops))
        elif look.purpose == "join":
            self.join_req = None
            # Our own id resolving to us means the ring still holds our old
            # life (a quick restart): the node after it is our successor.
            succ = node if node != self.me else (fallback if fallback and fallback != self.me
                                                 else answerer)
            self.successors = [succ]
            out.events.append(Joined(succ))
            out.messages.append(Notify(self.me, succ))
        else:
            self.finger_req = None
            self._set_finger(look.purpose[1], node)

    def _on_find_next(self, msg: FindNext, out: Output) -> None:
        done, node, fallback = self.answer(msg.key)
        out.messages.append(FindNextReply(self.me, msg.src, msg.req, done, node, fallback))

    def _on_find_next_reply(self, msg: FindNextReply, out: Output) -> None:
        look = self.lookups.get(msg.req)
        if look is None or msg.src != look.asking:
            return  # late or duplicate answer after a retry: harmless
        look.hops += 1
        look.retries = 0
        if not msg.node:
            self._next_fallback(look, out)
        elif msg.done:
            self._finish(look, msg.node, msg.fallback, msg.src, msg.replicas, out)
        elif look.hops >= self.config.lookup_hops_max:
            self._fail(look, out)
        else:
            if msg.fallback and msg.fallback != self.me:
                look.fallbacks.append(msg.fallback)
            self._ask(look, msg.node, out)

    # --- maintenance ---------------------------------------------------------

    def _clean(self, names) -> list[str]:
        """Successor list from candidates in ring order: stop where it wraps
        back to us, skip excluded and repeated names, keep the first L."""
        out: list[str] = []
        for name in names:
            if name == self.me:
                break
            if name and name not in self.excluded and name not in out:
                out.append(name)
                if len(out) == self.config.successors_len:
                    break
        return out

    def _stabilize(self, out: Output) -> None:
        succs = self._live_successors() or [self.me]
        hint = self.hint
        if (hint and hint != self.me and hint not in self.excluded
                and (succs[0] == self.me or in_open_open(self._id(hint), self.id, self._id(succs[0])))):
            succs = self._clean([hint, *succs])
        elif succs[0] == self.me and self.predecessor:
            succs = [self.predecessor]  # a ring of one absorbs whoever notified it
        self.successors = succs
        s0 = succs[0]
        if s0 == self.me:
            return
        if self.neigh_query is not None:
            if self.now < self.neigh_query[2]:
                return
            self.succ_timeouts += 1
            self.neigh_query = None
            limit = self.config.successor_timeouts_max
            if 0 < limit <= self.succ_timeouts and len(succs) > 1:
                self.successors = succs = succs[1:]
                s0, self.succ_timeouts = succs[0], 0
        self.req += 1
        deadline = self.now + self.config.stabilize_period_ticks * 2
        self.neigh_query = (self.req, s0, deadline)
        out.messages.append(GetNeighbours(self.me, s0, self.req))

    def _on_get_neighbours(self, msg: GetNeighbours, out: Output) -> None:
        succs = () if self.leaving else tuple(self._live_successors())
        pred = self.predecessor or ""
        out.messages.append(Neighbours(self.me, msg.src, msg.req, pred, succs))

    def _on_neighbours(self, msg: Neighbours, out: Output) -> None:
        query = self.neigh_query
        if query is None or query[0] != msg.req or query[1] != msg.src or self.leaving:
            return  # an answer to a query we gave up on
        self.neigh_query, self.succ_timeouts = None, 0
        s0, x = msg.src, msg.predecessor
        if s0 in self.excluded or s0 != self.successor():
            return  # it left or failed while the answer was in flight: stale
        candidates = [s0, *msg.successors]
        if x and x != self.me and in_open_open(self._id(x), self.id, self._id(s0)):
            candidates.insert(0, x)
        self.successors = self._clean(candidates)
        if self.successors[0] != self.me:
            out.messages.append(Notify(self.me, self.successors[0]))

    def _on_notify(self, msg: Notify, out: Output) -> None:
        n = msg.src
        if n in self.excluded or not self.joined or self.leaving:
            return
        pred = self.predecessor
        if pred is None or pred in self.excluded or in_open_open(self._id(n), self._id(pred), self.id):
            self.predecessor = n
        if self.successors == [self.me]:
            self.successors = [n]

    def _on_leave_notice(self, msg: LeaveNotice, out: Output) -> None:
        leaver = msg.src
        self.excluded.add(leaver)
        if self.neigh_query is not None and self.neigh_query[1] == leaver:
            self.neigh_query = None
        if self.predecessor == leaver:
            self.predecessor = msg.predecessor if msg.predecessor not in ("", self.me) else None
        if self.successors and self.successors[0] == leaver:
            # The leaver's list starts right after it, so it supersedes ours.
            merged = [*msg.successors, *self.successors[1:]]
        else:
            merged = [s for s in self.successors if s != leaver]
        if self.successors:
            self.successors = self._clean(merged) or [self.me]
        self.fingers = [None if f == leaver else f for f in self.fingers]

    def _fix_next_finger(self, out: Output) -> None:
        if self.finger_req is not None:
            return
        s0 = self.successors[0]
        if s0 == self.me:
            self.fingers = [None] * KEY_BITS
            return
        start = (self.id + (1 << self.next_finger)) % RING_SIZE
        if in_open_closed(start, self.id, self._id(s0)):
            self._set_finger(self.next_finger, s0)
            return
        self.finger_req = self._start(start, ("finger", self.next_finger), False, self.me, out)

    def _set_finger(self, i: int, node: str) -> None:
        """finger[i] = node, and every later finger whose start also falls
        before ``node`` (they share the successor); then move past them."""
        start_i = (self.id + (1 << i)) % RING_SIZE
        j = i
        while j < KEY_BITS:
            start_j = (self.id + (1 << j)) % RING_SIZE
            if j > i and not in_open_closed(start_j, start_i, self._id(node)):
                break
            self.fingers[j] = None if node == self.me else node
            j += 1
        self.next_finger = j % KEY_BITS


_HANDLERS = {
    FindNext: Chord._on_find_next,
    FindNextReply: Chord._on_find_next_reply,
    GetNeighbours: Chord._on_get_neighbours,
    Neighbours: Chord._on_neighbours,
    Notify: Chord._on_notify,
    LeaveNotice: Chord._on_leave_notice,
}
