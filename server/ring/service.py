"""The trio service that drives one ring core (``RingNode``) over RPC.

Order of work for every core call (``start``, a tick, one inbound message,
``leave``): call the core → queue ``out.messages`` on their peers' senders
(never blocks) → fan ``out.events`` out to subscribers in order. Nothing is
persisted: the ring is soft state, a restarted node rejoins under its name
with a higher incarnation (see ``node.py``).

Tasks (all in the service's own nursery):
  * the ticker: every ``ring_tick_ms`` it ticks the core with the number of
    whole ticks since start. After a stall it ticks once with the jumped
    count rather than replaying the missed ticks: replaying would time out
    every probe before its Ack had a chance to be read.
  * the stepper: takes inbound messages from the bounded inbox (filled by
    ``RingPeerServer.deliver``, which only decodes, checks and queues) and
    steps them into the core. A full inbox drops: the protocols tolerate loss.
  * one sender per peer: a bounded queue of messages, each with a deadline
    of one ping period (older ones are stale for every ring protocol); one
    ``RingPeer.deliver`` call at a time, no retries. A peer idle for
    ``peer_idle_s`` loses its sender, so churn does not grow the table.

Member names are ``host:port`` addresses: the schema carries names only, so
a name is also where its messages go. A message whose ``src`` is not a valid
address, is ourselves, or whose ``dst`` is not us, is a protocol violation:
it is logged (rate-limited), counted, dropped, and the caller gets Failed.
On a TLS node ``src`` must be the name in the sender's certificate.

Subscribers get events through a bounded channel each; one that falls
behind loses events beyond its bound and then receives one ``Resync``: it
must then rebuild from ``view()`` / ``members()`` before awaiting anything
(which makes the rebuild atomic with respect to later events).

Invariants: only the service's tasks and the synchronous entry points touch
the core (trio runs them one at a time); every queue is bounded; every
network call runs under the message's deadline.
"""

from __future__ import annotations

import collections
import dataclasses
import logging

import trio

import rpc
from rpc.logfmt import kv

from ..config import NodeConfig, parse_host_port
from . import wire
from .config import RingConfig
from .messages import (
    Joined, MemberDown, MemberSuspect, MemberUp, Output, ProtocolError, Refuted, Update,
)
from .node import RingNode

log = logging.getLogger("chordfs.ring")
ring_capnp = wire.ring_capnp
LINGER_PING_PERIODS = 3  # after leave(): the driver contract's "about three ping periods"


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    inbox_messages_max: int = 1024
    peer_queue_messages_max: int = 64
    peers_max: int = 1024
    subscribers_max: int = 64
    peer_idle_s: float = 60.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"{field.name} must be positive")


@dataclasses.dataclass(frozen=True, slots=True)
class Resync:
    """Delivered to a subscriber that lost ``lost`` events: rebuild from
    ``view()``/``members()`` before the next await."""
    lost: int


def ring_config_of(cfg: NodeConfig) -> RingConfig:
    """The ring settings a node config implies (tick lengths stay the core's
    defaults; ``ring_tick_ms`` scales them all)."""
    replicas = cfg.replication_factor
    return RingConfig(replicas=replicas, virtual_ids=cfg.virtual_ids_per_node,
                      successors_len=max(cfg.successors_max, replicas + 2))


def _worth_logging(count: int) -> bool:
    return count in (1, 10) or count % 100 == 0


class Subscription(trio.abc.ReceiveChannel):
    """A bounded event stream; see the module docstring for ``Resync``."""

    def __init__(self, service: RingService, buffer_max: int):
        if buffer_max < 1:
            raise ValueError("buffer_max must be at least 1")
        self._service = service
        self._buffer_max = buffer_max
        # One slot beyond the bound is reserved for the Resync marker.
        self._send, self._recv = trio.open_memory_channel(buffer_max + 1)
        self._resync_pending = False
        self.lost = 0

    def _offer(self, event) -> None:
        if self._resync_pending:
            self.lost += 1
            return
        if self._send.statistics().current_buffer_used >= self._buffer_max:
            self.lost += 1
            self._resync_pending = True
            event = Resync(self.lost)
        self._send.send_nowait(event)

    async def receive(self):
        event = await self._recv.receive()
        if isinstance(event, Resync):
            self._resync_pending = False
        return event

    async def aclose(self) -> None:
        self._service._unsubscribe(self)
        await self._recv.aclose()

    def close(self) -> None:
        self._service._unsubscribe(self)
        self._recv.close()


class _Peer:
    __slots__ = ("name", "addr", "queue", "wake", "dropped", "expired", "failures")

    def __init__(self, name: str, addr: str):
        self.name, self.addr = name, addr
        self.queue: collections.deque = collections.deque()  # (deadline, message)
        self.wake = trio.Event()
        self.dropped = self.expired = self.failures = 0


