"""The chunk store over RPC: ``ChunkStoreServer`` serves an AsyncChunkStore
as ``store.capnp``'s ChunkStore interface, ``RemoteStore`` is the typed client
stub replication and repair call.

Errors are translated exactly once on each side: the server maps store
errors to a ``Status`` in the result struct (see store.capnp for why a status
and not a wire exception), and ``RemoteStore`` maps a non-ok status back to
``RemoteStoreError`` carrying that status and the errno a POSIX caller would
see. Transport problems stay ``rpc.RpcError``.

Bounds (``ServiceLimits``): bytes of chunk data held by running calls across
all connections of one service, open piecewise writes per connection and per
service, ids per call, bytes per piece. A call that would cross a bound is
refused with ``overloaded`` at once rather than queued: its payload is
already in memory, and waiting would keep it there.

Open writes belong to the connection's server object. A write idle for
``write_idle_s`` is aborted at the next ``putBegin`` on that connection, and
all of them are aborted when the connection's server object is collected,
so a client that vanishes mid-write leaves no temp file and no reserved
space behind (a crash leaves temp files that the next store open removes).

Stamps (chunkstore's docstring, server/meta/blocks.py): a put, whole or
piecewise, stamps the copy with max(its old stamp, the caller's
``afterIndex``, this node's applied metadata index from ``applied_index()``)
and replies the stamp; the piecewise path takes the applied index again at
``putCommit``. A ``putBegin`` that finds the chunk present raises its stamp
the same way (it is a put of a present chunk). ``delete`` with a mark
deletes only a copy stamped below it, atomically against puts of that id.

Test-only fault injection: with the environment variable
``CHORDFS_FAULT_OVERLOAD_EVERY=N`` (read once when the service is built,
and logged as a warning), every Nth put or putBegin is answered
``overloaded`` before anything happens. End-to-end tests use it to prove
that writers ride through a busy replica; never set it in production."""

from __future__ import annotations

import dataclasses
import errno as _errno
import functools
import itertools
import logging
import os
import weakref
from collections.abc import Callable, Mapping

import trio

import rpc
from rpc import schema

from .aiostore import AsyncChunkStore
from .chunkstore import DeleteOutcome, PutResult
from .errors import (BadChunkId, ChunkNotFound, ChunkTooLarge, CorruptChunk, HashMismatch, NoSpace,
                     StoreError)
from .keyrange import ID_BYTES, KeyRange, check_id, chunk_id_of
from .streams import ChunkWriter
from .summary import PARTS_MAX, RangeSummary

log = logging.getLogger("chordfs.store.service")
store_capnp = schema.load("store")

MIB = 1 << 20
FAULT_OVERLOAD_ENV = "CHORDFS_FAULT_OVERLOAD_EVERY"


