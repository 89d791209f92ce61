"""One ring member: SWIM membership + Chord routing + placement view (pure core).

This is the object a service drives. It does no I/O: messages and ticks go
in, an ``Output`` (messages to send, events to deliver) comes out.

Driver contract
---------------
``node = RingNode(name, seeds, config, rng)``: ``name`` is the stable node
name (``host:port``; its ``xxh3_64`` is the ring id), ``seeds`` any list of
member names (may include ``name``), ``config`` a ``RingConfig``, ``rng`` a
seeded ``random.Random`` (probe order, indirect helpers, gossip peers).

* ``node.start(now) -> Output`` once, before anything else.
* ``node.tick(now) -> Output`` on every timer tick; ``now`` is an integer
  tick count that never decreases (the service picks the tick length; the
  defaults assume 50 ms: 1 s probe period, 5 s suspicion timeout).
* ``node.step(msg, now) -> Output`` for every received message, after
  checking that ``msg.src`` is the authenticated peer. A misrouted or
  unknown message raises ``ProtocolError`` and changes nothing; the driver
  logs and drops it.
* ``node.lookup(key, now, want_replicas=True) -> (req, Output)``: route to
  the successor of a 64-bit key through Chord; ``LookupDone(req, key,
  successor, replicas, hops)`` or ``LookupFailed(req, key, hops)`` follows
  in this or a later Output. ``hops`` counts remote FindNext answers (0 when
  our own tables answer). ``successor`` is the key's successor on the ring
  of primary ids; ``replicas`` the replica set (virtual ids) in the
  answering node's member view, the hint DESIGN asks for.
* ``node.leave(now) -> Output``: graceful leave. Before it the service copies
  data per ``node.handover_plan()`` (the ``Move``s this node's departure
  causes); after it, it keeps sending Outputs and ticking for about three
  ping periods so the LEFT gossip spreads, then stops.
* Queries: ``view()`` (a ``ringmath.Ring`` of the members in view: what
  clients use for one-hop placement), ``replicas(key)``, ``members()``,
  ``successors``, ``predecessor``, ``incarnation``.

Order of work per call: send every message in ``out.messages``, then deliver
``out.events`` in order. Messages are best effort (loss, duplication and
reordering are tolerated), so the driver neither retries nor fsyncs:
nothing here is persistent; a restarted node rejoins under its name and
refutes its old life with a higher incarnation.

Messages (``messages.py``; wire form ``rpc/schema/ring.capnp``, one struct
each inside ``RingMessage``): Ping, Ack, PingReq, Join, JoinReply, Sync
(SWIM); FindNext, FindNextReply, GetNeighbours, Neighbours, Notify,
LeaveNotice (Chord).

Events: ``MemberUp(name, incarnation)``, ``MemberSuspect``,
``MemberDown(name, incarnation, left)``, ``Refuted(incarnation)`` (we were
suspected), ``Joined(successor)`` (Chord join done), ``LookupDone``,
``LookupFailed``, and ``RangesChanged(me, before, after, replicas)`` at most
once per call when the member view changed: ``gained_lost()`` gives the
ranges this node must now hold / may drop, ``moves()`` every range whose
replica set changed (what the chunk store's repair subscribes to).

Invariant: the Chord tables never hold a node SWIM has declared dead or
gone; ``view()`` is exactly SWIM's ALIVE+SUSPECT members.
"""

from __future__ import annotations

import bisect

from .chord import Chord
from .config import RingConfig
from .messages import (
    CHORD_MESSAGES, SWIM_MESSAGES, FindNext, FindNextReply, LookupDone,
    MemberDown, MemberUp, Output, ProtocolError, RangesChanged,
)
from .ringmath import Move, Ring, moved_ranges, node_id
from .swim import Swim

PURE_CORE = True


