"""A linearizability checker for histories of filesystem namespace
operations (Wing and Gong's search with Lowe's memoisation, as Porcupine
does it).

A history is a list of ``Op``: who called what, when it was invoked and
when it returned (``ret_s`` is None when the caller never learned the
outcome: a timeout, EIO), and what it answered.  The history is
linearizable if some order of the operations (every completed one, and
any subset of the unknown ones) respects real time (an operation that
returned before another was invoked comes first) and, applied one after
another to the model, gives every completed operation the answer it got.

The model is one directory of names, each naming an inode, and the
inodes, each with its permission bits and an optional ``user.k`` xattr.
An inode is known by a tag its creator chose (the workload stores it as
the inode's uid), so an operation on an inode has one meaning even when
its create's outcome is unknown.  An inode no name refers to is gone.
Operations:

  create NAME TAG      0 | EEXIST          (a new inode, mode 0644)
  unlink NAME          0 | ENOENT
  rename A B           0 | ENOENT          (B replaced; A, B one inode: a no-op)
  link TAG NAME        0 | ENOENT | EEXIST (ENOENT first: the inode is gone)
  lookup NAME          TAG | ENOENT
  chmod TAG MODE       0 | ENOENT
  getattr TAG          (MODE, NLINK) | ENOENT
  setx TAG VALUE       0 | ENOENT
  getx TAG             VALUE | ENOENT | ENODATA

Renames touch two names, so the history is not split by key: it is small
(a few clients, a few hundred operations), and the memo of (operations
linearized, state) keeps the search to what the concurrency allows.  The
search is iterative and has a time bound: past it the verdict is None
(unknown), never a guess."""

from __future__ import annotations

import dataclasses
import errno
import math
import time

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Op:
    client: int
    call_s: float
    ret_s: float | None      # None: outcome unknown to the caller
    kind: str                # create | unlink | rename | setx | lookup | getx
    args: tuple
    out: object = None       # 0, an errno, or (for getx) the value bytes

    @property
    def end(self) -> float:
        return INF if self.ret_s is None else self.ret_s


# (names: frozenset of (name, tag), inodes: frozenset of (tag, mode, xattr or None))
State = tuple
EMPTY: State = (frozenset(), frozenset())
MODE = 0o644


def step(state: State, op: Op) -> tuple[object, State]:
    """(what ``op`` answers from ``state``, the state after it)."""
    names = dict(state[0])
    inodes = {tag: (mode, x) for tag, mode, x in state[1]}
    kind, args = op.kind, op.args
    if kind == "lookup":
        return names.get(args[0], errno.ENOENT), state
    if kind in ("getattr", "getx", "chmod", "setx") and args[0] not in inodes:
        return errno.ENOENT, state
    if kind == "getattr":
        return (inodes[args[0]][0], sum(t == args[0] for t in names.values())), state
    if kind == "getx":
        value = inodes[args[0]][1]
        return (errno.ENODATA if value is None else value), state
    if kind == "create":
        if args[0] in names:
            return errno.EEXIST, state
        names[args[0]] = args[1]
        inodes[args[1]] = (MODE, None)
    elif kind == "unlink":
        if args[0] not in names:
            return errno.ENOENT, state
        del names[args[0]]
    elif kind == "rename":
        a, b = args
        if a not in names:
            return errno.ENOENT, state
        if names[a] == names.get(b):
            return 0, state
        names[b] = names.pop(a)
    elif kind == "link":
        tag, name = args
        if tag not in inodes:
            return errno.ENOENT, state
        if name in names:
            return errno.EEXIST, state
        names[name] = tag
    elif kind == "chmod":
        inodes[args[0]] = (args[1], inodes[args[0]][1])
    elif kind == "setx":
        inodes[args[0]] = (inodes[args[0]][0], args[1])
    else:
        raise ValueError(f"unknown operation {kind!r}")
    named = set(names.values())
    return 0, (frozenset(names.items()),
               frozenset((t, m, x) for t, (m, x) in inodes.items() if t in named))


@dataclasses.dataclass
class Verdict:
    linearizable: bool | None   # None: the time bound ran out
    explored: int
    took_s: float
    longest_prefix: int         # operations in the deepest order found (where it breaks)


def check(history: list[Op], initial: State = EMPTY, *,
          time_limit_s: float = 30.0) -> Verdict:
    started = time.monotonic()
    ops = sorted(history, key=lambda o: (o.call_s, o.end))
    n = len(ops)
    completed = [o.ret_s is not None for o in ops]
    must = sum(completed)
    # Stack of (linearized bitmask, state, completed count, next candidate index).
    seen: set[tuple[int, State]] = set()
    stack = [(0, initial, 0)]
    explored, deepest = 0, 0
    while stack:
        if explored % 4096 == 0 and time.monotonic() - started > time_limit_s:
            return Verdict(None, explored, time.monotonic() - started, deepest)
        mask, state, done = stack.pop()
        explored += 1
        if done == must:
            return Verdict(True, explored, time.monotonic() - started, n)
        deepest = max(deepest, bin(mask).count("1"))
        # The next operation must have been invoked before every pending
        # completed operation returned. Scanning in call order from the
        # first one not linearized, an op invoked after the least return
        # seen so far cannot return earlier than it: stop there.
        first = (~mask & (mask + 1)).bit_length() - 1
        horizon = INF
        for i in range(first, n):
            if ops[i].call_s >= horizon:
                break
            if not mask >> i & 1 and completed[i]:
                horizon = min(horizon, ops[i].end)
        for i in range(first, n):
            if mask >> i & 1:
                continue
            op = ops[i]
            if op.call_s >= horizon:
                break  # sorted by call time: the rest are later still
            answer, after = step(state, op)
            if completed[i] and answer != op.out:
                continue
            key = (mask | 1 << i, after)
            if key in seen:
                continue
            seen.add(key)
            stack.append((mask | 1 << i, after, done + completed[i]))
    return Verdict(False, explored, time.monotonic() - started, deepest)