@dataclasses.dataclass(frozen=True)
class ServiceLimits:
    bytes_buffered_max: int = 256 * MIB
    piece_bytes_max: int = 4 * MIB
    writes_open_per_conn_max: int = 16
    writes_open_max: int = 256
    write_idle_s: float = 60.0
    ids_per_call_max: int = 65536

    def __post_init__(self):
        for name in ("bytes_buffered_max", "piece_bytes_max", "writes_open_per_conn_max",
                     "writes_open_max", "ids_per_call_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.write_idle_s <= 0:
            raise ValueError("write_idle_s must be positive")


class _Refused(Exception):
    """A request this service declines; becomes ``status`` in the reply."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def _fault_overload_every(environ) -> int:
    raw = environ.get(FAULT_OVERLOAD_ENV, "")
    if not raw:
        return 0
    every = int(raw)
    if every < 1:
        raise ValueError(f"{FAULT_OVERLOAD_ENV} must be a positive integer, got {raw!r}")
    log.warning("TEST-ONLY FAULT INJECTION: %s=%d, every %dth put or putBegin on this node "
                "is refused with 'overloaded'", FAULT_OVERLOAD_ENV, every, every)
    return every


def _status_of(exc: BaseException) -> str | None:
    """Wire status of an error raised by the store, or None if it is a bug."""
    table = ((ChunkNotFound, "notFound"), (CorruptChunk, "corrupt"),
             (HashMismatch, "hashMismatch"), (NoSpace, "noSpace"),
             (ChunkTooLarge, "tooLarge"), (BadChunkId, "badRequest"),
             (StoreError, "ioError"), (OSError, "ioError"), (ValueError, "badRequest"))
    for cls, status in table:
        if isinstance(exc, cls):
            return status
    return None


def _replies_with_status(method):
    """Fill ``status``/``message`` of the reply from the method's outcome;
    anything unexpected propagates and becomes a wire exception (a bug)."""

    @functools.wraps(method)
    async def wrapper(self, params, results):
        try:
            await method(self, params, results)
            results.status = "ok"
        except _Refused as e:
            results.status, results.message = e.status, str(e)
        except (StoreError, OSError, ValueError) as e:
            status = _status_of(e)
            results.status, results.message = status, f"{type(e).__name__}: {e}"
            if status == "ioError":
                log.warning("chunk store I/O error: %r", e)
    return wrapper


class StoreService:
    """What every connection's server shares: the store, the limits and the
    byte and write budgets. ``server`` is the bootstrap factory for
    ``rpc.serve_tcp``."""

    def __init__(self, astore: AsyncChunkStore, limits: ServiceLimits = ServiceLimits(), *,
                 applied_index: Callable[[], int] = lambda: 0,
                 environ: Mapping[str, str] = os.environ):
        self.astore = astore
        self.limits = limits
        self.applied_index = applied_index
        self.bytes_buffered = 0
        self.writes_open = 0
        self.refused_overloaded = 0
        self.puts_seen = 0
        self.faults_injected = 0
        self.overload_every = _fault_overload_every(environ)

    def stamp_for(self, after_index: int) -> int:
        """The least stamp a put asked for ``after_index`` may get here."""
        return max(after_index, self.applied_index())

    def injected_overload(self) -> None:
        """Count a put; refuse it when the fault hook says so (test only)."""
        self.puts_seen += 1
        if self.overload_every and self.puts_seen % self.overload_every == 0:
            self.faults_injected += 1
            self.refused_overloaded += 1
            raise _Refused("overloaded", f"injected fault: every {self.overload_every}th put "
                           f"is refused ({FAULT_OVERLOAD_ENV})")

    def server(self) -> ChunkStoreServer:
        return ChunkStoreServer(self)

    async def run(self, fn, *args):
        """Run a blocking store call in a worker thread under the store's limiter."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.astore.thread_limiter)

    def take_bytes(self, size: int) -> None:
        if self.bytes_buffered + size > self.limits.bytes_buffered_max:
            self.refused_overloaded += 1
            raise _Refused("overloaded", f"{self.bytes_buffered} bytes of chunk data in flight; "
                           f"{size} more would exceed {self.limits.bytes_buffered_max}")
        self.bytes_buffered += size

    def give_bytes(self, size: int) -> None:
        self.bytes_buffered -= size
        assert self.bytes_buffered >= 0


@dataclasses.dataclass
class _Write:
    writer: ChunkWriter
    size_bytes: int
    last_used_s: float
    received_bytes: int = 0
    busy: bool = False


def _abort_writes(service: StoreService, writes: dict[int, _Write]) -> None:
    # Runs from weakref.finalize too: plain synchronous cleanup only.
    for write in writes.values():
        write.writer.abort()
        service.writes_open -= 1
    writes.clear()


def _read(store, chunk_id: bytes, offset: int, length: int, piece_bytes_max: int):
    """(total size, bytes) for a get; the whole-chunk path is verified by the
    store (and quarantines a corrupt copy), a partial read is raw."""
    try:
        fd = os.open(store.chunk_path(chunk_id), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ChunkNotFound(chunk_id) from None
    try:
        size = os.fstat(fd).st_size
        if offset == 0 and (length == 0 or length >= size):
            return size, store.get(chunk_id)
        if offset > size:
            raise _Refused("badRequest", f"offset {offset} is past the chunk's {size} bytes")
        want = size - offset if length == 0 else min(length, size - offset)
        if want > piece_bytes_max:
            raise _Refused("tooLarge", f"piece of {want} bytes exceeds {piece_bytes_max}")
        return size, os.pread(fd, want, offset)
    finally:
        os.close(fd)


class ChunkStoreServer(rpc.Server, interfaces=[store_capnp.ChunkStore]):
    """One connection's view of the store. No method is inline: every one
    touches the disk through a worker thread."""

    def __init__(self, service: StoreService):
        self._svc = service
        self._writes: dict[int, _Write] = {}
        self._write_ids = itertools.count(1)
        self._opening = 0  # begins between their checks and their entry in _writes
        weakref.finalize(self, _abort_writes, service, self._writes)

    # ---- whole chunks ------------------------------------------------------

    @_replies_with_status
    async def has(self, params, results):
        if len(params.ids) > self._svc.limits.ids_per_call_max:
            raise _Refused("badRequest", f"{len(params.ids)} ids exceed {self._svc.limits.ids_per_call_max}")
        ids = [check_id(i) for i in params.ids]
        store = self._svc.astore.store
        present = await self._svc.run(lambda: [store.has(i) for i in ids])
        out = results.init("present", len(present))
        for i, flag in enumerate(present):
            out[i] = flag

    @_replies_with_status
    async def put(self, params, results):
        chunk_id = check_id(params.id)
        data = params.data
        self._svc.injected_overload()
        self._svc.take_bytes(len(data))
        try:
            stamp = self._svc.stamp_for(params.afterIndex)
            results.stored, results.stamp = await self._svc.astore.put(chunk_id, data, stamp)
        finally:
            self._svc.give_bytes(len(data))

    @_replies_with_status
    async def get(self, params, results):
        chunk_id = check_id(params.id)
        svc = self._svc
        # A read from offset 0 may turn out to be the whole chunk (the size
        # is learnt on disk); any other read is one piece at most.
        budget = svc.astore.store.chunk_bytes_max if params.offset == 0 else svc.limits.piece_bytes_max
        svc.take_bytes(budget)
        try:
            size, data = await svc.run(_read, svc.astore.store, chunk_id, params.offset,
                                       params.length, svc.limits.piece_bytes_max)
            results.sizeBytes = size
            results.data = data
        except ChunkTooLarge as e:
            results.sizeBytes = e.size_bytes  # tells the caller to read in pieces
            raise
        finally:
            svc.give_bytes(budget)

    @_replies_with_status
    async def verify(self, params, results):
        results.sizeBytes = await self._svc.astore.verify(check_id(params.id))

    @_replies_with_status
    async def delete(self, params, results):
        outcome = await self._svc.astore.delete_below(check_id(params.id), params.mark)
        results.existed = outcome != "absent"
        results.kept = outcome == "kept"

    @_replies_with_status
    async def stats(self, params, results):
        st = await self._svc.astore.stats()
        out = results.init("stats")
        out.chunkCount, out.usedBytes = st.chunk_count, st.used_bytes
        out.freeBytes, out.reserveBytes = st.free_bytes, st.reserve_bytes
        out.quarantinedCount = st.quarantined_count
        out.chunkBytesMax = self._svc.astore.store.chunk_bytes_max
        out.pieceBytesMax = self._svc.limits.piece_bytes_max
        out.idsPerCallMax = self._svc.limits.ids_per_call_max

    # ---- piecewise writes -----------------------------------------------------

    @_replies_with_status
    async def put_begin(self, params, results):
        chunk_id, size = check_id(params.id), params.sizeBytes
        svc = self._svc
        if size > svc.astore.store.chunk_bytes_max:
            raise ChunkTooLarge(size, svc.astore.store.chunk_bytes_max)
        svc.injected_overload()
        self._reap_idle()
        stamp = svc.stamp_for(params.afterIndex)
        present_stamp = await svc.astore.raise_stamp(chunk_id, stamp)
        if present_stamp is not None:
            results.present, results.stamp = True, present_stamp
            return
        if len(self._writes) + self._opening >= svc.limits.writes_open_per_conn_max or \
                svc.writes_open >= svc.limits.writes_open_max:
            svc.refused_overloaded += 1
            raise _Refused("overloaded", "too many open piecewise writes")
        # Counted before the await so concurrent begins see this one.
        svc.writes_open += 1
        self._opening += 1
        try:
            writer = await svc.run(svc.astore.store.open_writer, chunk_id, stamp)
        except BaseException:
            svc.writes_open -= 1
            raise
        finally:
            self._opening -= 1
        write_id = next(self._write_ids)
        self._writes[write_id] = _Write(writer, size, trio.current_time())
        results.writeId = write_id

    @_replies_with_status
    async def put_piece(self, params, results):
        write = self._write_for(params.writeId)
        data = params.data
        problem = None
        if params.offset != write.received_bytes:
            problem = _Refused("badRequest", f"piece at offset {params.offset}, expected "
                               f"{write.received_bytes}")
        elif len(data) > self._svc.limits.piece_bytes_max:
            problem = _Refused("tooLarge", f"piece of {len(data)} bytes exceeds "
                               f"{self._svc.limits.piece_bytes_max}")
        elif write.received_bytes + len(data) > write.size_bytes:
            problem = _Refused("badRequest", f"pieces exceed the announced {write.size_bytes} bytes")
        if problem is not None:
            await self._drop(params.writeId)
            raise problem
        self._svc.take_bytes(len(data))
        write.busy = True
        try:
            await self._svc.run(write.writer.write, data)
            write.received_bytes += len(data)
        except BaseException:
            await self._drop(params.writeId)  # the writer aborted itself
            raise
        finally:
            write.busy = False
            write.last_used_s = trio.current_time()
            self._svc.give_bytes(len(data))

    @_replies_with_status
    async def put_commit(self, params, results):
        write = self._write_for(params.writeId)
        write.busy = True
        try:
            if write.received_bytes != write.size_bytes:
                raise _Refused("badRequest", f"commit after {write.received_bytes} of "
                               f"{write.size_bytes} bytes")
            # The node may have applied more since putBegin: the copy is
            # stamped at least as of now, like a whole put.
            write.writer.stamp = self._svc.stamp_for(write.writer.stamp)
            results.stored, results.stamp = await self._svc.run(write.writer.commit)
        finally:
            await self._drop(params.writeId)

    async def put_abort(self, params, results):
        write = self._writes.get(params.writeId)
        if write is not None and not write.busy:
            await self._drop(params.writeId)

    def _write_for(self, write_id: int) -> _Write:
        write = self._writes.get(write_id)
        if write is None:
            raise _Refused("badRequest", f"no open write {write_id} on this connection")
        if write.busy:
            raise _Refused("badRequest", f"write {write_id} already has a call running")
        return write

    async def _drop(self, write_id: int) -> None:
        write = self._writes.pop(write_id, None)
        if write is None:
            return
        self._svc.writes_open -= 1
        if not write.writer.finished:
            with trio.move_on_after(10, shield=True):  # an unlink; bounded like aiostore's
                await self._svc.run(write.writer.abort)

    def _reap_idle(self) -> None:
        now = trio.current_time()
        stale = {k: w for k, w in self._writes.items()
                 if not w.busy and now - w.last_used_s > self._svc.limits.write_idle_s}
        for write_id in stale:
            del self._writes[write_id]
        if stale:
            log.info("aborting %d idle piecewise writes", len(stale))
            _abort_writes(self._svc, stale)

    # ---- anti-entropy -----------------------------------------------------------

    @_replies_with_status
    async def range_summaries(self, params, results):
        if not 1 <= params.parts <= PARTS_MAX:
            raise _Refused("badRequest", f"parts must be in [1, {PARTS_MAX}]")
        found = await self._svc.astore.range_summaries(KeyRange(params.start, params.end), params.parts)
        out = results.init("summaries", len(found))
        for slot, s in zip(out, found):
            slot.start, slot.end = s.key_range.start, s.key_range.end
            slot.count, slot.digest = s.count, s.digest

    @_replies_with_status
    async def list_ids(self, params, results):
        if not 1 <= params.max <= self._svc.limits.ids_per_call_max:
            raise _Refused("badRequest", f"max must be in [1, {self._svc.limits.ids_per_call_max}]")
        after = check_id(params.afterId) if len(params.afterId) else None
        ids = await self._svc.astore.list_ids(KeyRange(params.start, params.end), after, params.max)
        out = results.init("ids", len(ids))
        for i, chunk_id in enumerate(ids):
            out[i] = chunk_id


# ---- client stub -----------------------------------------------------------------

_ERRNO = {"notFound": _errno.ENOENT, "corrupt": _errno.EIO, "hashMismatch": _errno.EINVAL,
          "noSpace": _errno.ENOSPC, "tooLarge": _errno.EFBIG, "badRequest": _errno.EINVAL,
          "overloaded": _errno.EAGAIN, "ioError": _errno.EIO}


class RemoteStoreError(StoreError):
    """A replica answered with a non-ok status (store.capnp's Status)."""

    def __init__(self, status: str, message: str, peer: str = ""):
        super().__init__(f"{peer or 'replica'}: {status}: {message}")
        self.status = status
        self.peer = peer
        self.errno = _ERRNO.get(status, _errno.EIO)


def _check(reply, peer: str):
    status = str(reply.status)
    if status != "ok":
        raise RemoteStoreError(status, reply.message, peer)
    return reply


class RemoteStore:
    """Typed calls on one replica's ChunkStore capability; every call has a
    deadline (``timeout_s`` per call, default the stub's). Offers the
    ``range_summaries``/``list_ids`` pair ``summary.reconcile`` needs."""

    def __init__(self, cap: rpc.Capability, peer: str = "", *, timeout_s: float = 10.0,
                 piece_bytes: int = 4 * MIB, whole_bytes_max: int = 8 * MIB):
        self.cap, self.peer, self.timeout_s = cap, peer, timeout_s
        self.piece_bytes = piece_bytes
        # Above this a put goes piecewise so no frame nears frame_bytes_max.
        self.whole_bytes_max = whole_bytes_max

    def _t(self, timeout_s):
        return self.timeout_s if timeout_s is None else timeout_s

    async def has_many(self, ids: list[bytes], *, timeout_s=None) -> list[bool]:
        reply = _check(await self.cap.has(ids=list(ids), timeout_s=self._t(timeout_s)), self.peer)
        return list(reply.present)

    async def has(self, chunk_id: bytes, *, timeout_s=None) -> bool:
        return (await self.has_many([chunk_id], timeout_s=timeout_s))[0]

    async def put(self, chunk_id: bytes, data: bytes, *, after_index: int = 0,
                  timeout_s=None) -> bool:
        """True if newly stored there, False if it already was; both durable."""
        return (await self.put_stamped(chunk_id, data, after_index=after_index,
                                       timeout_s=timeout_s)).written

    async def put_stamped(self, chunk_id: bytes, data: bytes, *, after_index: int = 0,
                          timeout_s=None) -> PutResult:
        """(newly stored, the copy's stamp there): the stamp is at least
        ``after_index`` and that node's applied metadata index."""
        t = self._t(timeout_s)
        if len(data) <= self.whole_bytes_max:
            reply = _check(await self.cap.put(id=chunk_id, data=data, afterIndex=after_index,
                                              timeout_s=t), self.peer)
            return PutResult(reply.stored, reply.stamp)
        return await self._put_pieces(chunk_id, data, after_index, t)

    async def _put_pieces(self, chunk_id: bytes, data: bytes, after_index: int,
                          t: float) -> PutResult:
        begun = _check(await self.cap.putBegin(id=chunk_id, sizeBytes=len(data),
                                               afterIndex=after_index, timeout_s=t), self.peer)
        if begun.present:
            return PutResult(False, begun.stamp)
        write_id = begun.writeId
        view = memoryview(data)
        try:
            for offset in range(0, len(data), self.piece_bytes):
                piece = bytes(view[offset:offset + self.piece_bytes])
                _check(await self.cap.putPiece(writeId=write_id, offset=offset, data=piece,
                                               timeout_s=t), self.peer)
            reply = await self.cap.putCommit(writeId=write_id, timeout_s=t)
            write_id = 0
            _check(reply, self.peer)
            return PutResult(reply.stored, reply.stamp)
        finally:
            if write_id:
                with trio.move_on_after(t, shield=True):
                    try:
                        await self.cap.putAbort(writeId=write_id, timeout_s=t)
                    except rpc.RpcError:
                        pass  # the server reaps idle writes anyway

    async def get(self, chunk_id: bytes, *, timeout_s=None) -> bytes:
        """The chunk's bytes, verified against its id here (RemoteStoreError
        ``corrupt`` otherwise, after asking the replica to re-verify)."""
        t = self._t(timeout_s)
        reply = await self.cap.get(id=chunk_id, offset=0, length=0, timeout_s=t)
        if str(reply.status) == "tooLarge" and reply.sizeBytes:
            data = await self._get_pieces(chunk_id, reply.sizeBytes, t)
        else:
            data = bytes(_check(reply, self.peer).data)
        if chunk_id_of(data) != chunk_id:
            # Partial reads are not verified remotely: have the replica check
            # (and quarantine) its copy so a repair can replace it.
            try:
                await self.verify(chunk_id, timeout_s=t)
            except RemoteStoreError:
                pass
            raise RemoteStoreError("corrupt", "received bytes do not hash to the id", self.peer)
        return data

    async def _get_pieces(self, chunk_id: bytes, size: int, t: float) -> bytes:
        out = bytearray()
        while len(out) < size:
            reply = _check(await self.cap.get(id=chunk_id, offset=len(out), length=self.piece_bytes,
                                              timeout_s=t), self.peer)
            if not reply.data or reply.sizeBytes != size:
                raise RemoteStoreError("corrupt", "chunk changed size while being read", self.peer)
            out += reply.data
        return bytes(out)

    async def verify(self, chunk_id: bytes, *, timeout_s=None) -> int:
        return _check(await self.cap.verify(id=chunk_id, timeout_s=self._t(timeout_s)), self.peer).sizeBytes

    async def raise_stamp(self, chunk_id: bytes, after_index: int, *,
                          timeout_s=None) -> int | None:
        """Raise that node's copy's stamp to at least ``after_index`` (and
        its applied index), as a put of a present chunk does; the stamp
        afterwards, or None when it holds no copy. This is a putBegin that
        sends no bytes (the schema has no other call answering stamps)."""
        t = self._t(timeout_s)
        begun = _check(await self.cap.putBegin(id=chunk_id, sizeBytes=0, afterIndex=after_index,
                                               timeout_s=t), self.peer)
        if begun.present:
            return begun.stamp
        with trio.move_on_after(t, shield=True):
            try:
                await self.cap.putAbort(writeId=begun.writeId, timeout_s=t)
            except rpc.RpcError:
                pass  # the server reaps idle writes anyway
        return None

    async def stamp_of(self, chunk_id: bytes, *, timeout_s=None) -> int | None:
        """The stamp of that node's copy (None: no copy), raised to that
        node's applied index first: more protection, never less."""
        return await self.raise_stamp(chunk_id, 0, timeout_s=timeout_s)

    async def delete(self, chunk_id: bytes, *, timeout_s=None) -> bool:
        """Delete that node's copy whatever its stamp; True if it had one."""
        return await self.delete_below(chunk_id, 0, timeout_s=timeout_s) != "absent"

    async def delete_below(self, chunk_id: bytes, mark: int, *, timeout_s=None) -> DeleteOutcome:
        """Delete that node's copy if stamped below ``mark`` (0: any):
        "deleted", "kept" (a copy stamped at or above mark stays) or "absent"."""
        reply = _check(await self.cap.delete(id=chunk_id, mark=mark, timeout_s=self._t(timeout_s)),
                       self.peer)
        if reply.kept:
            return "kept"
        return "deleted" if reply.existed else "absent"

    async def stats(self, *, timeout_s=None) -> dict:
        """store.capnp's Stats as a dict (camelCase keys, as on the wire)."""
        return _check(await self.cap.stats(timeout_s=self._t(timeout_s)), self.peer).stats.to_dict()

    async def range_summaries(self, key_range: KeyRange, parts: int = 1) -> list[RangeSummary]:
        reply = _check(await self.cap.rangeSummaries(start=key_range.start, end=key_range.end,
                                                     parts=parts, timeout_s=self.timeout_s), self.peer)
        return [RangeSummary(KeyRange(s.start, s.end), s.count, bytes(s.digest)) for s in reply.summaries]

    async def list_ids(self, key_range: KeyRange | None = None, after_id: bytes | None = None,
                       ids_max: int = 1024) -> list[bytes]:
        key_range = key_range or KeyRange.full()
        reply = _check(await self.cap.listIds(start=key_range.start, end=key_range.end,
                                              afterId=after_id or b"", max=ids_max,
                                              timeout_s=self.timeout_s), self.peer)
        ids = [bytes(i) for i in reply.ids]
        assert all(len(i) == ID_BYTES for i in ids)
        return ids
