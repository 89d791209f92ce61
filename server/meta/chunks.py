"""File manifests, chunk reference counts and chunk garbage collection.

A manifest row (ino, idx) -> (chunk id, length) holds one reference to its
chunk. When a chunk's last reference goes, it moves to the ``gc`` table with
the Raft index and proposer time at which that happened; after a grace period
(long enough for any writer that uploaded the same content and has not yet
committed its manifest) the chunk store may delete it and then confirm with
``ForgetChunks``. A chunk referenced again before that leaves ``gc`` at once.

Chunks uploaded but never committed never appear here: the chunk store
collects those by age on its own.
"""

from __future__ import annotations

import sqlite3

from .schema import add_counters
from .types import ChunkRef

PURE_CORE = True


def add_ref(conn: sqlite3.Connection, chunk_id: bytes) -> None:
    updated = conn.execute(
        "UPDATE chunk_ref SET refs = refs + 1 WHERE chunk_id = ?", (chunk_id,)
    ).rowcount
    if not updated:
        conn.execute("INSERT INTO chunk_ref VALUES (?, 1)", (chunk_id,))
        conn.execute("DELETE FROM gc WHERE chunk_id = ?", (chunk_id,))
        add_counters(conn, chunks=1)


def drop_ref(conn: sqlite3.Connection, chunk_id: bytes, index: int, now_ns: int) -> None:
    (refs,) = conn.execute(
        "SELECT refs FROM chunk_ref WHERE chunk_id = ?", (chunk_id,)
    ).fetchone()
    assert refs >= 1, "chunk_ref must count manifest rows"
    if refs > 1:
        conn.execute("UPDATE chunk_ref SET refs = ? WHERE chunk_id = ?",
                     (refs - 1, chunk_id))
        return
    conn.execute("DELETE FROM chunk_ref WHERE chunk_id = ?", (chunk_id,))
    conn.execute("INSERT OR REPLACE INTO gc VALUES (?, ?, ?)",
                 (chunk_id, index, now_ns))
    add_counters(conn, chunks=-1)


def put_chunks(conn: sqlite3.Connection, ino: int, chunks: list[ChunkRef],
               index: int, now_ns: int) -> None:
    """Point each index at its new chunk; the new reference is taken before
    the old one is dropped so rewriting a chunk with itself never touches gc."""
    for ref in chunks:
        old = conn.execute(
            "SELECT chunk_id FROM chunk_map WHERE ino = ? AND idx = ?", (ino, ref.idx)
        ).fetchone()
        add_ref(conn, ref.chunk_id)
        conn.execute("INSERT OR REPLACE INTO chunk_map VALUES (?, ?, ?, ?)",
                     (ino, ref.idx, ref.chunk_id, ref.length))
        if old:
            drop_ref(conn, old[0], index, now_ns)


def truncate_chunks(conn: sqlite3.Connection, ino: int, size: int, chunk_bytes: int,
                    index: int, now_ns: int) -> None:
    """Drop chunks wholly past ``size`` and shorten the one it cuts, so that
    growing the file again reads zeros there, as POSIX requires."""
    first_gone = -(-size // chunk_bytes)
    rows = conn.execute(
        "SELECT chunk_id FROM chunk_map WHERE ino = ? AND idx >= ?", (ino, first_gone)
    ).fetchall()
    conn.execute("DELETE FROM chunk_map WHERE ino = ? AND idx >= ?", (ino, first_gone))
    for (chunk_id,) in rows:
        drop_ref(conn, chunk_id, index, now_ns)
    if size % chunk_bytes:
        last = size // chunk_bytes
        conn.execute(
            "UPDATE chunk_map SET length = min(length, ?) WHERE ino = ? AND idx = ?",
            (size - last * chunk_bytes, ino, last),
        )


def drop_all_chunks(conn: sqlite3.Connection, ino: int, index: int, now_ns: int) -> None:
    truncate_chunks(conn, ino, 0, 1, index, now_ns)


def validate_chunks(chunks: list[ChunkRef], chunk_bytes: int, size: int) -> bool:
    """Distinct indexes, non-empty chunk ids, lengths within a chunk, and no
    byte past the committed size (that data would be unreachable)."""
    seen = set()
    for ref in chunks:
        if ref.idx < 0 or ref.idx in seen or not 0 < ref.length <= chunk_bytes:
            return False
        if ref.idx * chunk_bytes + ref.length > size:
            return False
        if not ref.chunk_id:
            return False
        seen.add(ref.idx)
    return True


def gc_candidates(conn: sqlite3.Connection, now_ns: int, grace_ns: int,
                  limit: int = 1000) -> list[bytes]:
    """Chunk ids unreferenced since at least ``grace_ns`` before ``now_ns``,
    oldest first. Read-only: the deleter confirms with ForgetChunks."""
    rows = conn.execute(
        "SELECT chunk_id FROM gc WHERE zero_ns <= ? ORDER BY zero_ns, chunk_id LIMIT ?",
        (now_ns - grace_ns, limit),
    ).fetchall()
    return [r[0] for r in rows]


def forget_chunks(conn: sqlite3.Connection, chunk_ids: list[bytes]) -> None:
    for chunk_id in chunk_ids:
        conn.execute("DELETE FROM gc WHERE chunk_id = ?", (chunk_id,))


def chunk_refs(conn: sqlite3.Connection, chunk_id: bytes) -> int:
    row = conn.execute(
        "SELECT refs FROM chunk_ref WHERE chunk_id = ?", (chunk_id,)
    ).fetchone()
    return row[0] if row else 0
