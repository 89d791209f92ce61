"""Namespace commands: create, mkdir, mknod, symlink, link, unlink, rmdir,
and the helpers rename shares (name checks, adding and dropping links).

Each handler checks everything first and returns an errno before touching
the database; only a command that will succeed writes. Errno order follows
Linux (name length, parent, existing entry, type), so a client sees what a
local filesystem would say.
"""

from __future__ import annotations

import errno
import sqlite3
import stat

from . import acl, blocks
from .schema import (INODE_COLUMNS, Inode, add_counters, allocate_ino, bytes_errno,
                     dir_is_empty, file_errno, load, lookup_entry, xattr_value)
from .types import (LINK_MAX, SYMLINK_BYTES_MAX, Clone, Create, EntryReply, Link,
                    Mkdir, Mknod, RemoveReply, Rmdir, Symlink, Unlink)
from .validate import check_name

PURE_CORE = True


def parent_dir(conn: sqlite3.Connection, ino: int) -> tuple[int, Inode | None]:
    node = load(conn, ino)
    if node is None:
        return errno.ENOENT, None
    if not node.is_dir:
        return errno.ENOTDIR, None
    return 0, node


def _prepare(conn: sqlite3.Connection, parent: int, name: bytes) -> tuple[int, Inode | None]:
    """Common checks for every command that adds ``name`` to ``parent``."""
    err = check_name(name)
    if err:
        return err, None
    err, pdir = parent_dir(conn, parent)
    if err:
        return err, None
    if lookup_entry(conn, parent, name) is not None:
        return errno.EEXIST, None
    return 0, pdir


