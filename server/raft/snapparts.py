"""InstallSnapshot in parts: a metadata snapshot grows with the namespace
(~126 MiB per million inodes) and must still reach a lagging or new
follower through RPC frames of a few MiB, and never be whole in memory.

The sending transport cuts a large snapshot into ``SnapshotPart``s and
sends them in order, one per ``step`` call, on its one connection to the
peer; a failed call fails the whole transfer (the core sends the snapshot
again later, from the start).  A snapshot kept in a file (``SnapshotFile``)
is read one part at a time.  The receiving server keeps one ``Joiner`` per
connection, which writes the parts to a file in the Raft directory and
hands the core a whole ``InstallSnapshot`` naming that file (fsynced) once
the last part arrived.  A part that does not continue the snapshot being
joined is refused (the sender learns it, the partial file is deleted): the
core never sees a partial or spliced snapshot.

File names: ``snap-<index>-<random>.data`` once complete (written once,
never changed; storage adopts or deletes it), ``.part`` while joining (a
crash leaves it for storage's open to sweep)."""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil

import trio

from .messages import InstallSnapshot, ProtocolError, SnapshotFile
from .wire import SnapshotPart

PART_BYTES = 1 << 20
# Parts go to disk, so the bound is the disk's: a snapshot must leave
# DISK_SPARE_BYTES free (checked at its first part).  The size bound only
# stops a nonsense total.
SNAPSHOT_BYTES_MAX = 1 << 42
DISK_SPARE_BYTES = 256 << 20
DATA_PREFIX, DATA_SUFFIX, PART_SUFFIX = "snap-", ".data", ".part"


def new_data_path(directory: str, index: int) -> str:
    return os.path.join(directory, f"{DATA_PREFIX}{index:020d}-{secrets.token_hex(4)}{DATA_SUFFIX}")


def is_data_file(name: str) -> bool:
    return name.startswith(DATA_PREFIX) and name.endswith((DATA_SUFFIX, PART_SUFFIX))


def count(message: InstallSnapshot, part_bytes: int = PART_BYTES) -> int:
    return max(1, -(-len(message.snapshot.data) // part_bytes))


def _piece(message: InstallSnapshot, data: bytes, offset: int, total: int) -> SnapshotPart:
    return SnapshotPart(dataclasses.replace(
        message, snapshot=dataclasses.replace(message.snapshot, data=data)), offset, total)


def cut(message: InstallSnapshot, part_bytes: int = PART_BYTES) -> list[SnapshotPart]:
    """All parts of a snapshot held in memory (tests, small state machines)."""
    data = message.snapshot.data
    assert not isinstance(data, SnapshotFile), "a file snapshot is read part by part: parts()"
    return [_piece(message, data[off:off + part_bytes], off, len(data))
            for off in range(0, max(len(data), 1), part_bytes)]


async def parts(message: InstallSnapshot, part_bytes: int = PART_BYTES):
    """The parts in order, one at a time; a file is opened once, so storage
    deleting it meanwhile (a newer snapshot) does not cut the transfer.
    OSError if the file is already gone (the core sends a newer one)."""
    data = message.snapshot.data
    if not isinstance(data, SnapshotFile):
        for part in cut(message, part_bytes):
            yield part
        return
    f = await trio.to_thread.run_sync(open, data.path, "rb")
    try:
        for off in range(0, max(data.size, 1), part_bytes):
            piece = await trio.to_thread.run_sync(f.read, part_bytes)
            if len(piece) != min(part_bytes, data.size - off):
                raise OSError(f"{data.path} ends at {off + len(piece)}, expected {data.size} bytes")
            yield _piece(message, piece, off, data.size)
    finally:
        f.close()


class Joiner:
    """The snapshot being received on one connection: in memory when
    ``directory`` is None (tests), else in a file there."""

    def __init__(self, directory: str | None = None, bytes_max: int = SNAPSHOT_BYTES_MAX) -> None:
        self.directory, self.bytes_max = directory, bytes_max
        self._key: tuple | None = None
        self._got = 0
        self._buf: bytearray | None = None
        self._file = None
        self._path = ""

    async def add(self, part: SnapshotPart) -> InstallSnapshot | None:
        """Take the next part; the whole message after the last one.
        Raises ProtocolError for a part that does not fit."""
        m, meta = part.message, part.message.snapshot.meta
        if part.total > self.bytes_max:
            raise ProtocolError(f"snapshot of {part.total} bytes exceeds {self.bytes_max}")
        key = (m.frm, m.to, m.term, meta.index, meta.term, part.total)
        if part.offset == 0:
            self.close()
            await self._start(key, part.total, meta.index)
        elif key != self._key or part.offset != self._got:
            expected = self._got if self._key is not None else 0
            self.close()
            raise ProtocolError(f"snapshot part at {part.offset} does not continue the snapshot "
                                f"being received (expected offset {expected})")
        data = m.snapshot.data
        if self._file is None:
            self._buf += data
        else:
            await trio.to_thread.run_sync(self._file.write, data)
        self._got += len(data)
        if self._got < part.total:
            return None
        whole = bytes(self._buf) if self._file is None else await trio.to_thread.run_sync(self._seal)
        self._key, self._buf, self._got = None, None, 0
        return dataclasses.replace(m, snapshot=dataclasses.replace(m.snapshot, data=whole))

    async def _start(self, key: tuple, total: int, index: int) -> None:
        if self.directory is None:
            self._buf = bytearray()
        else:
            free = shutil.disk_usage(self.directory).free
            if total > free - DISK_SPARE_BYTES:
                raise ProtocolError(f"a snapshot of {total} bytes does not fit: {free} bytes "
                                    f"free in {self.directory}")
            self._path = new_data_path(self.directory, index)
            self._file = await trio.to_thread.run_sync(open, self._path + PART_SUFFIX, "wb")
        self._key, self._got = key, 0

    def _seal(self) -> SnapshotFile:
        """Durable under its final name before the core hears of it."""
        f, self._file = self._file, None
        try:
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        finally:
            f.close()
        os.rename(self._path + PART_SUFFIX, self._path)
        from .storage import _fsync_dir  # storage imports this module first
        _fsync_dir(self.directory)
        return SnapshotFile(self._path, size)

    def close(self) -> None:
        """Drop a partial snapshot (its connection ended, or it was refused)."""
        self._key, self._buf, self._got = None, None, 0
        if self._file is not None:
            f, self._file = self._file, None
            f.close()
            try:
                os.unlink(self._path + PART_SUFFIX)
            except FileNotFoundError:
                pass
