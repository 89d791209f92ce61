"""File content as this mount sees it: verified chunk reads through a
bounded cache (``ChunkCache``, ``ChunkReader``), and per open regular file
the committed manifest plus writes not yet committed (``FileData``).

Chunks are immutable and named by their xxh3-128 hash, so a cached chunk is
never stale: the cache is an LRU bounded by bytes, filled only with chunks
verified against their id (we trust no replica); concurrent readers of the
same missing chunk share one fetch.

Layers, newest first, consulted per chunk index by reads and by the
read-modify-write of a partial chunk write:
  ``dirty``      bytearrays being written (at most ``DIRTY_CHUNKS_MAX``)
  ``uploading``  immutable snapshots being hashed and stored (at most
                 ``UPLOADS_INFLIGHT_MAX``: writers wait, so memory is bounded)
  ``pending``    stored chunks not yet in a CommitWrite
  ``base``/``inline``  the manifest as of the last load or commit
A missing index is a hole; bytes of a chunk past its length read as zeros.

Order of work for flush/fsync/close (``flush``): every dirty chunk is
snapshotted, hashed (xxh3-128), skipped if the backend has it, stored
(``put_chunks``, durable) → then one CommitWrite with the new refs and size
→ only then the caller's close/fsync returns. Files of at most
``INLINE_BYTES_MAX`` (and at most one chunk) are committed inline instead:
no chunk, one metadata command; this is most files in a source tree or a
git repository.

Every mutation (write, flush, truncate, reload) holds ``lock``, so a commit
never races a write that would build on a layer it is replacing. Uploads run
in the mount's service nursery and never raise: their failure is kept in
``error``, the data goes back to ``dirty``, and the next flush reports EIO.
"""

from __future__ import annotations

import collections
import logging
import time

import trio

from rpc.logfmt import kv
from server.meta.types import (INLINE_BYTES_MAX, Attr, ChunkRef, CommitWrite,
                               SetAttr)

from .backend import Backend, ChunkCorrupt, chunk_id_of
from .errors import check

log = logging.getLogger("chordfs.fuse.data")

DIRTY_CHUNKS_MAX = 2
UPLOADS_INFLIGHT_MAX = 4
# Refs uploaded but uncommitted; a long streaming write commits every so
# often so one CommitWrite (one Raft entry) stays small.
PENDING_REFS_MAX = 64


CACHE_BYTES_DEFAULT = 256 << 20


class ChunkCache:
    """LRU of chunk id -> bytes, at most ``capacity_bytes`` in total."""

    def __init__(self, capacity_bytes: int = CACHE_BYTES_DEFAULT) -> None:
        assert capacity_bytes >= 0
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self._items: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __contains__(self, chunk_id: bytes) -> bool:
        return chunk_id in self._items

    def get(self, chunk_id: bytes) -> bytes | None:
        data = self._items.get(chunk_id)
        if data is None:
            self.misses += 1
            return None
        self._items.move_to_end(chunk_id)
        self.hits += 1
        return data

    def put(self, chunk_id: bytes, data: bytes) -> None:
        if len(data) > self.capacity_bytes or chunk_id in self._items:
            return
        self._items[chunk_id] = data
        self.used_bytes += len(data)
        while self.used_bytes > self.capacity_bytes:
            _, old = self._items.popitem(last=False)
            self.used_bytes -= len(old)
        assert self.used_bytes >= 0


class ChunkReader:
    """get_chunk through the cache, verified, one fetch per chunk at a time."""

    def __init__(self, backend: Backend, cache: ChunkCache) -> None:
        self.backend = backend
        self.cache = cache
        self._fetching: dict[bytes, trio.Event] = {}

    async def get(self, chunk_id: bytes) -> bytes:
        while True:
            data = self.cache.get(chunk_id)
            if data is not None:
                return data
            pending = self._fetching.get(chunk_id)
            if pending is None:
                break
            await pending.wait()
            if chunk_id not in self._fetching and self.cache.get(chunk_id) is None:
                # The fetch we waited on failed (or the chunk does not fit
                # the cache): fetch ourselves rather than loop.
                return await self._fetch(chunk_id)
        done = trio.Event()
        self._fetching[chunk_id] = done
        try:
            return await self._fetch(chunk_id)
        finally:
            del self._fetching[chunk_id]
            done.set()

    async def _fetch(self, chunk_id: bytes) -> bytes:
        data = await self.backend.get_chunk(chunk_id)
        actual = chunk_id_of(data)
        if actual != chunk_id:
            log.error(kv("chunk_hash_mismatch", chunk=chunk_id.hex(), actual=actual.hex()))
            raise ChunkCorrupt(chunk_id.hex())
        self.cache.put(chunk_id, data)
        return data


