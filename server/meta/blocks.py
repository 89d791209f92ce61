"""File layout as byte-range extents, block reference counts, and the block
lifecycle that decides deletion in the log.

Layout. A regular file is a set of non-overlapping extents ``(off, length)``
keyed by their file offset, each naming bytes of one immutable block
(``block_id``, ``block_off``) or holding its bytes inline (``block_id``
empty). A write of N bytes adds extents covering exactly those N bytes:
``write_slices`` cuts whatever overlaps each new slice (keeping the parts
outside it) and inserts the slice, so a commit records only the ranges its
writer wrote. Gaps below the file size are holes. Fragmentation (many small
extents, or blocks mostly overwritten) is undone by ``Compact`` commands a
background compactor proposes; ``inode.nextents`` and ``inode.inline_bytes``
let it find such files through a partial index.

Block rows: ``refs`` (extents naming the block), ``live`` (bytes of it
those extents use), ``mark`` and ``gone_ns``. Life of a block:
  live   refs > 0.
  dying  refs fell to 0 at log index ``mark``. The GC deleter asks every
         copy holder to delete copies *stamped below mark* and then proposes
         ForgetChunks(id, mark).
  gone   ForgetChunks applied while still dying with that mark: a tombstone
         that remembers ``mark`` for one upload window of log time.
  unknown  no row.

Stamps (server/store/chunkstore.py): every stored copy carries a log index,
max(what the writer asked, the storing node's applied index) and never less
than before. A CommitWrite names, per block, whether its writer stored it
itself (``fresh``, with ``observed`` = the least stamp its stores returned)
or relied on a copy being there (dedup). ``check_blocks`` accepts:
  live             always;
  otherwise        only fresh, with log_time(observed) within one upload
                   window of now (a node sweeps a copy of a block that is
                   gone or unknown to it only once the copy's stamp is a
                   window old in log time, and by then it has applied this
                   commit, so it knows the block), and for a dying or gone
                   block observed >= mark (GC of that mark spares copies
                   stamped >= mark).
Anything else is refused with ESTALE: the writer stores the blocks again and
retries. Log time comes only from Tick entries (the leader's clock, kept
monotonic here); ``clock`` rows map index -> log time for two windows.
"""

from __future__ import annotations

import errno
import sqlite3
import struct

import xxhash

from .schema import FRAGMENTED, SPARSE, add_counters
from .types import (COMMIT_INLINE_BYTES_MAX, COMMIT_SLICES_MAX, UPLOAD_WINDOW_NS,
                    Slice)

PURE_CORE = True

_EXTENT_COLS = "off, length, block_id, block_off, data"


