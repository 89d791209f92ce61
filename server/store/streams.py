"""Piecewise write and read of one chunk (blocking), used by ChunkStore.

ChunkWriter: bytes go to a temp file in tmp/ as they arrive, hashed on the way
with the xxh3_128 streaming hasher. ``commit`` checks the digest against the
claimed id, stamps the file (its mtime, see chunkstore), fsyncs it and only
then lets the store publish it with a rename; any failure before that
removes the temp file, so a refused or abandoned write leaves nothing
behind. Order of work in commit: verify → stamp → fsync(file) → rename →
fsync(dir).

ChunkReader: reads in bounded pieces and hashes as it goes. The final piece is
handed out only after the whole chunk verified; on a mismatch (or a read error
or a short file) the file is quarantined and CorruptChunk raised instead, so a
consumer that saw the read finish normally has verified bytes.

Each object owns one file descriptor; close it with ``with`` or close()/abort().
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

import xxhash

from .errors import ChunkNotFound, ChunkTooLarge, CorruptChunk, HashMismatch, NoSpace

if TYPE_CHECKING:
    from .chunkstore import ChunkStore, PutResult

# Read errors that mean the medium, not the caller, is at fault: the copy is
# treated as corrupt so a replica can replace it.
_MEDIA_ERRNOS = frozenset({errno.EIO, errno.EBADMSG, errno.EUCLEAN})


class ChunkWriter:
    """One chunk being written; call write() per piece, then commit()."""

    def __init__(self, store: ChunkStore, chunk_id: bytes, stamp: int = 0) -> None:
        self._store = store
        self.chunk_id = chunk_id
        self.stamp = stamp
        self.size_bytes = 0
        self._hasher = xxhash.xxh3_128()
        self._reserved_bytes = 0
        self._tmp_path = store.new_tmp_path(chunk_id)
        self._fd: int | None = os.open(
            self._tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644
        )
        self.finished = False

    def write(self, piece: bytes | bytearray | memoryview) -> None:
        """Append a piece. On any error the write is aborted before raising."""
        if self.finished:
            raise RuntimeError("write after commit/abort")
        try:
            self._write(memoryview(piece).cast("B"))
        except BaseException:
            self.abort()
            raise

    def _write(self, view: memoryview) -> None:
        size = len(view)
        limit = self._store.chunk_bytes_max
        if self.size_bytes + size > limit:
            raise ChunkTooLarge(self.size_bytes + size, limit)
        self._store.reserve_space(size)
        self._reserved_bytes += size
        self._hasher.update(view)
        written = 0
        while written < size:
            try:
                written += os.write(self._fd, view[written:])
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    # Something else filled the disk past our reserve check.
                    raise NoSpace(size, self._store.free_bytes(), self._store.disk_reserve_bytes) from exc
                raise
        self.size_bytes += size

    def commit(self) -> PutResult:
        """Verify, stamp, make durable, publish: (newly stored, the copy's
        stamp). A chunk the store already held keeps its copy, whose stamp
        is raised instead. HashMismatch leaves nothing stored."""
        if self.finished:
            raise RuntimeError("commit after commit/abort")
        try:
            actual = self._hasher.digest()
            if actual != self.chunk_id:
                raise HashMismatch(self.chunk_id, actual)
            os.utime(self._fd, ns=(self.stamp, self.stamp))
            if self._store.fsync_enabled:
                started = time.perf_counter()
                os.fsync(self._fd)
                hook = self._store.on_fsync
                if hook is not None:
                    hook(time.perf_counter() - started)
            os.close(self._fd)
            self._fd = None
            stored = self._store.install(self._tmp_path, self.chunk_id, self.size_bytes,
                                         self.stamp)
        except BaseException:
            self.abort()
            raise
        self._finish()
        return stored

    def abort(self) -> None:
        """Drop the write; idempotent, safe after commit."""
        if self.finished:
            return
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp_path)
        except FileNotFoundError:
            pass
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self._store.release_space(self._reserved_bytes)
        self._reserved_bytes = 0

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


class ChunkReader:
    """One stored chunk being read in pieces of at most ``piece_bytes``."""

    def __init__(self, store: ChunkStore, chunk_id: bytes, piece_bytes: int) -> None:
        if piece_bytes < 1:
            raise ValueError(f"piece_bytes must be >= 1, got {piece_bytes}")
        self._store = store
        self.chunk_id = chunk_id
        self._piece_bytes = piece_bytes
        try:
            self._fd: int | None = os.open(store.chunk_path(chunk_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ChunkNotFound(chunk_id) from None
        st = os.fstat(self._fd)
        # The inode lets quarantine move exactly this file, not a good copy a
        # repair may have put in its place since we opened it.
        self._inode = st.st_ino
        self.size_bytes = st.st_size
        self.offset = 0
        self._hasher = xxhash.xxh3_128()
        self.done = False

    def read_piece(self) -> bytes:
        """The next piece; b"" once done. Raises CorruptChunk instead of
        returning the last piece when the chunk fails verification."""
        if self.done:
            return b""
        want = min(self._piece_bytes, self.size_bytes - self.offset)
        try:
            piece = os.pread(self._fd, want, self.offset)
        except OSError as exc:
            if exc.errno in _MEDIA_ERRNOS:
                self._corrupt()
            raise
        if len(piece) != want:
            self._corrupt()  # the file shrank: it cannot hold the chunk
        self._hasher.update(piece)
        self.offset += want
        if self.offset == self.size_bytes:
            if self._hasher.digest() != self.chunk_id:
                self._corrupt()
            self.close()
        return piece

    def _corrupt(self) -> None:
        self.close()
        where = self._store.quarantine(self.chunk_id, self._inode)
        raise CorruptChunk(self.chunk_id, where)

    def close(self) -> None:
        self.done = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
