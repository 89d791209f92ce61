"""RingService over in-memory RPC: several services in one trio run, each
peer reached through ``rpc.memory_pair`` (so the codec and RingPeerServer
are exercised end to end), on trio's autojump clock."""

import random

import pytest
import trio

import rpc
from server.config import NodeConfig
from server.ring import messages as m
from server.ring.service import RingPeerServer, RingService, Resync, ServiceLimits, ring_config_of
from server.ring.wire import ring_capnp, updates_from

SUSPICION_S = 5.0  # default 100 ticks of 50 ms
PING_PERIOD_S = 1.0


def name(i: int) -> str:
    return f"10.0.0.{i + 1}:7070"


class MemoryNet:
    """Addresses -> live services; a down address refuses connections and
    its open connections are cut, as a killed process's would be."""

    def __init__(self, nursery):
        self.nursery = nursery
        self.services: dict[str, RingService] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.conn_scopes: dict[str, list[trio.CancelScope]] = {}

    def pool(self):
        return MemoryPool(self)

    async def start(self, addr: str, seeds, **kw) -> RingService:
        cfg = NodeConfig(data_dir="/unused", node_name=addr, seeds=tuple(seeds))
        svc = RingService(cfg, self.pool(), random.Random(addr), **kw)
        self.services[addr] = svc
        self.scopes[addr] = await self.nursery.start(self._run, svc)
        return svc

    async def _run(self, svc, task_status):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.run)
                task_status.started(scope)

    def kill(self, addr: str) -> None:
        self.scopes.pop(addr).cancel()
        del self.services[addr]
        for scope in self.conn_scopes.pop(addr, []):
            scope.cancel()

    async def connect(self, addr: str, task_status):
        svc = self.services.get(addr)
        if svc is None:
            raise rpc.ConnectionLost(f"connection to {addr} refused")
        with trio.CancelScope() as scope:
            self.conn_scopes.setdefault(addr, []).append(scope)
            async with rpc.memory_pair(bootstrap_b=RingPeerServer(svc)) as (a, _b):
                task_status.started(a)
                await trio.sleep_forever()


class MemoryPool:
    """The slice of rpc.pool.Pool the service uses: bootstrap(addr, iface)."""

    def __init__(self, net: MemoryNet):
        self.net = net
        self.conns = {}

    async def bootstrap(self, addr, interface, *, timeout_s=None):
        conn = self.conns.get(addr)
        if conn is None or conn.is_closed:
            try:
                conn = await self.net.nursery.start(self.net.connect, addr)
            except rpc.ConnectionLost:
                self.conns.pop(addr, None)
                raise
            self.conns[addr] = conn
        return await conn.bootstrap(interface, timeout_s=timeout_s)


def table(svc) -> dict[str, tuple[m.Status, int]]:
    return {u.name: (u.status, u.incarnation) for u in svc.members()}


def all_alive(services, names) -> bool:
    return all({n: t[0] for n, t in table(s).items() if n in names} == dict.fromkeys(names, m.Status.ALIVE)
               for s in services)


async def wait_until(predicate, timeout_s: float, step_s: float = 0.05) -> float:
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(step_s)
    return trio.current_time() - start


async def start_cluster(net, n: int, **kw) -> list[RingService]:
    seeds = [name(0), name(1)]
    return [await net.start(name(i), seeds, **kw) for i in range(n)]


async def test_five_services_converge_and_agree_on_placement(nursery, autojump_clock):
    net = MemoryNet(nursery)
    services = await start_cluster(net, 5)
    names = [name(i) for i in range(5)]
    took = await wait_until(lambda: all_alive(services, names), 20)
    assert took < 10
    key = 0x1234_5678_9ABC_DEF0
    assert len({s.replicas(key) for s in services}) == 1
    assert {s.view().names for s in services} == {frozenset(names)}


async def test_crash_is_detected_and_restart_rejoins(nursery, autojump_clock):
    net = MemoryNet(nursery)
    services = await start_cluster(net, 5)
    names = [name(i) for i in range(5)]
    await wait_until(lambda: all_alive(services, names), 20)
    victim = name(0)  # the first seed: the hardest node to lose
    net.kill(victim)
    rest = [s for s in services if s.name != victim]
    took = await wait_until(lambda: all(table(s)[victim][0] == m.Status.DEAD for s in rest), 20)
    # Probed within a round, suspected a period later, the suspicion
    # timeout, then gossip of the verdict to the last node.
    print(f"crash detected by all in {took:.2f} s (virtual)")
    assert SUSPICION_S <= took <= SUSPICION_S + 5 * PING_PERIOD_S
    back = await net.start(victim, [name(0), name(1)])
    services = rest + [back]
    await wait_until(lambda: all_alive(services, names), 10)
    assert back.incarnation > 0  # refuted its old life
    assert all(table(s)[victim][1] == back.incarnation for s in rest)


async def test_graceful_leave_spreads_at_once(nursery, autojump_clock):
    net = MemoryNet(nursery)
    services = await start_cluster(net, 4)
    await wait_until(lambda: all_alive(services, [s.name for s in services]), 20)
    leaver, rest = services[3], services[:3]
    start = trio.current_time()
    await leaver.leave(timeout_s=10)
    assert trio.current_time() - start == pytest.approx(3 * PING_PERIOD_S, abs=0.06)
    assert all(table(s)[leaver.name][0] == m.Status.LEFT for s in rest)
    assert all(leaver.name not in s.view().names for s in rest)
    await leaver.leave(timeout_s=10)  # idempotent


async def test_leave_respects_its_deadline(nursery, autojump_clock):
    net = MemoryNet(nursery)
    services = await start_cluster(net, 2)
    start = trio.current_time()
    await services[1].leave(timeout_s=0.5)
    assert trio.current_time() - start == pytest.approx(0.5, abs=0.01)


