"""ReplicatedStore against in-memory fake replicas that misbehave: one that
answers ``overloaded`` to every third put, one that is full, one that never
answers, one that is slow. Everything runs on trio's autojump clock (no
threads, no real sleeps), so every timing asserted here is exact virtual
time. Also the stamps a put collects and ``ReplicaHealth`` on its own."""

from __future__ import annotations

import logging
import random
import types

import pytest
import trio

import rpc
from server.ring.ringmath import Ring
from server.store.keyrange import chunk_id_of
from server.store.replicahealth import HealthLimits, ReplicaHealth
from server.store.replication import ReplicatedStore, ReplicationLimits, WriteQuorumNotMet

from .conftest import chunk_bytes

NAMES = [f"n{i}" for i in range(5)]


def reply(status="ok", message="", **fields):
    return types.SimpleNamespace(status=status, message=message, **fields)


class FakeReplica:
    """Duck-types the ChunkStore capability RemoteStore calls. Stamps follow
    the spec: max(old stamp, afterIndex, this node's applied index)."""

    def __init__(self, name: str, *, overload_every: int = 0, full: bool = False,
                 hang: bool = False, delay_s: float = 0.0, applied_index: int = 0):
        self.name = name
        self.overload_every, self.full, self.hang, self.delay_s = overload_every, full, hang, delay_s
        self.applied_index = applied_index
        self.chunks: dict[bytes, tuple[bytes, int]] = {}  # id -> (data, stamp)
        self.calls: list[tuple[str, float]] = []          # (method, virtual time)
        self.puts = 0

    async def _answer(self, method: str, timeout_s: float, make):
        self.calls.append((method, trio.current_time()))
        try:
            with trio.fail_after(timeout_s):
                if self.hang:
                    await trio.sleep_forever()
                await trio.sleep(self.delay_s)
        except trio.TooSlowError:
            raise rpc.CallTimeout(f"{self.name}.{method}: no answer in {timeout_s} s") from None
        return make()

    def _stamp(self, chunk_id: bytes, after_index: int) -> int:
        old = self.chunks.get(chunk_id, (b"", 0))[1]
        return max(old, after_index, self.applied_index)

    def _put(self, chunk_id: bytes, data: bytes, after_index: int):
        self.puts += 1
        if self.overload_every and self.puts % self.overload_every == 0:
            return reply("overloaded", "every Nth put")
        if self.full:
            return reply("noSpace", "disk reserve reached")
        stored = chunk_id not in self.chunks
        stamp = self._stamp(chunk_id, after_index)
        self.chunks[chunk_id] = (bytes(data), stamp)
        return reply(stored=stored, stamp=stamp)

    async def put(self, *, id, data, afterIndex=0, timeout_s):
        return await self._answer("put", timeout_s, lambda: self._put(id, data, afterIndex))

    async def has(self, *, ids, timeout_s):
        return await self._answer("has", timeout_s, lambda: reply(present=[i in self.chunks for i in ids]))

    async def putBegin(self, *, id, sizeBytes, afterIndex=0, timeout_s):
        def make():
            if id not in self.chunks:
                return reply("badRequest", "this fake takes whole puts only")
            stamp = self._stamp(id, afterIndex)
            self.chunks[id] = (self.chunks[id][0], stamp)
            return reply(present=True, writeId=0, stamp=stamp)
        return await self._answer("putBegin", timeout_s, make)

    async def get(self, *, id, offset, length, timeout_s):
        def make():
            if id not in self.chunks:
                return reply("notFound", "no such chunk", data=b"", sizeBytes=0)
            data = self.chunks[id][0]
            return reply(data=data, sizeBytes=len(data))
        return await self._answer("get", timeout_s, make)

    async def verify(self, *, id, timeout_s):
        return await self._answer("verify", timeout_s, lambda: reply(sizeBytes=0))


class FakePool:
    def __init__(self, replicas: dict[str, FakeReplica]):
        self.replicas = replicas
        self.down: set[str] = set()

    async def bootstrap(self, addr, interface, *, timeout_s=None):
        await trio.sleep(0)
        if addr in self.down:
            raise rpc.ConnectionLost(f"cannot connect to {addr}: refused")
        return self.replicas[addr]


def make_store(ring: Ring, replicas: dict[str, FakeReplica], **kw) -> ReplicatedStore:
    kw.setdefault("timeout_s", 10.0)
    kw.setdefault("rng", random.Random(7))
    return ReplicatedStore(FakePool(replicas), ring, lambda name: name, R=3, **kw)


@pytest.fixture
def ring() -> Ring:
    return Ring(NAMES, virtual_ids=16)


