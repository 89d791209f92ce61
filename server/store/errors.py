"""Errors of the chunk store layer.

Typed per layer (house style 4): the store raises these, the RPC layer maps them
to wire errors once, the FUSE layer maps them to errno once. Each carries the
errno value a POSIX caller would see so that mapping is a table lookup.
"""

from __future__ import annotations

import errno as _errno


class StoreError(Exception):
    """Base of every error the chunk store raises on purpose."""

    errno = _errno.EIO


class BadChunkId(StoreError, ValueError):
    """A chunk id that is not 16 bytes (or 32 hex digits)."""

    errno = _errno.EINVAL


class ChunkNotFound(StoreError, KeyError):
    """The store holds no chunk with this id."""

    errno = _errno.ENOENT

    def __init__(self, chunk_id: bytes) -> None:
        super().__init__(chunk_id)
        self.chunk_id = chunk_id

    def __str__(self) -> str:
        return f"chunk {self.chunk_id.hex()} not found"


class HashMismatch(StoreError):
    """Data offered for ``chunk_id`` hashes to something else: refused, nothing
    was stored."""

    errno = _errno.EINVAL

    def __init__(self, chunk_id: bytes, actual: bytes) -> None:
        super().__init__(chunk_id, actual)
        self.chunk_id = chunk_id
        self.actual = actual

    def __str__(self) -> str:
        return f"data for chunk {self.chunk_id.hex()} hashes to {self.actual.hex()}"


class CorruptChunk(StoreError):
    """A stored chunk failed verification on read; it has been moved to
    quarantine (or deleted when quarantine is full, or it had already been
    replaced by a good copy), so the corrupt bytes are no longer served."""

    errno = _errno.EIO

    def __init__(self, chunk_id: bytes, quarantined_path: str | None) -> None:
        super().__init__(chunk_id, quarantined_path)
        self.chunk_id = chunk_id
        self.quarantined_path = quarantined_path

    def __str__(self) -> str:
        if self.quarantined_path is None:
            return f"chunk {self.chunk_id.hex()} was corrupt on disk and is no longer stored"
        return f"chunk {self.chunk_id.hex()} is corrupt on disk; quarantined to {self.quarantined_path}"


class ChunkTooLarge(StoreError):
    """A chunk exceeds the configured ``chunk_bytes_max``."""

    errno = _errno.EFBIG

    def __init__(self, size_bytes: int, chunk_bytes_max: int) -> None:
        super().__init__(size_bytes, chunk_bytes_max)
        self.size_bytes = size_bytes
        self.chunk_bytes_max = chunk_bytes_max

    def __str__(self) -> str:
        return f"chunk of {self.size_bytes} bytes exceeds chunk_bytes_max {self.chunk_bytes_max}"


class NoSpace(StoreError):
    """Writing would push free space below the disk reserve (or the disk itself
    said ENOSPC); nothing was stored."""

    errno = _errno.ENOSPC

    def __init__(self, needed_bytes: int, free_bytes: int, reserve_bytes: int) -> None:
        super().__init__(needed_bytes, free_bytes, reserve_bytes)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes

    def __str__(self) -> str:
        return (
            f"no space: writing {self.needed_bytes} bytes with {self.free_bytes} free "
            f"would cross the {self.reserve_bytes}-byte disk reserve (ENOSPC)"
        )


class StoreLocked(StoreError):
    """Another ChunkStore (in this or another process) has the directory open."""

    errno = _errno.EBUSY

    def __init__(self, data_dir: str) -> None:
        super().__init__(data_dir)
        self.data_dir = data_dir

    def __str__(self) -> str:
        return f"data directory {self.data_dir} is in use by another chunk store"