class RingService:
    def __init__(self, config: NodeConfig, pool, rng, *, limits: ServiceLimits = ServiceLimits(),
                 ring_config: RingConfig | None = None):
        self.name = config.node_name
        self.ring_config = ring_config or ring_config_of(config)
        self.node = RingNode(self.name, list(config.seeds), self.ring_config, rng)
        self.tick_s = config.ring_tick_ms / 1000
        self.send_deadline_s = self.ring_config.ping_period_ticks * self.tick_s
        self.limits = limits
        self._pool = pool
        self._inbox_send, self._inbox_recv = trio.open_memory_channel(limits.inbox_messages_max)
        self._peers: dict[str, _Peer] = {}
        self._subscribers: list[Subscription] = []
        self._nursery: trio.Nursery | None = None
        self._t0 = 0.0
        self._tick = 0
        self._leaving = False
        self._stopped = False
        self.counters = collections.Counter()

    # ------------------------------------------------------------- queries

    def view(self):
        """The placement view (``ringmath.Ring`` of ALIVE+SUSPECT members)."""
        return self.node.view()

    def replicas(self, key: int) -> tuple[str, ...]:
        return self.node.replicas(key)

    def members(self) -> tuple[Update, ...]:
        """The whole member table, tombstones included, sorted by name."""
        table = self.node.swim.members
        return tuple(table[n] for n in sorted(table))

    @property
    def incarnation(self) -> int:
        return self.node.incarnation

    def subscribe(self, buffer_max: int = 256) -> Subscription:
        if len(self._subscribers) >= self.limits.subscribers_max:
            raise RuntimeError(f"more than {self.limits.subscribers_max} ring subscribers")
        sub = Subscription(self, buffer_max)
        self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers.remove(sub)

    # ------------------------------------------------------------- driver

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._t0 = trio.current_time()
            try:
                parse_host_port(self.name)
            except ValueError as exc:
                # Peers address us by name; the rest of the node still works.
                log.error(kv("ring.name_unroutable", node=self.name, error=str(exc)))
            self._dispatch(self.node.start(0))
            # start() does not found a Chord ring; the first tick does. Tick
            # at once: a seedless node that hears a Join before its first
            # tick would otherwise try to join Chord through nodes that are
            # not in a Chord ring either, and they all retry without pause.
            self._dispatch(self.node.tick(0))
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._stepper)
            log.info(kv("ring.started", node=self.name, seeds=",".join(self.node.swim.seeds) or "-",
                        tick_ms=round(self.tick_s * 1000)))
            task_status.started(self)

    def _now(self) -> int:
        # Never behind the last tick: float rounding may put a wake-up at
        # t0 + k * tick_s a hair before tick k.
        return max(self._tick, int((trio.current_time() - self._t0) / self.tick_s))

    async def _ticker(self) -> None:
        while not self._stopped:
            await trio.sleep_until(self._t0 + (self._tick + 1) * self.tick_s)
            now = max(self._tick + 1, self._now())
            if now - self._tick > 10:
                log.warning(kv("ring.tick_lag", node=self.name, ticks_missed=now - self._tick - 1))
            self._tick = now
            if not self._stopped:
                self._dispatch(self.node.tick(now))

    async def _stepper(self) -> None:
        async for msg in self._inbox_recv:
            if self._stopped:
                continue
            try:
                out = self.node.step(msg, self._now())
            except ProtocolError as exc:
                self._violation(msg.src, str(exc))
                continue
            self._dispatch(out)

    def _dispatch(self, out: Output) -> None:
        """Send first, then events, as the core's contract orders."""
        for msg in out.messages:
            self._send(msg)
        for event in out.events:
            self._log_event(event)
            for sub in list(self._subscribers):
                try:
                    sub._offer(event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._unsubscribe(sub)

    def _log_event(self, event) -> None:
        if isinstance(event, MemberUp):
            log.info(kv("ring.member_up", node=self.name, member=event.name,
                        incarnation=event.incarnation))
        elif isinstance(event, MemberSuspect):
            log.info(kv("ring.member_suspect", node=self.name, member=event.name,
                        incarnation=event.incarnation))
        elif isinstance(event, MemberDown):
            log.info(kv("ring.member_down", node=self.name, member=event.name,
                        incarnation=event.incarnation, left=event.left))
        elif isinstance(event, Refuted):
            log.info(kv("ring.refuted", node=self.name, incarnation=event.incarnation))
        elif isinstance(event, Joined):
            log.info(kv("ring.joined", node=self.name, successor=event.successor))

    # ------------------------------------------------------------- inbound

    def deliver_nowait(self, msg) -> None:
        """Check and queue one inbound core message. Raises ProtocolError
        for a violation (after logging it); a full inbox drops silently
        apart from a counter, as loss is part of the protocol."""
        problem = self._check_inbound(msg)
        if problem:
            self._violation(msg.src, problem)
            raise ProtocolError(problem)
        try:
            self._inbox_send.send_nowait(msg)
        except trio.WouldBlock:
            self.counters["inbox_dropped"] += 1
            if _worth_logging(self.counters["inbox_dropped"]):
                log.warning(kv("ring.inbox_full", node=self.name,
                               dropped=self.counters["inbox_dropped"]))

    def _check_inbound(self, msg) -> str:
        if msg.dst != self.name:
            return f"message for {msg.dst!r} delivered to {self.name!r}"
        if msg.src == self.name:
            return "message claims to come from the receiver"
        try:
            parse_host_port(msg.src)
        except ValueError as exc:
            return f"src is not a member name: {exc}"
        return ""

    def _violation(self, src: str, problem: str) -> None:
        self.counters["protocol_errors"] += 1
        if _worth_logging(self.counters["protocol_errors"]):
            log.warning(kv("ring.protocol_error", node=self.name, src=src[:100],
                           error=problem[:200], count=self.counters["protocol_errors"]))

    # ------------------------------------------------------------- outbound

    def _send(self, msg) -> None:
        peer = self._peers.get(msg.dst)
        if peer is None:
            peer = self._new_peer(msg.dst)
            if peer is None:
                return
        if len(peer.queue) >= self.limits.peer_queue_messages_max:
            peer.dropped += 1
            self.counters["send_dropped"] += 1
            return
        peer.queue.append((trio.current_time() + self.send_deadline_s, msg))
        peer.wake.set()

    def _new_peer(self, name: str) -> _Peer | None:
        if name == self.name or self._nursery is None:
            self.counters["send_unroutable"] += 1
            return None
        try:
            parse_host_port(name)
        except ValueError:
            self.counters["send_unroutable"] += 1
            return None
        if len(self._peers) >= self.limits.peers_max:
            self.counters["send_dropped"] += 1
            return None
        peer = self._peers[name] = _Peer(name, name)
        self._nursery.start_soon(self._sender, peer)
        return peer

    async def _sender(self, peer: _Peer) -> None:
        while True:
            if not peer.queue:
                peer.wake = trio.Event()
                with trio.move_on_after(self.limits.peer_idle_s):
                    await peer.wake.wait()
                if not peer.queue:
                    del self._peers[peer.name]
                    return
            deadline, msg = peer.queue.popleft()
            if deadline <= trio.current_time():
                peer.expired += 1
                continue
            await self._deliver(peer, msg, deadline)

    async def _deliver(self, peer: _Peer, msg, deadline: float) -> None:
        timeout_s = deadline - trio.current_time()
        error = "deadline passed"
        with trio.move_on_at(deadline):
            try:
                cap = await self._pool.bootstrap(peer.addr, ring_capnp.RingPeer, timeout_s=timeout_s)
                await cap.call("deliver", fill=lambda p: wire.fill_message(p.init("message"), msg),
                               timeout_s=max(0.001, deadline - trio.current_time()))
                peer.failures = 0
                return
            except rpc.RpcError as exc:
                error = str(exc)
        peer.failures += 1
        self.counters["send_failed"] += 1
        if _worth_logging(peer.failures):
            log.info(kv("ring.send_failed", node=self.name, to=peer.name, failures=peer.failures,
                        kind=type(msg).__name__, error=error[:200]))

    # ------------------------------------------------------------- leaving

    async def leave(self, *, timeout_s: float) -> None:
        """Announce a graceful leave, then keep ticking and answering for
        about three ping periods (at most ``timeout_s``) so the news spreads;
        after that the core is left alone. Idempotent."""
        if self._leaving or not self.node.started:
            return
        self._leaving = True
        log.info(kv("ring.leaving", node=self.name, members=len(self.node.members())))
        self._dispatch(self.node.leave(self._now()))
        linger_s = LINGER_PING_PERIODS * self.ring_config.ping_period_ticks * self.tick_s
        await trio.sleep(max(0.0, min(linger_s, timeout_s)))
        self._stopped = True
        log.info(kv("ring.left", node=self.name))


class RingPeerServer(rpc.Server, interfaces=[ring_capnp.RingPeer]):
    """RingPeer over RPC. Methods are ``ring_peer_*`` so they never clash
    with the other interfaces the node's bootstrap object serves."""

    def __init__(self, ring: RingService):
        self.ring_service = ring

    @rpc.inline
    async def ring_peer_deliver(self, params, results):
        try:
            msg = wire.message_from(params.message)
        except ProtocolError as exc:
            self.ring_service._violation("?", str(exc))
            raise rpc.Failed(f"bad ring message: {exc}") from None
        peer = getattr(self, "peer", None)  # the certificate's identity (TLS nodes)
        if peer is not None and msg.src != peer.name:
            reason = f"ring message from {msg.src!r} sent by node {peer.name}"
            self.ring_service._violation(peer.name, reason)
            raise rpc.Failed(reason)
        try:
            self.ring_service.deliver_nowait(msg)
        except ProtocolError as exc:
            raise rpc.Failed(str(exc)) from None

    @rpc.inline
    async def ring_peer_members(self, params, results):
        table = self.ring_service.members()
        wire.fill_updates(results.init("members", len(table)), table)
