"""Directory write leases in the state machine: who may change a directory
without a commit per operation, and the batches such a holder sends.

A mount session (``holder``: a random 63-bit number the mount picks at
start) asks for the lease on a directory it is changing. While the lease
holds, the mount answers creates, mkdirs, symlinks and the small changes to
the nodes it made there itself, and sends them later, in order, as one
``LeaseBatch`` entry (fusefs/leases.py). Everyone else is kept out here, in
apply, so the guarantee does not depend on any node's timing:

- A command from anyone but the holder that would change a leased
  directory's entries or attributes is refused with ``LEASED``; nothing
  changes. The leader then recalls the lease (server/meta/recall.py) and
  proposes again, so clients never see the code. Queries are gated on the
  leader the same way: a lookup or readdir of a leased directory waits for
  the holder's flush.
- Leases expire in log time (``state.log_ns``, advanced by the leader's
  Tick entries): all leases of a holder end ``duration_ns`` after its last
  grant or batch. An expired holder's leases count as absent, are dropped
  at its next request, and its late batches are refused (ESTALE), as is a
  batch naming a lease epoch that is not the current one: the fencing
  token. The mount stops answering from its overlay well before (its own
  deadline is measured from when it *sent* the renewing request, minus a
  margin of a tick interval and clock skew).
- Inode numbers: a holder gets a range [ino_next, ino_hi) carved out of
  ``state.next_ino``, so the numbers it hands out locally are the ones the
  batch creates; numbers of a range never used are skipped, never reused.
  A refill keeps the previous range usable (prev_next, prev_hi): the
  holder has handed out numbers from it that batches still on their way
  carry.
- A batch is one log entry: it applies whole or (lease lost, another
  holder's directory touched) not at all. Its ``seq`` makes a retry after an
  uncertain send answer the recorded reply instead of applying twice.

Read leases (``AcquireLease.shared``) are the same grant in shared mode:
any number of holders may read-lease a directory nobody write-leases, and
each answers lookups, getattrs and open-time revalidation of the files
there from its cache. A change that a reader could be answering stale is
refused with LEASED while another holder's read lease covers it: a change
of the directory's entries or attributes (``touched``), or of any node
named in it, found through ``dentry_by_ino`` (``reader_dirs``). The leader
recalls those read leases first (recall.py), so close-to-open holds.

The handlers get the codec passed in (``Codec``): the batch carries its
operations as encoded Commands, and this module stays a pure core.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from . import acl
from .schema import load, lookup_entry, read_state, xattr_value
from .types import (LEASE_LISTING_MAX, LEASED, AcquireLease, BatchReply, Clone,
                    CommitWrite, Compact, Create, Link, LeaseBatch, LeaseReply, Mkdir,
                    Mknod, OpenSession, ReleaseLease, Sessioned,
                    RemoveXattr, Rename, Result, Rmdir, SetAttr, SetXattr, Status,
                    Symlink, Unlink)

PURE_CORE = True

NEW_NODE_COMMANDS = (Create, Mkdir, Mknod, Symlink)
# How long an expired holder's row (its batch sequence) is kept, in log time.
HOLDER_KEEP_NS = 600 * 10**9


@dataclass(frozen=True)
class Codec:
    decode_command: Callable[[bytes], object]
    encode_result: Callable[[Result], bytes]
    decode_result: Callable[[bytes], Result]


def _log_ns(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT log_ns FROM state WHERE id = 0").fetchone()[0]


def any_lease(conn: sqlite3.Connection) -> bool:
    """A lease of either kind exists (it may have expired). One statement:
    apply and the leader's gate ask it for every command."""
    return bool(conn.execute("SELECT EXISTS (SELECT 1 FROM lease) "
                             "OR EXISTS (SELECT 1 FROM read_lease)").fetchone()[0])


