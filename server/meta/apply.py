"""The state machine's apply step on decoded commands: one SQLite
transaction per call holding the command's changes and the new applied
index together, so after a crash the database is exactly at some index and
Raft re-delivers from there.

Re-delivery: an index at or below the applied index changes nothing and
returns ``AlreadyApplied`` (results are not stored; after a restart nobody
waits for them). Gaps are allowed: Raft entries that are not metadata
commands (no-ops, configuration changes) never reach this module.

Apply is total: every committed command gets a result and advances the
applied index, whatever it holds, and every replica records the same one.
Each command runs inside its own SAVEPOINT of the batch's transaction:
1. ``validate.check`` refuses what no handler may see (inode numbers outside
   1..2**63-1, bad names, oversized values...). The result is that errno:
   EINVAL for ranges and types, ENAMETOOLONG, ERANGE, E2BIG or EFBIG where
   Linux answers those (validate's docstring lists them). Nothing changes.
2. The handler runs. A command that fails with an errno has changed nothing
   (asserted through the connection's change counter).
3. A handler that raises an ``Exception`` (a bug: sqlite's OverflowError on
   a value it cannot store, a failed assertion, a constraint) is rolled back
   to the savepoint and answered EIO; ``on_fault`` hears of it (the store
   logs a warning). The same code on the same state raises the same way on
   every replica, so recording EIO keeps them identical, where re-raising
   would stop every replica on the same entry after every restart.

Not turned into results: failures of this node's environment (SQLite's
disk full, I/O error, busy, corrupt...; ``MemoryError``, ``OSError``) and
``BaseException`` (cancellation). Another replica applies the same entry
fine, so recording a failure here would make the replicas diverge: the whole
batch rolls back and the exception propagates; Raft re-delivers the entries
after the node restarts.
"""

from __future__ import annotations

import dataclasses
import errno
import sqlite3
from collections.abc import Callable, Iterable

from . import attrs, leases, namespace, rename, sessions, validate
from .schema import load
from .types import (COMMANDS, LEASED, AcquireLease, AlreadyApplied, Clone, CommitWrite,
                    Compact, Create, ForgetChunks, LeaseBatch, Link, Mkdir, Mknod,
                    OpenSession, Sessioned,
                    ReleaseLease, ReleaseOrphan, RemoveXattr, Rename, Result, Rmdir,
                    SetAttr, SetXattr, Symlink, Tick, Unlink)

PURE_CORE = True

Handler = Callable[[sqlite3.Connection, int, object], Result]
# (index, command, exception) of a command answered EIO.
FaultHook = Callable[[int, object, Exception], None]

# The codec a LeaseBatch's operations are encoded with, set by the store
# (leases.Codec: this module stays free of capnp).
_codec: leases.Codec | None = None


def use_codec(codec: leases.Codec) -> None:
    global _codec
    _codec = codec


def _batch(conn: sqlite3.Connection, index: int, cmd: LeaseBatch) -> Result:
    assert _codec is not None, "apply.use_codec was never called"
    return leases.batch(conn, index, cmd, _run, _codec)


def _sessioned(conn: sqlite3.Connection, index: int, cmd: Sessioned) -> Result:
    assert _codec is not None, "apply.use_codec was never called"
    return sessions.sessioned(conn, index, cmd, _run,
                              _codec.decode_command, _codec.encode_result,
                              _codec.decode_result, validate.error_result)


_HANDLERS: dict[type, Handler] = {
    Create: lambda c, i, cmd: namespace.create(c, cmd),
    Mkdir: lambda c, i, cmd: namespace.mkdir(c, cmd),
    Mknod: lambda c, i, cmd: namespace.mknod(c, cmd),
    Symlink: lambda c, i, cmd: namespace.symlink(c, cmd),
    AcquireLease: lambda c, i, cmd: leases.acquire(c, cmd),
    ReleaseLease: lambda c, i, cmd: leases.release(c, cmd),
    LeaseBatch: _batch,
    OpenSession: lambda c, i, cmd: sessions.open_session(c, cmd),
    Sessioned: _sessioned,
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
    Compact: attrs.compact,
    Tick: attrs.tick,
    Clone: namespace.clone,
}
assert set(_HANDLERS) == set(COMMANDS), "every command needs a handler"
# Node-creating commands, handed the inode number a lease holder chose.
_NEW_NODE: dict[type, Callable] = {
    Create: namespace.create, Mkdir: namespace.mkdir, Mknod: namespace.mknod,
    Symlink: namespace.symlink,
}
# Checked for other holders' leases inside, or not changing the namespace.
_LEASE_COMMANDS = (AcquireLease, ReleaseLease, LeaseBatch, Tick, OpenSession, Sessioned)