class RingNode:
    def __init__(self, name: str, seeds: list[str], config: RingConfig, rng) -> None:
        self.name = name
        self.config = config
        self.rng = rng
        self.swim = Swim(name, seeds, config, rng)
        self.chord = Chord(name, config)
        self.now = 0
        self.started = False
        self._view_version = -1
        self._view = Ring((), config.virtual_ids)
        self._view_ids: list[tuple[int, str]] = []
        self._announced = self._view  # the view the last RangesChanged ended at

    # --- queries -------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self.swim.incarnation

    @property
    def successors(self) -> list[str]:
        return list(self.chord.successors)

    @property
    def predecessor(self) -> str | None:
        return self.chord.predecessor

    def members(self) -> list[str]:
        return self.swim.in_view()

    def view(self) -> Ring:
        self._refresh_view()
        return self._view

    def replicas(self, key: int) -> tuple[str, ...]:
        return self.view().replicas(key, self.config.replicas)

    def handover_plan(self) -> tuple[Move, ...]:
        """Ranges whose replica set changes when this node leaves."""
        view = self.view()
        if len(view) < 2:
            return ()
        return moved_ranges(view, view.without_node(self.name), self.config.replicas)

    # --- driver entry points -------------------------------------------------

    def start(self, now: int) -> Output:
        if self.started:
            raise ProtocolError("start() called twice")
        self.started, self.now = True, now
        out = self.swim.start(now)
        return self._after(out)

    def tick(self, now: int) -> Output:
        self._check_started()
        self.now = now
        out = self.swim.tick(now)
        self._follow_membership(out)
        self.chord.hint = self._hint() if self.config.membership_hints else None
        out.extend(self.chord.tick(now))
        return self._after(out)

    def step(self, msg, now: int) -> Output:
        self._check_started()
        self.now = max(self.now, now)
        if isinstance(msg, SWIM_MESSAGES):
            out = self.swim.step(msg, now)
        elif isinstance(msg, CHORD_MESSAGES):
            out = self.chord.step(msg, now)
            if isinstance(msg, FindNext) and msg.want_replicas:
                out.messages = [self._with_replicas(m, msg.key) for m in out.messages]
        else:
            raise ProtocolError(f"not a ring message: {type(msg).__name__}")
        self._follow_membership(out)
        return self._after(out)

    def lookup(self, key: int, now: int, want_replicas: bool = True) -> tuple[int, Output]:
        self._check_started()
        req, out = self.chord.lookup(key, now, want_replicas)
        return req, self._after(out)

    def leave(self, now: int) -> Output:
        self._check_started()
        # Tell every member directly: a leave is rare, and gossip alone
        # leaves a tail of nodes that learn only by probing or sync.
        out = self.swim.leave(now, fanout=len(self.swim.in_view()))
        out.extend(self.chord.leave(now))
        return self._after(out)

    # --- glue ----------------------------------------------------------------

    def _check_started(self) -> None:
        if not self.started:
            raise ProtocolError("start() must come first")

    def _follow_membership(self, out: Output) -> None:
        """Mirror SWIM's verdicts into Chord, and join Chord once SWIM has
        joined (through the seed that answered, then any other member)."""
        for event in out.events:
            if isinstance(event, MemberDown):
                self.chord.exclude(event.name)
            elif isinstance(event, MemberUp):
                self.chord.include(event.name)
        swim, chord = self.swim, self.chord
        if not swim.joined or chord.joined or chord.join_req is not None or swim.leaving:
            return
        others = swim.others_in_view()
        if not others:
            out.extend(chord.create(self.now))
            return
        first = [swim.join_via] if swim.join_via in others else []
        rest = [n for n in others if n not in first]
        self.rng.shuffle(rest)
        out.extend(chord.join(first + rest[: self.config.successors_len], self.now))

    def _refresh_view(self) -> None:
        if self._view_version == self.swim.view_version:
            return
        self._view_version = self.swim.view_version
        names = self.swim.in_view()
        self._view = Ring(names, self.config.virtual_ids)
        self._view_ids = sorted((node_id(n), n) for n in names)

    def _hint(self) -> str | None:
        """The member SWIM knows that comes right after us by primary id."""
        self._refresh_view()
        ids = self._view_ids
        if len(ids) < 2:
            return None
        i = bisect.bisect_right(ids, (self.chord.id, self.name)) % len(ids)
        return ids[i][1] if ids[i][1] != self.name else None

    def _with_replicas(self, msg, key: int):
        if isinstance(msg, FindNextReply) and msg.done and len(self.view()):
            return FindNextReply(msg.src, msg.dst, msg.req, True, msg.node, msg.fallback,
                                 self.replicas(key))
        return msg

    def _after(self, out: Output) -> Output:
        """Fill replica hints of locally answered lookups; add one
        RangesChanged if the member view changed during this call."""
        view = self.view()
        events = []
        for event in out.events:
            if isinstance(event, LookupDone) and not event.replicas and len(self._view):
                event = LookupDone(event.req, event.key, event.successor,
                                   self.replicas(event.key), event.hops)
            events.append(event)
        if view.names != self._announced.names:
            events.append(RangesChanged(self.name, self._announced, view, self.config.replicas))
            self._announced = view
        out.events = events
        return out
