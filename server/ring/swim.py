"""SWIM failure detector and membership with piggybacked gossip (pure core).

Each ping period a node probes one member (round robin over a shuffled list,
reshuffled every round so each member is probed within two rounds). No Ack
within ``ack_timeout_ticks`` -> ask ``indirect_probes`` others to ping it
(PingReq). No Ack by the end of the period -> the member becomes SUSPECT; a
suspect not refuted within ``suspicion_timeout_ticks`` becomes DEAD. A node
that hears itself suspected or declared dead raises its incarnation and
gossips ALIVE, which overrides the suspicion everywhere (refutation); the
same rule lets a restarted node rejoin under its old name.

Membership updates are piggybacked on Ping/Ack/PingReq, least-transmitted
first, each until it has been sent ``mult * ceil(log10(N+1))`` times; a
periodic push-pull Sync with one random member repairs what gossip missed,
so every node converges to the full member list.

Joining: Join goes to the seeds in turn (any seed will do); a seed that is
itself in a ring answers with its whole table. A node that has no other live
member keeps contacting seeds, which also merges rings formed apart.

Invariants: the table always holds ``me``; only ``me``'s own entry is ever
raised in incarnation by this node; an update is applied only if it
``overrides`` the entry it replaces (so merging is order-independent).
"""

from __future__ import annotations

import dataclasses
import math

from .config import RingConfig
from .messages import (
    Ack, Join, JoinReply, MemberDown, MemberSuspect, MemberUp, Output, Ping,
    PingReq, ProtocolError, Refuted, Status, Sync, Update,
)

PURE_CORE = True

IN_VIEW = (Status.ALIVE, Status.SUSPECT)


@dataclasses.dataclass(slots=True)
class _Probe:
    target: str
    seq: int
    sent_tick: int
    acked: bool = False
    indirect_sent: bool = False


@dataclasses.dataclass(slots=True)
class _Relay:
    """A ping we send for someone else's PingReq."""
    requester: str
    requester_seq: int
    target: str
    expires_tick: int


