"""Replicated chunk I/O: the client side of the data path (DESIGN "Data path").

``ReplicatedStore.put`` sends a chunk to its replica set (owner + R-1
successors from the caller's ring view) concurrently and returns once enough
replicas acknowledged a durable (fsynced) copy; ``get`` asks the replicas in
ring order, hedging past a slow one, verifies the bytes against the id and
writes them back to replicas of the set that lacked the chunk or held a
corrupt copy (read repair).

Write quorum. The put needs ``W`` acknowledgements, or with ``W=None`` (the
default) ``W_min`` (the cluster's ``write_quorum_min``, at most the number
of distinct nodes in the ring). Every copy is attempted; a busy or slow
replica does not fail the put:

- ``overloaded`` (the replica's or the RPC layer's) is retried with jittered
  exponential backoff, at most ``put_attempts_max`` times and within
  ``retry_budget_s`` (and the caller's own deadline above that);
- ``noSpace`` (and ``ioError``) sends the copy to the next successor beyond
  the replica set instead, up to ``spill_replicas_max`` of them, and a
  ``noSpace`` node is remembered as full and skipped by later placements for
  ``full_memory_s`` (unless too few others are left);
- once the quorum acked, the copies still running get a grace of
  ``straggler_wait_factor`` times what the quorum took (clamped to
  [``straggler_wait_min_s``, ``straggler_wait_max_s``]; the maximum when
  one of them is retrying after ``overloaded``: alive, its copy will likely
  land), or only ``straggler_wait_known_slow_s`` when every one of them is
  remembered as slow, and are then cancelled. A straggler that said
  nothing during the put (not even ``overloaded``) is remembered as slow:
  a replica that accepts connections but never answers costs one put the
  grace and the following ones the short wait, never the per-call deadline.

Copies missing when the put returns (fewer than min(R, ring size) acked) are
left to repair: counted in ``stats.copies_missing`` and logged
(``replication.copies_missing``). A failed quorum raises
``WriteQuorumNotMet`` naming the replicas that acknowledged and why the
others failed (errno ENOSPC when every failure was ``noSpace``).

Stamps (../shared/spec "Stamps"): every put carries ``after_index``; each
replica answers its copy's stamp (a log index, max of its old stamp,
after_index and its applied index), and ``PutResult.stamp`` is the minimum
over the acked copies: the ``observed`` a commit of the chunk may claim.

Dedup: a chunk of at least ``dedup_bytes_min`` is first looked up with
``has``; a replica that holds it is asked ``putBegin`` (which raises the
copy's stamp and answers it without any bytes sent). Smaller chunks go
straight to ``put``: resending them costs less than the extra round trip.

Reads (hedged): the candidates are the replica set plus successors beyond it
(where spilled or not yet repaired copies live), in ring order with replicas
remembered as slow or dead moved last. The first is asked; when it has not
answered within its hedge delay (``ReplicaHealth.hedge_delay_s``: p95 of its
recent get latencies, clamped to [5 ms, 500 ms]) the next is asked as well,
and an error answer asks the next at once. The first verified answer wins
and the other calls are cancelled; a replica hedged past is remembered as
slow for a few seconds, one that refused the connection as dead.

Read repair is awaited by ``get`` under its own short deadline
(``read_repair_timeout_s``), or, when a ``repair_nursery`` is given, runs
there in the background with at most ``repairs_in_flight_max`` at once
(beyond that it is skipped: anti-entropy repair catches it later). A failed
read repair is logged and counted, never raised: the read itself succeeded.

Every network call has a deadline: ``timeout_s`` per RPC, and the pool's
connect timeout for dialing; every retry loop is bounded in attempts and
time."""

from __future__ import annotations

import dataclasses
import errno as _errno
import logging
import math
import random
from collections.abc import Callable, Mapping

import trio

import rpc
from rpc.logfmt import kv

from .errors import HashMismatch, StoreError
from .keyrange import check_id, chunk_id_of, ring_key
from .replicahealth import HealthLimits, ReplicaHealth
from .service import RemoteStore, RemoteStoreError, store_capnp

log = logging.getLogger("chordfs.store.replication")

# Answers that prove the replica is alive but has no (good) copy.
_REPAIRABLE = frozenset({"notFound", "corrupt"})
# Answers after which the copy goes to the next successor instead.
_REDIRECTED = frozenset({"noSpace", "ioError"})