def any_reader(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM read_lease LIMIT 1").fetchone() is not None


def readers(conn: sqlite3.Connection, dir_ino: int) -> list[int]:
    """Holders of a live read lease on ``dir_ino``."""
    return [row[0] for row in conn.execute(
        "SELECT r.holder FROM read_lease r JOIN lease_holder h USING (holder) "
        "WHERE r.dir = ? AND h.expires_ns > (SELECT log_ns FROM state WHERE id = 0)",
        (dir_ino,))]


def holders(conn: sqlite3.Connection, dir_ino: int, *, with_readers: bool = True) -> list[int]:
    """Every live holder of a lease on ``dir_ino``: the writer, or readers."""
    lease = owner(conn, dir_ino)
    if lease is not None:
        return [lease[0]]
    return readers(conn, dir_ino) if with_readers else []


def parents_of(conn: sqlite3.Connection, ino: int) -> list[int]:
    return [row[0] for row in conn.execute("SELECT parent FROM dentry WHERE ino = ?", (ino,))]


def owner(conn: sqlite3.Connection, dir_ino: int) -> tuple[int, int] | None:
    """(holder, epoch) of a lease on ``dir_ino`` that has not expired."""
    row = conn.execute(
        "SELECT l.holder, l.epoch FROM lease l JOIN lease_holder h USING (holder) "
        "WHERE l.dir = ? AND h.expires_ns > (SELECT log_ns FROM state WHERE id = 0)",
        (dir_ino,)).fetchone()
    return (row[0], row[1]) if row else None


def _other_writer(conn: sqlite3.Connection, holder: int) -> bool:
    """Whether a holder other than ``holder`` has a live write lease."""
    return conn.execute(
        "SELECT 1 FROM lease l JOIN lease_holder h USING (holder) "
        "WHERE l.holder != ? AND h.expires_ns > (SELECT log_ns FROM state WHERE id = 0) "
        "LIMIT 1", (holder,)).fetchone() is not None


def _entry_ino(conn: sqlite3.Connection, parent: int, name: bytes) -> int:
    entry = lookup_entry(conn, parent, name)
    return entry or 0


def named_dirs(cmd: object) -> tuple[int, ...]:
    """The inodes ``cmd`` names whose entries or attributes it changes and
    that may be leased directories: a lease covers a directory's entries and
    its own attributes (the holder answers getattr of it). The mount uses
    this too, to send such changes inside its batch."""
    if isinstance(cmd, (*NEW_NODE_COMMANDS, Clone, Unlink, Rmdir)):
        return (cmd.parent,)
    if isinstance(cmd, Link):
        return (cmd.new_parent,)
    if isinstance(cmd, Rename):
        return (cmd.parent, cmd.new_parent)
    if isinstance(cmd, (SetAttr, SetXattr, RemoveXattr)):
        return (cmd.ino,)
    return ()


def touched(conn: sqlite3.Connection, cmd: object) -> tuple[int, ...]:
    """``named_dirs`` and the directories an rmdir removes or a rename
    moves or replaces (their leases cover them too)."""
    if isinstance(cmd, Rmdir):
        return (cmd.parent, _entry_ino(conn, cmd.parent, cmd.name))
    if isinstance(cmd, Rename):
        return (cmd.parent, cmd.new_parent, _entry_ino(conn, cmd.parent, cmd.name),
                _entry_ino(conn, cmd.new_parent, cmd.new_name))
    return named_dirs(cmd)


# Commands that change a node named by ``.ino`` (its attributes, xattrs,
# content or links): readers of every directory naming it cache them.
_NODE_COMMANDS = (SetAttr, SetXattr, RemoveXattr, CommitWrite, Compact, Link)


def reader_dirs(conn: sqlite3.Connection, cmd: object) -> list[int]:
    """The directories whose read-lease holders could answer stale after
    ``cmd``: those it touches, and every directory naming a node whose
    attributes, xattrs, content or link count it changes (a directory's own
    attributes are cached by its readers too, as are those of a directory
    whose entries change)."""
    dirs: list[int] = []
    # A directory whose entries change gets new times (and link count):
    # the readers of the directory naming it cache those.
    nodes = [d for d in touched(conn, cmd) if d]
    if isinstance(cmd, _NODE_COMMANDS):
        nodes.append(cmd.ino)
    elif isinstance(cmd, Unlink):
        nodes.append(_entry_ino(conn, cmd.parent, cmd.name))
    elif isinstance(cmd, Rename):
        nodes += [_entry_ino(conn, cmd.parent, cmd.name),
                  _entry_ino(conn, cmd.new_parent, cmd.new_name)]
    for ino in nodes:
        if ino:
            dirs.append(ino)
            dirs.extend(parents_of(conn, ino))
    return list(dict.fromkeys(dirs))


def blocked(conn: sqlite3.Connection, cmd: object, holder: int = 0, *,
            mine: frozenset = frozenset(), readers_exist: bool | None = None) -> int:
    """The first directory ``cmd`` would change that a live lease of another
    holder covers (a write lease, or a read lease a reader could answer
    stale from), or 0. A batch passes what it checked once for all its
    operations: ``mine``, directories whose live write lease is
    ``holder``'s, and ``readers_exist`` (``any_reader``)."""
    for ino in touched(conn, cmd):
        if ino and ino not in mine:
            lease = owner(conn, ino)
            if lease is not None and lease[0] != holder:
                return ino
    if any_reader(conn) if readers_exist is None else readers_exist:
        for ino in reader_dirs(conn, cmd):
            if any(h != holder for h in readers(conn, ino)):
                return ino
    return 0


# ------------------------------------------------------------ holders


def _holder(conn: sqlite3.Connection, holder: int) -> dict | None:
    cur = conn.execute("SELECT * FROM lease_holder WHERE holder = ?", (holder,))
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row)) if row else None


