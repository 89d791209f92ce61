"""SQLite layout of the metadata state machine and the row helpers every
command and query shares.

Invariants (checked by tests and, where cheap, asserted):
- ``state`` has exactly one row; ``applied_index`` moves in the same
  transaction as the changes of that index, so a restart resumes exactly.
- Inode numbers come from ``state.next_ino`` and are never reused.
- A directory has exactly one entry naming it (except the root, which has
  none) and ``inode.parent`` is that entry's directory; ``nlink`` of a
  directory is 2 + its subdirectories.
- A file's extents never overlap; ``block.refs`` equals the number of
  extents naming the block and ``block.live`` the bytes they cover;
  ``inode.nextents``/``inline_bytes`` count the file's extents and inline
  bytes (``blocks.py``: the block lifecycle and why deletion is safe).
- ``dentry.kind`` is the S_IFMT bits of the inode it names (for readdir
  without touching inodes); types never change, so it never goes stale.
- Names are BLOBs, so ordering is bytewise and identical on every replica.
"""

from __future__ import annotations

import errno
import sqlite3
import stat

from .types import CHUNK_BYTES_DEFAULT, ROOT_INO, Attr

PURE_CORE = True

SCHEMA_VERSION = 5

DDL = """
CREATE TABLE state(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    schema_version INTEGER NOT NULL,
    applied_index INTEGER NOT NULL,
    next_ino INTEGER NOT NULL,
    inodes INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    chunk_bytes INTEGER NOT NULL,
    log_ns INTEGER NOT NULL
);
CREATE TABLE inode(
    ino INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    parent INTEGER NOT NULL,
    orphan INTEGER NOT NULL,
    target BLOB,
    nextents INTEGER NOT NULL DEFAULT 0,
    inline_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX inode_orphan ON inode(ino) WHERE orphan = 1;
CREATE INDEX inode_fragmented ON inode(ino) WHERE FRAGMENTED;
CREATE TABLE dentry(
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE TABLE xattr(
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE extent(
    ino INTEGER NOT NULL,
    off INTEGER NOT NULL,
    length INTEGER NOT NULL,
    block_id BLOB NOT NULL,
    block_off INTEGER NOT NULL,
    data BLOB,
    PRIMARY KEY (ino, off)
) WITHOUT ROWID;
CREATE INDEX extent_block ON extent(block_id, ino, off) WHERE length(block_id) > 0;
CREATE TABLE block(
    block_id BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    refs INTEGER NOT NULL,
    live INTEGER NOT NULL,
    mark INTEGER,
    gone_ns INTEGER
) WITHOUT ROWID;
CREATE INDEX block_dying ON block(mark) WHERE refs = 0 AND gone_ns IS NULL;
CREATE INDEX block_gone ON block(gone_ns) WHERE gone_ns IS NOT NULL;
CREATE INDEX block_sparse ON block(block_id) WHERE SPARSE;
CREATE TABLE clock(
    idx INTEGER PRIMARY KEY,
    ns INTEGER NOT NULL
);
LEASE_DDL"""

# Directory write leases (leases.py): one row per mount session holding any,
# one per leased directory. Added in schema version 3.
LEASE_DDL = """
CREATE TABLE lease_holder(
    holder INTEGER PRIMARY KEY,
    expires_ns INTEGER NOT NULL,
    duration_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    last_reply BLOB,
    ino_next INTEGER NOT NULL,
    ino_hi INTEGER NOT NULL,
    prev_next INTEGER NOT NULL,
    prev_hi INTEGER NOT NULL
);
CREATE TABLE lease(
    dir INTEGER PRIMARY KEY,
    holder INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE INDEX lease_by_holder ON lease(holder);
"""
# Directory read leases (shared), and the index that finds every directory
# an inode is named in (a change to a file recalls the read leases on all
# of them). Added in schema version 4.
READ_LEASE_DDL = """
CREATE TABLE read_lease(
    dir INTEGER NOT NULL,
    holder INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    PRIMARY KEY (dir, holder)
) WITHOUT ROWID;
CREATE INDEX read_lease_by_holder ON read_lease(holder);
CREATE INDEX dentry_by_ino ON dentry(ino);
"""
# Client sessions (sessions.py). Added in schema version 5.
from .sessions import SESSION_DDL  # noqa: E402 - the DDL lives with its code

DDL = DDL.replace("LEASE_DDL", LEASE_DDL + READ_LEASE_DDL + SESSION_DDL)

# A file the compactor should look at: more extents than its size explains
# (regions of 4 MiB), or inline bytes in a file too big to be inline.
FRAGMENTED = "nextents > 8 + 2 * (size >> 22) OR (inline_bytes > 0 AND size > 65536)"
# A referenced block most of whose bytes no extent uses any more.
SPARSE = "refs > 0 AND live * 10 < size * 9"
DDL = DDL.replace("FRAGMENTED", FRAGMENTED).replace("SPARSE", SPARSE)

INODE_COLUMNS = (
    "ino, mode, uid, gid, size, nlink, rdev, atime, mtime, ctime, parent, orphan"
)


def _execute_ddl(conn: sqlite3.Connection, ddl: str) -> None:
    # Statement by statement: executescript would commit the open transaction.
    for statement in ddl.split(";"):
        if statement.strip():
            conn.execute(statement)