class ReplicationError(StoreError):
    """Base of the errors of replicated chunk I/O."""

    errno = _errno.EIO


class WriteQuorumNotMet(ReplicationError):
    """Fewer replicas than required acknowledged a durable copy. Replicas in
    ``acked`` do hold the chunk; it is garbage unless a manifest refers to it."""

    def __init__(self, chunk_id: bytes, needed: int, acked: tuple[str, ...], failed: dict[str, str]):
        super().__init__(chunk_id, needed, acked, failed)
        self.chunk_id, self.needed, self.acked, self.failed = chunk_id, needed, acked, failed
        if failed and all("noSpace" in reason for reason in failed.values()):
            self.errno = _errno.ENOSPC

    def __str__(self) -> str:
        why = "; ".join(f"{name}: {reason}" for name, reason in self.failed.items())
        return (f"chunk {self.chunk_id.hex()}: {len(self.acked)} of {self.needed} required "
                f"replicas acknowledged ({', '.join(self.acked) or 'none'}); failed: {why}")


class ChunkUnavailable(ReplicationError):
    """No replica returned good bytes. ``errno`` is ENOENT when every replica
    that answered said not found and none was unreachable, else EIO."""

    def __init__(self, chunk_id: bytes, tried: dict[str, str], all_not_found: bool):
        super().__init__(chunk_id, tried)
        self.chunk_id, self.tried = chunk_id, tried
        self.errno = _errno.ENOENT if all_not_found else _errno.EIO

    def __str__(self) -> str:
        why = "; ".join(f"{name}: {reason}" for name, reason in self.tried.items())
        return f"chunk {self.chunk_id.hex()} unavailable: {why or 'no replicas'}"


@dataclasses.dataclass(frozen=True)
class PutResult:
    acked: tuple[str, ...]      # replicas holding a durable copy now
    uploaded: tuple[str, ...]   # of those, the ones the bytes were sent to
    failed: dict[str, str]      # replica -> reason, for the ones that did not ack
    stamps: dict[str, int] = dataclasses.field(default_factory=dict)  # acked replica -> stamp

    @property
    def stamp(self) -> int:
        """The lowest stamp of the acked copies (what a commit may claim)."""
        return min(self.stamps.values(), default=0)


@dataclasses.dataclass
class ReplicationStats:
    puts: int = 0
    bytes_uploaded: int = 0
    dedup_skips: int = 0
    put_retries: int = 0        # attempts repeated after `overloaded`
    put_redirects: int = 0      # copies sent past the replica set (noSpace, ioError)
    copies_missing: int = 0     # copies left to repair by puts that succeeded
    stragglers_cancelled: int = 0
    gets: int = 0
    get_fallbacks: int = 0      # candidates asked after an error answer
    hedges: int = 0             # candidates asked because the previous was slow
    hedge_wins: int = 0         # gets answered by a hedged candidate
    read_repairs: int = 0
    read_repair_failures: int = 0
    read_repairs_skipped: int = 0


@dataclasses.dataclass(frozen=True)
class ReplicationLimits:
    put_attempts_max: int = 6
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 0.5
    retry_budget_s: float = 5.0          # all attempts of one copy
    straggler_wait_factor: float = 4.0   # times what the quorum took
    straggler_wait_min_s: float = 0.5
    straggler_wait_max_s: float = 2.0
    straggler_wait_known_slow_s: float = 0.05  # when every straggler is remembered slow
    spill_replicas_max: int = 2          # successors past the set a redirected copy may use
    dedup_bytes_min: int = 64 * 1024     # smaller chunks skip the `has` round trip

    def __post_init__(self) -> None:
        if self.put_attempts_max < 1 or self.spill_replicas_max < 0 or self.dedup_bytes_min < 0:
            raise ValueError("put_attempts_max >= 1, spill_replicas_max and dedup_bytes_min >= 0")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s or self.retry_budget_s <= 0:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s and retry_budget_s > 0")
        if not 0 <= self.straggler_wait_known_slow_s <= self.straggler_wait_min_s \
                <= self.straggler_wait_max_s:
            raise ValueError("need 0 <= straggler_wait_known_slow_s <= straggler_wait_min_s "
                             "<= straggler_wait_max_s")


