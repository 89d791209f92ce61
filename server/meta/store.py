"""The metadata state machine as the Raft service sees it: a SQLite database
file (WAL) that applies encoded commands, answers queries, and produces and
installs snapshots.

Order of work for one Raft entry: the Raft service has persisted and
committed it → ``apply(index, bytes)`` decodes and applies it in one SQLite
transaction that also records the index → the result goes back to the
proposer.

Durability: the database runs with ``synchronous=NORMAL``, so a power loss
may drop the last few applied transactions, but never half of one and never
the applied index without its changes. The Raft log still holds those
entries and re-delivers them; ``checkpoint()`` makes everything applied so
far durable and returns the index up to which the Raft log may be compacted.

Snapshots are ``VACUUM INTO`` copies: rebuilt from the logical content alone,
so replicas fed the same log produce byte-identical files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3

from rpc.logfmt import kv

from . import apply as apply_mod
from . import blocks, codec, queries, schema
from .types import (CHUNK_BYTES_DEFAULT, UPLOAD_WINDOW_NS, MANIFEST_PAGE_MAX, READDIR_PAGE_MAX,
                    Command, Result)

log = logging.getLogger("chordfs.meta")

CACHE_KIB = 64 << 10
SNAPSHOT_SCHEMA_COOKIE = 1000


@dataclasses.dataclass(frozen=True)
class InitParams:
    """How a fresh database starts; identical on every replica (cluster config)."""

    now_ns: int
    uid: int = 0
    gid: int = 0
    root_mode: int = 0o755
    chunk_bytes: int = CHUNK_BYTES_DEFAULT


class SnapshotError(Exception):
    """A snapshot file that is not a metadata database of this version."""


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    if path != ":memory:":
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        assert mode == "wal", mode
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    # Debian's SQLite zeroes every deleted row and freed page by default.
    # An unlink of a small file frees its inline data's overflow page, so
    # that cost a third of a replica's apply of an unlink; a filesystem
    # does not scrub freed space either, and a snapshot (VACUUM INTO)
    # copies live rows only.
    conn.execute("PRAGMA secure_delete=OFF")
    return conn


class MetaStore:
    """One replica's metadata database. Not thread-safe: the Raft service
    calls it from one task (or one worker thread) at a time."""

    def __init__(self, path: str, init: InitParams | None = None) -> None:
        self.path = path
        self._conn = _connect(path)
        if not schema.is_initialized(self._conn):
            if init is None:
                self._conn.close()
                raise FileNotFoundError(f"{path}: no metadata database and no InitParams")
            schema.init_db(self._conn, now_ns=init.now_ns, uid=init.uid, gid=init.gid,
                           root_mode=init.root_mode, chunk_bytes=init.chunk_bytes)
        elif init is not None:
            schema.upgrade(self._conn)  # the writer's open; readers open after it
        self._check_version(self._conn, path)
        self.apply_faults = 0  # commands answered EIO since this process opened the file

    @staticmethod
    def _check_version(conn: sqlite3.Connection, path: str) -> None:
        try:
            version = schema.read_state(conn)["schema_version"]
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(f"{path}: {exc}") from exc
        if version != schema.SCHEMA_VERSION:
            raise SnapshotError(f"{path}: schema version {version}, want {schema.SCHEMA_VERSION}")

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------- apply

    @property
    def applied_index(self) -> int:
        return apply_mod.applied_index(self._conn)

    def apply(self, index: int, command_bytes: bytes) -> Result:
        """Decode and apply one Raft entry. ValueError for bytes that are no
        Command (a protocol violation: nothing changes, not even the index)."""
        return self.apply_command(index, codec.decode_command(command_bytes))

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[Result]:
        """Several committed entries in one transaction (one fsync-free commit)."""
        decoded = [(index, codec.decode_command(data)) for index, data in entries]
        return apply_mod.apply_batch(self._conn, decoded, self._fault)

    def apply_command(self, index: int, cmd: Command) -> Result:
        return apply_mod.apply_command(self._conn, index, cmd, self._fault)

    def _fault(self, index: int, cmd: object, exc: Exception) -> None:
        # A bug in a handler: every replica answers EIO alike and keeps
        # running (apply's docstring); the traceback is for whoever fixes it.
        self.apply_faults += 1
        log.warning(kv("meta.apply_fault", index=index, command=type(cmd).__name__,
                       error=f"{type(exc).__name__}: {exc}"[:200]), exc_info=exc)

    def checkpoint(self) -> int:
        """Make every applied index durable; returns the highest one."""
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if self.path != ":memory:":
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self.applied_index

    # ------------------------------------------------------------- queries

    def lookup(self, parent: int, name: bytes):
        return queries.lookup(self._conn, parent, name)

    def getattr(self, ino: int):
        return queries.getattr_(self._conn, ino)

    def parents(self, ino: int) -> list[int]:
        """The directories holding a name of ``ino`` (several for a hard-linked file)."""
        return [row[0] for row in self._conn.execute("SELECT parent FROM dentry WHERE ino = ?",
                                                     (ino,))]

    def readdir(self, ino: int, cursor: bytes = b"", limit: int = READDIR_PAGE_MAX,
                plus: bool = False):
        return queries.readdir(self._conn, ino, cursor, limit, plus)

    def readlink(self, ino: int):
        return queries.readlink(self._conn, ino)

    def getxattr(self, ino: int, name: bytes):
        return queries.getxattr(self._conn, ino, name)

    def listxattr(self, ino: int):
        return queries.listxattr(self._conn, ino)

    def statfs(self):
        return queries.statfs(self._conn)

    def manifest(self, ino: int, start: int = 0, limit: int = MANIFEST_PAGE_MAX):
        return queries.manifest(self._conn, ino, start, limit)

    def manifests(self, inos):
        return queries.manifests(self._conn, inos)

    def orphans(self, after_ino: int = 0, limit: int = 1000) -> list[int]:
        return queries.orphans(self._conn, after_ino, limit)

    # The block lifecycle (blocks.py) as the GC deleter, the sweeper of
    # uncommitted uploads and the compactor see it.

    def gc_candidates(self, limit: int = 1000) -> list[tuple[bytes, int]]:
        return blocks.gc_candidates(self._conn, limit)

    def dying_count(self) -> int:
        return blocks.dying_count(self._conn)

    def live_blocks(self, after_id: bytes = b"", limit: int = 4096) -> list[bytes]:
        return blocks.live_blocks(self._conn, after_id, limit)

    def live_block_count(self) -> int:
        return self.statfs().chunks

    def block_state(self, block_id: bytes) -> tuple[str, int]:
        return blocks.block_state(self._conn, block_id)

    def block_refs(self, block_id: bytes) -> int:
        return blocks.block_refs(self._conn, block_id)

    def log_time_ns(self) -> int:
        return blocks.log_time_ns(self._conn)

    def log_time_at(self, index: int) -> int | None:
        return blocks.log_time_at(self._conn, index)

    def chunk_bytes(self) -> int:
        return schema.chunk_bytes(self._conn)

    def upload_window_ns(self) -> int:
        return UPLOAD_WINDOW_NS

    def fragmented_files(self, limit: int = 64) -> list[int]:
        return blocks.fragmented_files(self._conn, limit)

    def sparse_blocks(self, limit: int = 64) -> list[tuple[int, int]]:
        return blocks.sparse_block_ranges(self._conn, limit)

    def extents_in(self, ino: int, start: int, end: int) -> list[tuple]:
        return blocks.extents_in(self._conn, ino, start, end)

    def range_digest(self, ino: int, off: int, length: int) -> bytes:
        return blocks.range_digest(self._conn, ino, off, length)

    # ------------------------------------------------------------- snapshots

    def snapshot_to(self, path: str, *, concurrent: bool = False) -> int:
        """Write a consistent copy to ``path`` (which must not exist) and
        return the applied index it holds (read back from the copy, which
        VACUUM INTO takes from one read transaction). ``concurrent``: from a
        connection of its own, so applies on this store's connection go on
        meanwhile (WAL: the copy is the state of one moment)."""
        if os.path.exists(path):
            raise FileExistsError(path)
        if concurrent and self.path != ":memory:":
            source = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                     isolation_level=None)
            try:
                source.execute("VACUUM INTO ?", (path,))
            finally:
                source.close()
        else:
            self._conn.execute("VACUUM INTO ?", (path,))
        copy = sqlite3.connect(path, isolation_level=None)
        try:
            # The schema cookie counts schema changes *including* restores
            # (the backup API bumps it), so it differs between replicas with
            # the same content; pin it so equal states give equal bytes.
            copy.execute(f"PRAGMA schema_version = {SNAPSHOT_SCHEMA_COOKIE}")
            return apply_mod.applied_index(copy)
        finally:
            copy.close()

    def _check_snapshot(self, src: sqlite3.Connection, path: str) -> None:
        try:
            if not schema.is_initialized(src):
                raise SnapshotError(f"{path}: not a metadata database")
            (ok,) = src.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SnapshotError(f"{path}: {exc}") from exc
        if ok != "ok":
            raise SnapshotError(f"{path}: {ok}")
        self._check_version(src, path)

    def restore_from(self, path: str) -> int:
        """Replace the whole state with a snapshot file (InstallSnapshot) and
        return its applied index. The copy runs as one transaction on the
        live database, so a crash leaves either the old state or the new."""
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            self._check_snapshot(src, path)
            src.backup(self._conn)
        finally:
            src.close()
        return self.applied_index
