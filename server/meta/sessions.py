"""Client sessions: every command a mount proposes is applied at most once,
however often it is retried (Raft dissertation, section 6.3).

A mount opens a session (``OpenSession``, a random 62-bit id) and sends
each command as ``Sessioned(session, seq, acked, [command])``: ``seq`` is
its own number for the command, ``acked`` the lowest seq it still waits
for.  The state machine keeps, per session, the encoded reply of every
command at or above ``acked``:

  reply kept for seq      the command was applied before: answer that
                          reply again, apply nothing;
  seq below acked         the client had its answer already (this entry is
                          a late duplicate of a retry): ``ANSWERED``,
                          nothing applied;
  no session              never opened, or expired: ``NO_SESSION``,
                          nothing applied; the mount opens a new one and
                          sends the command again (safe: a session expires
                          only after SESSION_IDLE_NS of log time without a
                          command, far longer than any retry);
  otherwise               apply the command, keep its reply.

A session keeps at most SESSION_REPLIES_MAX replies (a mount has far fewer
commands in flight); past that the oldest go and ``acked`` moves above
them, so a retry of one of those answers ANSWERED instead of applying
twice.  Expiry is deterministic: Tick entries (the leader's clock) move log
time, and a session whose last command is SESSION_IDLE_NS of log time old
goes with its replies, the same on every replica.

What this replaces: the mount used to guess, command by command, whether
an EEXIST or ENOENT after an uncertain attempt was its own doing
(fusefs/clustermeta.py), and a late duplicate could apply a second time
(an unlink removing a file re-created meanwhile).  Lease batches keep their
own sequence (leases.py), which gives them the same guarantee."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable

from .types import LEASED, LeaseBatch, OpenSession, Result, Sessioned, Status, Tick

PURE_CORE = True

SESSION_IDLE_NS = 3600 * 10**9
SESSION_REPLIES_MAX = 4096
# Answers that never reach a caller of the filesystem: the mount acts on them.
NO_SESSION = errno.EBADR
ANSWERED = errno.EBADRQC

# Commands a session may carry: not another envelope, not the clock.
_NOT_INSIDE = (Sessioned, OpenSession, LeaseBatch, Tick)

SESSION_DDL = """
CREATE TABLE client_session(
    session INTEGER PRIMARY KEY,
    acked INTEGER NOT NULL,
    touched_ns INTEGER NOT NULL
);
CREATE TABLE session_reply(
    session INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    reply BLOB NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
CREATE INDEX client_session_touched ON client_session(touched_ns);
"""

RunOp = Callable[[sqlite3.Connection, int, object], Result]


def _log_ns(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT log_ns FROM state WHERE id = 0").fetchone()[0]


def open_session(conn: sqlite3.Connection, cmd: OpenSession) -> Status:
    """Open ``cmd.session`` (again: a retry of the open changes nothing)."""
    conn.execute("INSERT OR IGNORE INTO client_session VALUES (?, 1, ?)",
                 (cmd.session, _log_ns(conn)))
    conn.execute("UPDATE client_session SET touched_ns = ? WHERE session = ?",
                 (_log_ns(conn), cmd.session))
    return Status(0)


def sessioned(conn: sqlite3.Connection, index: int, cmd: Sessioned, run_op: RunOp,
              decode_command, encode_result, decode_result, error_result) -> Result:
    """Apply the command inside ``cmd`` at most once (module docstring).
    ``run_op`` applies one plain command with all its checks and changes
    nothing when it answers an error."""
    try:
        op = decode_command(cmd.ops[0]) if len(cmd.ops) == 1 else None
    except ValueError:
        op = None
    if op is None or isinstance(op, _NOT_INSIDE):
        return Status(errno.EINVAL)
    row = conn.execute("SELECT acked FROM client_session WHERE session = ?",
                       (cmd.session,)).fetchone()
    if row is None:
        return error_result(op, NO_SESSION)
    acked = row[0]
    kept = conn.execute("SELECT reply FROM session_reply WHERE session = ? AND seq = ?",
                        (cmd.session, cmd.seq)).fetchone()
    if kept is not None:
        return decode_result(kept[0])
    if cmd.seq < acked:
        return error_result(op, ANSWERED)
    result = run_op(conn, index, op)
    if result.err == LEASED:
        # Not applied: the leader recalls the lease and proposes the same
        # bytes again, which must then apply (recall.py).
        return result
    conn.execute("INSERT INTO session_reply VALUES (?, ?, ?)",
                 (cmd.session, cmd.seq, encode_result(result)))
    if cmd.acked > acked:
        acked = cmd.acked
        conn.execute("DELETE FROM session_reply WHERE session = ? AND seq < ?",
                     (cmd.session, acked))
    count = conn.execute("SELECT COUNT(*) FROM session_reply WHERE session = ?",
                         (cmd.session,)).fetchone()[0]
    if count > SESSION_REPLIES_MAX:
        # Forget the oldest, and refuse their retries from now on.
        cut = conn.execute("SELECT seq FROM session_reply WHERE session = ? ORDER BY seq "
                           "LIMIT 1 OFFSET ?", (cmd.session, count - SESSION_REPLIES_MAX)
                           ).fetchone()[0]
        conn.execute("DELETE FROM session_reply WHERE session = ? AND seq < ?",
                     (cmd.session, cut))
        acked = max(acked, cut)
    conn.execute("UPDATE client_session SET acked = ?, touched_ns = ? WHERE session = ?",
                 (acked, _log_ns(conn), cmd.session))
    return result


def tick(conn: sqlite3.Connection, now_ns: int) -> None:
    """Sessions idle for SESSION_IDLE_NS of log time go, with their replies."""
    # Sessions opened before the first Tick start their idle time now (log
    # time jumps from 0 to the leader's clock at that Tick).
    conn.execute("UPDATE client_session SET touched_ns = ? WHERE touched_ns = 0", (now_ns,))
    cutoff = now_ns - SESSION_IDLE_NS
    if cutoff <= 0:
        return
    conn.execute("DELETE FROM session_reply WHERE session IN "
                 "(SELECT session FROM client_session WHERE touched_ns < ?)", (cutoff,))
    conn.execute("DELETE FROM client_session WHERE touched_ns < ?", (cutoff,))
