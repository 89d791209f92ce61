"""Commands that change one inode in place: setattr (mode, owner, size,
times), extended attributes, commit_write, release_orphan, forget_chunks.

Every change sets ctime to the command's ``now_ns``. Permission checks are
the kernel's (the mount uses default_permissions), and so is clearing
setuid/setgid on chown or write: the kernel sends the resulting mode in the
same setattr.
"""

from __future__ import annotations

import errno
import sqlite3
import stat

from . import chunks
from .namespace import free_inode
from .schema import Inode, add_counters, chunk_bytes, load
from .types import (INLINE_BYTES_MAX, XATTR_CREATE, XATTR_NAME_BYTES_MAX,
                    XATTR_REPLACE, XATTR_VALUE_BYTES_MAX, CommitWrite,
                    EntryReply, ForgetChunks, ReleaseOrphan, RemoveXattr,
                    SetAttr, SetXattr, Status, Utime)

PURE_CORE = True


def _time(value: int | Utime, current: int, now_ns: int) -> int:
    if value is Utime.OMIT:
        return current
    if value is Utime.NOW:
        return now_ns
    return value


def _resize(conn: sqlite3.Connection, node: Inode, size: int, index: int, now_ns: int) -> None:
    if size < node.size:
        chunks.truncate_chunks(conn, node.ino, size, chunk_bytes(conn), index, now_ns)
        conn.execute(
            "UPDATE inode SET inline = substr(inline, 1, ?)"
            " WHERE ino = ? AND length(inline) > ?",
            (size, node.ino, size),
        )
    add_counters(conn, bytes_=size - node.size)
    node.size = size


def setattr(conn: sqlite3.Connection, index: int, cmd: SetAttr) -> EntryReply:
    node = load(conn, cmd.ino)
    if node is None:
        return EntryReply(errno.ENOENT)
    if cmd.size is not None:
        if node.is_dir:
            return EntryReply(errno.EISDIR)
        if not node.is_reg or cmd.size < 0:
            return EntryReply(errno.EINVAL)
    if cmd.mode is not None:
        node.mode = stat.S_IFMT(node.mode) | (cmd.mode & 0o7777)
    if cmd.uid is not None:
        node.uid = cmd.uid
    if cmd.gid is not None:
        node.gid = cmd.gid
    mtime = cmd.mtime
    if cmd.size is not None:
        _resize(conn, node, cmd.size, index, cmd.now_ns)
        if mtime is Utime.OMIT:
            mtime = Utime.NOW
    node.atime = _time(cmd.atime, node.atime, cmd.now_ns)
    node.mtime = _time(mtime, node.mtime, cmd.now_ns)
    node.ctime = cmd.now_ns
    node.save(conn)
    return EntryReply(0, node.attr())


def _check_xattr_name(name: bytes) -> int:
    if not name or len(name) > XATTR_NAME_BYTES_MAX or b"\0" in name:
        return errno.ERANGE
    return 0


def _touch(conn: sqlite3.Connection, ino: int, now_ns: int) -> None:
    conn.execute("UPDATE inode SET ctime = ? WHERE ino = ?", (now_ns, ino))


def setxattr(conn: sqlite3.Connection, cmd: SetXattr) -> Status:
    if load(conn, cmd.ino) is None:
        return Status(errno.ENOENT)
    err = _check_xattr_name(cmd.name)
    if err:
        return Status(err)
    if len(cmd.value) > XATTR_VALUE_BYTES_MAX:
        return Status(errno.E2BIG)
    if cmd.flags & ~(XATTR_CREATE | XATTR_REPLACE) or cmd.flags == (
            XATTR_CREATE | XATTR_REPLACE):
        return Status(errno.EINVAL)
    exists = conn.execute(
        "SELECT 1 FROM xattr WHERE ino = ? AND name = ?", (cmd.ino, cmd.name)
    ).fetchone() is not None
    if exists and cmd.flags & XATTR_CREATE:
        return Status(errno.EEXIST)
    if not exists and cmd.flags & XATTR_REPLACE:
        return Status(errno.ENODATA)
    conn.execute("INSERT OR REPLACE INTO xattr VALUES (?, ?, ?)",
                 (cmd.ino, cmd.name, cmd.value))
    _touch(conn, cmd.ino, cmd.now_ns)
    return Status(0)


def removexattr(conn: sqlite3.Connection, cmd: RemoveXattr) -> Status:
    if load(conn, cmd.ino) is None:
        return Status(errno.ENOENT)
    err = _check_xattr_name(cmd.name)
    if err:
        return Status(err)
    gone = conn.execute("DELETE FROM xattr WHERE ino = ? AND name = ?",
                        (cmd.ino, cmd.name)).rowcount
    if not gone:
        return Status(errno.ENODATA)
    _touch(conn, cmd.ino, cmd.now_ns)
    return Status(0)


def _check_commit(conn: sqlite3.Connection, cmd: CommitWrite, node: Inode | None) -> int:
    if node is None:
        return errno.ENOENT
    if node.is_dir:
        return errno.EISDIR
    if not node.is_reg or cmd.size < 0:
        return errno.EINVAL
    if cmd.inline is not None:
        if len(cmd.inline) > INLINE_BYTES_MAX or cmd.chunks:
            return errno.EINVAL
        return 0
    if not chunks.validate_chunks(cmd.chunks, chunk_bytes(conn), cmd.size):
        return errno.EINVAL
    return 0


def commit_write(conn: sqlite3.Connection, index: int, cmd: CommitWrite) -> EntryReply:
    node = load(conn, cmd.ino)
    err = _check_commit(conn, cmd, node)
    if err:
        return EntryReply(err)
    if cmd.inline is not None:
        chunks.drop_all_chunks(conn, node.ino, index, cmd.now_ns)
        conn.execute("UPDATE inode SET inline = ? WHERE ino = ?", (cmd.inline, node.ino))
        size = len(cmd.inline)
    else:
        chunks.put_chunks(conn, node.ino, cmd.chunks, index, cmd.now_ns)
        if cmd.chunks:
            conn.execute("UPDATE inode SET inline = NULL WHERE ino = ?", (node.ino,))
        size = max(node.size, cmd.size)
    add_counters(conn, bytes_=size - node.size)
    node.size = size
    node.mtime = node.ctime = cmd.now_ns
    node.save(conn)
    return EntryReply(0, node.attr())


def release_orphan(conn: sqlite3.Connection, index: int, cmd: ReleaseOrphan) -> Status:
    """Frees an unlinked-while-open inode; a linked inode is left alone, so
    the FUSE layer may call this on every last close of an unlinked file."""
    node = load(conn, cmd.ino)
    if node is None:
        return Status(errno.ENOENT)
    if node.nlink == 0:
        assert node.orphan, "nlink 0 inode must be an orphan"
        free_inode(conn, node, index, cmd.now_ns)
    return Status(0)


def forget_chunks(conn: sqlite3.Connection, cmd: ForgetChunks) -> Status:
    chunks.forget_chunks(conn, cmd.chunk_ids)
    return Status(0)
