"""rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, as one atomic apply.

Replacing an existing name is a single transaction, so no reader ever sees
the target missing (editors save by writing a temporary file and renaming
it over the original). Checks come in the order Linux makes them
(fs/namei.c do_renameat2 then vfs_rename), so errnos match a local disk:
source ENOENT, NOREPLACE EEXIST, EXCHANGE ENOENT, source is an ancestor of the
new parent EINVAL, target is an ancestor of the source ENOTEMPTY (EINVAL when
exchanging), same inode success, type mismatch ENOTDIR/EISDIR, EMLINK,
non-empty target directory ENOTEMPTY.
"""

from __future__ import annotations

import errno
import sqlite3
import stat

from .namespace import check_name, drop_link, parent_dir
from .schema import ROOT_INO, Inode, dir_is_empty, load, lookup_entry
from .types import LINK_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, RemoveReply, Rename

PURE_CORE = True


def is_ancestor_or_self(conn: sqlite3.Connection, ancestor: int, ino: int) -> bool:
    """Walks ``inode.parent`` from the directory ``ino`` up to the root."""
    steps = 0
    while True:
        if ino == ancestor:
            return True
        if ino == ROOT_INO:
            return False
        row = conn.execute("SELECT parent FROM inode WHERE ino = ?", (ino,)).fetchone()
        assert row is not None and row[0] != 0, "directory without a parent"
        ino = row[0]
        steps += 1
        assert steps < 1 << 20, "parent chain loops"


class _Plan:
    """Everything rename needs, loaded once so that a shared parent is one
    object (its nlink and times must not be saved twice from stale copies)."""

    def __init__(self, src_dir: Inode, dst_dir: Inode, src: Inode, dst: Inode | None):
        self.src_dir, self.dst_dir, self.src, self.dst = src_dir, dst_dir, src, dst
        self.moves_dir = src_dir.ino != dst_dir.ino


def _load_plan(conn: sqlite3.Connection, cmd: Rename) -> tuple[int, _Plan | None]:
    if cmd.flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or cmd.flags == (
            RENAME_NOREPLACE | RENAME_EXCHANGE):
        return errno.EINVAL, None
    err = check_name(cmd.name) or check_name(cmd.new_name)
    if err:
        return err, None
    err, src_dir = parent_dir(conn, cmd.parent)
    if err:
        return err, None
    if cmd.new_parent == cmd.parent:
        dst_dir = src_dir
    else:
        err, dst_dir = parent_dir(conn, cmd.new_parent)
        if err:
            return err, None
    src_ino = lookup_entry(conn, cmd.parent, cmd.name)
    if src_ino is None:
        return errno.ENOENT, None
    dst_ino = lookup_entry(conn, cmd.new_parent, cmd.new_name)
    if dst_ino is not None and cmd.flags & RENAME_NOREPLACE:
        return errno.EEXIST, None
    if dst_ino is None and cmd.flags & RENAME_EXCHANGE:
        return errno.ENOENT, None
    src = load(conn, src_ino)
    dst = load(conn, dst_ino) if dst_ino is not None else None
    assert src is not None and (dst_ino is None or dst is not None)
    return 0, _Plan(src_dir, dst_dir, src, dst)


def _check(conn: sqlite3.Connection, cmd: Rename, plan: _Plan) -> int:
    src, dst, exchange = plan.src, plan.dst, bool(cmd.flags & RENAME_EXCHANGE)
    if src.is_dir and is_ancestor_or_self(conn, src.ino, plan.dst_dir.ino):
        return errno.EINVAL
    if dst is not None and dst.is_dir and is_ancestor_or_self(conn, dst.ino, plan.src_dir.ino):
        return errno.EINVAL if exchange else errno.ENOTEMPTY
    if dst is not None and dst.ino == src.ino:
        return 0
    if dst is not None and not exchange:
        if src.is_dir and not dst.is_dir:
            return errno.ENOTDIR
        if not src.is_dir and dst.is_dir:
            return errno.EISDIR
    if plan.moves_dir:
        dst_is_dir = dst is not None and dst.is_dir
        if src.is_dir and not dst_is_dir and plan.dst_dir.nlink >= LINK_MAX:
            return errno.EMLINK
        if exchange and dst_is_dir and not src.is_dir and plan.src_dir.nlink >= LINK_MAX:
            return errno.EMLINK
    if dst is not None and dst.is_dir and not exchange and not dir_is_empty(conn, dst.ino):
        return errno.ENOTEMPTY
    return 0


def _set_entry(conn: sqlite3.Connection, parent: int, name: bytes, node: Inode) -> None:
    conn.execute("INSERT OR REPLACE INTO dentry VALUES (?, ?, ?, ?)",
                 (parent, name, node.ino, stat.S_IFMT(node.mode)))


def _move_dir(plan: _Plan, node: Inode, from_dir: Inode, to_dir: Inode) -> None:
    """A directory's '..' link moves with it."""
    if node.is_dir and plan.moves_dir:
        from_dir.nlink -= 1
        to_dir.nlink += 1
        node.parent = to_dir.ino


def _exchange(conn: sqlite3.Connection, cmd: Rename, plan: _Plan) -> RemoveReply:
    src, dst = plan.src, plan.dst
    _set_entry(conn, cmd.parent, cmd.name, dst)
    _set_entry(conn, cmd.new_parent, cmd.new_name, src)
    _move_dir(plan, src, plan.src_dir, plan.dst_dir)
    _move_dir(plan, dst, plan.dst_dir, plan.src_dir)
    for node in (src, dst):
        node.ctime = cmd.now_ns
        node.save(conn)
    return RemoveReply(0)


def _replace(conn: sqlite3.Connection, index: int, cmd: Rename, plan: _Plan) -> RemoveReply:
    src, dst = plan.src, plan.dst
    conn.execute("DELETE FROM dentry WHERE parent = ? AND name = ?", (cmd.parent, cmd.name))
    _set_entry(conn, cmd.new_parent, cmd.new_name, src)
    _move_dir(plan, src, plan.src_dir, plan.dst_dir)
    src.ctime = cmd.now_ns
    src.save(conn)
    if dst is None:
        return RemoveReply(0)
    if dst.is_dir:
        plan.dst_dir.nlink -= 1
    nlink = drop_link(conn, dst, index, cmd.now_ns, cmd.keep_orphan)
    return RemoveReply(0, dst.ino, nlink)


def rename(conn: sqlite3.Connection, index: int, cmd: Rename) -> RemoveReply:
    err, plan = _load_plan(conn, cmd)
    if err:
        return RemoveReply(err)
    err = _check(conn, cmd, plan)
    if err or (plan.dst is not None and plan.dst.ino == plan.src.ino):
        return RemoveReply(err)
    if cmd.flags & RENAME_EXCHANGE:
        reply = _exchange(conn, cmd, plan)
    else:
        reply = _replace(conn, index, cmd, plan)
    plan.src_dir.touch_change(cmd.now_ns)
    plan.dst_dir.touch_change(cmd.now_ns)
    plan.src_dir.save(conn)
    if plan.moves_dir:
        plan.dst_dir.save(conn)
    return reply
