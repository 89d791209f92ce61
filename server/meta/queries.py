"""Read-only queries: lookup, getattr, readdir, readlink, xattrs, statfs,
manifest, orphans.

Queries never write and never look at a clock. Linearizable reads are the
caller's business (ReadIndex or a leader lease before calling). Every list is
paged with a bound, so no query loads a whole huge directory or manifest:
readdir walks the (parent, name) primary key from the cursor.
"""

from __future__ import annotations

import errno
import sqlite3

from .namespace import check_name
from .schema import (INODE_COLUMNS, Inode, chunk_bytes, file_errno, load, read_state,
                     xattr_value)
from .types import (MANIFEST_PAGE_MAX, MANIFESTS_MAX, READDIR_PAGE_MAX, BytesReply, Slice,
                    DirEntry, DirPage, EntryReply, ManifestPage, ManifestPages, NamesReply,
                    StatFs)

PURE_CORE = True

_JOINED = ", ".join("i." + c.strip() for c in INODE_COLUMNS.split(","))


def getattr_(conn: sqlite3.Connection, ino: int) -> EntryReply:
    node = load(conn, ino)
    if node is None:
        return EntryReply(errno.ENOENT)
    return EntryReply(0, node.attr(), xattrs=_xattrs(conn, ino))


def _xattrs(conn: sqlite3.Connection, ino: int) -> int:
    """EntryReply.xattrs: 1 when the node has none, 2 when it has some."""
    return 2 if conn.execute("SELECT 1 FROM xattr WHERE ino = ? LIMIT 1", (ino,)).fetchone() else 1


def lookup(conn: sqlite3.Connection, parent: int, name: bytes) -> EntryReply:
    """One indexed join on a hit; the parent is examined only on a miss
    (a non-directory has no entries, so a hit proves the parent is one)."""
    err = check_name(name)
    if err:
        return EntryReply(err)
    row = conn.execute(
        f"SELECT {_JOINED} FROM dentry d JOIN inode i ON i.ino = d.ino"
        " WHERE d.parent = ? AND d.name = ?", (parent, name)
    ).fetchone()
    if row is not None:
        node = Inode(row)
        return EntryReply(0, node.attr(), xattrs=_xattrs(conn, node.ino))
    pdir = load(conn, parent)
    if pdir is None:
        return EntryReply(errno.ENOENT)
    return EntryReply(errno.ENOTDIR if not pdir.is_dir else errno.ENOENT)


def readdir(conn: sqlite3.Connection, ino: int, cursor: bytes = b"",
            limit: int = READDIR_PAGE_MAX, plus: bool = False) -> DirPage:
    """Entries with name > cursor, bytewise order, at most ``limit`` (capped
    at READDIR_PAGE_MAX). The cursor is a name, so it stays valid whatever
    is added or removed meanwhile: an entry present for the whole listing is
    returned exactly once. '.' and '..' are the FUSE layer's (``parent``).
    ``plus`` adds each entry's attributes (readdirplus) from the same join."""
    node = load(conn, ino)
    if node is None:
        return DirPage(errno.ENOENT)
    if not node.is_dir:
        return DirPage(errno.ENOTDIR)
    limit = max(1, min(limit, READDIR_PAGE_MAX))
    if plus:
        rows = conn.execute(
            f"SELECT d.name, d.kind, EXISTS(SELECT 1 FROM xattr x WHERE x.ino = d.ino), {_JOINED}"
            " FROM dentry d JOIN inode i ON i.ino = d.ino"
            " WHERE d.parent = ? AND d.name > ? ORDER BY d.name LIMIT ?",
            (ino, cursor, limit + 1),
        ).fetchall()
        entries = [DirEntry(r[0], r[3], r[1], Inode(r[3:]).attr(), bool(r[2]))
                   for r in rows[:limit]]
    else:
        rows = conn.execute(
            "SELECT name, ino, kind FROM dentry WHERE parent = ? AND name > ?"
            " ORDER BY name LIMIT ?",
            (ino, cursor, limit + 1),
        ).fetchall()
        entries = [DirEntry(name, child, kind) for name, child, kind in rows[:limit]]
    done = len(rows) <= limit
    next_cursor = entries[-1].name if entries else cursor
    return DirPage(0, entries, next_cursor, done, node.parent)