def _expire(conn: sqlite3.Connection, holder: int) -> None:
    """A holder found expired loses every lease row: none of them may come
    back to life through a later grant."""
    conn.execute("DELETE FROM lease WHERE holder = ?", (holder,))
    conn.execute("DELETE FROM read_lease WHERE holder = ?", (holder,))


def _refill(conn: sqlite3.Connection, row: dict, want: int) -> None:
    if want and row["ino_hi"] - row["ino_next"] < max(1, want // 2):
        next_ino = read_state(conn)["next_ino"]
        row["prev_next"], row["prev_hi"] = row["ino_next"], row["ino_hi"]
        row["ino_next"], row["ino_hi"] = next_ino, next_ino + want
        conn.execute("UPDATE state SET next_ino = ? WHERE id = 0", (next_ino + want,))


def _save_holder(conn: sqlite3.Connection, row: dict) -> None:
    conn.execute("INSERT OR REPLACE INTO lease_holder VALUES (?,?,?,?,?,?,?,?,?)",
                 (row["holder"], row["expires_ns"], row["duration_ns"], row["seq"],
                  row["last_reply"], row["ino_next"], row["ino_hi"], row["prev_next"],
                  row["prev_hi"]))


def _count_entries(conn: sqlite3.Connection, dir_ino: int) -> int:
    return conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM dentry WHERE parent = ? LIMIT ?)",
                        (dir_ino, LEASE_LISTING_MAX + 1)).fetchone()[0]


def acquire(conn: sqlite3.Connection, cmd: AcquireLease) -> LeaseReply:
    node = load(conn, cmd.dir)
    if node is None:
        return LeaseReply(errno.ENOENT)
    if not node.is_dir:
        return LeaseReply(errno.ENOTDIR)
    if acl.stored(xattr_value(conn, cmd.dir, acl.DEFAULT)):
        # New nodes there inherit an ACL: the holder would have to compute
        # it; such directories keep one commit per change.
        return LeaseReply(errno.EOPNOTSUPP)
    now = _log_ns(conn)
    if now == 0:
        # No Tick applied yet: log time would jump at the first one and
        # expire the lease at once.
        return LeaseReply(errno.EAGAIN)
    current = owner(conn, cmd.dir)
    if current is not None and current[0] != cmd.holder:
        return LeaseReply(errno.EBUSY)
    if not cmd.shared and any(h != cmd.holder for h in readers(conn, cmd.dir)):
        return LeaseReply(errno.EBUSY)  # readers give theirs back first (recall.py)
    row = _holder(conn, cmd.holder)
    if row is None:
        row = {"holder": cmd.holder, "expires_ns": 0, "duration_ns": cmd.duration_ns,
               "seq": 0, "last_reply": None, "ino_next": 0, "ino_hi": 0,
               "prev_next": 0, "prev_hi": 0}
    elif row["expires_ns"] <= now:
        _expire(conn, cmd.holder)
    row["duration_ns"] = cmd.duration_ns
    row["expires_ns"] = now + cmd.duration_ns
    _refill(conn, row, cmd.inos)
    _save_holder(conn, row)
    if cmd.shared:
        if current is None:  # a writer that reads too needs no read lease
            conn.execute("INSERT OR REPLACE INTO read_lease VALUES (?, ?, ?)",
                         (cmd.dir, cmd.holder, cmd.epoch))
    else:
        conn.execute("DELETE FROM read_lease WHERE dir = ? AND holder = ?",
                     (cmd.dir, cmd.holder))
        conn.execute("INSERT OR REPLACE INTO lease VALUES (?, ?, ?)",
                     (cmd.dir, cmd.holder, cmd.epoch))
    return LeaseReply(0, cmd.epoch, row["ino_next"], row["ino_hi"], node.attr(),
                      _count_entries(conn, cmd.dir))


