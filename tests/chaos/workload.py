"""Workloads of the fault harness, and what they record.

* ``Namespace``: several clients, each its own MetaClient (the mount's code
  for proposals and linearizable queries, its own client session), doing
  create, unlink, rename, link and lookup on a few names of one directory,
  and chmod, getattr, setxattr and getxattr on the inodes behind them.  A
  create stores a tag of the workload's choosing as the inode's uid, so a
  lookup or getattr says which create made the inode it finds (the model's
  identity for an inode); inode numbers are learnt from the answers.
  Every invocation and completion goes into the history the linearizability
  checker reads; a call that ends in Unavailable (EIO) has an unknown
  outcome.
* ``Unique``: each client makes directories of names no one else uses and
  renames each once; afterwards every acknowledged mkdir must be there
  (else: lost) exactly once, under its new name when the rename was
  acknowledged (a name back under the old one after its rename was
  acknowledged is a duplicate).
* ``FileWriter`` (durability through FUSE): a real mount writes files of
  known content and fsyncs each; every fsync-acknowledged file must read
  back byte-identical through another mount after the faults heal.

``lose_replies`` drops the reply of that share of committed proposals (the
connection breaks right after the leader applied), so retries happen on
every run; ``sessions=False`` is the deliberately broken client that
retries the bare command, bypassing the session table."""

from __future__ import annotations

import collections
import dataclasses
import errno
import hashlib
import os
import random
import threading
import time

import trio

import rpc
from fusefs.backend import BackendError, Unavailable
from fusefs.clustermeta import MetaClient
from rpc.pool import Pool
from server.meta.types import (BytesReply, Create, EntryReply, Link, Mkdir, Rename, SetAttr,
                               SetXattr, Unlink)

from .linearizability import Op

ROOT_INO = 1
NAMES = ("a", "b", "c", "d")
KINDS = ("create", "unlink", "rename", "link", "lookup", "lookup",
         "chmod", "getattr", "setx", "getx")
XATTR = b"user.k"
MODES = (0o600, 0o640, 0o644, 0o755)
ANSWERS = (0, errno.EEXIST, errno.ENOENT, errno.ENODATA)
TAG_MIN = 1000  # inode tags start above every errno, so an answer is one or the other


class _LossyPool:
    """The pool, with the reply of a share of committed proposals lost;
    ``share`` 1.0 loses the first reply of every distinct proposal (each
    is retried once, deterministically)."""

    def __init__(self, pool, share: float, rng: random.Random):
        self.pool, self.share, self.rng = pool, share, rng
        self.lost = 0
        self.seen: set[int] = set()

    async def bootstrap(self, addr, iface, *, timeout_s=None):
        cap = await self.pool.bootstrap(addr, iface, timeout_s=timeout_s)
        if iface.schema.node.displayName.endswith("Raft"):
            return _LossyCap(cap, self)
        return cap


class _LossyCap:
    def __init__(self, cap, owner):
        self.cap, self.owner = cap, owner

    async def propose(self, **kw):
        reply = await self.cap.propose(**kw)
        owner = self.owner
        if reply.notLeader:
            return reply
        if owner.share >= 1.0:
            key = hash(bytes(kw["command"]))
            lose = key not in owner.seen
            owner.seen.add(key)
        else:
            lose = owner.rng.random() < owner.share
        if lose:
            owner.lost += 1
            raise rpc.ConnectionLost("reply lost (chaos)")
        return reply


class _BareClient(MetaClient):
    """The broken build: retries go out as the bare command, outside the
    session table (what the mount did before sessions, minus its guesses)."""

    async def submit(self, command):
        return await self._propose(command)


def client(pool, nodes, *, sessions: bool = True, deadline_s: float = 8.0) -> MetaClient:
    cls = MetaClient if sessions else _BareClient
    return cls(pool, nodes, deadline_s=deadline_s, attempt_timeout_s=2.0,
               backoff_initial_s=0.05, backoff_max_s=0.5)


