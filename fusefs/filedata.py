"""File content as this mount sees it: verified chunk reads through a
bounded cache (``ChunkCache``, ``ChunkReader``), and per open regular file
the committed manifest plus writes not yet committed (``FileData``).

Chunks are immutable and named by their xxh3-128 hash, so a cached chunk is
never stale: the cache is an LRU bounded by bytes, filled only with chunks
verified against their id (we trust no replica); concurrent readers of the
same missing chunk share one fetch.

Per open file, newest first, what reads paint over a zeroed buffer:
  ``dirty``     bytes written and not yet packed (``layout.Dirty``: one range
                per run of adjacent writes; at most DIRTY_BYTES_MAX)
  ``uploads``   blocks being stored, each a packing of dirty ranges (at
                most UPLOADS_INFLIGHT_MAX in flight: writers wait, so memory
                is bounded)
  ``view``      the committed extents with this mount's stored, not yet
                committed slices (``pending``) applied in write order
A write costs what it changes: 4 KiB written into a 4 MiB file becomes a
4 KiB slice (inline in the commit when a flush finds little dirty, else
packed with other ranges into one block), never a rewrite of the region.

Order of work for flush/fsync/close (``flush``): small dirty data becomes
inline slices; the rest is packed into blocks, each hashed (xxh3-128) and
stored on a write quorum (``put_chunks``, durable, returning the stamps
the copies got) → then CommitWrite(s) with the slices in write order and
the least stamp (``observed``) → only then the caller's close/fsync returns.
A commit records only the ranges this file's writers wrote here, so another
mount's bytes elsewhere in the file survive (close-to-open: the later close
wins only the bytes it wrote). ESTALE from the state machine means a block
could not be proven to survive GC: its blocks are stored again and the
commit retried.

Every mutation (write, flush, truncate, reload) holds ``lock``, so a commit
never races a write that would build on a layer it is replacing. Commits
themselves hold ``commit_lock``: a long write commits what is stored so far
in the background (``_commit_behind``) without ``lock``, because a commit
only settles slices already in ``view`` while writes only add to ``dirty``
and uploads; a random 4 KiB writer used to stall on every such commit
(about a third of its time, issue 11). Uploads run
in the mount's service nursery and never raise: a failed upload keeps its
bytes (reads still see them), is retried by the next flush, and only then
reported (EIO at fsync/close); the data stays until it is stored.
"""

from __future__ import annotations

import collections
import errno
import logging
import time

import trio

from rpc.logfmt import kv
from server.meta.types import (COMMIT_SLICES_MAX, UPLOAD_WINDOW_NS, Attr,
                               CommitWrite, SetAttr, Slice)

from .backend import Backend, ChunkCorrupt, chunk_id_of
from .errors import check
from .layout import Dirty, Extents, paint

log = logging.getLogger("chordfs.fuse.data")

UPLOADS_INFLIGHT_MAX = 4
# A sequential reader has the blocks of this many bytes ahead fetched, this
# many at a time per file: blocks of one file live on different owners, and
# one 4 MiB block at a time left a cold read at half of MooseFS (issue 11).
PREFETCH_BYTES = 16 << 20
PREFETCH_INFLIGHT = 4
# Written bytes kept before packing them into a block even if less than a
# block is dirty (with chunk_bytes above it, a full block goes at once).
DIRTY_BYTES_MAX = 8 << 20
# At flush, this many dirty bytes or fewer go inline in the commit.
INLINE_FLUSH_BYTES_MAX = 64 << 10
# Uploaded but uncommitted: a long write commits every so often, so one
# CommitWrite stays small and its blocks stay well inside the upload window
# (server/meta/blocks.py) in which the state machine accepts them.
PENDING_SLICES_MAX = 4096
PENDING_BLOCKS_MAX = 64
PENDING_AGE_S = UPLOAD_WINDOW_NS / 1e9 / 4
STALE_RETRIES = 3


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


