"""What the kernel caches and how we keep it honest: attributes in the
kernel's shape with short timeouts, lookup and open counts, readdir offsets,
and invalidation of the kernel's caches off the request path.

Inodes. ``InodeTable.lookups[ino]`` is the kernel's lookup count as far as we
handed it out (lookup, create, mkdir, mknod, symlink, link, each readdirplus
entry) minus what ``forget`` returned; ``opens[ino]`` counts file handles of
this mount; a file unlinked while open here is kept as an orphan
(``keep_orphan``) and released at its last close (``orphaned``). Attributes
go out with short timeouts (``Timeouts``): the kernel answers repeated stats
itself, and changes made elsewhere show up within that time.

Directories. The backend pages a directory by name (``DirPage.cursor``),
valid whatever is added or removed meanwhile; the kernel resumes a listing
from an integer it got from us. Each ``DirHandle`` numbers the entries it
hands out (1 and 2 are '.' and '..'), remembers offset -> name for the last
``CURSORS_MAX`` of them, and keeps the rest of the page it fetched, so a big
listing costs one backend page per ``PAGE_ENTRIES`` entries, not one per
kernel request (which holds a few dozen).

Invalidation. pyfuse3.invalidate_inode/invalidate_entry block inside the
kernel until related requests finish, so calling them from a handler (on the
trio thread that must answer that request) can deadlock. ``Invalidator``
queues them (bounded; a full queue drops the request, logged: the timeouts
bound the staleness anyway) for one thread. ``stop`` returns before
pyfuse3.close() destroys the session. ``drop_all`` (drop-cache) is the one
caller that waits for its invalidations: it hands the thread one item and
awaits, without blocking the trio thread, an event the thread sets after
the last one, so requests the kernel sends meanwhile (writeback of dirty
pages, reads holding page locks) are still answered.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
import queue
import stat
import threading

import pyfuse3
import trio

from rpc.logfmt import kv
from server.meta.types import Attr, DirEntry

from .backend import Backend
from .errors import check

log = logging.getLogger("chordfs.fuse.kernel")

BLOCK_BYTES = 512
# Reported as st_blksize: coreutils and stdio size their buffers from it, and
# 1 MiB requests match max_write, so cp sends a quarter of the requests it
# would with 4 KiB.
IO_BLOCK_BYTES = 1 << 20
PAGE_ENTRIES = 512
CURSORS_MAX = 8192
DOT, DOTDOT, FIRST_ENTRY = 1, 2, 3
INVALIDATIONS_MAX = 4096
STOP_DEADLINE_S = 5.0
DROP_ALL_DEADLINE_S = 30.0
QUEUE_RETRY_S = 0.01

@dataclasses.dataclass(frozen=True)
class Timeouts:
    attr_s: float = 1.0
    entry_s: float = 1.0


def entry_attributes(attr: Attr, timeouts: Timeouts, *, size: int | None = None,
                     mtime_ns: int | None = None) -> pyfuse3.EntryAttributes:
    """``size``/``mtime_ns`` override the committed values while this mount
    holds buffered writes the backend has not seen yet.

    st_blocks is the size rounded up to 512-byte blocks (holes are not
    tracked per block, so a sparse file looks fully allocated: tools then
    copy its zeros instead of guessing at holes)."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = attr.ino
    entry.generation = 0
    entry.entry_timeout = timeouts.entry_s
    entry.attr_timeout = timeouts.attr_s
    entry.st_mode = attr.mode
    entry.st_nlink = attr.nlink
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_rdev = attr.rdev
    real_size = attr.size if size is None else size
    entry.st_size = real_size
    entry.st_blksize = IO_BLOCK_BYTES
    entry.st_blocks = -(-real_size // BLOCK_BYTES) if stat.S_ISREG(attr.mode) else 0
    entry.st_atime_ns = attr.atime_ns
    entry.st_mtime_ns = attr.mtime_ns if mtime_ns is None else mtime_ns
    entry.st_ctime_ns = attr.ctime_ns
    return entry


class InodeTable:
    """Lookup and open counts; the FUSE layer's only per-inode state besides
    open files' data (``fusefs.filedata``)."""

    def __init__(self) -> None:
        self.lookups: dict[int, int] = {}
        self.opens: dict[int, int] = {}
        # Inodes unlinked while open here: ReleaseOrphan on their last close.
        self.orphaned: set[int] = set()

    def remember(self, ino: int, count: int = 1) -> None:
        if ino != pyfuse3.ROOT_INODE:
            self.lookups[ino] = self.lookups.get(ino, 0) + count

    def forget(self, ino: int, count: int) -> None:
        # Clamped, not asserted: the root and '.'/'..' entries are never
        # counted, and a miscount must cost a cache entry, not the mount.
        left = max(0, self.lookups.get(ino, 0) - count)
        if left:
            self.lookups[ino] = left
        else:
            self.lookups.pop(ino, None)

    def opened(self, ino: int) -> None:
        self.opens[ino] = self.opens.get(ino, 0) + 1

    def closed(self, ino: int) -> bool:
        """One handle gone; True if it was the last one on ``ino``."""
        left = self.opens[ino] - 1
        assert left >= 0
        if left:
            self.opens[ino] = left
            return False
        del self.opens[ino]
        return True

    def is_open(self, ino: int) -> bool:
        return ino in self.opens

    @property
    def any_open(self) -> bool:
        return bool(self.opens)


# ---------------------------------------------------------------- directories

class DirHandle:
    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.dots: tuple[Attr, Attr] | None = None
        self._next_off = FIRST_ENTRY
        self._cursors: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        # Entries after ``_cursor`` fetched but not yet accepted by the
        # kernel; still valid if it resumes from ``_accepted`` (the offset of
        # the last entry it took).
        self._cursor = b""
        self._buffer: collections.deque[DirEntry] = collections.deque()
        self._done = False
        self._accepted = -1

    def start(self, start_id: int) -> None:
        """Position at the kernel's offset (0, or one we handed out)."""
        if start_id >= FIRST_ENTRY and start_id == self._accepted:
            return
        if start_id < FIRST_ENTRY:
            cursor = b""
        else:
            try:
                cursor = self._cursors[start_id]
            except KeyError:
                # seekdir() to an offset too old to remember.
                raise pyfuse3.FUSEError(errno.EINVAL) from None
        self._cursor = cursor
        self._buffer.clear()
        self._done = False
        self._accepted = start_id

    async def peek(self, backend: Backend, on_page=None) -> tuple[int, DirEntry] | None:
        """The next entry and the offset it gets if the kernel takes it.
        ``on_page(entries)`` hears of each page fetched."""
        if not self._buffer and not self._done:
            page = check(await backend.readdir(self.ino, self._cursor, PAGE_ENTRIES,
                                               plus=True))
            if on_page is not None:
                on_page(page.entries)
            self._buffer.extend(page.entries)
            self._done = page.done or not page.entries
        if not self._buffer:
            return None
        return self._next_off, self._buffer[0]

    def accept(self) -> None:
        """The kernel took the peeked entry."""
        entry = self._buffer.popleft()
        off = self._next_off
        self._next_off += 1
        self._cursors[off] = entry.name
        while len(self._cursors) > CURSORS_MAX:
            self._cursors.popitem(last=False)
        self._cursor = entry.name
        self._accepted = off


async def dot_attrs(backend: Backend, ino: int) -> tuple[Attr, Attr]:
    """Attributes for '.' and '..' (readdirplus needs them)."""
    me = check(await backend.getattr(ino)).attr
    page = check(await backend.readdir(ino, b"\xff" * 256, 1))
    parent = me if page.parent in (0, ino) else check(await backend.getattr(page.parent)).attr
    return me, parent


# ---------------------------------------------------------------- invalidation

class DirAttrs:
    """Directory attributes that came back with this mount's own changes to
    their entries (EntryReply/RemoveReply.parents), answered to the
    kernel's getattr for up to ``ttl_s``: the kernel drops its cached
    attributes of a directory after every create, unlink or rename in it,
    and would ask at once, before the next one. Another mount's change
    shows within the same attr_timeout as through the kernel's own cache.
    Bounded; ``ttl_s`` 0 turns it off."""

    def __init__(self, ttl_s: float, *, entries_max: int = 4096, clock=None) -> None:
        self.ttl_s, self.entries_max = ttl_s, entries_max
        self.clock = clock or trio.current_time
        self._items: collections.OrderedDict[int, tuple[Attr, float]] = collections.OrderedDict()
        self.hits = 0

    def put(self, attrs) -> None:
        if self.ttl_s <= 0:
            return
        until = self.clock() + self.ttl_s
        for attr in attrs:
            self._items[attr.ino] = (attr, until)
            self._items.move_to_end(attr.ino)
        while len(self._items) > self.entries_max:
            self._items.popitem(last=False)

    def get(self, ino: int) -> Attr | None:
        item = self._items.get(ino)
        if item is None:
            return None
        if item[1] <= self.clock():
            del self._items[ino]
            return None
        self.hits += 1
        return item[0]

    def drop(self, ino: int | None = None) -> None:
        """Forget ``ino``'s (a change whose reply carries no parents), or all."""
        if ino is None:
            self._items.clear()
        else:
            self._items.pop(ino, None)


class Invalidator:
    def __init__(self, queue_max: int = INVALIDATIONS_MAX) -> None:
        self._queue: queue.Queue = queue.Queue(queue_max)
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        assert self._thread is None
        self._thread = threading.Thread(target=self._run, name="chordfs-inval", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=STOP_DEADLINE_S)
        except queue.Full:
            log.warning(kv("invalidator_stop_queue_full"))
        self._thread.join(STOP_DEADLINE_S)
        if self._thread.is_alive():
            log.warning(kv("invalidator_stuck"))
        self._thread = None

    def inode(self, ino: int, attr_only: bool = True) -> None:
        self._put(("inode", ino, attr_only))

    def entry(self, parent: int, name: bytes) -> None:
        self._put(("entry", parent, name))

    def entries(self, pairs: list[tuple[int, bytes]], done=None) -> None:
        """Queue the drop of these dentries, in one item; ``done()`` runs in
        the thread once the kernel has dropped them (and when this cannot be
        queued: no thread, or the queue is full, which is logged)."""
        if self._thread is None:
            if done is not None:
                done()
            return
        try:
            self._queue.put_nowait(("entries", pairs, done))
        except queue.Full:
            self.dropped += 1
            log.warning(kv("invalidation_dropped", kind="entries", count=len(pairs),
                           total=self.dropped))
            if done is not None:
                done()

    def attr_now(self, ino: int) -> None:
        """Drops the kernel's cached attributes of ``ino`` before returning.
        Safe on the request path, unlike the queued kinds: with no page range
        the kernel only bumps the inode's attribute version, waiting for no
        lock a pending request could hold."""
        if self._thread is None:
            return
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning(kv("invalidation_failed", kind="attr_now", ino=ino, err=exc.errno))

    async def drop_all(self, inodes: list[int]) -> None:
        """Drops the kernel's cached attributes and pages of ``inodes`` and
        returns once it has (TooSlowError after ``DROP_ALL_DEADLINE_S``)."""
        if self._thread is None:
            return
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        item = ("all", list(inodes), lambda: token.run_sync_soon(done.set))
        with trio.fail_after(DROP_ALL_DEADLINE_S):
            while True:  # never dropped, unlike the best-effort kinds
                try:
                    self._queue.put_nowait(item)
                    break
                except queue.Full:
                    await trio.sleep(QUEUE_RETRY_S)
            await done.wait()

    def _put(self, item: tuple) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning(kv("invalidation_dropped", total=self.dropped))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, a, b = item
            if kind == "all":
                self._drop_all(a)
                b()
                continue
            if kind == "entries":
                self._drop_entries(a)
                if b is not None:
                    try:
                        b()
                    except Exception:  # noqa: BLE001 - the trio run may be over
                        log.debug(kv("invalidation_done_unheard"))
                continue
            if kind == "inode":
                _attempt(kind, a, pyfuse3.invalidate_inode, a, attr_only=b)
            else:
                _attempt(kind, a, pyfuse3.invalidate_entry, a, b)

    @staticmethod
    def _drop_entries(pairs: list[tuple[int, bytes]]) -> None:
        for parent, name in pairs:
            _attempt("entry", parent, pyfuse3.invalidate_entry, parent, name)

    @staticmethod
    def _drop_all(inodes: list[int]) -> None:
        for ino in inodes:
            _attempt("all", ino, pyfuse3.invalidate_inode, ino, attr_only=False)


def _attempt(kind: str, ino: int, invalidate, *args, **kwargs) -> None:
    """One invalidation on the thread, which must not die of it. ENOENT:
    the kernel no longer caches it, nothing to do."""
    try:
        invalidate(*args, **kwargs)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning(kv("invalidation_failed", kind=kind, ino=ino, err=exc.errno))
    except Exception:  # noqa: BLE001 - this thread must not die
        log.exception(kv("invalidation_bug", kind=kind, ino=ino))
