"""The leader's side of directory leases: recalling a lease before anyone
else's change or read of that directory goes ahead.

The state machine (leases.py) already keeps other writers out: a command
touching another holder's directory is refused with LEASED. What this module
adds is liveness and close-to-open for readers:

- ``LeaseDesk.clear(dirs)`` asks each holder of a lease on ``dirs`` to give
  it back (the holder's long poll, ``events``, returns the directories) and
  waits until the applied state shows no such lease: the holder flushed its
  batch and released, or its lease expired in log time (a holder that died
  or was cut off costs the lease's duration, never correctness).
- ``gated_propose`` wraps the leader's propose: clear first, propose, and
  if apply still answered LEASED (a grant slipped in between) clear and
  propose again.
- The Metadata query server calls ``clear`` before a lookup, readdir or
  getattr of a leased directory asked by anyone but its holder.

Recall requests live only in the leader's memory: after a leader change,
requesters are retried by their clients against the new leader and ask
again there, and holders re-poll the new leader.
"""

from __future__ import annotations

import logging

import trio

from rpc.logfmt import kv

from . import codec, leases
from .types import LEASED, AcquireLease, LeaseBatch, ReleaseLease, Sessioned, Tick

log = logging.getLogger("chordfs.meta.lease")

POLL_S = 0.003
ASK_AGAIN_S = 1.0
PROPOSE_ROUNDS = 4


# Commands the gate does not decode before proposing: those that never
# change a directory's entries or attributes (a CommitWrite of thousands of
# slices costs the leader a millisecond in Python), and lease batches, whose
# every op apply decodes anyway; a batch that does touch another holder's
# directory (rare: the holder sends its own changes) is refused with LEASED
# and recalled for below.
_NO_PRECHECK = frozenset({"commitWrite", "compact", "forgetChunks", "releaseOrphan", "tick",
                          "acquireLease", "releaseLease", "leaseBatch"})


# With read leases about, a change to a file recalls its directories' readers.
_READER_PRECHECK = frozenset({"commitWrite", "compact", "leaseBatch"})


def _precheck(command: bytes, readers: bool) -> bool:
    try:
        kind = codec.command_kind(command)
        if kind == "sessioned":  # a client session's command: judge what it carries
            inner = codec.decode_command(command).ops
            if len(inner) != 1:
                return False
            kind = codec.command_kind(inner[0])
    except ValueError:
        return False
    return kind not in _NO_PRECHECK or (readers and kind in _READER_PRECHECK)


class LeaseDesk:
    """Recall bookkeeping on one node (it only matters while it leads)."""

    def __init__(self, reader, node: str = "") -> None:
        self.reader, self.node = reader, node
        self._asked: dict[int, set[int]] = {}   # holder -> directories to give back
        self._wake: dict[int, trio.Event] = {}
        self.recalls = 0
        self.waits_s = 0.0

    # ------------------------------------------------------------ reading

    def others(self, dirs, holder: int, *, with_readers: bool = True) -> list[tuple[int, int]]:
        """(dir, holder) of the live leases on ``dirs`` not held by
        ``holder``; read leases too unless ``with_readers`` is False (a
        read does not recall other readers)."""
        conn = self.reader.conn
        if not leases.any_lease(conn):
            return []
        out = []
        for dir_ino in dict.fromkeys(dirs):
            if dir_ino:
                for other in leases.holders(conn, dir_ino, with_readers=with_readers):
                    if other != holder:
                        out.append((dir_ino, other))
        return out

    # ------------------------------------------------------------ holders

    def _ask(self, holder: int, dir_ino: int) -> None:
        self._asked.setdefault(holder, set()).add(dir_ino)
        event = self._wake.pop(holder, None)
        if event is not None:
            event.set()

    async def events(self, holder: int, wait_s: float) -> list[int]:
        """A holder's long poll: the directories it is asked to give back."""
        with trio.move_on_after(wait_s):
            while not self._asked.get(holder):
                event = self._wake.setdefault(holder, trio.Event())
                await event.wait()
        return sorted(self._asked.pop(holder, ()))

    # ------------------------------------------------------------ requesters

    async def clear(self, dirs, *, holder: int = 0, timeout_s: float, rid: str = "",
                    with_readers: bool = True) -> bool:
        """Recall every other holder's lease on ``dirs`` and wait until none
        is left (True) or ``timeout_s`` passed (False)."""
        pending = self.others(dirs, holder, with_readers=with_readers)
        if not pending:
            return True
        start = trio.current_time()
        deadline, asked_at = start + timeout_s, -ASK_AGAIN_S
        self.recalls += 1
        while pending:
            now = trio.current_time()
            if now >= deadline:
                log.info(kv("lease.recall_timeout", node=self.node, rid=rid,
                            dirs=",".join(str(d) for d, _ in pending)))
                return False
            if now - asked_at >= ASK_AGAIN_S:  # again, in case a poll was in flight elsewhere
                for dir_ino, other in pending:
                    self._ask(other, dir_ino)
                asked_at = now
            await trio.sleep(POLL_S)
            pending = self.others(dirs, holder, with_readers=with_readers)
        waited = trio.current_time() - start
        self.waits_s += waited
        log.info(kv("lease.recalled", node=self.node, rid=rid, dirs=len(dirs),
                     ms=round(waited * 1000, 1)))
        return True

    def dirs_of(self, cmd) -> tuple[list[int], int]:
        """(directories a proposal would change, the holder proposing it)."""
        if isinstance(cmd, (AcquireLease, ReleaseLease, Tick)):
            return [], 0
        conn = self.reader.conn
        if isinstance(cmd, Sessioned):
            try:
                return self.dirs_of(codec.decode_command(cmd.ops[0]))
            except (ValueError, IndexError):
                return [], 0
        if isinstance(cmd, LeaseBatch):
            out = []
            for data in cmd.ops:
                try:
                    op = codec.decode_command(data)
                except ValueError:
                    continue
                out.extend(self._dirs(conn, op))
            return out, cmd.holder
        return self._dirs(conn, cmd), 0

    @staticmethod
    def _dirs(conn, cmd) -> list[int]:
        if leases.any_reader(conn):
            return leases.reader_dirs(conn, cmd)
        return list(leases.touched(conn, cmd))

    async def gated_propose(self, command: bytes, propose, *, timeout_s: float):
        """``propose(command)`` once no other holder's lease is in the way
        (module docstring); returns what it returned."""
        cmd = None
        for _ in range(PROPOSE_ROUNDS):
            dirs, holder = [], 0
            conn = self.reader.conn
            if cmd is not None or (leases.any_lease(conn)
                                   and _precheck(command, leases.any_reader(conn))):
                try:
                    cmd = cmd or codec.decode_command(command)
                except ValueError:
                    return await propose(command)
                dirs, holder = self.dirs_of(cmd)
            if dirs:
                await self.clear(dirs, holder=holder, timeout_s=timeout_s)
            index, term, result = await propose(command)
            try:
                refused = codec.decode_result(result).err == LEASED
            except ValueError:
                refused = False
            if not refused:
                return index, term, result
            # A grant slipped in between: recall it, and propose again.
            cmd = cmd or codec.decode_command(command)
        return index, term, result