class _Upload:
    """One block being stored: the dirty ranges packed into it, in order."""

    __slots__ = ("seq", "ranges", "done", "failed", "stamp", "slices", "block_id", "block")

    def __init__(self, seq: int, ranges: list[tuple[int, bytes]]) -> None:
        self.seq = seq
        self.ranges = ranges
        self.done = trio.Event()
        self.failed: BaseException | None = None
        self.stamp: int | None = None   # set once stored
        self.block = b"".join(data for _, data in ranges)
        self.block_id = chunk_id_of(self.block)
        slices, pos = [], 0
        for off, data in ranges:
            slices.append(Slice(off, len(data), self.block_id, pos, len(self.block), fresh=True))
            pos += len(data)
        self.slices = slices


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
        self.view = Extents()
        self.dirty = Dirty()
        self.uploads: dict[int, _Upload] = {}   # by seq, oldest first
        self.pending: list[Slice] = []          # in view, not yet committed
        self.pending_blocks: dict[bytes, bytes] = {}
        self.pending_stamps: dict[bytes, int] = {}  # block id -> least stamp of its copies
        self.pending_since: float | None = None
        self.commit_lock = trio.Lock()
        self._behind = False  # a background commit is queued or running
        self.error: BaseException | None = None
        self._seq = 0
        self._slots = trio.Semaphore(UPLOADS_INFLIGHT_MAX)
        self._prefetching: set[bytes] = set()
        self._read_end = -1  # where the last read ended: a sequential reader starts there

    # ------------------------------------------------------------ state

    @property
    def changed(self) -> bool:
        """True while this mount holds writes the backend has not committed."""
        return bool(self.dirty or self.uploads or self.pending
                    or self.size != self.committed_size)

    def start_empty(self, chunk_bytes: int, attr: Attr) -> None:
        """A file this mount just created: nothing to load."""
        assert chunk_bytes > 0 and attr.size == 0
        self.chunk_bytes = chunk_bytes
        self.attr = attr

    async def load(self) -> Attr | None:
        """(Re)read the layout and return the attributes read with it,
        unless this mount holds uncommitted writes (then our view is the
        newest, a reload would drop them, and this returns None)."""
        async with self.lock:
            if not self.changed:
                return await self._load_locked()
        return None

    async def _load_locked(self) -> Attr | None:
        """Read every extent (close-to-open: called at open when clean)."""
        assert not self.changed, "reload would drop buffered writes"
        view = Extents()
        start = 0
        while True:
            page = check(await self.backend.manifest(self.ino, start))
            for s in page.slices:
                view.items.append(s)
                view.starts.append(s.off)
            if page.done:
                break
            start = page.next_off
        self.chunk_bytes = page.chunk_bytes
        self.view = view
        self.size = self.committed_size = page.size
        self.mtime_ns = None
        return page.attr

    # ------------------------------------------------------------ reads

    async def read(self, off: int, size: int) -> bytes:
        end = min(off + size, self.size)
        if off >= end:
            return b""
        here = self.view.overlapping(off, end)
        if (len(here) == 1 and here[0].block_id and here[0].off <= off
                and here[0].off + here[0].length >= end and not self.uploads and not self.dirty):
            # One block holds the whole range (a sequential reader, nearly
            # always): one copy out of it, no zeroed buffer to paint.
            s = here[0]
            block = await self._block(s.block_id)
            if not self.uploads and not self.dirty:  # still none after the fetch
                start = s.block_off + off - s.off
                self._note_read(off, end)
                return block[start:start + end - off]
        out = bytearray(end - off)
        for s in here:
            if s.block_id:
                block = await self._block(s.block_id)
                data = memoryview(block)[s.block_off:s.block_off + s.length]
            else:
                data = s.data
            paint(out, off, [(s.off, data)])
        for upload in self.uploads.values():
            paint(out, off, upload.ranges)
        paint(out, off, self.dirty.overlapping(off, end))
        self._note_read(off, end)
        return bytes(out)

    async def _block(self, block_id: bytes) -> bytes:
        """A block this file reads: ours if stored but not committed yet."""
        block = self.pending_blocks.get(block_id)
        return block if block is not None else await self.reader.get(block_id)

    def _note_read(self, off: int, end: int) -> None:
        sequential = off == self._read_end
        self._read_end = end
        if sequential:
            self._maybe_prefetch(end)

    def _maybe_prefetch(self, end: int) -> None:
        """A sequential reader: keep the blocks of the next PREFETCH_BYTES
        after ``end`` fetched or on their way, PREFETCH_INFLIGHT at a time
        per file, so that blocks on different owners come in parallel and
        are cached when the reader gets there. Failures are left for the
        real read."""
        budget = PREFETCH_BYTES
        pos = end
        while budget > 0 and len(self._prefetching) < PREFETCH_INFLIGHT:
            here = self.view.overlapping(pos, pos + 1)
            s = here[0] if here else self.view.after(pos)
            if s is None:
                return
            pos = s.off + s.length
            budget -= s.length
            if (not s.block_id or s.block_id in self._prefetching
                    or s.block_id in self.pending_blocks or s.block_id in self.reader.cache):
                continue
            self._prefetching.add(s.block_id)
            self.nursery.start_soon(self._prefetch, s.block_id)

    async def _prefetch(self, chunk_id: bytes) -> None:
        try:
            await self.reader.get(chunk_id)
        except Exception as exc:  # noqa: BLE001 - the real read reports it
            log.info(kv("prefetch_failed", ino=self.ino, kind=type(exc).__name__))
        finally:
            self._prefetching.discard(chunk_id)

    # ------------------------------------------------------------ writes

    async def write(self, off: int, buf: bytes) -> int:
        if self.lock.locked():
            async with self.lock:
                return await self._write_locked(off, buf)
        # Uncontended (nearly always): take the lock without the two
        # scheduler turns of ``async with`` (7-15% of a 4 KiB write's cost).
        self.lock.acquire_nowait()
        try:
            return await self._write_locked(off, buf)
        finally:
            self.lock.release()

    async def _write_locked(self, off: int, buf: bytes) -> int:
        self._raise_error()
        self.dirty.write(off, buf)
        self.size = max(self.size, off + len(buf))
        self.mtime_ns = time.time_ns()
        while self.dirty.total >= self.chunk_bytes:
            await self._start_upload(self.dirty.take(self.chunk_bytes))
        if self.dirty.total > DIRTY_BYTES_MAX:
            await self._start_upload(self.dirty.take(self.chunk_bytes))
        if (len(self.pending) >= PENDING_SLICES_MAX
                or len(self.pending_blocks) >= PENDING_BLOCKS_MAX
                or (self.pending_since is not None
                    and time.monotonic() - self.pending_since > PENDING_AGE_S)):
            if len(self.pending) >= 4 * PENDING_SLICES_MAX:
                # Commits fall behind the writer: wait, so memory and
                # the age of stored-but-uncommitted blocks stay bounded.
                await self._commit_locked()
            elif not self._behind:
                self._behind = True
                self.nursery.start_soon(self._commit_behind)
        return len(buf)

    async def _commit_behind(self) -> None:
        """Commit the slices stored so far, without ``lock`` (see module
        docstring). A failure keeps them pending for the next flush, which
        reports it."""
        try:
            async with self.commit_lock:
                await self._commit_pending(len(self.pending))
        except Exception as exc:  # noqa: BLE001 - kept and raised by the next write/flush
            log.warning(kv("commit_behind_failed", ino=self.ino, kind=type(exc).__name__,
                           reason=str(exc)))
            self.error = exc
        finally:
            self._behind = False

    async def _start_upload(self, ranges: list[tuple[int, bytes]]) -> None:
        # The slot first: a caller cancelled while waiting for it (deadline)
        # has changed nothing, so no data is left without an uploader.
        await self._slots.acquire()
        self._seq += 1
        upload = _Upload(self._seq, ranges)
        self.uploads[upload.seq] = upload
        self.nursery.start_soon(self._upload, upload)

    async def _upload(self, upload: _Upload) -> None:
        try:
            stamp = await self.backend.put_chunks([(upload.block_id, upload.block)])
            self.reader.cache.put(upload.block_id, upload.block)
            upload.failed = None
            self._settle(upload, stamp)
        except Exception as exc:  # noqa: BLE001 - kept, retried and reported by flush
            log.warning(kv("chunk_upload_failed", ino=self.ino, seq=upload.seq,
                           kind=type(exc).__name__, reason=str(exc)))
            upload.failed = exc
        finally:
            self._slots.release()
            upload.done.set()

    def _settle(self, upload: _Upload, stamp: int) -> None:
        """Stored: its slices join the view and the pending commit, in write
        order (an older upload finishing later must not cover newer bytes)."""
        upload.stamp = stamp
        while self.uploads:
            first = next(iter(self.uploads.values()))
            if first.stamp is None:
                return
            del self.uploads[first.seq]
            for s in first.slices:
                self.view.apply(s)
            self.pending.extend(first.slices)
            self.pending_blocks[first.block_id] = first.block
            old = self.pending_stamps.get(first.block_id)
            self.pending_stamps[first.block_id] = first.stamp if old is None else min(old, first.stamp)
            if self.pending_since is None:
                self.pending_since = time.monotonic()

    async def _wait_uploads(self) -> None:
        """Every upload stored and settled; failed ones are retried once
        here, and their error raised if they fail again (data kept)."""
        for upload in list(self.uploads.values()):
            await upload.done.wait()
        for upload in list(self.uploads.values()):
            if upload.failed is not None and upload.seq in self.uploads:
                await self._slots.acquire()
                upload.done = trio.Event()
                self.nursery.start_soon(self._upload, upload)
                await upload.done.wait()
                if upload.failed is not None:
                    raise upload.failed

    def _raise_error(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc
        failed = sum(1 for u in self.uploads.values() if u.failed is not None)
        if failed >= UPLOADS_INFLIGHT_MAX:
            # Stores keep refusing: buffering more would grow without bound.
            raise next(u.failed for u in self.uploads.values() if u.failed is not None)

    # ------------------------------------------------------------ commit

    async def flush(self) -> Attr | None:
        """Make every write so far durable and committed; returns the new
        attributes if anything was committed."""
        if not self.lock.locked() and not self.changed:
            # Every close of a file only read (and every release) ends here:
            # no lock round, which yields to the scheduler.
            self._raise_error()
            return None
        async with self.lock:
            return await self._flush_locked()

    async def _flush_locked(self) -> Attr | None:
        if not self.changed:
            self._raise_error()
            return None
        if self.dirty.total <= INLINE_FLUSH_BYTES_MAX and not self.uploads:
            # Small changes travel inside the commit itself: no block to
            # store, one Raft entry (most files of a source tree; a
            # database's 4 KiB page with fsync).
            for off, data in self.dirty.take():
                s = Slice(off, len(data), data=data)
                self.view.apply(s)
                self.pending.append(s)
        while self.dirty:
            await self._start_upload(self.dirty.take(self.chunk_bytes))
        return await self._commit_locked()

    async def _commit_locked(self) -> Attr | None:
        """With ``lock`` held: everything written so far, committed."""
        async with self.commit_lock:
            await self._wait_uploads()
            self._raise_error()
            attr = await self._commit_pending(len(self.pending))
            while self.size != self.committed_size:
                attr = await self._commit_batch([])  # settles the size only
            return attr

    async def _commit_pending(self, count: int) -> Attr | None:
        """Commit the first ``count`` pending slices (uploads settling
        meanwhile append after them), then forget the blocks no pending
        slice names any more. Holds ``commit_lock``."""
        attr = None
        while count > 0:
            batch = self.pending[:min(count, COMMIT_SLICES_MAX)]
            attr = await self._commit_batch(batch)
            del self.pending[:len(batch)]
            count -= len(batch)
        named = {s.block_id for s in self.pending if s.block_id}
        for block_id in [b for b in self.pending_blocks if b not in named]:
            del self.pending_blocks[block_id]
            self.pending_stamps.pop(block_id, None)
        self.pending_since = time.monotonic() if self.pending else None
        return attr

    async def _commit_batch(self, batch: list[Slice]) -> Attr:
        end = max((s.off + s.length for s in batch), default=0)
        if not batch:
            end = self.size  # a commit with no slices only settles the size
        blocks = {s.block_id for s in batch if s.block_id}
        for attempt in range(STALE_RETRIES + 1):
            now_ns = self.mtime_ns or time.time_ns()
            observed = min((self.pending_stamps[b] for b in blocks), default=0)
            reply = await self.backend.submit(
                CommitWrite(self.ino, end, now_ns, batch, observed))
            if reply.err != errno.ESTALE or attempt == STALE_RETRIES:
                break
            # A block was dying or too old to prove it survives: store
            # every block of the batch again (fresh stamps) and retry.
            log.info(kv("commit_stale_blocks", ino=self.ino, attempt=attempt))
            stamp = await self.backend.put_chunks(
                [(b, self.pending_blocks[b]) for b in blocks])
            for b in blocks:
                self.pending_stamps[b] = stamp
            await trio.sleep(0.05 * (attempt + 1))
        check(reply)
        self.committed_size = reply.attr.size
        self.size = max(self.size, self.committed_size)
        self.attr = reply.attr
        return reply.attr

    async def setattr(self, cmd: SetAttr) -> Attr:
        """setattr on a file open here: commit what is buffered first (so a
        later commit cannot overwrite the times or cut the size being set),
        apply it, then reload the layout the state machine may have cut."""
        assert cmd.ino == self.ino
        async with self.lock:
            await self._flush_locked()
            reply = check(await self.backend.submit(cmd))
            if cmd.size is not None:
                await self._load_locked()
            self.attr = reply.attr
            return reply.attr