def _inherited(conn: sqlite3.Connection, parent: int, mode: int,
               umask: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    """The mode and the ACL xattrs of a node created in ``parent``: its
    default ACL masked by the mode asked for, or without one the umask
    (acl.py)."""
    default = xattr_value(conn, parent, acl.DEFAULT)
    entries = acl.stored(default)
    if not entries:
        return mode & ~(umask & 0o777), []
    mode, access = acl.inherit(entries, mode)
    xattrs = [(acl.ACCESS, acl.encode(access))] if access else []
    if stat.S_ISDIR(mode):
        xattrs.append((acl.DEFAULT, default))
    return mode, xattrs


def _new_inode(conn: sqlite3.Connection, pdir: Inode, name: bytes, mode: int,
               uid: int, gid: int, rdev: int, now_ns: int, *,
               size: int = 0, target: bytes | None = None, umask: int | None = None,
               ino: int = 0) -> Inode:
    """Insert inode + entry and update the parent. A setgid directory passes
    its group on, and its setgid bit to subdirectories (BSD group semantics).
    ``umask``: the node takes the parent's default ACL or else the umask
    (None for symlinks and clones, whose modes are final). ``ino``: the
    number a lease holder chose from its range (leases.py), else the next."""
    if pdir.mode & stat.S_ISGID:
        gid = pdir.gid
        if stat.S_ISDIR(mode):
            mode |= stat.S_ISGID
    xattrs: list[tuple[bytes, bytes]] = []
    if umask is not None:
        mode, xattrs = _inherited(conn, pdir.ino, mode, umask)
    is_dir = stat.S_ISDIR(mode)
    if ino:
        conn.execute("UPDATE state SET inodes = inodes + 1 WHERE id = 0")
    else:
        ino = allocate_ino(conn)
    row = (ino, mode, uid, gid, size, 2 if is_dir else 1, rdev,
           now_ns, now_ns, now_ns, pdir.ino if is_dir else 0, 0)
    conn.execute(
        f"INSERT INTO inode({INODE_COLUMNS}, target) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        row + (target,),
    )
    conn.execute("INSERT INTO dentry VALUES (?, ?, ?, ?)",
                 (pdir.ino, name, ino, stat.S_IFMT(mode)))
    conn.executemany("INSERT INTO xattr VALUES (?, ?, ?)",
                     [(ino, xname, value) for xname, value in xattrs])
    if is_dir:
        pdir.nlink += 1
    pdir.touch_change(now_ns)
    pdir.save(conn)
    return Inode(row)


def create(conn: sqlite3.Connection, cmd: Create, ino: int = 0) -> EntryReply:
    err, pdir = _prepare(conn, cmd.parent, cmd.name)
    if err:
        return EntryReply(err)
    mode = stat.S_IFREG | (cmd.mode & 0o7777)
    node = _new_inode(conn, pdir, cmd.name, mode, cmd.uid, cmd.gid, 0, cmd.now_ns,
                      umask=cmd.umask, ino=ino)
    return EntryReply(0, node.attr())


def clone(conn: sqlite3.Connection, index: int, cmd: Clone) -> EntryReply:
    src = load(conn, cmd.src)
    err = file_errno(src)
    if err:
        return EntryReply(err)
    err, pdir = _prepare(conn, cmd.parent, cmd.name)
    if not err:
        err = bytes_errno(conn, src.size)
    if err:
        return EntryReply(err)
    mode = stat.S_IFREG | (cmd.mode & 0o7777)
    node = _new_inode(conn, pdir, cmd.name, mode, cmd.uid, cmd.gid, 0, cmd.now_ns,
                      size=src.size)
    blocks.copy_layout(conn, src.ino, node.ino, index)
    add_counters(conn, bytes_=src.size)
    return EntryReply(0, node.attr())


def mkdir(conn: sqlite3.Connection, cmd: Mkdir, ino: int = 0) -> EntryReply:
    err, pdir = _prepare(conn, cmd.parent, cmd.name)
    if err:
        return EntryReply(err)
    if pdir.nlink >= LINK_MAX:
        return EntryReply(errno.EMLINK)
    mode = stat.S_IFDIR | (cmd.mode & 0o7777)
    node = _new_inode(conn, pdir, cmd.name, mode, cmd.uid, cmd.gid, 0, cmd.now_ns,
                      umask=cmd.umask, ino=ino)
    return EntryReply(0, node.attr())


MKNOD_TYPES = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def mknod(conn: sqlite3.Connection, cmd: Mknod, ino: int = 0) -> EntryReply:
    kind = stat.S_IFMT(cmd.mode) or stat.S_IFREG
    if kind == stat.S_IFDIR:
        return EntryReply(errno.EPERM)
    if kind not in MKNOD_TYPES:
        return EntryReply(errno.EINVAL)
    err, pdir = _prepare(conn, cmd.parent, cmd.name)
    if err:
        return EntryReply(err)
    is_dev = kind in (stat.S_IFCHR, stat.S_IFBLK)
    node = _new_inode(conn, pdir, cmd.name, kind | (cmd.mode & 0o7777), cmd.uid,
                      cmd.gid, cmd.rdev if is_dev else 0, cmd.now_ns, umask=cmd.umask,
                      ino=ino)
    return EntryReply(0, node.attr())


def symlink(conn: sqlite3.Connection, cmd: Symlink, ino: int = 0) -> EntryReply:
    err, pdir = _prepare(conn, cmd.parent, cmd.name)
    if err:
        return EntryReply(err)
    if not cmd.target:
        return EntryReply(errno.ENOENT)
    if len(cmd.target) > SYMLINK_BYTES_MAX:
        return EntryReply(errno.ENAMETOOLONG)
    if b"\0" in cmd.target:
        return EntryReply(errno.EINVAL)
    node = _new_inode(conn, pdir, cmd.name, stat.S_IFLNK | 0o777, cmd.uid, cmd.gid,
                      0, cmd.now_ns, size=len(cmd.target), target=cmd.target, ino=ino)
    return EntryReply(0, node.attr())


def link(conn: sqlite3.Connection, cmd: Link) -> EntryReply:
    err = check_name(cmd.new_name)
    if err:
        return EntryReply(err)
    node = load(conn, cmd.ino)
    if node is None:
        return EntryReply(errno.ENOENT)
    err, pdir = _prepare(conn, cmd.new_parent, cmd.new_name)
    if err:
        return EntryReply(err)
    if node.is_dir:
        return EntryReply(errno.EPERM)
    if node.nlink == 0:
        return EntryReply(errno.ENOENT)
    if node.nlink >= LINK_MAX:
        return EntryReply(errno.EMLINK)
    conn.execute("INSERT INTO dentry VALUES (?, ?, ?, ?)",
                 (pdir.ino, cmd.new_name, node.ino, stat.S_IFMT(node.mode)))
    pdir.touch_change(cmd.now_ns)
    pdir.save(conn)
    node.nlink += 1
    node.ctime = cmd.now_ns
    node.save(conn)
    return EntryReply(0, node.attr())


def free_inode(conn: sqlite3.Connection, node: Inode, index: int, now_ns: int) -> None:
    blocks.drop_all(conn, node.ino, index)
    conn.execute("DELETE FROM xattr WHERE ino = ?", (node.ino,))
    conn.execute("DELETE FROM inode WHERE ino = ?", (node.ino,))
    add_counters(conn, inodes=-1, bytes_=-node.size if node.is_reg else 0)


def drop_link(conn: sqlite3.Connection, node: Inode, index: int, now_ns: int,
              keep_orphan: bool) -> int:
    """The caller already removed one entry naming ``node``; returns the
    nlink left. An empty directory, or a non-directory losing its last link
    without ``keep_orphan``, is freed at once."""
    if node.is_dir:
        free_inode(conn, node, index, now_ns)
        return 0
    node.nlink -= 1
    node.ctime = now_ns
    if node.nlink == 0 and not keep_orphan:
        free_inode(conn, node, index, now_ns)
        return 0
    node.orphan = int(node.nlink == 0)
    node.save(conn)
    return node.nlink


def _remove_entry(conn: sqlite3.Connection, pdir: Inode, name: bytes,
                  node: Inode, now_ns: int) -> None:
    conn.execute("DELETE FROM dentry WHERE parent = ? AND name = ?", (pdir.ino, name))
    if node.is_dir:
        pdir.nlink -= 1
    pdir.touch_change(now_ns)
    pdir.save(conn)


def _find(conn: sqlite3.Connection, parent: int, name: bytes) -> tuple[int, Inode | None, Inode | None]:
    err = check_name(name)
    if err:
        return err, None, None
    err, pdir = parent_dir(conn, parent)
    if err:
        return err, None, None
    ino = lookup_entry(conn, parent, name)
    if ino is None:
        return errno.ENOENT, None, None
    node = load(conn, ino)
    assert node is not None, "dentry points at a missing inode"
    return 0, pdir, node


def unlink(conn: sqlite3.Connection, index: int, cmd: Unlink) -> RemoveReply:
    err, pdir, node = _find(conn, cmd.parent, cmd.name)
    if err:
        return RemoveReply(err)
    if node.is_dir:
        return RemoveReply(errno.EISDIR)
    _remove_entry(conn, pdir, cmd.name, node, cmd.now_ns)
    nlink = drop_link(conn, node, index, cmd.now_ns, cmd.keep_orphan)
    return RemoveReply(0, node.ino, nlink)


def rmdir(conn: sqlite3.Connection, index: int, cmd: Rmdir) -> RemoveReply:
    err, pdir, node = _find(conn, cmd.parent, cmd.name)
    if err:
        return RemoveReply(err)
    if not node.is_dir:
        return RemoveReply(errno.ENOTDIR)
    if not dir_is_empty(conn, node.ino):
        return RemoveReply(errno.ENOTEMPTY)
    _remove_entry(conn, pdir, cmd.name, node, cmd.now_ns)
    drop_link(conn, node, index, cmd.now_ns, False)
    return RemoveReply(0, node.ino, 0)