def readlink(conn: sqlite3.Connection, ino: int) -> BytesReply:
    row = conn.execute("SELECT target FROM inode WHERE ino = ?", (ino,)).fetchone()
    if row is None:
        return BytesReply(errno.ENOENT)
    if row[0] is None:
        return BytesReply(errno.EINVAL)
    return BytesReply(0, row[0])


def getxattr(conn: sqlite3.Connection, ino: int, name: bytes) -> BytesReply:
    if load(conn, ino) is None:
        return BytesReply(errno.ENOENT)
    value = xattr_value(conn, ino, name)
    if value is None:
        return BytesReply(errno.ENODATA)
    return BytesReply(0, value)


def listxattr(conn: sqlite3.Connection, ino: int) -> NamesReply:
    """All names, sorted; bounded by the inode's xattrs (names <= 255 bytes)."""
    if load(conn, ino) is None:
        return NamesReply(errno.ENOENT)
    rows = conn.execute(
        "SELECT name FROM xattr WHERE ino = ? ORDER BY name", (ino,)
    ).fetchall()
    return NamesReply(0, [r[0] for r in rows])


def statfs(conn: sqlite3.Connection) -> StatFs:
    s = read_state(conn)
    # Commands that would count past int64 get EFBIG (schema.bytes_errno);
    # a database written before that check may still hold a REAL here.
    used = min(int(s["bytes"]), 2**63 - 1)
    return StatFs(inodes=s["inodes"], bytes=used, chunks=s["chunks"],
                  next_ino=s["next_ino"], applied_index=s["applied_index"])


MANIFEST_INLINE_BYTES_MAX = 1 << 20


def manifest(conn: sqlite3.Connection, ino: int, start: int = 0,
             limit: int = MANIFEST_PAGE_MAX) -> ManifestPage:
    """Extents with off >= start in offset order, at most ``limit`` of them
    and about MANIFEST_INLINE_BYTES_MAX inline bytes; holes are absent."""
    node = load(conn, ino)
    err = file_errno(node)
    if err:
        return ManifestPage(err)
    limit = max(1, min(limit, MANIFEST_PAGE_MAX))
    slices: list[Slice] = []
    inline = 0
    done = True
    for off, length, block_id, block_off, data in conn.execute(
            "SELECT off, length, block_id, block_off, data FROM extent"
            " WHERE ino = ? AND off >= ? ORDER BY off", (ino, start)):
        if len(slices) >= limit or inline > MANIFEST_INLINE_BYTES_MAX:
            done = False
            break
        if block_id:
            size = conn.execute("SELECT size FROM block WHERE block_id = ?",
                                (block_id,)).fetchone()[0]
            slices.append(Slice(off, length, bytes(block_id), block_off, size))
        else:
            slices.append(Slice(off, length, data=bytes(data)))
            inline += length
    next_off = slices[-1].off + slices[-1].length if slices else start
    return ManifestPage(0, node.size, chunk_bytes(conn), slices, next_off, done, node.attr())


def manifests(conn: sqlite3.Connection, inos) -> ManifestPages:
    """The first page of each of a prefix of ``inos`` (types.ManifestPages)."""
    pages: list[ManifestPage] = []
    inline = 0
    for ino in list(inos)[:MANIFESTS_MAX]:
        page = manifest(conn, ino)
        pages.append(page)
        inline += sum(len(s.data) for s in page.slices)
        if inline > MANIFEST_INLINE_BYTES_MAX:
            break
    return ManifestPages(pages)


def orphans(conn: sqlite3.Connection, after_ino: int = 0, limit: int = 1000) -> list[int]:
    """Inodes unlinked while open and not yet released, for cleanup after a
    client that held them is gone."""
    rows = conn.execute(
        "SELECT ino FROM inode WHERE orphan = 1 AND ino > ? ORDER BY ino LIMIT ?",
        (after_ino, limit),
    ).fetchall()
    return [r[0] for r in rows]
