"""Commands that change one inode in place: setattr (mode, owner, size,
times), extended attributes, commit_write, compact, release_orphan,
forget_chunks, tick.

Every change sets ctime to the command's ``now_ns``. Permission checks are
the kernel's (the mount uses default_permissions), and so is clearing
setuid/setgid on chown or write: the kernel sends the resulting mode in the
same setattr.
"""

from __future__ import annotations

import errno
import sqlite3
import stat

from . import acl, blocks, leases, sessions
from .namespace import free_inode
from .schema import Inode, add_counters, bytes_errno, file_errno, load, xattr_value
from .types import (INLINE_BYTES_MAX, XATTR_CREATE, XATTR_NAME_BYTES_MAX,
                    XATTR_REPLACE, XATTR_VALUE_BYTES_MAX, CommitWrite, Compact,
                    EntryReply, ForgetChunks, ReleaseOrphan, RemoveXattr,
                    SetAttr, SetXattr, Status, Tick, Utime)

PURE_CORE = True


def _time(value: int | Utime, current: int, now_ns: int) -> int:
    if value is Utime.OMIT:
        return current
    if value is Utime.NOW:
        return now_ns
    return value


def _resize(conn: sqlite3.Connection, node: Inode, size: int, index: int, now_ns: int) -> None:
    if size < node.size:
        blocks.truncate(conn, node.ino, size, index)
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
        err = bytes_errno(conn, cmd.size - node.size)
        if err:
            return EntryReply(err)
    if cmd.mode is not None:
        node.mode = stat.S_IFMT(node.mode) | (cmd.mode & 0o7777)
        _chmod_acl(conn, node.ino, node.mode)
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


def _chmod_acl(conn: sqlite3.Connection, ino: int, mode: int) -> None:
    entries = acl.stored(xattr_value(conn, ino, acl.ACCESS))
    if entries:
        conn.execute("UPDATE xattr SET value = ? WHERE ino = ? AND name = ?",
                     (acl.encode(acl.chmod(entries, mode)), ino, acl.ACCESS))


def _set_acl(conn: sqlite3.Connection, node: Inode, cmd: SetXattr) -> Status | None:
    """The ACL rules of a set of an ACL xattr (acl.py): None when the value
    is to be stored as it is, else the result, with what had to change
    done."""
    entries = acl.decode(cmd.value)
    if isinstance(entries, int):
        return Status(entries)
    if cmd.name == acl.DEFAULT:
        if not node.is_dir:
            return Status(errno.EACCES)
        return _drop_xattr(conn, node, cmd) if not entries else None
    if not entries:
        return _drop_xattr(conn, node, cmd)
    node.mode = (node.mode & ~0o777) | acl.mode_bits(entries)
    if acl.is_minimal(entries):
        return _drop_xattr(conn, node, cmd)  # the mode says it all
    node.ctime = cmd.now_ns
    node.save(conn)
    return None


def _drop_xattr(conn: sqlite3.Connection, node: Inode, cmd: SetXattr) -> Status:
    conn.execute("DELETE FROM xattr WHERE ino = ? AND name = ?", (node.ino, cmd.name))
    node.ctime = cmd.now_ns
    node.save(conn)
    return Status(0)


def setxattr(conn: sqlite3.Connection, cmd: SetXattr) -> Status:
    node = load(conn, cmd.ino)
    if node is None:
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
    if cmd.name in acl.NAMES:
        done = _set_acl(conn, node, cmd)
        if done is not None:
            return done
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


def commit_write(conn: sqlite3.Connection, index: int, cmd: CommitWrite) -> EntryReply:
    node = load(conn, cmd.ino)
    err = file_errno(node) or blocks.validate_slices(cmd.slices)
    if err:
        return EntryReply(err)
    end = max((s.off + s.length for s in cmd.slices), default=0)
    size = max(node.size, cmd.size, end)
    err = bytes_errno(conn, size - node.size)
    if err:
        return EntryReply(err)
    if blocks.check_blocks(conn, cmd.slices, cmd.observed):
        return EntryReply(errno.ESTALE)
    blocks.write_slices(conn, node.ino, cmd.slices, index, empty=node.size == 0)
    add_counters(conn, bytes_=size - node.size)
    node.size = size
    node.mtime = node.ctime = cmd.now_ns
    node.save(conn)
    return EntryReply(0, node.attr())


def compact(conn: sqlite3.Connection, index: int, cmd: Compact) -> Status:
    """The compactor's rewrite of a range, only if nobody changed it since
    the compactor read it; the new slices stay inside the range and the
    file's size."""
    node = load(conn, cmd.ino)
    err = file_errno(node) or blocks.validate_slices(cmd.slices, inline_allowed=False)
    if err:
        return Status(err)
    if cmd.off < 0 or cmd.length <= 0 or any(
            s.off < cmd.off or s.off + s.length > min(cmd.off + cmd.length, node.size)
            for s in cmd.slices):
        return Status(errno.EINVAL)
    if blocks.range_digest(conn, node.ino, cmd.off, cmd.length) != cmd.expect:
        return Status(errno.EAGAIN)
    if blocks.check_blocks(conn, cmd.slices, cmd.observed):
        return Status(errno.ESTALE)
    deltas = blocks.Deltas()
    blocks.cut(conn, node.ino, cmd.off, cmd.off + cmd.length, deltas)
    blocks.settle(conn, deltas, index)
    blocks.write_slices(conn, node.ino, cmd.slices, index)
    return Status(0)


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
    if len(cmd.chunk_ids) != len(cmd.marks):
        return Status(errno.EINVAL)
    blocks.forget(conn, cmd.chunk_ids, cmd.marks)
    return Status(0)


def tick(conn: sqlite3.Connection, index: int, cmd: Tick) -> Status:
    blocks.tick(conn, index, cmd.now_ns)
    now_ns = conn.execute("SELECT log_ns FROM state WHERE id = 0").fetchone()[0]
    leases.tick(conn, now_ns)
    sessions.tick(conn, now_ns)
    return Status(0)