class Deltas:
    """Reference and byte changes of one command, settled at its end so a
    block whose extent is split in two never passes through zero refs."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, list[int]] = {}   # id -> [refs, live, size]
        self.files: dict[int, list[int]] = {}      # ino -> [extents, inline bytes]

    def block(self, block_id: bytes, refs: int, live: int, size: int = 0) -> None:
        entry = self.blocks.setdefault(block_id, [0, 0, 0])
        entry[0] += refs
        entry[1] += live
        entry[2] = entry[2] or size

    def extent(self, ino: int, block_id: bytes, length: int, sign: int) -> None:
        entry = self.files.setdefault(ino, [0, 0])
        entry[0] += sign
        if not block_id:
            entry[1] += sign * length
        else:
            self.block(block_id, sign, sign * length)


def _remove(conn, ino: int, row, deltas: Deltas) -> None:
    off, length, block_id, _block_off, _data = row
    conn.execute("DELETE FROM extent WHERE ino = ? AND off = ?", (ino, off))
    deltas.extent(ino, block_id, length, -1)


def _insert(conn, ino: int, off: int, length: int, block_id: bytes, block_off: int,
            data: bytes | None, deltas: Deltas, size: int = 0) -> None:
    conn.execute("INSERT INTO extent VALUES (?, ?, ?, ?, ?, ?)",
                 (ino, off, length, block_id, block_off, data))
    deltas.extent(ino, block_id, length, +1)
    if block_id and size:
        deltas.block(block_id, 0, 0, size)


def cut(conn: sqlite3.Connection, ino: int, start: int, end: int | None,
        deltas: Deltas) -> None:
    """Remove bytes [start, end) (end None: to the end of the file) from the
    layout, keeping the parts of straddling extents outside the range."""
    if end is None:
        rows = conn.execute(f"SELECT {_EXTENT_COLS} FROM extent WHERE ino = ? AND off >= ?",
                            (ino, start)).fetchall()
        before = conn.execute(f"SELECT {_EXTENT_COLS} FROM extent WHERE ino = ? AND off < ?"
                              " ORDER BY off DESC LIMIT 1", (ino, start)).fetchone()
        if before is not None:
            rows.append(before)
    else:
        rows = extents_in(conn, ino, start, end)
    for row in rows:
        off, length, block_id, block_off, data = row
        stop = off + length
        if stop <= start or (end is not None and off >= end):
            continue
        _remove(conn, ino, row, deltas)
        if off < start:
            keep = start - off
            _insert(conn, ino, off, keep, block_id, block_off,
                    data[:keep] if data is not None else None, deltas)
        if end is not None and stop > end:
            skip = end - off
            _insert(conn, ino, end, stop - end, block_id, block_off + skip,
                    data[skip:] if data is not None else None, deltas)


def check_blocks(conn: sqlite3.Connection, slices: list[Slice], observed: int) -> list[bytes]:
    """Blocks this commit may not reference (see the module docstring)."""
    refused = []
    window_ok = None
    fresh_of: dict[bytes, bool] = {}
    for s in slices:
        if s.block_id:
            fresh_of[s.block_id] = fresh_of.get(s.block_id, True) and s.fresh
    for block_id, fresh in fresh_of.items():
        row = conn.execute("SELECT refs, mark FROM block WHERE block_id = ?",
                           (block_id,)).fetchone()
        if row is not None and row[0] > 0:
            continue
        if window_ok is None:
            now = log_time_ns(conn)
            then = log_time_at(conn, observed)
            window_ok = then is not None and now - then <= UPLOAD_WINDOW_NS
        if not fresh or not window_ok or (row is not None and observed < row[1]):
            refused.append(block_id)
    return refused


def write_slices(conn: sqlite3.Connection, ino: int, slices: list[Slice], index: int,
                 empty: bool = False) -> None:
    """``empty``: the file has no extents yet (its size is 0, and no
    extent lies past the size), so slices that overlap none of each other
    have nothing to cut: the usual first write of a new small file skips a
    query. (Checked once, sorted: a commit may carry thousands of slices.)"""
    deltas = Deltas()
    nothing_to_cut = False
    if empty:
        ordered = sorted(slices, key=lambda s: s.off)
        nothing_to_cut = all(a.off + a.length <= b.off for a, b in zip(ordered, ordered[1:]))
    for s in slices:
        if not nothing_to_cut:
            cut(conn, ino, s.off, s.off + s.length, deltas)
        if s.block_id:
            _insert(conn, ino, s.off, s.length, s.block_id, s.block_off, None,
                    deltas, s.block_size)
        else:
            _insert(conn, ino, s.off, s.length, b"", 0, s.data, deltas)
    settle(conn, deltas, index)


def copy_layout(conn: sqlite3.Connection, src: int, dst: int, index: int) -> None:
    """Give ``dst`` (no extents yet) the extents of ``src``: more references
    to the same blocks, no byte copied."""
    deltas = Deltas()
    for off, length, block_id, block_off, data in conn.execute(
            f"SELECT {_EXTENT_COLS} FROM extent WHERE ino = ? ORDER BY off", (src,)).fetchall():
        _insert(conn, dst, off, length, block_id, block_off, data, deltas)
    settle(conn, deltas, index)


def truncate(conn: sqlite3.Connection, ino: int, size: int, index: int) -> None:
    deltas = Deltas()
    cut(conn, ino, size, None, deltas)
    settle(conn, deltas, index)


def drop_all(conn: sqlite3.Connection, ino: int, index: int) -> None:
    """Every extent of ``ino``, whose row is about to go: one read and one
    delete (not a statement per extent), and only the blocks' references
    settled. An unlink of a small file spent a third of its apply in the
    general ``truncate``."""
    rows = conn.execute("SELECT length, block_id FROM extent WHERE ino = ?", (ino,)).fetchall()
    if not rows:
        return
    conn.execute("DELETE FROM extent WHERE ino = ?", (ino,))
    deltas = Deltas()
    for length, block_id in rows:
        if block_id:
            deltas.block(block_id, -1, -length)
    settle(conn, deltas, index)


def settle(conn: sqlite3.Connection, deltas: Deltas, index: int) -> None:
    for block_id, (refs, live, size) in deltas.blocks.items():
        row = conn.execute("SELECT refs, live FROM block WHERE block_id = ?",
                           (block_id,)).fetchone()
        if row is None:
            if refs == 0:
                # Named and overwritten within one command: nothing refers
                # to it, so it stays unknown and the sweeper reclaims it.
                continue
            assert refs > 0, "a block without a row gains references"
            conn.execute("INSERT INTO block VALUES (?, ?, ?, ?, NULL, NULL)",
                         (block_id, size, refs, live))
            add_counters(conn, chunks=1)
            continue
        new_refs, new_live = row[0] + refs, row[1] + live
        assert new_refs >= 0 and new_live >= 0, "block counts stay non-negative"
        if new_refs == 0:
            conn.execute("UPDATE block SET refs = 0, live = 0, mark = ?, gone_ns = NULL"
                         " WHERE block_id = ?", (index, block_id))
        else:
            conn.execute("UPDATE block SET refs = ?, live = ?, mark = NULL, gone_ns = NULL,"
                         " size = max(size, ?) WHERE block_id = ?",
                         (new_refs, new_live, size, block_id))
        if (row[0] == 0) != (new_refs == 0):
            add_counters(conn, chunks=1 if new_refs else -1)
    for ino, (extents, inline) in deltas.files.items():
        if extents or inline:
            conn.execute("UPDATE inode SET nextents = nextents + ?,"
                         " inline_bytes = inline_bytes + ? WHERE ino = ?",
                         (extents, inline, ino))


def range_digest(conn: sqlite3.Connection, ino: int, off: int, length: int) -> bytes:
    """Digest of the extents overlapping [off, off+length), for Compact's
    "nothing changed since I read it" check."""
    h = xxhash.xxh3_128()
    for e_off, e_len, block_id, block_off, data in extents_in(conn, ino, off, off + length):
        h.update(struct.pack("<QQQ", e_off, e_len, block_off))
        h.update(block_id or b"-")
        h.update(data or b"")
    return h.digest()


def extents_in(conn: sqlite3.Connection, ino: int, start: int, end: int) -> list[tuple]:
    rows = []
    for row in conn.execute(
            f"SELECT {_EXTENT_COLS} FROM extent WHERE ino = ? AND off < ?"
            " ORDER BY off DESC", (ino, end)):
        if row[0] + row[1] <= start:
            break
        rows.append(row)
    rows.reverse()
    return rows


def validate_slices(slices: list, *, inline_allowed: bool = True) -> int:
    """Static checks shared by propose-time validation and apply: 0 or errno."""
    if len(slices) > COMMIT_SLICES_MAX:
        return errno.E2BIG
    inline = 0
    for s in slices:
        if not isinstance(s, Slice) or s.length <= 0 or s.off < 0:
            return errno.EINVAL
        if s.block_id:
            if (len(s.block_id) != 16 or s.data or s.block_off < 0
                    or s.block_off + s.length > s.block_size):
                return errno.EINVAL
        else:
            if not inline_allowed or len(s.data) != s.length:
                return errno.EINVAL
            inline += s.length
    if inline > COMMIT_INLINE_BYTES_MAX:
        return errno.E2BIG
    return 0


# ---------------------------------------------------------------- GC and log time


def gc_candidates(conn: sqlite3.Connection, limit: int = 1000) -> list[tuple[bytes, int]]:
    """Dying blocks, oldest mark first: (id, mark)."""
    return [(bytes(r[0]), r[1]) for r in conn.execute(
        "SELECT block_id, mark FROM block WHERE refs = 0 AND gone_ns IS NULL"
        " ORDER BY mark LIMIT ?", (limit,))]


def dying_count(conn: sqlite3.Connection) -> int:
    """Blocks waiting for GC (the block_dying partial index counts them)."""
    return conn.execute("SELECT COUNT(*) FROM block WHERE refs = 0 AND gone_ns IS NULL"
                        ).fetchone()[0]


def live_blocks(conn: sqlite3.Connection, after_id: bytes, limit: int) -> list[bytes]:
    """Referenced blocks in id order after ``after_id`` (the census walks them)."""
    return [bytes(r[0]) for r in conn.execute(
        "SELECT block_id FROM block WHERE block_id > ? AND refs > 0 ORDER BY block_id LIMIT ?",
        (after_id, limit))]


def forget(conn: sqlite3.Connection, ids: list[bytes], marks: list[int]) -> None:
    now = log_time_ns(conn)
    for block_id, mark in zip(ids, marks):
        conn.execute("UPDATE block SET gone_ns = ? WHERE block_id = ? AND refs = 0"
                     " AND mark = ? AND gone_ns IS NULL", (now, block_id, mark))


def block_state(conn: sqlite3.Connection, block_id: bytes) -> tuple[str, int]:
    row = conn.execute("SELECT refs, mark, gone_ns FROM block WHERE block_id = ?",
                       (block_id,)).fetchone()
    if row is None:
        return "unknown", 0
    refs, mark, gone_ns = row
    if refs > 0:
        return "live", 0
    return ("gone" if gone_ns is not None else "dying"), mark


def block_refs(conn: sqlite3.Connection, block_id: bytes) -> int:
    row = conn.execute("SELECT refs FROM block WHERE block_id = ?", (block_id,)).fetchone()
    return row[0] if row else 0


def log_time_ns(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT log_ns FROM state WHERE id = 0").fetchone()[0]


def log_time_at(conn: sqlite3.Connection, index: int) -> int | None:
    """A lower bound of the log time at ``index`` (the last Tick at or
    before it); None when that is older than the clock rows kept."""
    row = conn.execute("SELECT ns FROM clock WHERE idx <= ? ORDER BY idx DESC LIMIT 1",
                       (index,)).fetchone()
    return row[0] if row else None


def tick(conn: sqlite3.Connection, index: int, now_ns: int) -> None:
    """Advance log time; forget clock rows and tombstones past their use.
    The newest clock row always stays, so a lower bound exists for now."""
    now = max(log_time_ns(conn), now_ns)
    conn.execute("UPDATE state SET log_ns = ? WHERE id = 0", (now,))
    conn.execute("INSERT OR REPLACE INTO clock VALUES (?, ?)", (index, now))
    conn.execute("DELETE FROM clock WHERE ns < ? AND idx < ?",
                 (now - 2 * UPLOAD_WINDOW_NS, index))
    conn.execute("DELETE FROM block WHERE gone_ns IS NOT NULL AND gone_ns < ?",
                 (now - UPLOAD_WINDOW_NS,))


# ---------------------------------------------------------------- compaction


def fragmented_files(conn: sqlite3.Connection, limit: int = 64) -> list[int]:
    """Files with more extents than their size explains, or inline bytes in
    a file too big for inline data (the partial index inode_fragmented)."""
    return [r[0] for r in conn.execute(
        f"SELECT ino FROM inode WHERE {FRAGMENTED} LIMIT ?", (limit,))]


def sparse_block_ranges(conn: sqlite3.Connection, limit: int = 64) -> list[tuple[int, int]]:
    """(ino, off) of extents naming a block most of which is dead weight:
    rewriting them lets the block die."""
    out: list[tuple[int, int]] = []
    for (block_id,) in conn.execute(f"SELECT block_id FROM block WHERE {SPARSE} LIMIT ?",
                                    (limit,)):
        out.extend(conn.execute(
            "SELECT ino, off FROM extent WHERE block_id = ? AND length(block_id) > 0"
            " LIMIT ?", (block_id, limit)))
        if len(out) >= limit:
            break
    return out[:limit]