@dataclasses.dataclass
class Stats:
    ops: int = 0
    acknowledged: int = 0
    unknown: int = 0
    successes: list[float] = dataclasses.field(default_factory=list)  # completion times
    # Per kind: answers that were not an errno (the operation took effect or found something).
    succeeded: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class _Clients:
    """What both metadata workloads share: a directory of their own, and
    ``clients`` concurrent clients, each with its own pool and session."""

    def __init__(self, nodes, context, *, clients: int, sessions: bool = True,
                 lose_replies: float = 0.0, seed: int = 0):
        self.nodes, self.context = nodes, context
        self.clients, self.sessions = clients, sessions
        self.lose_replies, self.rng = lose_replies, random.Random(seed)
        self.dir_ino = 0
        self.lost_replies = 0
        self.until = 0.0

    async def prepare(self, nursery, name: str) -> None:
        pool = Pool(nursery, connect_timeout_s=1.0, backoff_max_s=0.5, ssl_context=self.context)
        reply = await client(pool, self.nodes).submit(
            Mkdir(ROOT_INO, name.encode(), 0o755, 0, 0, time.time_ns()))
        if reply.err:
            raise RuntimeError(f"mkdir {name}: errno {reply.err}")
        self.dir_ino = reply.attr.ino

    async def run(self, until_s: float) -> None:
        """Until ``self.until`` (which the caller may move later meanwhile)."""
        self.until = until_s
        async with trio.open_nursery() as nursery:
            for c in range(self.clients):
                nursery.start_soon(self._client_task, nursery, c)

    async def _client_task(self, nursery, c: int) -> None:
        rng = random.Random(self.rng.random())
        pool = Pool(nursery, connect_timeout_s=1.0, backoff_max_s=0.5, ssl_context=self.context)
        lossy = _LossyPool(pool, self.lose_replies, rng) if self.lose_replies else pool
        try:
            await self._client(client(lossy, self.nodes, sessions=self.sessions), c, rng)
        finally:
            if isinstance(lossy, _LossyPool):
                self.lost_replies += lossy.lost
            pool.close()


class Namespace(_Clients):
    """Clients on the names of one directory and their inodes (module
    docstring)."""

    def __init__(self, nodes, context, *, clients: int = 4, names=NAMES, kinds=KINDS, **kw):
        super().__init__(nodes, context, clients=clients, **kw)
        self.names, self.kinds = tuple(names), tuple(kinds)
        self.history: list[Op] = []
        self.stats = Stats()
        self.inos: dict[int, int] = {}   # tag -> inode number, as answers showed them
        self._tags = iter(range(TAG_MIN, 1 << 31))

    def every_kind_took_effect(self) -> bool:
        return all(self.stats.succeeded.get(kind) for kind in self.kinds)

    async def _client(self, meta: MetaClient, c: int, rng: random.Random):
        while trio.current_time() < self.until:
            await self._one(meta, c, rng)
            await trio.sleep(rng.random() * 0.02)

    def _args(self, kind: str, rng: random.Random) -> tuple:
        name = rng.choice(self.names)
        tag = rng.choice(sorted(self.inos)) if self.inos else 0
        if kind == "create":
            return (name, next(self._tags))
        if kind == "rename":
            return (name, rng.choice(self.names))
        if kind == "link":
            return (tag, name)
        if kind == "chmod":
            return (tag, rng.choice(MODES))
        if kind == "setx":
            return (tag, rng.choice((b"x", b"y", b"z")))
        if kind in ("getattr", "getx"):
            return (tag,)
        return (name,)

    async def _call(self, meta: MetaClient, kind: str, args: tuple) -> object:
        """The operation's answer in the model's terms."""
        d, now = self.dir_ino, time.time_ns()
        if kind == "create":
            reply = await meta.submit(Create(d, args[0].encode(), 0o644, args[1], 0, now))
            if reply.err:
                return reply.err
            return 0 if self._learn(reply) == args[1] else ("another inode", reply.attr.uid)
        if kind == "unlink":
            return (await meta.submit(Unlink(d, args[0].encode(), now))).err
        if kind == "rename":
            return (await meta.submit(Rename(d, args[0].encode(), d, args[1].encode(), 0,
                                             now))).err
        if kind == "lookup":
            reply = await meta.lookup(d, args[0].encode())
            return self._learn(reply) if reply.err == 0 else reply.err
        ino = self.inos[args[0]]
        if kind == "link":
            return (await meta.submit(Link(ino, d, args[1].encode(), now))).err
        if kind == "chmod":
            return (await meta.submit(SetAttr(ino, now, mode=args[1]))).err
        if kind == "setx":
            return (await meta.submit(SetXattr(ino, XATTR, args[1], 0, now))).err
        if kind == "getattr":
            def fill(q):
                q.init("getattr").ino = ino
            reply = await meta.query("getattr", EntryReply, fill)
            if reply.err:
                return reply.err
            if reply.attr.uid != args[0]:
                return ("another inode", reply.attr.uid)  # matches no model answer
            return (reply.attr.mode & 0o7777, reply.attr.nlink)

        def fill(q):
            g = q.init("getxattr")
            g.xattrIno, g.xattrName = ino, XATTR
        reply = await meta.query("getxattr", BytesReply, fill)
        return reply.err or bytes(reply.value)

    def _learn(self, reply) -> int:
        """A create's or lookup's answer: the tag of the inode found (tags
        start at TAG_MIN, above every errno)."""
        self.inos.setdefault(reply.attr.uid, reply.attr.ino)
        return reply.attr.uid

    async def _one(self, meta: MetaClient, c: int, rng: random.Random) -> None:
        kind = rng.choice(self.kinds)
        if kind in ("link", "chmod", "setx", "getattr", "getx") and not self.inos:
            kind = "lookup"
        args = self._args(kind, rng)
        call_s = trio.current_time()
        self.stats.ops += 1
        try:
            out = await self._call(meta, kind, args)
        except (Unavailable, BackendError):
            out = None
        ret_s = trio.current_time()
        if out is None or (isinstance(out, int) and out not in ANSWERS and out < TAG_MIN):
            # No answer, or a state-machine error the model does not know:
            # the outcome is unknown.
            self.stats.unknown += 1
            self.history.append(Op(c, call_s, None, kind, args, None))
            return
        self.stats.acknowledged += 1
        self.stats.successes.append(ret_s)
        self.stats.succeeded[kind] += out == 0 or not isinstance(out, int) or out >= TAG_MIN
        self.history.append(Op(c, call_s, ret_s, kind, args, out))