def release(conn: sqlite3.Connection, cmd: ReleaseLease) -> Status:
    """Idempotent: releasing a lease that is gone (expired, released
    before) is not an error."""
    conn.execute("DELETE FROM lease WHERE dir = ? AND holder = ? AND epoch = ?",
                 (cmd.dir, cmd.holder, cmd.epoch))
    conn.execute("DELETE FROM read_lease WHERE dir = ? AND holder = ? AND epoch = ?",
                 (cmd.dir, cmd.holder, cmd.epoch))
    return Status(0)


def tick(conn: sqlite3.Connection, now_ns: int) -> None:
    """Drop the leases of expired holders, and holders long expired."""
    for table in ("lease", "read_lease"):
        conn.execute(f"DELETE FROM {table} WHERE holder IN "
                     "(SELECT holder FROM lease_holder WHERE expires_ns <= ?)", (now_ns,))
    conn.execute("DELETE FROM lease_holder WHERE expires_ns <= ?", (now_ns - HOLDER_KEEP_NS,))


# ------------------------------------------------------------ batches

RunOp = Callable[[sqlite3.Connection, int, object, int, bool], Result]


def batch(conn: sqlite3.Connection, index: int, cmd: LeaseBatch, run_op: RunOp,
          codec: Codec) -> BatchReply:
    """Apply a holder's batch (module docstring). ``run_op(conn, index,
    op, ino)`` applies one plain command, checks included, creating its
    node under ``ino`` when that is not 0; it changes nothing when it
    answers an error; the last flag asks for the parents' attributes in
    its result (only the last op's result goes back whole)."""
    row = _holder(conn, cmd.holder)
    if row is None:
        return BatchReply(errno.ESTALE)
    if cmd.seq == row["seq"] and row["last_reply"] is not None:
        return codec.decode_result(row["last_reply"])  # a retry of the batch applied last
    if cmd.seq < row["seq"]:
        return BatchReply(errno.ESTALE)
    if row["expires_ns"] <= _log_ns(conn):
        _expire(conn, cmd.holder)
        return BatchReply(errno.ESTALE)
    for dir_ino, epoch in zip(cmd.leases, cmd.epochs):
        if owner(conn, dir_ino) != (cmd.holder, epoch):
            return BatchReply(errno.ESTALE)
    try:
        ops = [codec.decode_command(op) for op in cmd.ops]
    except ValueError:
        return BatchReply(errno.EINVAL)
    if any(isinstance(op, (LeaseBatch, OpenSession, Sessioned)) for op in ops):
        return BatchReply(errno.EINVAL)
    # Nothing changes while the operations are checked: the leases found
    # ours above and whether any read lease exists hold for all of them.
    mine = frozenset(d for d, _ in zip(cmd.leases, cmd.epochs))
    readers_exist = any_reader(conn)
    # With no live write lease of another holder and no read lease at all,
    # nothing can block an operation (``blocked``): the usual case of one
    # mount writing, where looking up what each rename touches was a
    # quarter of its apply.
    contested = readers_exist or _other_writer(conn, cmd.holder)
    for op in ops:
        if isinstance(op, (AcquireLease, ReleaseLease)):
            if op.holder != cmd.holder:
                return BatchReply(errno.EINVAL)
        elif contested and blocked(conn, op, cmd.holder, mine=mine,
                                   readers_exist=readers_exist):
            return BatchReply(LEASED)
    results = []
    last = len(ops) - 1
    for i, (op, ino) in enumerate(zip(ops, cmd.inos)):
        if isinstance(op, AcquireLease):
            result = acquire(conn, op)
            row = _holder(conn, cmd.holder)  # the grant moved its expiry
        elif isinstance(op, ReleaseLease):
            result = release(conn, op)
        else:
            in_range = ("ino_next" if row["ino_next"] <= ino < row["ino_hi"] else
                        "prev_next" if row["prev_next"] <= ino < row["prev_hi"] else None)
            if ino and not (isinstance(op, NEW_NODE_COMMANDS) and in_range
                            and load(conn, ino) is None):
                result = run_op(conn, index, op, -1, False)  # not the holder's number
            else:
                result = run_op(conn, index, op, ino, i == last)
                if ino and result.err == 0:
                    row[in_range] = ino + 1
        # Only a failure or the last op's result is worth its bytes: the
        # holder answered the others already and checks their errno alone
        # (empty means 0). The same on every replica.
        results.append(codec.encode_result(result) if result.err or i == last else b"")
    row["seq"] = cmd.seq
    row["expires_ns"] = _log_ns(conn) + row["duration_ns"]
    _refill(conn, row, cmd.want_inos)
    reply = BatchReply(0, results, row["ino_next"], row["ino_hi"])
    row["last_reply"] = codec.encode_result(reply)
    _save_holder(conn, row)
    return reply
