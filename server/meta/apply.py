"""The state machine's apply step on decoded commands: one SQLite
transaction per call holding the command's changes and the new applied
index together, so after a crash the database is exactly at some index and
Raft re-delivers from there.

Re-delivery: an index at or below the applied index changes nothing and
returns ``AlreadyApplied`` (results are not stored; after a restart nobody
waits for them). Gaps are allowed: Raft entries that are not metadata
commands (no-ops, configuration changes) never reach this module.

A command that fails with an errno has changed nothing (asserted through the
connection's change counter); an exception is a bug, rolls the whole call
back and propagates, because swallowing it would let replicas diverge.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from . import attrs, namespace, rename
from .types import (AlreadyApplied, CommitWrite, Create, ForgetChunks, Link,
                    Mkdir, Mknod, ReleaseOrphan, RemoveXattr, Rename, Result,
                    Rmdir, SetAttr, SetXattr, Symlink, Unlink)

PURE_CORE = True

Handler = Callable[[sqlite3.Connection, int, object], Result]

_HANDLERS: dict[type, Handler] = {
    Create: lambda c, i, cmd: namespace.create(c, cmd),
    Mkdir: lambda c, i, cmd: namespace.mkdir(c, cmd),
    Mknod: lambda c, i, cmd: namespace.mknod(c, cmd),
    Symlink: lambda c, i, cmd: namespace.symlink(c, cmd),
    Link: lambda c, i, cmd: namespace.link(c, cmd),
    Unlink: namespace.unlink,
    Rmdir: namespace.rmdir,
    Rename: rename.rename,
    SetAttr: attrs.setattr,
    SetXattr: lambda c, i, cmd: attrs.setxattr(c, cmd),
    RemoveXattr: lambda c, i, cmd: attrs.removexattr(c, cmd),
    CommitWrite: attrs.commit_write,
    ReleaseOrphan: attrs.release_orphan,
    ForgetChunks: lambda c, i, cmd: attrs.forget_chunks(c, cmd),
}


def applied_index(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT applied_index FROM state WHERE id = 0").fetchone()[0]


def _apply_one(conn: sqlite3.Connection, index: int, cmd: object, applied: int) -> Result:
    if index <= applied:
        return AlreadyApplied(index, applied)
    handler = _HANDLERS.get(type(cmd))
    if handler is None:
        raise TypeError(f"not a metadata command: {type(cmd).__name__}")
    before = conn.total_changes
    result = handler(conn, index, cmd)
    assert result.err == 0 or conn.total_changes == before, (
        f"{type(cmd).__name__} changed state before failing with {result.err}")
    conn.execute("UPDATE state SET applied_index = ? WHERE id = 0", (index,))
    return result


def apply_batch(conn: sqlite3.Connection, entries: Iterable[tuple[int, object]]) -> list[Result]:
    """Apply ``(index, command)`` pairs in order inside one transaction;
    indexes must increase. The whole batch commits or none of it does."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = applied_index(conn)
        results = []
        for index, cmd in entries:
            result = _apply_one(conn, index, cmd, applied)
            applied = max(applied, index)
            results.append(result)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return results


def apply_command(conn: sqlite3.Connection, index: int, cmd: object) -> Result:
    return apply_batch(conn, [(index, cmd)])[0]