class Unique(_Clients):
    """Directories of unique names, each renamed once (module docstring)."""

    def __init__(self, nodes, context, *, clients: int = 2, **kw):
        super().__init__(nodes, context, clients=clients, **kw)
        self.made: set[str] = set()        # mkdir acknowledged
        self.renamed: set[str] = set()     # its rename acknowledged too

    async def _client(self, meta: MetaClient, c: int, rng: random.Random):
        n = 0
        while trio.current_time() < self.until:
            n += 1
            name = f"u-{c}-{n}"
            try:
                made = await meta.submit(Mkdir(self.dir_ino, name.encode(), 0o755, 0, 0,
                                               time.time_ns()))
                if made.err:
                    continue
                self.made.add(name)
                moved = await meta.submit(Rename(self.dir_ino, name.encode(), self.dir_ino,
                                                 f"v-{c}-{n}".encode(), 0, time.time_ns()))
                if moved.err == 0:
                    self.renamed.add(name)
            except (Unavailable, BackendError):
                pass

    def check(self, listing: set[str]) -> tuple[int, int]:
        """(lost, duplicated) against the directory's final listing."""
        lost = dup = 0
        for name in self.made:
            new = "v" + name[1:]
            if name in self.renamed:
                lost += new not in listing
                dup += name in listing  # back under the old name: applied twice
            else:
                lost += name not in listing and new not in listing
                dup += name in listing and new in listing
        return lost, dup


class FileWriter:
    """Files written and fsynced through a FUSE mount, in a thread (the
    file calls block); ``acked`` holds (name, sha256) of each whose fsync
    and close returned."""

    def __init__(self, directory: str, seed: int = 0) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.acked: dict[str, str] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            name = f"f{n}"
            data = self.rng.randbytes(self.rng.randrange(1, 300_000))
            try:
                with open(os.path.join(self.directory, name), "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                self.acked[name] = hashlib.sha256(data).hexdigest()
            except OSError:
                self.failed += 1
                time.sleep(0.2)

    @staticmethod
    def check(directory: str, acked: dict[str, str]) -> int:
        """How many acknowledged files are missing or differ (lost)."""
        lost = 0
        for name, digest in acked.items():
            try:
                with open(os.path.join(directory, name), "rb") as f:
                    lost += hashlib.sha256(f.read()).hexdigest() != digest
            except OSError:
                lost += 1
        return lost