class _Unreachable(Exception):
    """Internal: the replica did not answer (no connection or no reply in time)."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclasses.dataclass
class _Copy:
    """The outcome of one copy's attempts on one node."""
    kind: str          # acked, redirect (noSpace/ioError), refused, unreachable
    reason: str = ""
    stored: bool = False
    stamp: int = 0
    full: bool = False


@dataclasses.dataclass
class _PutState:
    needed: int
    spares: list[str]
    running: int
    tried: list[str] = dataclasses.field(default_factory=list)
    in_flight: set[str] = dataclasses.field(default_factory=set)
    heard: set[str] = dataclasses.field(default_factory=set)  # answered `overloaded`: alive
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # name -> stamp
    uploaded: set[str] = dataclasses.field(default_factory=set)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    decided: trio.Event = dataclasses.field(default_factory=trio.Event)  # quorum or all done
    all_done: trio.Event = dataclasses.field(default_factory=trio.Event)

    def copy_finished(self) -> None:
        self.running -= 1
        if self.running == 0:
            self.all_done.set()
        if self.running == 0 or len(self.acked) >= self.needed:
            self.decided.set()


class ReplicatedStore:
    """Chunk put/get across the replica sets of a ring view.

    ``ring_view``: an object with ``replicas(key, R)`` (a ringmath.Ring) or a
    zero-argument callable returning one (so the view can change between
    calls). ``addr_of``: node name -> "host:port", a Mapping or a callable.
    ``pool``: anything with ``await bootstrap(addr, interface, timeout_s=)``
    (rpc.pool.Pool). ``rng`` draws the backoff jitter (seed it in tests)."""

    def __init__(self, pool, ring_view, addr_of: Mapping[str, str] | Callable[[str], str], R: int = 3,
                 W: int | None = None, timeout_s: float = 10.0, *, read_extra_replicas: int = 1,
                 dedup: bool = True, read_repair_timeout_s: float = 2.0, repair_nursery=None,
                 repairs_in_flight_max: int = 16, limits: ReplicationLimits = ReplicationLimits(),
                 health_limits: HealthLimits = HealthLimits(), rng: random.Random | None = None):
        if R < 1 or (W is not None and not 1 <= W <= R) or timeout_s <= 0:
            raise ValueError("need R >= 1, 1 <= W <= R and timeout_s > 0")
        self._pool = pool
        self._ring_view = ring_view
        self._addr_of = addr_of
        self.R, self.W, self.timeout_s = R, W, timeout_s
        # With W None: the fsynced copies a put needs (the cluster's
        # write_quorum_min); the others are attempted and left to repair.
        self.W_min = 2
        # Extra successors tried on reads only: after a ring change the old
        # replica set still holds the chunk until repair moved it.
        self.read_extra_replicas = read_extra_replicas
        self.dedup = dedup
        self.read_repair_timeout_s = read_repair_timeout_s
        self.limits = limits
        self.health = ReplicaHealth(health_limits)
        self._rng = rng if rng is not None else random.Random()
        self._repair_nursery = repair_nursery
        self._repair_slots = trio.Semaphore(repairs_in_flight_max)
        self.stats = ReplicationStats()

    # ---- placement and stubs --------------------------------------------------

    def replicas(self, chunk_id: bytes, count: int | None = None) -> tuple[str, ...]:
        ring = self._ring_view() if callable(self._ring_view) else self._ring_view
        return tuple(ring.replicas(ring_key(chunk_id), count or self.R))

    def addr(self, name: str) -> str:
        return self._addr_of(name) if callable(self._addr_of) else self._addr_of[name]

    def mark_full(self, name: str) -> None:
        """Place no new copies on ``name`` for a while (it answered noSpace,
        or its stats say it is out of space)."""
        self.health.mark_full(name, trio.current_time())

    def full_nodes(self) -> list[str]:
        return self.health.full_nodes(trio.current_time())

    def _placement(self, chunk_id: bytes) -> tuple[list[str], list[str], int, int]:
        """(targets, spares, copies wanted, acks needed): the replica set
        with nodes known to be full replaced by the next successors, unless
        fewer than ``needed`` would be left; spares take redirected copies."""
        names = list(self.replicas(chunk_id, self.R + self.limits.spill_replicas_max))
        wanted = min(self.R, len(names))
        needed = self.W if self.W is not None else min(self.W_min, wanted)
        now = trio.current_time()
        usable = [n for n in names if not self.health.is_full(n, now)]
        full = [n for n in names if self.health.is_full(n, now)]
        targets = usable[:wanted]
        if len(targets) < min(needed, wanted):  # a full node may have freed space
            targets += full[:wanted - len(targets)]
        spares = [n for n in usable if n not in targets]
        return targets, spares, wanted, needed

    async def remote(self, name: str) -> RemoteStore:
        """A stub for ``name``'s chunk store; ``_Unreachable`` if it cannot be
        dialed or bootstrapped within the deadline."""
        try:
            addr = self.addr(name)
        except KeyError:
            raise _Unreachable(f"no address known for {name}") from None
        try:
            with trio.fail_after(self.timeout_s):
                cap = await self._pool.bootstrap(addr, store_capnp.ChunkStore, timeout_s=self.timeout_s)
        except (rpc.ConnectionLost, rpc.CallTimeout, trio.TooSlowError) as e:
            raise _Unreachable(_reason(e)) from None
        return RemoteStore(cap, name, timeout_s=self.timeout_s)

    # ---- put ---------------------------------------------------------------

    async def put(self, chunk_id: bytes, data: bytes, after_index: int = 0) -> PutResult:
        """Store ``data`` on the replica set; see the module docstring for the
        quorum, retries and stamps. Raises HashMismatch (nothing sent) or
        WriteQuorumNotMet."""
        chunk_id = check_id(chunk_id)
        actual = chunk_id_of(data)
        if actual != chunk_id:
            raise HashMismatch(chunk_id, actual)
        if after_index < 0:
            raise ValueError("after_index must not be negative")
        targets, spares, wanted, needed = self._placement(chunk_id)
        st = _PutState(needed=needed, spares=spares, running=len(targets))
        started = trio.current_time()
        deadline = started + min(self.limits.retry_budget_s, self.timeout_s)
        async with trio.open_nursery() as nursery:
            for name in targets:
                nursery.start_soon(self._fill_slot, st, name, chunk_id, data, after_index, deadline)
            if targets:
                await st.decided.wait()
            if not st.all_done.is_set() and targets:
                with trio.move_on_after(self._straggler_grace_s(st, trio.current_time() - started)):
                    await st.all_done.wait()
                nursery.cancel_scope.cancel()
        self._note_stragglers(st)
        self.stats.puts += 1
        acked = tuple(n for n in st.tried if n in st.acked)
        failed = {n: st.failed[n] for n in st.tried if n in st.failed}
        if len(acked) < needed:
            raise WriteQuorumNotMet(chunk_id, needed, acked, failed)
        if len(acked) < wanted:
            self.stats.copies_missing += wanted - len(acked)
            log.warning(kv("replication.copies_missing", chunk=chunk_id.hex(), acked=len(acked),
                           wanted=wanted, failed=";".join(f"{n}: {r}" for n, r in failed.items())))
        return PutResult(acked, tuple(n for n in acked if n in st.uploaded), failed,
                         {n: st.acked[n] for n in acked})

    def _straggler_grace_s(self, st: _PutState, quorum_s: float) -> float:
        lim = self.limits
        now = trio.current_time()
        if all(self.health.penalized(name, now) for name in st.in_flight):
            return lim.straggler_wait_known_slow_s
        if st.in_flight & st.heard:  # busy but alive: its retry will likely land
            return lim.straggler_wait_max_s
        return min(lim.straggler_wait_max_s, max(lim.straggler_wait_min_s,
                                                 lim.straggler_wait_factor * quorum_s))

    def _note_stragglers(self, st: _PutState) -> None:
        now = trio.current_time()
        for name in st.tried:
            if name not in st.acked and name not in st.failed:
                st.failed[name] = "no answer within the grace after the quorum; left to repair"
                self.stats.stragglers_cancelled += 1
                if name not in st.heard:
                    self.health.penalize(name, now)

    async def _fill_slot(self, st: _PutState, name: str, chunk_id: bytes, data: bytes,
                         after_index: int, deadline: float) -> None:
        """One wanted copy: on ``name``, or past it on a spare when it is full."""
        while True:
            st.tried.append(name)
            st.in_flight.add(name)
            copy = await self._copy_to(name, chunk_id, data, after_index, deadline, st.heard)
            st.in_flight.discard(name)
            if copy.kind == "acked":
                st.acked[name] = copy.stamp
                if copy.stored:
                    st.uploaded.add(name)
                break
            st.failed[name] = copy.reason
            now = trio.current_time()
            if copy.kind == "unreachable":
                self.health.penalize(name, now, dead=True)
            if copy.full:
                self.health.mark_full(name, now)
                log.warning(kv("replication.node_full", node=name, chunk=chunk_id.hex()))
            if copy.kind != "redirect" or not st.spares:
                break
            self.stats.put_redirects += 1
            name = st.spares.pop(0)
        st.copy_finished()

    def _backoff_s(self, attempt: int) -> float:
        """Jittered exponential backoff before attempt ``attempt + 1``."""
        ceiling = min(self.limits.backoff_max_s, self.limits.backoff_initial_s * 2 ** (attempt - 1))
        return self._rng.uniform(ceiling / 2, ceiling)

    async def _copy_to(self, name: str, chunk_id: bytes, data: bytes, after_index: int,
                       deadline: float, heard: set[str]) -> _Copy:
        """One copy on ``name``, retrying ``overloaded`` with backoff until
        the attempts or the time run out (``name`` joins ``heard`` then)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                remote = await self.remote(name)
                stored, stamp = await self._store_copy(remote, chunk_id, data, after_index)
                return _Copy("acked", stored=stored, stamp=stamp)
            except (_Unreachable, rpc.ConnectionLost, rpc.CallTimeout) as e:
                return _Copy("unreachable", _reason(e))
            except RemoteStoreError as e:
                if e.status != "overloaded":
                    kind = "redirect" if e.status in _REDIRECTED else "refused"
                    return _Copy(kind, _reason(e), full=e.status == "noSpace")
                why = _reason(e)
            except rpc.Overloaded as e:
                why = _reason(e)
            except rpc.RemoteError as e:
                return _Copy("refused", _reason(e))
            except rpc.RpcError as e:  # e.g. a protocol error closing the connection
                return _Copy("unreachable", _reason(e))
            heard.add(name)
            delay = self._backoff_s(attempt)
            if attempt >= self.limits.put_attempts_max or trio.current_time() + delay > deadline:
                return _Copy("refused", f"{why} (after {attempt} attempts)")
            self.stats.put_retries += 1
            await trio.sleep(delay)

    async def _store_copy(self, remote: RemoteStore, chunk_id: bytes, data: bytes,
                          after_index: int) -> tuple[bool, int]:
        """(stored, stamp) of one replica's copy. A large chunk is looked up
        first; when present, a stub that always goes piecewise sends only
        ``putBegin``, which raises the copy's stamp and answers it (should
        the copy vanish meanwhile, the pieces follow on that write)."""
        if self.dedup and len(data) >= self.limits.dedup_bytes_min and await remote.has(chunk_id):
            piecewise = RemoteStore(remote.cap, remote.peer, timeout_s=remote.timeout_s,
                                    piece_bytes=remote.piece_bytes, whole_bytes_max=0)
            copy = await piecewise.put_stamped(chunk_id, data, after_index=after_index)
            if copy.written:
                self.stats.bytes_uploaded += len(data)
            else:
                self.stats.dedup_skips += 1
            return copy.written, copy.stamp
        copy = await remote.put_stamped(chunk_id, data, after_index=after_index)
        self.stats.bytes_uploaded += len(data)
        return copy.written, copy.stamp

    # ---- get ---------------------------------------------------------------

    def read_candidates(self, chunk_id: bytes) -> list[str]:
        """Replica set and the successors past it, slow or dead ones last."""
        extra = max(self.read_extra_replicas, self.limits.spill_replicas_max)
        return self.health.read_order(self.replicas(chunk_id, self.R + extra), trio.current_time())

    async def get(self, chunk_id: bytes) -> bytes:
        """Verified bytes of the chunk from the first candidate that answers
        with them (hedged: module docstring). Raises ChunkUnavailable."""
        chunk_id = check_id(chunk_id)
        replica_set = self.replicas(chunk_id)
        pending = self.read_candidates(chunk_id)
        tried: dict[str, str] = {}
        lacking: list[str] = []
        asked: dict[str, float] = {}  # name -> when it was asked, while unanswered
        self.stats.gets += 1
        send, recv = trio.open_memory_channel(len(pending))
        data, first, hedged = None, pending[0], False
        async with trio.open_nursery() as nursery:
            def ask() -> str:
                name = pending.pop(0)
                asked[name] = trio.current_time()
                nursery.start_soon(self._get_from, name, chunk_id, send)
                return name

            latest = ask()
            while asked:
                hedge_at = asked[latest] + self.health.hedge_delay_s(latest) \
                    if pending and latest in asked else math.inf
                answer = None
                with trio.move_on_at(hedge_at):
                    answer = await recv.receive()
                if answer is None:  # the latest one is slow: ask the next as well
                    self.stats.hedges += 1
                    hedged = True
                    latest = ask()
                    continue
                name, outcome = answer
                del asked[name]
                if isinstance(outcome, bytes):
                    data = outcome
                    if hedged and name != first:
                        self.stats.hedge_wins += 1
                    nursery.cancel_scope.cancel()
                    break
                tried[name] = outcome
                if outcome in _REPAIRABLE and name in replica_set:
                    lacking.append(name)
                if pending:
                    self.stats.get_fallbacks += 1
                    latest = ask()
        self._note_slow_readers(asked)
        if data is None:
            all_not_found = bool(tried) and all(reason == "notFound" for reason in tried.values())
            raise ChunkUnavailable(chunk_id, tried, all_not_found)
        if lacking:
            await self._read_repair(chunk_id, data, lacking)
        return data

    def _note_slow_readers(self, unanswered: dict[str, float]) -> None:
        """Replicas still silent past their hedge delay when another one
        answered: their wait so far is a latency sample (a lower bound), and
        they are read last for a while."""
        now = trio.current_time()
        for name, since in unanswered.items():
            if now - since >= self.health.hedge_delay_s(name):
                self.health.record_latency(name, now - since)
                self.health.penalize(name, now)

    async def _get_from(self, name: str, chunk_id: bytes, send) -> None:
        """Send (name, bytes) or (name, reason) on ``send``; retries
        ``overloaded`` like a put. Cancelled when another replica won."""
        started = trio.current_time()
        attempt = 0
        while True:
            attempt += 1
            try:
                data = await (await self.remote(name)).get(chunk_id)
            except RemoteStoreError as e:
                outcome = e.status
            except rpc.Overloaded:
                outcome = "overloaded"
            except (_Unreachable, rpc.ConnectionLost) as e:
                self.health.penalize(name, trio.current_time(), dead=True)
                outcome = _reason(e)
            except rpc.RpcError as e:
                self.health.penalize(name, trio.current_time())
                outcome = _reason(e)
            else:
                self.health.record_latency(name, trio.current_time() - started)
                send.send_nowait((name, data))
                return
            if outcome == "overloaded" and attempt < self.limits.put_attempts_max:
                await trio.sleep(self._backoff_s(attempt))
                continue
            send.send_nowait((name, outcome))
            return

    async def _read_repair(self, chunk_id: bytes, data: bytes, names: list[str]) -> None:
        if self._repair_nursery is None:
            await self._repair_copies(chunk_id, data, names)
            return
        try:
            self._repair_slots.acquire_nowait()
        except trio.WouldBlock:
            self.stats.read_repairs_skipped += len(names)
            return
        self._repair_nursery.start_soon(self._repair_in_background, chunk_id, data, names)

    async def _repair_in_background(self, chunk_id: bytes, data: bytes, names: list[str]) -> None:
        try:
            await self._repair_copies(chunk_id, data, names)
        finally:
            self._repair_slots.release()

    async def _repair_copies(self, chunk_id: bytes, data: bytes, names: list[str]) -> None:
        async def one(name: str) -> None:
            with trio.move_on_after(self.read_repair_timeout_s):
                try:
                    stub = await self.remote(name)
                    await stub.put(chunk_id, data, timeout_s=self.read_repair_timeout_s)
                    self.stats.read_repairs += 1
                    log.info("read repair: wrote chunk %s back to %s", chunk_id.hex(), name)
                    return
                except (_Unreachable, RemoteStoreError, rpc.RpcError) as e:
                    log.warning("read repair of %s on %s failed: %s", chunk_id.hex(), name, _reason(e))
            self.stats.read_repair_failures += 1

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(one, name)