async def test_subscribers_get_events_and_a_slow_one_gets_resync(nursery, autojump_clock):
    net = MemoryNet(nursery)
    first = await net.start(name(0), [name(0)])
    fast = first.subscribe(64)
    slow = first.subscribe(1)
    others = [await net.start(name(i), [name(0)]) for i in range(1, 5)]
    names = [name(i) for i in range(5)]
    await wait_until(lambda: all_alive([first] + others, names), 20)
    ups = set()
    while True:
        with trio.move_on_after(0.01):
            event = await fast.receive()
            assert not isinstance(event, Resync)
            if isinstance(event, m.MemberUp):
                ups.add(event.name)
            continue
        break
    assert ups == set(names[1:])
    events = [await slow.receive(), await slow.receive()]
    assert isinstance(events[1], Resync) and 1 <= events[1].lost <= slow.lost
    assert set(first.view().names) == set(names)  # what the slow one rebuilds from
    net.kill(name(4))
    event = await slow.receive()  # after the Resync, events flow again
    assert isinstance(event, (m.MemberSuspect, m.MemberDown, m.RangesChanged))
    await slow.aclose()
    assert slow not in first._subscribers


async def test_protocol_violations_are_refused_and_change_nothing(nursery, autojump_clock):
    net = MemoryNet(nursery)
    svc = await net.start(name(0), [name(0)])
    await trio.sleep(1)
    before = table(svc)
    for bad in (m.Ping("not an address", svc.name, 1),
                m.Ping(name(1), name(2), 1),        # not for us
                m.Ping(svc.name, svc.name, 1)):     # from ourselves
        with pytest.raises(m.ProtocolError):
            svc.deliver_nowait(bad)
    assert svc.counters["protocol_errors"] == 3
    # Over the wire the caller gets Failed.
    conn = await nursery.start(net.connect, svc.name)
    cap = await conn.bootstrap(ring_capnp.RingPeer, timeout_s=1)
    with pytest.raises(rpc.Failed, match="delivered to"):
        await cap.call("deliver", fill=lambda p: _fill(p, m.Notify(name(1), name(3))), timeout_s=1)
    # A message the core itself rejects (PingReq to ping the receiver) is
    # dropped by the stepper, not raised to the caller.
    await cap.call("deliver", fill=lambda p: _fill(p, m.PingReq(name(1), svc.name, 1, svc.name)),
                   timeout_s=1)
    await trio.sleep(0.1)
    assert svc.counters["protocol_errors"] == 5
    assert table(svc) == before


def _fill(params, msg):
    from server.ring.wire import fill_message
    fill_message(params.init("message"), msg)


async def test_members_rpc_returns_the_table(nursery, autojump_clock):
    net = MemoryNet(nursery)
    services = await start_cluster(net, 3)
    await wait_until(lambda: all_alive(services, [s.name for s in services]), 20)
    conn = await nursery.start(net.connect, name(2))
    cap = await conn.bootstrap(ring_capnp.RingPeer, timeout_s=1)
    reply = await cap.members(timeout_s=1)
    assert updates_from(reply.members) == services[2].members()


async def test_inbox_is_bounded(nursery, autojump_clock):
    net = MemoryNet(nursery)
    svc = await net.start(name(0), [name(0)], limits=ServiceLimits(inbox_messages_max=8))
    for seq in range(20):  # no checkpoint: the stepper cannot drain meanwhile
        svc.deliver_nowait(m.Ping(name(1), svc.name, seq))
    # 8 buffered, plus one handed straight to the stepper parked in receive.
    assert svc.counters["inbox_dropped"] == 20 - 8 - 1


class HangingPool:
    """A peer that never answers (a black-holed address)."""

    calls = 0

    async def bootstrap(self, addr, interface, *, timeout_s=None):
        HangingPool.calls += 1
        await trio.sleep_forever()


async def test_outbound_queue_is_bounded_and_messages_expire(nursery, autojump_clock):
    cfg = NodeConfig(data_dir="/unused", node_name=name(0), seeds=(name(0),))
    svc = RingService(cfg, HangingPool(), random.Random(0),
                      limits=ServiceLimits(peer_queue_messages_max=4, peer_idle_s=5))
    await nursery.start(svc.run)
    for seq in range(10):
        svc._send(m.Ping(svc.name, name(1), seq))
    assert svc.counters["send_dropped"] == 6
    await trio.sleep(0.01)
    peer = svc._peers[name(1)]
    # One call is hanging under its deadline; when it passes, the rest
    # are stale and expire without a call each.
    await trio.sleep(svc.send_deadline_s + 0.01)
    assert svc.counters["send_failed"] == 1
    assert peer.expired == 3 and not peer.queue
    await trio.sleep(6)  # idle peers are forgotten
    assert name(1) not in svc._peers


async def test_unroutable_destinations_are_counted_not_sent(nursery, autojump_clock):
    net = MemoryNet(nursery)
    svc = await net.start(name(0), [name(0)])
    svc._send(m.Ping(svc.name, "no-port", 1))
    svc._send(m.Ping(svc.name, svc.name, 1))
    assert svc.counters["send_unroutable"] == 2 and not svc._peers


def test_ring_settings_follow_the_node_config():
    cfg = NodeConfig(data_dir="/unused", replication_factor=3, successors_max=4,
                     virtual_ids_per_node=16)
    ring = ring_config_of(cfg)
    assert (ring.replicas, ring.virtual_ids, ring.successors_len) == (3, 16, 5)
    with pytest.raises(ValueError, match="inbox_messages_max"):
        ServiceLimits(inbox_messages_max=0)
