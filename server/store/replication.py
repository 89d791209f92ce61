"""Replicated chunk I/O: the client side of the data path (DESIGN "Data path").

``ReplicatedStore.put`` sends a chunk to its replica set (owner + R-1
successors from the caller's ring view) concurrently and returns once enough
replicas acknowledged a durable (fsynced) copy; ``get`` reads from the owner,
falling through the successors, verifies the bytes against the id and
writes them back to replicas of the set that lacked the chunk or held a
corrupt copy (read repair).

Write quorum. ``W=None`` (the default) means "every live replica, and at
least 2" (at most the replica set's size): a replica that cannot be reached
within the deadline (connection refused or lost, call timeout) is not live
and does not count against the write, but one that answers with a refusal
(no space, I/O error, ...) does, since it is live and holds no copy. With an
explicit ``W``, the put succeeds when at least W replicas acknowledged.
Either way every replica's call runs to its answer or deadline before
``put`` returns, so the caller knows exactly which copies exist; the
missing ones are restored by repair. A failed quorum raises
``WriteQuorumNotMet`` naming the replicas that acknowledged and why the
others failed.

Dedup: before uploading, each replica is asked ``has``; a replica that
already holds the chunk counts as an acknowledgement (its copy was fsynced
when first written) and is not sent the bytes.

Read repair is awaited by ``get`` under its own short deadline
(``read_repair_timeout_s``), or, when a ``repair_nursery`` is given, runs
there in the background with at most ``repairs_in_flight_max`` at once
(beyond that it is skipped: anti-entropy repair catches it later). A failed
read repair is logged and counted, never raised: the read itself succeeded.

Every network call has a deadline: ``timeout_s`` per RPC, and the pool's
connect timeout for dialing."""

from __future__ import annotations

import dataclasses
import errno as _errno
import logging
from collections.abc import Callable, Mapping

import trio

import rpc

from .errors import HashMismatch, StoreError
from .keyrange import check_id, chunk_id_of, ring_key
from .service import RemoteStore, RemoteStoreError, store_capnp

log = logging.getLogger("chordfs.store.replication")

# Answers that prove the replica is alive but has no (good) copy.
_REPAIRABLE = frozenset({"notFound", "corrupt"})


class ReplicationError(StoreError):
    """Base of the errors of replicated chunk I/O."""

    errno = _errno.EIO


class WriteQuorumNotMet(ReplicationError):
    """Fewer replicas than required acknowledged a durable copy. Replicas in
    ``acked`` do hold the chunk; it is garbage unless a manifest refers to it."""

    def __init__(self, chunk_id: bytes, needed: int, acked: tuple[str, ...], failed: dict[str, str]):
        super().__init__(chunk_id, needed, acked, failed)
        self.chunk_id, self.needed, self.acked, self.failed = chunk_id, needed, acked, failed

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


@dataclasses.dataclass
class ReplicationStats:
    puts: int = 0
    bytes_uploaded: int = 0
    dedup_skips: int = 0
    gets: int = 0
    get_fallbacks: int = 0
    read_repairs: int = 0
    read_repair_failures: int = 0
    read_repairs_skipped: int = 0