class Swim:
    def __init__(self, me: str, seeds: list[str], config: RingConfig, rng) -> None:
        self.me = me
        self.config = config
        self.rng = rng
        self.seeds = [s for s in dict.fromkeys(seeds) if s != me]
        self.bootstrap_rank = sorted(set(seeds) | {me}).index(me) if me in seeds else None
        self.incarnation = 0
        self.members: dict[str, Update] = {me: Update(me, 0, Status.ALIVE)}
        self.since: dict[str, int] = {me: 0}   # tick of the last status change
        self.gossip: dict[str, list] = {}      # name -> [transmits, Update]
        self.now = 0
        self.joined = False
        self.leaving = False
        self.seq = 0
        self.probe: _Probe | None = None
        self.probe_order: list[str] = []
        self.relays: dict[int, _Relay] = {}
        self.next_probe_tick = 0
        self.next_sync_tick = 0
        self.join_index = 0
        self.bootstrap_tick: int | None = None  # seeds only: when to form a ring alone
        self.join_deadline_tick: int | None = None
        self.join_via: str | None = None       # seed whose table we got first
        self.view_version = 0                  # bumped when in_view() changes
        self._view_cache: tuple[int, list[str]] = (-1, [])
        self.suspects: set[str] = set()
        self.counters = {"probes": 0, "indirect": 0, "suspected": 0, "refuted": 0}

    # --- queries -------------------------------------------------------------

    def in_view(self) -> list[str]:
        """Members counted for placement: ALIVE or SUSPECT (a suspect still
        serves until confirmed dead)."""
        return list(self._view_names())

    def _view_names(self) -> list[str]:
        """in_view() without the copy, for internal use (do not mutate)."""
        version, names = self._view_cache
        if version != self.view_version:
            names = sorted(n for n, u in self.members.items() if u.status in IN_VIEW)
            self._view_cache = (self.view_version, names)
        return names

    def others_in_view(self) -> list[str]:
        return [n for n in self._view_names() if n != self.me]

    def status_of(self, name: str) -> Status | None:
        u = self.members.get(name)
        return None if u is None else u.status

    # --- driver entry points -------------------------------------------------

    def start(self, now: int) -> Output:
        self.now = now
        self.next_probe_tick = now + self.rng.randrange(self.config.ping_period_ticks)
        self.next_sync_tick = now + self.rng.randrange(self.config.sync_period_ticks)
        out = Output()
        if not self.seeds:
            self.joined = True
            return out
        if self.bootstrap_rank is not None:
            # Measured in time, not attempts: refusals come back fast, and a
            # seed counting them would bootstrap before a lower-ranked one
            # and split the cluster.
            wait = (self.config.join_timeout_ticks * len(self.seeds)
                    * self.config.bootstrap_after_rounds * (1 + self.bootstrap_rank))
            self.bootstrap_tick = now + wait
        return self._send_join(out)

    def tick(self, now: int) -> Output:
        if now < self.now:
            raise ProtocolError(f"time went backwards: {now} < {self.now}")
        self.now = now
        out = Output()
        self._tick_join(out)
        if not self.joined:
            return out
        self._tick_probe(out)
        self._tick_suspects(out)
        self._tick_relays_and_tombstones()
        if now >= self.next_sync_tick:
            self.next_sync_tick = now + self.config.sync_period_ticks
            # Seeds are candidates even when not in view: if a partition or
            # a racy bootstrap made two clusters, this merges their tables.
            peers = sorted(set(self.others_in_view()) | set(self.seeds))
            if peers:
                peer = self.rng.choice(peers)
                out.messages.append(Sync(self.me, peer, False, self._table()))
        return out

    def step(self, msg, now: int) -> Output:
        handler = _HANDLERS.get(type(msg))
        if handler is None:
            raise ProtocolError(f"not a SWIM message: {type(msg).__name__}")
        if msg.dst != self.me:
            raise ProtocolError(f"message for {msg.dst!r} delivered to {self.me!r}")
        if msg.src == self.me:
            raise ProtocolError("message from self")
        if isinstance(msg, PingReq) and msg.target == self.me:
            raise ProtocolError("PingReq asking a node to ping itself")
        self.now = max(self.now, now)
        out = Output()
        handler(self, msg, out)
        return out

    def leave(self, now: int, fanout: int) -> Output:
        """Announce a graceful leave: LEFT at our incarnation, pushed to up
        to ``fanout`` members now; gossip carries it further while the driver
        lingers. After this the node refutes nothing."""
        if self.leaving:
            raise ProtocolError("leave() called twice")
        self.now = now
        out = Output()
        self.leaving = True
        left = Update(self.me, self.incarnation, Status.LEFT)
        self.members[self.me] = left
        self.gossip[self.me] = [0, left]
        self.view_version += 1
        others = self.others_in_view()
        for peer in self.rng.sample(others, min(fanout, len(others))):
            self.seq += 1
            out.messages.append(Ping(self.me, peer, self.seq, self._piggyback()))
        return out

    # --- joining -------------------------------------------------------------

    def _send_join(self, out: Output) -> Output:
        seed = self.seeds[self.join_index % len(self.seeds)]
        self.join_deadline_tick = self.now + self.config.join_timeout_ticks
        out.messages.append(Join(self.me, seed, self.incarnation))
        return out

    def _tick_join(self, out: Output) -> None:
        # Joined nodes with company need no seeds; a lonely one keeps asking.
        lonely = len(self._view_names()) - (self.me in self._view_names()) == 0
        if not self.seeds or (self.joined and not lonely) or self.leaving:
            return
        if self.join_deadline_tick is not None and self.now < self.join_deadline_tick:
            return
        self.join_index += 1
        if (not self.joined and self.bootstrap_tick is not None
                and self.now >= self.bootstrap_tick):
            self.joined = True  # no seed admitted us in time: form a ring alone
        self._send_join(out)

    def _on_join(self, msg: Join, out: Output) -> None:
        if not self.joined or self.leaving:
            out.messages.append(JoinReply(self.me, msg.src, False))
            return
        self._apply(Update(msg.src, msg.incarnation, Status.ALIVE), out)
        out.messages.append(JoinReply(self.me, msg.src, True, self._table()))

    def _on_join_reply(self, msg: JoinReply, out: Output) -> None:
        if not msg.accepted:
            self.join_deadline_tick = self.now  # try the next seed at once
            return
        first = not self.joined or not self.others_in_view()
        self._merge(msg.members, out)
        if first:
            self.join_via = msg.src
        self.joined = True

    # --- probing -------------------------------------------------------------

    def _tick_probe(self, out: Output) -> None:
        probe = self.probe
        if probe is not None and not probe.acked:
            if (not probe.indirect_sent
                    and self.now >= probe.sent_tick + self.config.ack_timeout_ticks):
                probe.indirect_sent = True
                self._send_indirect(probe, out)
        if self.now < self.next_probe_tick:
            return
        self.next_probe_tick = self.now + self.config.ping_period_ticks
        # A leaving node keeps pinging (its pings spread its LEFT) but no
        # longer judges anyone.
        if probe is not None and not probe.acked and not self.leaving:
            self._suspect(probe.target, out)
        self.probe = None
        target = self._next_target()
        if target is None:
            return
        self.seq += 1
        self.counters["probes"] += 1
        self.probe = _Probe(target, self.seq, self.now)
        out.messages.append(Ping(self.me, target, self.seq, self._piggyback()))

    def _next_target(self) -> str | None:
        while True:
            if not self.probe_order:
                self.probe_order = self.others_in_view()
                self.rng.shuffle(self.probe_order)
                if not self.probe_order:
                    return None
            name = self.probe_order.pop()
            if self.status_of(name) in IN_VIEW:
                return name

    def _send_indirect(self, probe: _Probe, out: Output) -> None:
        helpers = [n for n in self.others_in_view() if n != probe.target]
        k = min(self.config.indirect_probes, len(helpers))
        self.counters["indirect"] += 1
        for helper in self.rng.sample(helpers, k):
            out.messages.append(
                PingReq(self.me, helper, probe.seq, probe.target, self._piggyback()))

    def _suspect(self, name: str, out: Output) -> None:
        cur = self.members.get(name)
        if cur is None or cur.status != Status.ALIVE:
            return
        self.counters["suspected"] += 1
        self._apply(Update(name, cur.incarnation, Status.SUSPECT), out)

    def _tick_suspects(self, out: Output) -> None:
        """Confirm expired suspicions. Until then, tell each suspect once a
        period (the Ping carries its own SUSPECT entry), so a live one
        refutes fast and its Ack brings the refutation straight back,
        instead of both waiting for gossip to happen by."""
        limit, period = self.config.suspicion_timeout_ticks, self.config.ping_period_ticks
        for name in sorted(self.suspects):
            u = self.members[name]
            held = self.now - self.since[name]
            if held >= limit:
                self._apply(Update(u.name, u.incarnation, Status.DEAD), out)
            elif held % period == 0:
                self.seq += 1
                out.messages.append(Ping(self.me, name, self.seq, self._piggyback(name)))

    def _tick_relays_and_tombstones(self) -> None:
        for seq in [s for s, r in self.relays.items() if r.expires_tick <= self.now]:
            del self.relays[seq]
        if self.now % self.config.ping_period_ticks:
            return  # tombstones are old by definition: a sweep per period will do
        keep = self.config.tombstone_ticks
        for name in [n for n, u in self.members.items()
                     if u.status not in IN_VIEW and n != self.me
                     and self.now - self.since[n] >= keep]:
            del self.members[name], self.since[name]
            self.gossip.pop(name, None)

    # --- message handlers ----------------------------------------------------

    def _on_ping(self, msg: Ping, out: Output) -> None:
        self._heard_from(msg.src, out)
        self._merge(msg.updates, out)
        out.messages.append(Ack(self.me, msg.src, msg.seq, self.me, self._piggyback(msg.src)))

    def _on_ack(self, msg: Ack, out: Output) -> None:
        self._merge(msg.updates, out)
        relay = self.relays.pop(msg.seq, None)
        if relay is not None and msg.target == relay.target:
            out.messages.append(Ack(self.me, relay.requester, relay.requester_seq,
                                    relay.target, self._piggyback(relay.requester)))
            return
        probe = self.probe
        if probe is not None and probe.seq == msg.seq and probe.target == msg.target:
            probe.acked = True

    def _on_ping_req(self, msg: PingReq, out: Output) -> None:
        self._merge(msg.updates, out)
        if len(self.relays) >= self.config.relays_in_flight_max:
            return  # overloaded: the asker has other helpers and its own timeout
        self.seq += 1
        expires = self.now + self.config.ping_period_ticks
        self.relays[self.seq] = _Relay(msg.src, msg.seq, msg.target, expires)
        out.messages.append(Ping(self.me, msg.target, self.seq, self._piggyback(msg.target)))

    def _on_sync(self, msg: Sync, out: Output) -> None:
        self._merge(msg.members, out)
        if not msg.reply:
            out.messages.append(Sync(self.me, msg.src, True, self._table()))

    def _heard_from(self, name: str, out: Output) -> None:
        """A live sender we have no entry for is taken as ALIVE at
        incarnation 0 (its own gossip will correct the number)."""
        if name not in self.members:
            self._apply(Update(name, 0, Status.ALIVE), out)

    # --- updates and gossip --------------------------------------------------

    def _merge(self, updates, out: Output) -> None:
        for u in updates:
            self._apply(u, out)

    def _apply(self, u: Update, out: Output) -> None:
        if u.name == self.me:
            self._apply_self(u, out)
            return
        cur = self.members.get(u.name)
        if cur is not None and not u.overrides(cur):
            return
        was_in = cur is not None and cur.status in IN_VIEW
        self.members[u.name] = u
        self.since[u.name] = self.now
        if u.status == Status.SUSPECT:
            self.suspects.add(u.name)
        else:
            self.suspects.discard(u.name)
        self.gossip[u.name] = [0, u]
        now_in = u.status in IN_VIEW
        if now_in != was_in:
            self.view_version += 1
        if now_in and not was_in:
            out.events.append(MemberUp(u.name, u.incarnation))
        elif was_in and not now_in:
            out.events.append(MemberDown(u.name, u.incarnation, u.status == Status.LEFT))
        elif u.status == Status.SUSPECT and cur.status != Status.SUSPECT:
            out.events.append(MemberSuspect(u.name, u.incarnation))

    def _apply_self(self, u: Update, out: Output) -> None:
        """News about ourselves. While leaving our LEFT entry stands. ALIVE
        at a higher number is our own earlier life (a quick restart): adopt
        the number. Anything else at or above our incarnation is refuted."""
        if self.leaving or u.incarnation < self.incarnation:
            return
        if u.status == Status.ALIVE:
            if u.incarnation > self.incarnation:
                self.incarnation = u.incarnation
                self.members[self.me] = u
            return
        self.incarnation = u.incarnation + 1
        alive = Update(self.me, self.incarnation, Status.ALIVE)
        self.members[self.me] = alive
        self.gossip[self.me] = [0, alive]
        self.counters["refuted"] += 1
        out.events.append(Refuted(self.incarnation))

    def _retransmits(self) -> int:
        n = len(self._view_names())
        return self.config.gossip_retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def _piggyback(self, dst: str | None = None) -> tuple[Update, ...]:
        """Least-transmitted updates first; a destination we hold as dead or
        suspect is told so directly, so it refutes even after gossip ended.
        At most gossip_per_message_max + 2 updates."""
        # Our own entry always rides along: whoever hears from us learns our
        # incarnation, so a refutation reaches even nodes gossip has passed.
        picked: list[Update] = [self.members[self.me]]
        if dst is not None:
            told = self.members.get(dst)
            if told is not None and told.status != Status.ALIVE:
                picked.append(told)
        limit = self._retransmits()
        for name, entry in sorted(self.gossip.items(), key=lambda kv: kv[1][0]):
            if len(picked) >= self.config.gossip_per_message_max + 2:
                break
            if entry[1] in picked:
                continue
            picked.append(entry[1])
            entry[0] += 1
            if entry[0] >= limit:
                del self.gossip[name]
        return tuple(picked)

    def _table(self) -> tuple[Update, ...]:
        return tuple(self.members[n] for n in sorted(self.members))


_HANDLERS = {
    Ping: Swim._on_ping,
    Ack: Swim._on_ack,
    PingReq: Swim._on_ping_req,
    Join: Swim._on_join,
    JoinReply: Swim._on_join_reply,
    Sync: Swim._on_sync,
}