# SQLite primary result codes that describe this node's disk, memory or
# file rather than the command: SQLITE_BUSY, LOCKED, NOMEM, READONLY,
# INTERRUPT, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOLFS, AUTH, NOTADB.
_LOCAL_SQLITE_CODES = frozenset({5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 22, 23, 26})


def is_local_failure(exc: BaseException) -> bool:
    """True for an exception another replica would not see on the same entry."""
    if not isinstance(exc, Exception) or isinstance(exc, (MemoryError, OSError)):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _LOCAL_SQLITE_CODES


def applied_index(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT applied_index FROM state WHERE id = 0").fetchone()[0]


# The directories whose entries a command changes: their attributes go back
# with its result (EntryReply/RemoveReply.parents).
_PARENTS: dict[type, Callable[[object], tuple[int, ...]]] = {
    Create: lambda cmd: (cmd.parent,), Mkdir: lambda cmd: (cmd.parent,),
    Mknod: lambda cmd: (cmd.parent,), Symlink: lambda cmd: (cmd.parent,),
    Clone: lambda cmd: (cmd.parent,), Link: lambda cmd: (cmd.new_parent,),
    Unlink: lambda cmd: (cmd.parent,), Rmdir: lambda cmd: (cmd.parent,),
    Rename: lambda cmd: tuple(dict.fromkeys((cmd.parent, cmd.new_parent))),
}


def _run(conn: sqlite3.Connection, index: int, cmd: object, ino: int | None = None,
         with_parents: bool = True) -> Result:
    """``ino``: None for a command of its own, whose changes to another
    holder's leased directory are refused; inside a lease batch (which
    checked that already) 0, or the number for the node it creates, or -1
    for a number the holder may not use."""
    err = validate.check(cmd)
    if not err and ino is None and not isinstance(cmd, _LEASE_COMMANDS):
        if leases.any_lease(conn) and leases.blocked(conn, cmd):
            err = LEASED
    if not err and ino is not None and ino < 0:
        err = errno.EINVAL
    if err:
        return validate.error_result(cmd, err)
    before = conn.total_changes
    if ino:
        result = _NEW_NODE[type(cmd)](conn, cmd, ino)
    else:
        result = _HANDLERS[type(cmd)](conn, index, cmd)
    # A session keeps the reply of a command that failed (sessions.py); the
    # command itself was checked by its own _run.
    assert result.err == 0 or conn.total_changes == before or isinstance(cmd, Sessioned), (
        f"{type(cmd).__name__} changed state before failing with {result.err}")
    parents = _PARENTS.get(type(cmd)) if with_parents else None
    if parents is not None and result.err == 0:
        nodes = (load(conn, ino) for ino in parents(cmd))
        result = dataclasses.replace(result, parents=[n.attr() for n in nodes if n is not None])
    return result


def _apply_one(conn: sqlite3.Connection, index: int, cmd: object, applied: int,
               on_fault: FaultHook | None) -> Result:
    if index <= applied:
        return AlreadyApplied(index, applied)
    conn.execute("SAVEPOINT command")
    try:
        result = _run(conn, index, cmd)
    except Exception as exc:
        if is_local_failure(exc):
            raise
        conn.execute("ROLLBACK TO command")
        result = validate.error_result(cmd, errno.EIO)
        if on_fault is not None:
            on_fault(index, cmd, exc)
    conn.execute("RELEASE command")
    conn.execute("UPDATE state SET applied_index = ? WHERE id = 0", (index,))
    return result


def apply_batch(conn: sqlite3.Connection, entries: Iterable[tuple[int, object]],
                on_fault: FaultHook | None = None) -> list[Result]:
    """Apply ``(index, command)`` pairs in order inside one transaction;
    indexes must increase. The whole batch commits or, on a local failure
    (module docstring), none of it does."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        applied = applied_index(conn)
        results = []
        for index, cmd in entries:
            result = _apply_one(conn, index, cmd, applied, on_fault)
            applied = max(applied, index)
            results.append(result)
        conn.execute("COMMIT")
    except BaseException:
        # SQLite ends the transaction itself on some errors (disk full, I/O):
        # a second ROLLBACK would hide the original exception.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


def apply_command(conn: sqlite3.Connection, index: int, cmd: object,
                  on_fault: FaultHook | None = None) -> Result:
    return apply_batch(conn, [(index, cmd)], on_fault)[0]
