"""Content-addressed chunk store on a local disk (blocking core).

Layout under ``data_dir``::

    chunks/ab/cd/abcd...  one file per chunk, named by the 32-hex id; the two
                          fan-out levels are the id's first two bytes, which are
                          also the top 16 bits of its ring key, so a key range
                          maps to a contiguous run of directories
    tmp/                  chunks being written; anything here after a crash is
                          garbage and is removed at open
    quarantine/           chunks that failed verification, kept for post-mortem

Stamps. Every stored copy carries a stamp: a Raft log index, kept as the
file's mtime in nanoseconds. The metadata state machine decides deletion
with it (server/meta/blocks.py): the GC of a block that died at log index
``mark`` deletes only copies stamped below ``mark``, and a writer that
revives such a block must hold copies stamped at or above it. A writer's
put stamps its copy with max(the copy's old stamp, the stamp asked for);
the caller (the store service) asks for at least the node's applied
metadata index. The stamp is set on the temp file before the fsync and
the rename that publish it, and raised on an existing copy with utime and
an fsync of the file, so a reply's stamp is durable.

Invariants:
- A file under chunks/ only ever holds bytes whose xxh3_128 equals its name:
  writes are verified before the rename that publishes them, and a file found
  corrupt on read is moved out (quarantined) before the error is raised.
- A put returns only after the file and its directory entry are fsynced
  (unless the store was opened with ``fsync_enabled=False``, for tests).
- ``chunk_count``/``used_bytes`` equal what the chunks/ tree holds: rebuilt by a
  scan at open, changed only under ``_lock`` together with the rename/unlink.
- A copy's stamp never goes down while the copy exists. Publishing, raising
  a stamp, conditional deletion (``delete_below``) and quarantine of one id
  run under that id's lock (one of ``ID_LOCKS`` stripes), so "stamp below
  mark, then unlink" cannot interleave with a put of the same id.
- The directory keeps nanosecond mtimes: checked with a probe at open
  (StoreError otherwise), since a rounded stamp would lose protection.

Every method blocks on the disk; ``server.store.aiostore`` runs them in worker
threads. Methods are thread-safe.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, NamedTuple

import xxhash

from .errors import ChunkNotFound, ChunkTooLarge, HashMismatch, NoSpace, StoreError, StoreLocked
from .keyrange import ID_BYTES, KeyRange, check_id, id_from_hex, ring_key
from .streams import ChunkReader, ChunkWriter
from .summary import RangeSummary, summarize

log = logging.getLogger("chordfs.store")

CHUNK_BYTES_MAX_DEFAULT = 4 * 1024 * 1024
PIECE_BYTES_DEFAULT = 1024 * 1024
LIST_IDS_MAX = 65536
# A failing disk could otherwise fill itself with quarantined copies; the
# first ones are the useful evidence, later ones are simply deleted.
QUARANTINE_FILES_MAX_DEFAULT = 1024
# Stripes of per-id locks: puts of different ids rarely share one, so an
# fsync raising a stamp holds up only the puts of its stripe.
ID_LOCKS = 64
_HEX = frozenset("0123456789abcdef")
# Odd nanoseconds and seconds, so a filesystem rounding either shows.
_MTIME_PROBE_NS = 1_000_000_007_123_456_789

DeleteOutcome = Literal["deleted", "kept", "absent"]


class PutResult(NamedTuple):
    written: bool   # False: the copy was already here (dedup)
    stamp: int      # the copy's stamp after the put


@dataclasses.dataclass(frozen=True)
class StoreStats:
    chunk_count: int
    used_bytes: int
    free_bytes: int
    reserve_bytes: int
    quarantined_count: int


def fsync_dir(path: str) -> None:
    """Make a directory's entries (renames, unlinks, new children) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_stamp(stamp: int) -> None:
    if not 0 <= stamp < 1 << 63:
        raise ValueError(f"a stamp is a log index in [0, 2**63), got {stamp}")


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