@pytest.fixture
def replicas() -> dict[str, FakeReplica]:
    return {name: FakeReplica(name) for name in NAMES}


def chunk(seed: int, size: int = 4096) -> tuple[bytes, bytes]:
    data = chunk_bytes(seed, size)
    return chunk_id_of(data), data


def chunk_owned_by(rs: ReplicatedStore, name: str, position: int = 0, size: int = 4096):
    """A chunk whose replica set has ``name`` at ``position``."""
    for seed in range(10_000):
        cid, data = chunk(seed, size)
        if rs.replicas(cid)[position] == name:
            return cid, data
    raise AssertionError("no such chunk")


# ---- puts --------------------------------------------------------------------------


async def test_overloaded_every_third_put_is_retried_with_backoff(ring, replicas, autojump_clock):
    busy = replicas["n1"]
    busy.overload_every = 3
    rs = make_store(ring, replicas)
    for seed in range(30):
        cid, data = chunk(seed)
        result = await rs.put(cid, data)
        assert len(result.acked) == 3 and result.failed == {}
    assert rs.stats.put_retries == busy.puts // 3 > 0
    assert rs.stats.copies_missing == 0
    # Each retry came after a jittered backoff of [initial/2, initial].
    puts = [t for method, t in busy.calls if method == "put"]
    lim = rs.limits
    gaps = [b - a for n, (a, b) in enumerate(zip(puts, puts[1:]), start=1) if n % 3 == 0]
    assert gaps and all(lim.backoff_initial_s / 2 <= g <= lim.backoff_initial_s for g in gaps)


async def test_backoff_grows_and_a_replica_that_stays_busy_is_left_to_repair(
        ring, replicas, autojump_clock, caplog):
    busy = replicas["n2"]
    busy.overload_every = 1  # every put
    # A grace after the quorum long enough for every attempt (by default
    # the stragglers get 0.5 s: the test below).
    rs = make_store(ring, replicas, limits=ReplicationLimits(straggler_wait_min_s=2.0))
    cid, data = chunk_owned_by(rs, "n2")
    started = trio.current_time()
    with caplog.at_level(logging.WARNING, logger="chordfs.store.replication"):
        result = await rs.put(cid, data)
    lim = rs.limits
    assert set(result.acked) == set(rs.replicas(cid)) - {"n2"}
    assert "overloaded" in result.failed["n2"] and "6 attempts" in result.failed["n2"]
    assert busy.puts == lim.put_attempts_max and rs.stats.put_retries == lim.put_attempts_max - 1
    puts = [t for method, t in busy.calls if method == "put"]
    gaps = [b - a for a, b in zip(puts, puts[1:])]
    for k, gap in enumerate(gaps, start=1):
        ceiling = min(lim.backoff_max_s, lim.backoff_initial_s * 2 ** (k - 1))
        assert ceiling / 2 <= gap <= ceiling
    # The copy is missing: counted, logged; the put returned after the retries.
    assert rs.stats.copies_missing == 1
    assert any("replication.copies_missing" in r.message and "n2" in r.message for r in caplog.records)
    assert trio.current_time() - started <= sum(min(lim.backoff_max_s, lim.backoff_initial_s * 2 ** k)
                                                for k in range(lim.put_attempts_max))


async def test_retries_of_a_busy_straggler_end_with_the_grace(ring, replicas, autojump_clock):
    replicas["n2"].overload_every = 1
    rs = make_store(ring, replicas, limits=ReplicationLimits(backoff_initial_s=0.5, backoff_max_s=1.0))
    cid, data = chunk_owned_by(rs, "n2")
    started = trio.current_time()
    result = await rs.put(cid, data)
    assert len(result.acked) == 2 and "left to repair" in result.failed["n2"]
    # Busy but alive: the longest grace.
    assert trio.current_time() - started == pytest.approx(rs.limits.straggler_wait_max_s)
    assert 1 < replicas["n2"].puts < rs.limits.put_attempts_max
    assert rs.stats.copies_missing == 1 and rs.stats.stragglers_cancelled == 1
    # It answered (busy, not dead): not remembered as slow, the next put waits as long.
    assert not rs.health.penalized("n2", trio.current_time())


async def test_retries_stop_at_the_time_budget(ring, replicas, autojump_clock):
    replicas["n0"].overload_every = 1
    limits = ReplicationLimits(put_attempts_max=100, backoff_max_s=1.0, retry_budget_s=3.0,
                               straggler_wait_min_s=5.0, straggler_wait_max_s=5.0)
    rs = make_store(ring, replicas, limits=limits)
    cid, data = chunk_owned_by(rs, "n0")
    started = trio.current_time()
    result = await rs.put(cid, data)
    assert "n0" in result.failed and len(result.acked) == 2
    assert trio.current_time() - started <= limits.retry_budget_s
    assert 5 <= replicas["n0"].puts < 100