class _Unreachable(Exception):
    """Internal: the replica did not answer (no connection or no reply in time)."""


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ReplicatedStore:
    """Chunk put/get across the replica sets of a ring view.

    ``ring_view``: an object with ``replicas(key, R)`` (a ringmath.Ring) or a
    zero-argument callable returning one (so the view can change between
    calls). ``addr_of``: node name -> "host:port", a Mapping or a callable.
    ``pool``: anything with ``await bootstrap(addr, interface, timeout_s=)``
    (rpc.pool.Pool)."""

    def __init__(self, pool, ring_view, addr_of: Mapping[str, str] | Callable[[str], str], R: int = 3,
                 W: int | None = None, timeout_s: float = 10.0, *, read_extra_replicas: int = 1,
                 dedup: bool = True, read_repair_timeout_s: float = 2.0, repair_nursery=None,
                 repairs_in_flight_max: int = 16):
        if R < 1 or (W is not None and not 1 <= W <= R) or timeout_s <= 0:
            raise ValueError("need R >= 1, 1 <= W <= R and timeout_s > 0")
        self._pool = pool
        self._ring_view = ring_view
        self._addr_of = addr_of
        self.R, self.W, self.timeout_s = R, W, timeout_s
        # With W None: the fewest fsynced copies a put needs (the cluster's
        # write_quorum_min), below which "every live replica" is not enough.
        self.W_min = 2
        # Extra successors tried on reads only: after a ring change the old
        # replica set still holds the chunk until repair moved it.
        self.read_extra_replicas = read_extra_replicas
        self.dedup = dedup
        self.read_repair_timeout_s = read_repair_timeout_s
        self._repair_nursery = repair_nursery
        self._repair_slots = trio.Semaphore(repairs_in_flight_max)
        self.stats = ReplicationStats()

    # ---- placement and stubs --------------------------------------------------

    def replicas(self, chunk_id: bytes, count: int | None = None) -> tuple[str, ...]:
        ring = self._ring_view() if callable(self._ring_view) else self._ring_view
        return tuple(ring.replicas(ring_key(chunk_id), count or self.R))

    def addr(self, name: str) -> str:
        return self._addr_of(name) if callable(self._addr_of) else self._addr_of[name]

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

    async def put(self, chunk_id: bytes, data: bytes) -> PutResult:
        """Store ``data`` on the replica set; see the module docstring for W.
        Raises HashMismatch (nothing sent) or WriteQuorumNotMet."""
        chunk_id = check_id(chunk_id)
        actual = chunk_id_of(data)
        if actual != chunk_id:
            raise HashMismatch(chunk_id, actual)
        names = self.replicas(chunk_id)
        outcomes: dict[str, tuple[str, str]] = {}
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(self._put_one, name, chunk_id, data, outcomes)
        self.stats.puts += 1
        acked = tuple(n for n in names if outcomes[n][0] in ("stored", "present"))
        uploaded = tuple(n for n in names if outcomes[n][0] == "stored")
        failed = {n: outcomes[n][1] for n in names if n not in acked}
        refused = [n for n in names if outcomes[n][0] == "refused"]
        needed = self.W if self.W is not None else min(self.W_min, len(names))
        if len(acked) < needed or (self.W is None and refused):
            if self.W is None:
                needed = max(needed, len(acked) + len(refused))
            raise WriteQuorumNotMet(chunk_id, needed, acked, failed)
        return PutResult(acked, uploaded, failed)

    async def _put_one(self, name: str, chunk_id: bytes, data: bytes,
                       outcomes: dict[str, tuple[str, str]]) -> None:
        """outcomes[name] = (kind, reason): kind is stored, present,
        refused (answered without storing) or unreachable."""
        try:
            remote = await self.remote(name)
            if self.dedup and await remote.has(chunk_id):
                self.stats.dedup_skips += 1
                outcomes[name] = ("present", "")
                return
            stored = await remote.put(chunk_id, data)
            self.stats.bytes_uploaded += len(data)
            outcomes[name] = ("stored" if stored else "present", "")
        except (_Unreachable, rpc.ConnectionLost, rpc.CallTimeout) as e:
            outcomes[name] = ("unreachable", _reason(e))
        except (RemoteStoreError, rpc.RemoteError) as e:
            outcomes[name] = ("refused", _reason(e))
        except rpc.RpcError as e:  # e.g. a protocol error closing the connection
            outcomes[name] = ("unreachable", _reason(e))

    # ---- get ---------------------------------------------------------------

    async def get(self, chunk_id: bytes) -> bytes:
        """Verified bytes of the chunk from the first replica that has them,
        in ring order. Raises ChunkUnavailable."""
        chunk_id = check_id(chunk_id)
        replica_set = self.replicas(chunk_id)
        candidates = self.replicas(chunk_id, self.R + self.read_extra_replicas)
        tried: dict[str, str] = {}
        lacking: list[str] = []
        self.stats.gets += 1
        for i, name in enumerate(candidates):
            if i:
                self.stats.get_fallbacks += 1
            try:
                data = await (await self.remote(name)).get(chunk_id)
            except RemoteStoreError as e:
                tried[name] = e.status
                if e.status in _REPAIRABLE and name in replica_set:
                    lacking.append(name)
                continue
            except (_Unreachable, rpc.RpcError) as e:
                tried[name] = _reason(e)
                continue
            if lacking:
                await self._read_repair(chunk_id, data, lacking)
            return data
        all_not_found = bool(tried) and all(reason == "notFound" for reason in tried.values())
        raise ChunkUnavailable(chunk_id, tried, all_not_found)

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