class FileData:
    def __init__(self, ino: int, backend: Backend, reader: ChunkReader,
                 nursery: trio.Nursery) -> None:
        self.ino = ino
        self.backend = backend
        self.reader = reader
        self.nursery = nursery
        self.lock = trio.Lock()
        self.chunk_bytes = 0
        self.attr: Attr | None = None
        self.size = 0
        self.committed_size = 0
        self.mtime_ns: int | None = None
        self.base: dict[int, ChunkRef] = {}
        self.inline: bytes | None = None
        self.dirty: dict[int, bytearray] = {}
        self.uploading: dict[int, bytes] = {}
        self.pending: dict[int, ChunkRef] = {}
        self.error: BaseException | None = None
        self._upload_done: dict[int, trio.Event] = {}
        self._slots = trio.Semaphore(UPLOADS_INFLIGHT_MAX)
        self._prefetching = False

    # ------------------------------------------------------------ state

    @property
    def changed(self) -> bool:
        """True while this mount holds writes the backend has not committed."""
        return bool(self.dirty or self.uploading or self.pending
                    or self.size != self.committed_size)

    def start_empty(self, chunk_bytes: int, attr: Attr) -> None:
        """A file this mount just created: nothing to load."""
        assert chunk_bytes > 0 and attr.size == 0
        self.chunk_bytes = chunk_bytes
        self.attr = attr

    async def load(self) -> None:
        """(Re)read the manifest, unless this mount holds uncommitted writes
        (then our view is the newest, and a reload would drop them)."""
        async with self.lock:
            if not self.changed:
                await self._load_locked()

    async def _load_locked(self) -> None:
        """Read the whole manifest (close-to-open: called at open when clean)."""
        assert not self.changed, "reload would drop buffered writes"
        base: dict[int, ChunkRef] = {}
        start = 0
        while True:
            page = check(await self.backend.manifest(self.ino, start))
            base.update((ref.idx, ref) for ref in page.chunks)
            if page.done:
                break
            start = page.next_idx
        self.chunk_bytes = page.chunk_bytes
        self.base, self.inline = base, page.inline
        self.size = self.committed_size = page.size
        self.mtime_ns = None

    # ------------------------------------------------------------ reads

    def _old_length(self, idx: int) -> int:
        ref = self.pending.get(idx) or self.base.get(idx)
        if ref is not None:
            return ref.length
        if idx == 0 and self.inline is not None:
            return len(self.inline)
        return 0

    async def _content(self, idx: int) -> bytes | bytearray | None:
        """Chunk ``idx`` from the newest layer holding it; None for a hole."""
        chunk = self.dirty.get(idx)
        if chunk is not None:
            return chunk
        snapshot = self.uploading.get(idx)
        if snapshot is not None:
            return snapshot
        ref = self.pending.get(idx) or self.base.get(idx)
        if ref is not None:
            data = await self.reader.get(ref.chunk_id)
            return data if len(data) == ref.length else data[:ref.length]
        if idx == 0 and self.inline is not None:
            return self.inline
        return None

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        self._maybe_prefetch(end)
        pieces = []
        pos = off
        while pos < end:
            idx, within = divmod(pos, self.chunk_bytes)
            n = min(self.chunk_bytes - within, end - pos)
            content = await self._content(idx)
            piece = bytes(content[within:within + n]) if content else b""
            pieces.append(piece)
            if len(piece) < n:
                pieces.append(bytes(n - len(piece)))
            pos += n
        return b"".join(pieces)

    def _maybe_prefetch(self, end: int) -> None:
        """Reading into the second half of a chunk: fetch the next one in
        the background, so a sequential reader finds it cached instead of
        waiting a whole chunk fetch at every boundary. One at a time per
        file; failures are left for the real read to meet."""
        idx, within = divmod(end, self.chunk_bytes)
        ref = self.base.get(idx + 1)
        if (self._prefetching or ref is None or within < self.chunk_bytes // 2
                or ref.chunk_id in self.reader.cache):
            return
        self._prefetching = True
        self.nursery.start_soon(self._prefetch, ref.chunk_id)

    async def _prefetch(self, chunk_id: bytes) -> None:
        try:
            await self.reader.get(chunk_id)
        except Exception as exc:  # noqa: BLE001 - the real read reports it
            log.info(kv("prefetch_failed", ino=self.ino, kind=type(exc).__name__))
        finally:
            self._prefetching = False

    # ------------------------------------------------------------ writes

    async def write(self, off: int, buf: bytes) -> int:
        async with self.lock:
            self._raise_error()
            pos = 0
            while pos < len(buf):
                idx, within = divmod(off + pos, self.chunk_bytes)
                n = min(self.chunk_bytes - within, len(buf) - pos)
                chunk = await self._dirty_chunk(idx, within, n)
                if len(chunk) < within:
                    chunk.extend(bytes(within - len(chunk)))
                chunk[within:within + n] = buf[pos:pos + n]
                pos += n
                if len(chunk) == self.chunk_bytes:
                    await self._start_upload(idx)
            self.size = max(self.size, off + len(buf))
            self.mtime_ns = time.time_ns()
            while len(self.dirty) > DIRTY_CHUNKS_MAX:
                await self._start_upload(next(iter(self.dirty)))
            if len(self.pending) >= PENDING_REFS_MAX:
                await self._commit_locked()
            return len(buf)

    async def _dirty_chunk(self, idx: int, within: int, n: int) -> bytearray:
        """The writable buffer of chunk ``idx``, loading the old content only
        when the write does not replace all of it."""
        while True:
            chunk = self.dirty.get(idx)
            if chunk is not None:
                return chunk
            done = self._upload_done.get(idx)
            if done is None:
                break
            # A failed upload puts its data back into dirty: look again.
            await done.wait()
        old_len = self._old_length(idx)
        if old_len and not (within == 0 and n >= old_len):
            chunk = bytearray(await self._content(idx) or b"")
            assert idx not in self.dirty, "writes hold the lock"
        else:
            chunk = bytearray()
        self.dirty[idx] = chunk
        return chunk

    async def _start_upload(self, idx: int) -> None:
        # The slot first: a caller cancelled while waiting for it (deadline)
        # has changed nothing, so no snapshot is left without an uploader.
        await self._slots.acquire()
        data = bytes(self.dirty.pop(idx))
        self.uploading[idx] = data
        self._upload_done[idx] = trio.Event()
        self.nursery.start_soon(self._upload, idx, data)

    async def _upload(self, idx: int, data: bytes) -> None:
        try:
            chunk_id = chunk_id_of(data)
            (have,) = await self.backend.has_chunks([chunk_id])
            if not have:
                await self.backend.put_chunks([(chunk_id, data)])
            self.reader.cache.put(chunk_id, data)
            self.pending[idx] = ChunkRef(idx, chunk_id, len(data))
        except Exception as exc:  # noqa: BLE001 - reported by the next flush
            log.warning(kv("chunk_upload_failed", ino=self.ino, idx=idx,
                           kind=type(exc).__name__, reason=str(exc)))
            self.error = self.error or exc
            self.dirty.setdefault(idx, bytearray(data))
        finally:
            del self.uploading[idx]
            self._upload_done.pop(idx).set()
            self._slots.release()

    async def _wait_uploads(self) -> None:
        while self._upload_done:
            await next(iter(self._upload_done.values())).wait()

    def _raise_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    # ------------------------------------------------------------ commit

    async def flush(self) -> Attr | None:
        """Make every write so far durable and committed; returns the new
        attributes if anything was committed."""
        async with self.lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> Attr | None:
        if not self.changed:
            self._raise_error()
            return None
        if self.size <= min(INLINE_BYTES_MAX, self.chunk_bytes):
            return await self._commit_inline()
        if self.inline and 0 not in self.dirty and 0 not in self.pending:
            # A chunked commit drops inline data: carry it over as chunk 0.
            await self._wait_uploads()
            if 0 not in self.pending:
                self.dirty.setdefault(0, bytearray(self.inline))
        for idx in list(self.dirty):
            await self._start_upload(idx)
        return await self._commit_locked()

    async def _commit_locked(self) -> Attr | None:
        await self._wait_uploads()
        self._raise_error()
        refs = sorted(self.pending.values(), key=lambda ref: ref.idx)
        now_ns = self.mtime_ns or time.time_ns()
        reply = check(await self.backend.submit(
            CommitWrite(self.ino, self.size, now_ns, chunks=refs)))
        self.base.update(self.pending)
        self.pending.clear()
        if refs:
            self.inline = None
        self.committed_size = reply.attr.size
        self.size = max(self.size, self.committed_size)
        self.attr = reply.attr
        return reply.attr

    async def _commit_inline(self) -> Attr:
        await self._wait_uploads()
        self._raise_error()
        content = await self.read(0, self.size)
        now_ns = self.mtime_ns or time.time_ns()
        reply = check(await self.backend.submit(
            CommitWrite(self.ino, len(content), now_ns, inline=content)))
        self.dirty.clear()
        self.pending.clear()
        self.base.clear()
        self.inline = content
        self.size = self.committed_size = reply.attr.size
        self.attr = reply.attr
        return reply.attr

    async def setattr(self, cmd: SetAttr) -> Attr:
        """setattr on a file open here: commit what is buffered first (so a
        later commit cannot overwrite the times or cut the size being set),
        apply it, then reload the manifest the state machine may have cut."""
        assert cmd.ino == self.ino
        async with self.lock:
            await self._flush_locked()
            reply = check(await self.backend.submit(cmd))
            if cmd.size is not None:
                await self._load_locked()
            self.attr = reply.attr
            return reply.attr