async def test_put_fails_below_w_min(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk(1)
    first, second, _ = rs.replicas(cid)
    replicas[first].overload_every = replicas[second].overload_every = 1
    with pytest.raises(WriteQuorumNotMet) as info:
        await rs.put(cid, data)
    assert info.value.needed == 2 and len(info.value.acked) == 1
    rs.W_min = 1  # the cluster's write_quorum_min, as ClusterBackend sets it
    assert len((await rs.put(cid, data)).acked) == 1


async def test_no_space_redirects_to_the_next_successor_and_is_remembered(
        ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n3", position=1)
    replicas["n3"].full = True
    result = await rs.put(cid, data)
    beyond = rs.replicas(cid, 4)[3]
    assert "noSpace" in result.failed["n3"] and beyond in result.acked and len(result.acked) == 3
    assert rs.full_nodes() == ["n3"] and rs.stats.put_redirects == 1
    assert rs.stats.copies_missing == 0
    # Later placements skip the full node without asking it...
    asked = len(replicas["n3"].calls)
    other, other_data = chunk_owned_by(rs, "n3", position=0)
    result = await rs.put(other, other_data)
    assert len(replicas["n3"].calls) == asked and len(result.acked) == 3
    # ... reads find the spilled copy ...
    assert await rs.get(cid) == data
    # ... and after the memory expires it is asked again.
    await trio.sleep(rs.health.limits.full_memory_s + 1)
    replicas["n3"].full = False
    await rs.put(*chunk_owned_by(rs, "n3", position=0, size=5000))
    assert len(replicas["n3"].calls) > asked


async def test_all_full_is_enospc(ring, replicas, autojump_clock):
    for r in replicas.values():
        r.full = True
    rs = make_store(ring, replicas)
    cid, data = chunk(3)
    with pytest.raises(WriteQuorumNotMet) as info:
        await rs.put(cid, data)
    assert info.value.errno == 28  # ENOSPC


async def test_a_replica_that_never_answers_costs_a_put_only_the_grace(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n4", position=0)
    replicas["n4"].hang = True
    started = trio.current_time()
    result = await rs.put(cid, data)
    assert len(result.acked) == 2 and "left to repair" in result.failed["n4"]
    assert trio.current_time() - started == pytest.approx(rs.limits.straggler_wait_min_s)
    assert rs.stats.stragglers_cancelled == 1 and rs.stats.copies_missing == 1
    assert rs.health.penalized("n4", trio.current_time())
    # Remembered as slow: the next puts wait for it only briefly.
    for size in (5000, 6000):
        started = trio.current_time()
        result = await rs.put(*chunk_owned_by(rs, "n4", position=1, size=size))
        assert trio.current_time() - started == pytest.approx(rs.limits.straggler_wait_known_slow_s)
        assert "n4" in result.failed


async def test_an_unreachable_replica_does_not_count_against_the_quorum(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n0")
    rs._pool.down.add("n0")
    result = await rs.put(cid, data)
    assert len(result.acked) == 2 and "ConnectionLost" in result.failed["n0"]
    assert rs.read_candidates(cid)[-1] == "n0"  # remembered as dead


# ---- stamps ------------------------------------------------------------------------


async def test_put_returns_the_lowest_stamp_of_its_copies(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk(5)
    names = rs.replicas(cid)
    for name, applied in zip(names, (3, 9, 12)):
        replicas[name].applied_index = applied
    result = await rs.put(cid, data, after_index=7)
    assert result.stamps == dict(zip(names, (7, 9, 12))) and result.stamp == 7


async def test_a_dedup_hit_raises_the_stamp_without_sending_bytes(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk(6, 100_000)  # large enough to be looked up first
    assert (await rs.put(cid, data, after_index=2)).stamp == 2
    again = await rs.put(cid, data, after_index=10)
    assert again.uploaded == () and again.stamp == 10
    assert all(replicas[n].chunks[cid][1] == 10 for n in rs.replicas(cid))
    assert rs.stats.dedup_skips == 3 and rs.stats.bytes_uploaded == 3 * 100_000


# ---- hedged reads ------------------------------------------------------------------


async def test_hedged_read_returns_from_the_fast_replica_and_the_slow_one_goes_last(
        ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n1")
    await rs.put(cid, data)
    for r in replicas.values():
        r.delay_s = 0.002
    replicas["n1"].delay_s = 5.0
    started = trio.current_time()
    assert await rs.get(cid) == data
    default = rs.health.limits.hedge_delay_default_s
    assert trio.current_time() - started == pytest.approx(default + 0.002)
    assert rs.stats.hedges == 1 and rs.stats.hedge_wins == 1
    # The slow replica is read last while remembered: no hedge needed.
    assert rs.read_candidates(cid)[-1] == "n1"
    started = trio.current_time()
    assert await rs.get(cid) == data
    assert trio.current_time() - started == pytest.approx(0.002) and rs.stats.hedges == 1
    # After the memory, it is first again (and hedged past again).
    await trio.sleep(rs.health.limits.slow_memory_s + 1)
    assert rs.read_candidates(cid)[0] == "n1"


async def test_a_replica_that_never_answers_does_not_cost_the_deadline(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas, timeout_s=10.0)
    cid, data = chunk_owned_by(rs, "n2")
    await rs.put(cid, data)
    replicas["n2"].hang = True
    started = trio.current_time()
    for _ in range(20):
        assert await rs.get(cid) == data
    # One hedge delay for the first read; then it is asked last.
    assert trio.current_time() - started == pytest.approx(rs.health.limits.hedge_delay_default_s)
    assert rs.stats.hedges == 1


async def test_hedge_delay_follows_the_observed_latency(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n0")
    await rs.put(cid, data)
    replicas["n0"].delay_s = 0.020
    for _ in range(10):
        await rs.get(cid)  # (a read exactly as slow as the p95 may be hedged too)
    assert rs.health.hedge_delay_s("n0") == pytest.approx(0.020)
    # A read slower than its p95 (but not stuck) is hedged after 20 ms.
    replicas["n0"].delay_s = 0.100
    hedges = rs.stats.hedges
    started = trio.current_time()
    assert await rs.get(cid) == data
    assert trio.current_time() - started == pytest.approx(0.020)
    assert rs.stats.hedges == hedges + 1


async def test_an_error_answer_asks_the_next_at_once(ring, replicas, autojump_clock):
    rs = make_store(ring, replicas)
    cid, data = chunk_owned_by(rs, "n3")
    await rs.put(cid, data)
    del replicas["n3"].chunks[cid]
    started = trio.current_time()
    assert await rs.get(cid) == data
    assert trio.current_time() == started and rs.stats.hedges == 0
    assert rs.stats.get_fallbacks == 1 and cid in replicas["n3"].chunks  # read repair


# ---- ReplicaHealth alone -----------------------------------------------------------


def test_hedge_delay_is_the_p95_clamped():
    h = ReplicaHealth(HealthLimits(samples_max=100, hedge_delay_min_s=0.005, hedge_delay_max_s=0.5))
    assert h.hedge_delay_s("a") == h.limits.hedge_delay_default_s
    for ms in range(1, 101):
        h.record_latency("a", ms / 1000)
    assert h.hedge_delay_s("a") == pytest.approx(0.095)
    h.record_latency("b", 0.0001)
    assert h.hedge_delay_s("b") == 0.005
    h.record_latency("c", 30.0)
    assert h.hedge_delay_s("c") == 0.5


def test_latency_samples_and_nodes_are_bounded():
    h = ReplicaHealth(HealthLimits(samples_max=4, nodes_max=3))
    for x in (9.0, 9.0, 9.0, 9.0, 0.01, 0.01, 0.01, 0.01):
        h.record_latency("a", x)
    assert h.hedge_delay_s("a") == pytest.approx(0.01)  # the old samples are gone
    for name in "bcd":
        h.record_latency(name, 0.1)
    assert h.hedge_delay_s("a") == h.limits.hedge_delay_default_s  # forgotten


def test_penalties_and_full_marks_expire():
    h = ReplicaHealth(HealthLimits(slow_memory_s=5, dead_memory_s=10, full_memory_s=60))
    h.penalize("a", now=0)
    h.penalize("b", now=0, dead=True)
    assert h.read_order(["a", "b", "c"], now=1) == ["c", "a", "b"]
    assert h.read_order(["a", "b", "c"], now=6) == ["a", "c", "b"]
    assert h.read_order(["a", "b", "c"], now=11) == ["a", "b", "c"]
    h.mark_full("c", now=0)
    assert h.is_full("c", 59) and not h.is_full("c", 61) and h.full_nodes(1) == ["c"]
    h.mark_full("c", now=0)
    h.clear_full("c")
    assert not h.is_full("c", 1)