def init_db(conn: sqlite3.Connection, *, now_ns: int, uid: int = 0, gid: int = 0,
            root_mode: int = 0o755, chunk_bytes: int = CHUNK_BYTES_DEFAULT) -> None:
    """Create the tables and the root directory. Every replica must pass the
    same arguments (from cluster config), or their states differ from birth."""
    assert chunk_bytes > 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        _execute_ddl(conn, DDL)
        conn.execute(
            "INSERT INTO state VALUES (0, ?, 0, ?, 1, 0, 0, ?, 0)",
            (SCHEMA_VERSION, ROOT_INO + 1, chunk_bytes),
        )
        conn.execute(
            f"INSERT INTO inode({INODE_COLUMNS}) VALUES (?,?,?,?,0,2,0,?,?,?,?,0)",
            (ROOT_INO, stat.S_IFDIR | (root_mode & 0o7777), uid, gid,
             now_ns, now_ns, now_ns, ROOT_INO),
        )
        conn.execute("INSERT INTO clock VALUES (0, 0)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a database of an older schema version to this one. Every
    replica runs the same code on the same state, so they stay identical."""
    version = read_state(conn)["schema_version"]
    steps = {2: LEASE_DDL, 3: READ_LEASE_DDL, 4: SESSION_DDL}
    while version in steps:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _execute_ddl(conn, steps[version])
            version += 1
            conn.execute("UPDATE state SET schema_version = ? WHERE id = 0", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def is_initialized(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'state'"
    ).fetchone()
    return row is not None


class Inode:
    """One inode row, mutable while a command works on it; ``save`` writes
    back the attributes (not target or the extent counters, which have
    their own writers)."""

    __slots__ = ("ino", "mode", "uid", "gid", "size", "nlink", "rdev",
                 "atime", "mtime", "ctime", "parent", "orphan")

    def __init__(self, row: tuple) -> None:
        (self.ino, self.mode, self.uid, self.gid, self.size, self.nlink,
         self.rdev, self.atime, self.mtime, self.ctime, self.parent,
         self.orphan) = row

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def attr(self) -> Attr:
        return Attr(self.ino, self.mode, self.uid, self.gid, self.size,
                    self.nlink, self.rdev, self.atime, self.mtime, self.ctime)

    def touch_change(self, now_ns: int) -> None:
        """An entry was added or removed in this directory."""
        self.mtime = now_ns
        self.ctime = now_ns

    def save(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE inode SET mode=?, uid=?, gid=?, size=?, nlink=?, rdev=?,"
            " atime=?, mtime=?, ctime=?, parent=?, orphan=? WHERE ino=?",
            (self.mode, self.uid, self.gid, self.size, self.nlink, self.rdev,
             self.atime, self.mtime, self.ctime, self.parent, self.orphan,
             self.ino),
        )


def load(conn: sqlite3.Connection, ino: int) -> Inode | None:
    row = conn.execute(
        f"SELECT {INODE_COLUMNS} FROM inode WHERE ino = ?", (ino,)
    ).fetchone()
    return Inode(row) if row else None


def file_errno(node: Inode | None) -> int:
    """0 for a regular file, else the errno a file-only command answers."""
    if node is None:
        return errno.ENOENT
    if node.is_dir:
        return errno.EISDIR
    if not node.is_reg:
        return errno.EINVAL
    return 0


def xattr_value(conn: sqlite3.Connection, ino: int, name: bytes) -> bytes | None:
    row = conn.execute(
        "SELECT value FROM xattr WHERE ino = ? AND name = ?", (ino, name)
    ).fetchone()
    return None if row is None else bytes(row[0])


def lookup_entry(conn: sqlite3.Connection, parent: int, name: bytes) -> int | None:
    row = conn.execute(
        "SELECT ino FROM dentry WHERE parent = ? AND name = ?", (parent, name)
    ).fetchone()
    return row[0] if row else None


def dir_is_empty(conn: sqlite3.Connection, ino: int) -> bool:
    return conn.execute(
        "SELECT 1 FROM dentry WHERE parent = ? LIMIT 1", (ino,)
    ).fetchone() is None


def read_state(conn: sqlite3.Connection) -> dict:
    cur = conn.execute("SELECT * FROM state WHERE id = 0")
    names = [d[0] for d in cur.description]
    return dict(zip(names, cur.fetchone()))


COUNTER_MAX = (1 << 63) - 1  # SQLite turns a larger integer into a REAL


def bytes_errno(conn: sqlite3.Connection, grow: int) -> int:
    """EFBIG when adding ``grow`` bytes would take the namespace's byte
    counter past what it can count (statfs and df would fail for good);
    checked before a command changes anything."""
    if grow <= 0:
        return 0
    (used,) = conn.execute("SELECT bytes FROM state WHERE id = 0").fetchone()
    return errno.EFBIG if used + grow > COUNTER_MAX else 0


def add_counters(conn: sqlite3.Connection, *, inodes: int = 0, bytes_: int = 0,
                 chunks: int = 0) -> None:
    if inodes or bytes_ or chunks:
        conn.execute(
            "UPDATE state SET inodes = inodes + ?, bytes = bytes + ?,"
            " chunks = chunks + ? WHERE id = 0",
            (inodes, bytes_, chunks),
        )


def allocate_ino(conn: sqlite3.Connection) -> int:
    (ino,) = conn.execute("SELECT next_ino FROM state WHERE id = 0").fetchone()
    conn.execute("UPDATE state SET next_ino = ?, inodes = inodes + 1 WHERE id = 0",
                 (ino + 1,))
    return ino


def chunk_bytes(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT chunk_bytes FROM state WHERE id = 0").fetchone()[0]