class ChunkStore:
    """Blocking chunk store. One instance per data directory, enforced with
    an flock on data_dir/LOCK (StoreLocked otherwise); close() releases it."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        chunk_bytes_max: int = CHUNK_BYTES_MAX_DEFAULT,
        disk_reserve_bytes: int = 0,
        statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
        fsync_enabled: bool = True,
        quarantine_files_max: int = QUARANTINE_FILES_MAX_DEFAULT,
    ) -> None:
        if chunk_bytes_max < 1 or disk_reserve_bytes < 0 or quarantine_files_max < 0:
            raise ValueError(
                "chunk_bytes_max must be >= 1, disk_reserve_bytes and quarantine_files_max >= 0"
            )
        self.data_dir = os.fspath(data_dir)
        self.chunk_bytes_max = chunk_bytes_max
        self.disk_reserve_bytes = disk_reserve_bytes
        self.fsync_enabled = fsync_enabled
        # Called (from the writing thread) with the seconds each chunk file's
        # fsync took: the node's metrics (server/metrics.py).
        self.on_fsync = None
        self.quarantine_files_max = quarantine_files_max
        self._statvfs = statvfs
        self._chunks_dir = os.path.join(self.data_dir, "chunks")
        self._tmp_dir = os.path.join(self.data_dir, "tmp")
        self._quarantine_dir = os.path.join(self.data_dir, "quarantine")
        self._lock = threading.Lock()
        self._id_locks = [threading.Lock() for _ in range(ID_LOCKS)]
        self._tmp_seq = itertools.count()
        self._fanout_known: set[str] = set()
        # Bytes promised to writers in flight: without it, concurrent puts
        # would each see the same free space and together cross the reserve.
        self._reserved_bytes = 0
        self.chunk_count = 0
        self.used_bytes = 0
        self.quarantined_count = 0
        self._lock_fd: int | None = None
        self._open()

    # ---- open: directories, crash leftovers, accounting scan -------------

    def _open(self) -> None:
        for path in (self.data_dir, self._chunks_dir, self._tmp_dir, self._quarantine_dir):
            self._mkdir_durable(path)
        self._lock_fd = os.open(
            os.path.join(self.data_dir, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            # Two stores on one directory would delete each other's temp
            # files at open and skew each other's accounting.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreLocked(self.data_dir) from None
        try:
            self._remove_leftovers()
            self._check_mtime_ns()
            self._scan()
        except BaseException:
            self.close()
            raise

    def _check_mtime_ns(self) -> None:
        probe = os.path.join(self._tmp_dir, "mtime-probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.utime(fd, ns=(_MTIME_PROBE_NS, _MTIME_PROBE_NS))
            kept = os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            os.unlink(probe)
        if kept != _MTIME_PROBE_NS:
            raise StoreError(f"{self.data_dir}: the filesystem does not keep nanosecond mtimes "
                             f"(set {_MTIME_PROBE_NS}, read {kept}); chunk stamps need them")

    def _remove_leftovers(self) -> None:
        leftovers = os.listdir(self._tmp_dir)
        for name in leftovers:
            # A temp file is never published, so whatever a crash left here is
            # an unfinished write nobody was told succeeded.
            os.unlink(os.path.join(self._tmp_dir, name))
        if leftovers:
            log.info("removed %d unfinished chunk writes from %s", len(leftovers), self._tmp_dir)
            self._fsync_dir(self._tmp_dir)

    def _scan(self) -> None:
        count = used = 0
        for top in self._subdirs(self._chunks_dir, 0, 255):
            top_path = os.path.join(self._chunks_dir, f"{top:02x}")
            self._fanout_known.add(f"{top:02x}")
            for mid in self._subdirs(top_path, 0, 255):
                prefix = f"{top:02x}{mid:02x}"
                self._fanout_known.add(f"{top:02x}/{mid:02x}")
                with os.scandir(os.path.join(top_path, f"{mid:02x}")) as entries:
                    for entry in entries:
                        if _is_hex(entry.name, 2 * ID_BYTES) and entry.name.startswith(prefix):
                            count += 1
                            used += entry.stat(follow_symlinks=False).st_size
        self.chunk_count, self.used_bytes = count, used
        self.quarantined_count = len(os.listdir(self._quarantine_dir))

    def close(self) -> None:
        """Release the directory lock; the store must not be used afterwards."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _mkdir_durable(self, path: str) -> None:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return
        # A new directory exists after a crash only if its parent was synced.
        self._fsync_dir(os.path.dirname(os.path.abspath(path)))

    def _fsync_dir(self, path: str) -> None:
        if self.fsync_enabled:
            fsync_dir(path)

    # ---- paths -------------------------------------------------------------

    def chunk_path(self, chunk_id: bytes) -> str:
        name = chunk_id.hex()
        return os.path.join(self._chunks_dir, name[0:2], name[2:4], name)

    def _leaf_dir(self, chunk_id: bytes) -> str:
        return os.path.dirname(self.chunk_path(chunk_id))

    def _ensure_fanout(self, chunk_id: bytes) -> None:
        name = chunk_id.hex()
        for rel in (name[0:2], f"{name[0:2]}/{name[2:4]}"):
            if rel not in self._fanout_known:
                self._mkdir_durable(os.path.join(self._chunks_dir, rel))
                with self._lock:
                    self._fanout_known.add(rel)

    def new_tmp_path(self, chunk_id: bytes) -> str:
        return os.path.join(self._tmp_dir, f"{chunk_id.hex()}.{os.getpid()}.{next(self._tmp_seq)}")

    # ---- space -------------------------------------------------------------

    def free_bytes(self) -> int:
        st = self._statvfs(self.data_dir)
        return st.f_bavail * st.f_frsize

    def reserve_space(self, size_bytes: int) -> None:
        """Promise ``size_bytes`` to a writer, or raise NoSpace if writing them
        would leave less than the disk reserve free."""
        free = self.free_bytes()
        with self._lock:
            if free - self._reserved_bytes - size_bytes < self.disk_reserve_bytes:
                raise NoSpace(size_bytes, free - self._reserved_bytes, self.disk_reserve_bytes)
            self._reserved_bytes += size_bytes

    def release_space(self, size_bytes: int) -> None:
        with self._lock:
            self._reserved_bytes -= size_bytes
            assert self._reserved_bytes >= 0

    def stats(self) -> StoreStats:
        free = self.free_bytes()
        with self._lock:
            return StoreStats(
                self.chunk_count, self.used_bytes, free, self.disk_reserve_bytes,
                self.quarantined_count,
            )

    # ---- write -------------------------------------------------------------

    def _id_lock(self, chunk_id: bytes) -> threading.Lock:
        return self._id_locks[chunk_id[-1] % ID_LOCKS]

    def put(self, chunk_id: bytes, data: bytes | bytearray | memoryview,
            stamp: int = 0) -> PutResult:
        """Store ``data`` under ``chunk_id`` with at least ``stamp``; returns
        (newly written, the copy's stamp now). A copy already here is kept
        and its stamp raised (dedup). Raises HashMismatch, ChunkTooLarge or
        NoSpace, in which case nothing was stored and no stamp changed."""
        chunk_id = check_id(chunk_id)
        _check_stamp(stamp)
        if len(data) > self.chunk_bytes_max:
            raise ChunkTooLarge(len(data), self.chunk_bytes_max)
        actual = xxhash.xxh3_128_digest(data)
        if actual != chunk_id:
            raise HashMismatch(chunk_id, actual)
        raised = self.raise_stamp(chunk_id, stamp)
        if raised is not None:
            return PutResult(False, raised)
        with self.open_writer(chunk_id, stamp) as writer:
            writer.write(data)
            return writer.commit()

    def put_stream(self, chunk_id: bytes, pieces: Iterable[bytes], stamp: int = 0) -> PutResult:
        """Like ``put`` for a chunk that arrives in pieces; the hash is computed
        as they are written and checked before the chunk is published."""
        chunk_id = check_id(chunk_id)
        with self.open_writer(chunk_id, stamp) as writer:
            for piece in pieces:
                writer.write(piece)
            return writer.commit()

    def open_writer(self, chunk_id: bytes, stamp: int = 0) -> ChunkWriter:
        chunk_id = check_id(chunk_id)
        _check_stamp(stamp)
        return ChunkWriter(self, chunk_id, stamp)

    def install(self, tmp_path: str, chunk_id: bytes, size_bytes: int, stamp: int) -> PutResult:
        """Publish a fully written, stamped, fsynced, verified temp file.
        Called by ChunkWriter.commit. When the chunk is already present the
        temp file is dropped and the present copy's stamp raised instead."""
        self._ensure_fanout(chunk_id)
        final = self.chunk_path(chunk_id)
        with self._id_lock(chunk_id):
            raised = self._raise_locked(chunk_id, stamp)
            if raised is None:
                with self._lock:
                    os.rename(tmp_path, final)
                    self.chunk_count += 1
                    self.used_bytes += size_bytes
        if raised is not None:
            os.unlink(tmp_path)
        # Synced even when it existed: a concurrent put of the same id may
        # have renamed but not yet synced, and we are about to claim durability.
        self._fsync_dir(os.path.dirname(final))
        return PutResult(raised is None, stamp if raised is None else raised)

    def raise_stamp(self, chunk_id: bytes, stamp: int) -> int | None:
        """Raise a present copy's stamp to at least ``stamp`` (durably);
        its stamp afterwards, or None when no copy is here. This is a put
        of a chunk already stored: the caller gets the same guarantees."""
        chunk_id = check_id(chunk_id)
        _check_stamp(stamp)
        with self._id_lock(chunk_id):
            raised = self._raise_locked(chunk_id, stamp)
        if raised is not None:
            self._fsync_dir(self._leaf_dir(chunk_id))
        return raised

    def _raise_locked(self, chunk_id: bytes, stamp: int) -> int | None:
        """Under the id's lock: the present copy's stamp raised to ``stamp``."""
        try:
            fd = os.open(self.chunk_path(chunk_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            current = os.fstat(fd).st_mtime_ns
            if current >= stamp:
                return current
            os.utime(fd, ns=(stamp, stamp))
            if self.fsync_enabled:
                os.fsync(fd)
            return stamp
        finally:
            os.close(fd)

    def stamp_of(self, chunk_id: bytes) -> int | None:
        """The stamp of the copy stored here, or None when there is none."""
        try:
            return os.stat(self.chunk_path(check_id(chunk_id))).st_mtime_ns
        except FileNotFoundError:
            return None

    def stamps_of(self, chunk_ids: Iterable[bytes]) -> list[int | None]:
        return [self.stamp_of(c) for c in chunk_ids]

    # ---- read --------------------------------------------------------------

    def has(self, chunk_id: bytes) -> bool:
        return os.path.exists(self.chunk_path(check_id(chunk_id)))

    def size_of(self, chunk_id: bytes) -> int:
        try:
            return os.stat(self.chunk_path(check_id(chunk_id))).st_size
        except FileNotFoundError:
            raise ChunkNotFound(chunk_id) from None

    def open_reader(self, chunk_id: bytes, piece_bytes: int = PIECE_BYTES_DEFAULT) -> ChunkReader:
        return ChunkReader(self, check_id(chunk_id), piece_bytes)

    def get(self, chunk_id: bytes) -> bytes:
        """The chunk's bytes, verified; raises ChunkNotFound or CorruptChunk
        (after quarantining the file). Chunks above chunk_bytes_max must be read
        with get_stream so memory stays bounded."""
        with self.open_reader(chunk_id, self.chunk_bytes_max) as reader:
            if reader.size_bytes > self.chunk_bytes_max:
                raise ChunkTooLarge(reader.size_bytes, self.chunk_bytes_max)
            return reader.read_piece()

    def get_stream(self, chunk_id: bytes, piece_bytes: int = PIECE_BYTES_DEFAULT) -> Iterator[bytes]:
        """Yield the chunk in pieces of at most ``piece_bytes``. The last piece
        is yielded only after the whole chunk verified, so a consumer that sees
        the stream end normally has received verified data."""
        with self.open_reader(chunk_id, piece_bytes) as reader:
            while not reader.done:
                piece = reader.read_piece()
                if piece:
                    yield piece

    def verify(self, chunk_id: bytes) -> int:
        """Re-hash a stored chunk; its size if good. Raises CorruptChunk (after
        quarantining) or ChunkNotFound."""
        with self.open_reader(chunk_id) as reader:
            while not reader.done:
                reader.read_piece()
            return reader.size_bytes

    # ---- delete and quarantine ---------------------------------------------

    def delete(self, chunk_id: bytes) -> bool:
        """Remove a chunk whatever its stamp; True if it was here. Durable
        when it returns."""
        return self.delete_below(chunk_id, 0) == "deleted"

    def delete_below(self, chunk_id: bytes, mark: int) -> DeleteOutcome:
        """Remove the copy if its stamp is below ``mark`` (0: whatever its
        stamp). "kept" when a copy stamped at or above ``mark`` stays: the
        check and the unlink hold the id's lock, so a put that raised the
        stamp first wins, and one that comes after writes a new copy.
        Durable when it returns."""
        chunk_id = check_id(chunk_id)
        _check_stamp(mark)
        path = self.chunk_path(chunk_id)
        with self._id_lock(chunk_id), self._lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return "absent"
            if mark and st.st_mtime_ns >= mark:
                return "kept"
            os.unlink(path)
            self.chunk_count -= 1
            self.used_bytes -= st.st_size
        self._fsync_dir(os.path.dirname(path))
        return "deleted"

    def quarantine(self, chunk_id: bytes, inode: int | None = None) -> str | None:
        """Move a chunk that failed verification out of chunks/ (or delete it
        once quarantine_files_max files are kept). With ``inode``, only that
        file is touched: if a good copy replaced it meanwhile (repair), the
        good copy stays. Returns the quarantine path, or None if nothing was
        kept there."""
        path = self.chunk_path(chunk_id)
        with self._id_lock(chunk_id), self._lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            if inode is not None and st.st_ino != inode:
                return None
            target = None
            if self.quarantined_count < self.quarantine_files_max:
                target = self._free_quarantine_name(chunk_id)
                os.rename(path, target)
                self.quarantined_count += 1
            else:
                os.unlink(path)
            self.chunk_count -= 1
            self.used_bytes -= st.st_size
        self._fsync_dir(os.path.dirname(path))
        if target is not None:
            self._fsync_dir(self._quarantine_dir)
        where = target or "nowhere (quarantine full, deleted)"
        log.warning("chunk %s failed verification; moved to %s", chunk_id.hex(), where)
        return target

    def _free_quarantine_name(self, chunk_id: bytes) -> str:
        for seq in range(self.quarantine_files_max + 1):
            target = os.path.join(self._quarantine_dir, f"{chunk_id.hex()}.{seq}")
            if not os.path.exists(target):
                return target
        raise AssertionError("more quarantined copies of one chunk than quarantine_files_max")

    # ---- enumeration ---------------------------------------------------------

    def _subdirs(self, path: str, lo: int, hi: int) -> list[int]:
        """Fan-out directory numbers under ``path`` within [lo, hi], sorted."""
        try:
            names = os.listdir(path)
        except FileNotFoundError:
            return []
        found = [int(n, 16) for n in names if _is_hex(n, 2)]
        return sorted(n for n in found if lo <= n <= hi)

    def _scan_segment(self, lo: int, hi: int) -> Iterator[bytes]:
        """Ids with lo <= ring key <= hi in ascending order; only the
        directories that can hold such keys are listed."""
        for top in self._subdirs(self._chunks_dir, lo >> 56, hi >> 56):
            top_path = os.path.join(self._chunks_dir, f"{top:02x}")
            mid_lo = (lo >> 48) & 0xFF if top == lo >> 56 else 0
            mid_hi = (hi >> 48) & 0xFF if top == hi >> 56 else 255
            for mid in self._subdirs(top_path, mid_lo, mid_hi):
                leaf = os.path.join(top_path, f"{mid:02x}")
                prefix = f"{top:02x}{mid:02x}"
                try:
                    names = os.listdir(leaf)
                except FileNotFoundError:
                    continue
                for name in sorted(names):
                    if _is_hex(name, 2 * ID_BYTES) and name.startswith(prefix):
                        chunk_id = id_from_hex(name)
                        if lo <= ring_key(chunk_id) <= hi:
                            yield chunk_id

    def iter_ids(self, key_range: KeyRange | None = None, after_id: bytes | None = None) -> Iterator[bytes]:
        """Stored ids in ``key_range`` (default: the whole ring) in ring order,
        starting after ``after_id`` when given (a resume point from an earlier
        page, which must lie in the range). Not a snapshot: chunks put or
        deleted during iteration may or may not appear."""
        key_range = key_range or KeyRange.full()
        segments = key_range.segments()
        if after_id is not None:
            after_id = check_id(after_id)
            key = ring_key(after_id)
            if not key_range.contains_key(key):
                raise ValueError(f"resume id {after_id.hex()} is outside range {key_range}")
            index = next(i for i, (lo, hi) in enumerate(segments) if lo <= key <= hi)
            segments = [(key, segments[index][1])] + segments[index + 1:]
        for i, (lo, hi) in enumerate(segments):
            for chunk_id in self._scan_segment(lo, hi):
                if i == 0 and after_id is not None and chunk_id <= after_id:
                    continue
                yield chunk_id

    def list_ids(
        self, key_range: KeyRange | None = None, after_id: bytes | None = None,
        ids_max: int = 1024,
    ) -> list[bytes]:
        """One page of ``iter_ids``; continue with ``after_id=page[-1]``."""
        if not 1 <= ids_max <= LIST_IDS_MAX:
            raise ValueError(f"ids_max must be in [1, {LIST_IDS_MAX}], got {ids_max}")
        return list(itertools.islice(self.iter_ids(key_range, after_id), ids_max))

    def range_summaries(self, key_range: KeyRange, parts: int = 1) -> list[RangeSummary]:
        """Count and digest of the ids in each of ``parts`` equal sub-ranges of
        ``key_range``: equal summaries mean (with overwhelming probability)
        equal id sets, so replicas compare these before listing ids."""
        return summarize(self.iter_ids(key_range), key_range, parts)

