"""Directory write-behind on the mount: while this mount holds a directory's
lease, creates, mkdirs and symlinks there, and the small changes to the
nodes it made (inline data of small files, chmod, utimes, rename, unlink),
are answered here and sent later as ordered batches, one Raft entry each.

``LeasedBackend`` wraps the cluster backend; the FUSE layer does not know.
What it promises (README, "Metadata write-behind"):

- Other mounts see a linearizable namespace: before anyone else reads
  (lookup, readdir, getattr) or changes a leased directory, the leader
  recalls the lease, and this mount's flush commits first
  (server/meta/recall.py). Close-to-open holds the same way.
- Durability: fsync, fsyncdir and unmount flush; otherwise a batch leaves
  within ``FLUSH_AGE_S`` or at ``FLUSH_OPS`` operations. A crash of this
  mount loses at most the changes of that window, never half a batch (a
  batch is one log entry). A crash of nodes loses nothing acknowledged by
  a flush (the batch is a committed Raft entry).
- Fencing: leases expire in log time ``LEASE_S`` after this mount's last
  batch or grant. This mount answers from its overlay only until
  ``LEASE_S - MARGIN_S`` after it *sent* that request; past it, local
  answers stop, and if the late batch is refused (epoch or expiry), the
  changes it held are lost: the next fsync reports EIO and the caches that
  showed them are dropped.

What is answered here is the overlay's (fusefs/overlay.py). Anything else
touching a leased directory (unlink of an older file, setattr of the
directory itself, a link into it...) is sent at once as a batch of its own
(after what is queued), and its real result returned. Everything that names
a node made here but is not answered here flushes the queue first, so the
node exists when the command applies. A directory with more entries than
LEASE_LISTING_MAX is leased without its listing: names are learned as the
kernel asks for them (absence included: nobody else adds names while we
hold the lease), and its readdir goes to the leader after a flush.
A name listed at the grant but not made here has no attributes in the
overlay; its lookup (the kernel asks before every unlink and rename of a
name it has not looked up within entry_timeout) would cost a round trip.
Instead one readdirplus page from that name on is read (``AHEAD_PAGE``)
and its attributes answer lookups for ``AHEAD_S``: the same staleness an
attribute the kernel caches has, and the kernel is told to keep such an
answer only for what is left of attr_timeout, so a change through another
mount still shows within attr_timeout. Nodes this mount changed are never
answered from it (their attributes are the overlay's, or the leader's after
a flush), and every change this mount sends drops what it names.
``-o sync_meta`` turns all of this off: one commit per change, as before.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import stat
from collections.abc import Sequence

import trio

from rpc.logfmt import kv
from server.meta import codec
from server.meta.leases import named_dirs
from server.meta.types import (LEASE_LISTING_MAX, AcquireLease, BatchReply, BytesReply, Clone,
                               Command, CommitWrite, Create, DirPage, EntryReply, LeaseBatch,
                               LeaseReply, Link, ManifestPage, Mkdir, Mknod, NamesReply,
                               ReleaseLease, RemoveXattr, Rename, Result, Rmdir, SetAttr,
                               SetXattr, Symlink, Unlink)

from .backend import Backend, BackendError, FsStat
from .overlay import DirLease, Overlay, Owned
from .readleases import ReadLeases, entry_reply

log = logging.getLogger("chordfs.fuse.lease")

LEASE_S = 10.0
# Log time advances by the leader's 1 s ticks and may run ahead of our clock
# (another leader's clock): stop answering locally this long before expiry.
MARGIN_S = 3.0
FLUSH_AGE_S = 0.1
FLUSH_OPS = 256
FLUSH_INLINE_BYTES = 1 << 20
IDLE_RELEASE_S = 2.0
COOLDOWN_S = 5.0          # after a recall or a refusal, before asking again
INO_RANGE = 1024
POLL_S = 20.0
UNMOUNT_FLUSH_S = 10.0
# Attributes of names listed at grant but not made here, read ahead a page
# at a time (`rm -r`, `mv` of many files): kept this briefly, and handed to
# the kernel with that much less attr_timeout (module docstring).
AHEAD_PAGE = 256
AHEAD_S = 0.25
AHEAD_MAX = 65536


class LeaseLost(BackendError):
    """Changes answered under a lease never reached the log."""


@dataclasses.dataclass
class _Op:
    data: bytes
    ino: int = 0
    relies_on: int = 0  # the leased directory this op needs (0: none, or granted in-batch)
    also: int = 0       # a second one (a rename between two leased directories)
    inline: int = 0
    grant: int = 0      # the directory an AcquireLease op asks for
    release: bool = False  # a ReleaseLease: losing it loses nothing


class LeasedBackend(Overlay, Backend):
    def __init__(self, inner, nursery: trio.Nursery, *, lease_s: float = LEASE_S,
                 margin_s: float = MARGIN_S, flush_age_s: float = FLUSH_AGE_S,
                 meta=None) -> None:
        """``meta``: the MetaClient the leader's recalls come through (the
        cluster backend's unless given)."""
        self.inner = inner
        self.meta = meta if meta is not None else inner.meta
        self.holder = random.getrandbits(62) + 1
        self.meta.holder = self.holder
        self.lease_s, self.margin_s, self.flush_age_s = lease_s, margin_s, flush_age_s
        self.leases: dict[int, DirLease] = {}
        self.owned: dict[int, Owned] = {}
        self.queue: list[_Op] = []
        # Older inodes a queued (or sent, unanswered) batch changes: the
        # leader is asked about them only after it applied.
        self.dirty: set[int] = set()
        self.dirty_sent: set[int] = set()
        self.queue_since = 0.0
        self.inline_queued = 0
        self.seq = 0
        self.epochs = 0
        self.ino_next = self.ino_hi = 0
        self.spare: tuple[int, int] | None = None  # the next range, granted already
        self.chunk_bytes = 0  # learned from the leader's manifests
        self.on_lost = None   # the FUSE layer's: drop what the kernel holds
        self.valid_until = 0.0
        self.cooldown: dict[int, float] = {}
        self.lost: str | None = None
        self._flush_lock = trio.Lock()
        self._queued = trio.Event()
        self._have_leases = trio.Event()
        self.stats = {"local": 0, "batches": 0, "batched_ops": 0, "sync_ops": 0,
                      "grants": 0, "recalls": 0, "lost": 0, "ahead_pages": 0, "ahead_hits": 0}
        self.reads = ReadLeases(self, nursery)
        self.ahead: dict[int, tuple[float, EntryReply]] = {}  # ino -> (asked at, reply)
        nursery.start_soon(self._flusher)
        nursery.start_soon(self._recalls)

    # ------------------------------------------------------------ leases

    def _next_epoch(self) -> int:
        """A fencing epoch for our next grant: unique per grant of this holder."""
        self.epochs += 1
        return ((self.holder << 1) ^ self.epochs) & ((1 << 63) - 1)

    def _valid(self) -> bool:
        return trio.current_time() < self.valid_until

    def _live(self, dir_ino: int) -> DirLease | None:
        lease = self.leases.get(dir_ino)
        if lease is None or lease.recalled or not self._valid():
            return None
        lease.last_used = trio.current_time()
        return lease

    async def _lease_for(self, dir_ino: int) -> DirLease | None:
        """Our live lease on ``dir_ino``, asking for it if we may."""
        lease = self._live(dir_ino)
        if lease is not None:
            return lease
        if self.cooldown.get(dir_ino, 0.0) > trio.current_time() or dir_ino in self.leases:
            return None
        await self.flush()  # the grant must come after what is queued
        epoch = self._next_epoch()
        sent = trio.current_time()
        reply = await self.inner.submit(AcquireLease(self.holder, dir_ino, epoch,
                                                     int(self.lease_s * 1e9), INO_RANGE))
        if not isinstance(reply, LeaseReply) or reply.err:
            self.cooldown[dir_ino] = trio.current_time() + COOLDOWN_S
            return None
        self._take_range(reply.ino_next, reply.ino_hi)
        entries: dict[bytes, tuple[int, int] | None] = {}
        complete = reply.entries <= LEASE_LISTING_MAX
        parent = await self._list(dir_ino, entries) if complete else 0
        if complete and not parent:  # it grew while we listed: learn as we go
            entries.clear()
            complete = False
        self.valid_until = max(self.valid_until, sent + self.lease_s - self.margin_s)
        lease = DirLease(dir_ino, epoch, reply.attr, entries, parent, complete, granted=True,
                         last_used=trio.current_time())
        self.leases[dir_ino] = lease
        self._have_leases.set()
        self.stats["grants"] += 1
        log.debug(kv("lease.granted", holder=f"{self.holder:x}", dir=dir_ino,
                     entries=len(entries)))
        return lease

    async def _list(self, dir_ino: int, out: dict) -> int:
        """Fill ``out`` with the directory's entries; its parent, or 0 when
        it could not be listed whole."""
        cursor = b""
        while True:
            page = await self.inner.readdir(dir_ino, cursor)
            if page.err:
                return 0
            for e in page.entries:
                out[e.name] = (e.ino, e.kind)
            if len(out) > LEASE_LISTING_MAX:
                return 0
            if page.done:
                return page.parent
            cursor = page.cursor

    async def _release_now(self, dir_ino: int, epoch: int) -> None:
        try:
            await self.inner.submit(ReleaseLease(self.holder, dir_ino, epoch))
        except BackendError:
            pass  # it expires

    def _take_range(self, lo: int, hi: int) -> None:
        """A range the leader answered with; a new one is used once the
        numbers left of the one before are (it keeps both valid)."""
        if hi > self.ino_hi:
            self.spare = (lo, hi)
        if self.ino_next >= self.ino_hi and self.spare:
            (self.ino_next, self.ino_hi), self.spare = self.spare, None

    def _inos_left(self) -> int:
        spare = self.spare[1] - self.spare[0] if self.spare else 0
        return self.ino_hi - self.ino_next + spare

    async def _take_ino(self) -> int:
        if self.ino_next >= self.ino_hi:
            if not self.spare:
                await self.flush(want_inos=INO_RANGE)
            self._take_range(0, 0)
            if self.ino_next >= self.ino_hi:
                raise BackendError("no inode numbers granted to this mount")
        ino = self.ino_next
        self.ino_next += 1
        return ino

    def _forget(self, dirs) -> None:
        """Drop our view of these leases and of the nodes owned in them."""
        dirs = set(dirs)
        self.ahead.clear()
        for d in dirs:
            self.leases.pop(d, None)
            self.owned.pop(d, None)  # its attributes follow its entries: ours no longer
        for ino in [i for i, o in self.owned.items() if o.dir in dirs]:
            del self.owned[ino]
        if not self.leases and not self.reads.leases:
            self._have_leases = trio.Event()

    def _lose(self, why: str) -> None:
        """The changes queued or in flight will never apply."""
        self.stats["lost"] += 1
        self.lost = why
        log.error(kv("lease.lost", holder=f"{self.holder:x}", reason=why,
                     leases=len(self.leases), owned=len(self.owned)))
        self.queue.clear()
        self.dirty.clear()
        self.inline_queued = 0
        self._forget(list(self.leases))
        if self.on_lost is not None:
            self.on_lost()

    # ------------------------------------------------------------ the queue

    def _enqueue(self, cmd: Command, ino: int = 0, relies_on: int = 0, inline: int = 0) -> None:
        if not self.queue:
            self.queue_since = trio.current_time()
            self._queued.set()  # the flusher learns when this batch is due
        self.queue.append(_Op(codec.encode_command(cmd), ino, relies_on, inline))
        if ino:
            self.dirty.add(ino)  # made by a batch not applied yet
        self.inline_queued += inline
        self.stats["local"] += 1
        if len(self.queue) >= FLUSH_OPS or self.inline_queued >= FLUSH_INLINE_BYTES:
            self.queue_since = -self.flush_age_s  # due now
            self._queued.set()

    async def flush(self, extra: Command | None = None, want_inos: int = 0,
                    renew: bool = False, take_queue: bool = True) -> Result | None:
        """Send what is queued (and ``extra`` after it) as one batch; the
        result of ``extra``. Batches go one at a time, in order. ``renew``
        sends a batch even with nothing in it (it renews our leases);
        ``take_queue=False`` leaves the queue for later."""
        async with self._flush_lock:
            ops, dirty = [], set()
            if take_queue:
                ops, self.queue, self.inline_queued = self.queue, [], 0
                dirty, self.dirty = self.dirty, set()
                self.dirty_sent |= dirty
            try:
                return await self._send_batch(ops, extra, want_inos, renew)
            finally:
                self.dirty_sent -= dirty

    async def _send_batch(self, ops: list, extra: Command | None, want_inos: int,
                          renew: bool) -> Result | None:
        """One batch: the ops taken from the queue, then ``extra``."""
        if extra is not None:
            ops.append(_Op(codec.encode_command(extra)))
        if self._inos_left() < INO_RANGE // 4:
            want_inos = INO_RANGE
        if not ops and not renew and not (want_inos and self.leases):
            return None
        self.seq += 1
        relied = {d for op in ops for d in (op.relies_on, op.also) if d}
        epochs = {d: self.leases[d].epoch for d in relied if d in self.leases}
        batch = LeaseBatch(self.holder, self.seq, [op.data for op in ops],
                           [op.ino for op in ops], list(epochs), list(epochs.values()),
                           want_inos)
        sent = trio.current_time()
        try:
            reply = await self.inner.submit(batch)
        except BackendError as exc:
            if len(ops) > (extra is not None):
                self._lose(f"batch of {len(ops)} not committed: {exc}")
            raise
        if not isinstance(reply, BatchReply) or reply.err:
            err = getattr(reply, "err", errno.EIO)
            if all(op.release for op in ops) and extra is None:
                # Only releases (or a renewal): a lease that expired
                # meanwhile is released as well as it can be.
                log.info(kv("lease.release_refused", holder=f"{self.holder:x}", errno=err))
                if err == errno.ESTALE:
                    self._forget(list(self.leases))  # this session's leases are gone
                return None
            self._lose(f"batch of {len(ops)} refused (errno {err})")
            if extra is not None:
                raise LeaseLost(f"lease lost (errno {err})")
            return None
        self.stats["batches"] += 1
        self.stats["batched_ops"] += len(ops)
        self.valid_until = max(self.valid_until, sent + self.lease_s - self.margin_s)
        self._take_range(reply.ino_next, reply.ino_hi)
        answered = reply.results[:-1] if extra is not None else reply.results
        for data in answered:
            if data:  # only failures are sent back
                err = codec.decode_result(data).err
                if err:
                    # We answered it as done: our view and the log differ.
                    self._lose(f"a change answered locally failed with errno {err}")
                    break
        last = reply.results[-1] if extra is not None and reply.results else b""
        extra_result = codec.decode_result(last) if last else None
        for op in ops:
            if op.grant in self.leases:
                self.leases[op.grant].granted = True
        return extra_result

    async def _flusher(self) -> None:
        """Sends the queue when it is due, renews leases in between, gives
        back idle ones."""
        while True:
            now = trio.current_time()
            idle = [d for d, lease in self.leases.items()
                    if now - lease.last_used > IDLE_RELEASE_S and lease.granted]
            if idle:
                self._give_back(idle, recalled=False)
            due = bool(self.queue) and (len(self.queue) >= FLUSH_OPS or
                                        now >= self.queue_since + self.flush_age_s)
            renew = bool(self.leases) and self.valid_until - now < self.lease_s / 2
            if due or renew:
                try:
                    await self.flush(renew=renew, take_queue=due)
                except BackendError as exc:
                    log.info(kv("lease.flush_failed", holder=f"{self.holder:x}", error=str(exc)))
                    await trio.sleep(0.05)
                continue
            wake = now + IDLE_RELEASE_S / 4
            if self.queue:
                wake = min(wake, self.queue_since + self.flush_age_s)
            with trio.move_on_at(wake):
                await self._queued.wait()
            self._queued = trio.Event()

    def _give_back(self, dirs: Sequence[int], *, recalled: bool) -> None:
        """Queue the release of these leases; local answers there stop now."""
        for d in dirs:
            lease = self.leases.get(d)
            if lease is None:
                continue
            self._enqueue(ReleaseLease(self.holder, d, lease.epoch))
            self.queue[-1].release = True
        self._forget(dirs)
        if recalled:
            for d in dirs:
                self.cooldown[d] = trio.current_time() + COOLDOWN_S

    async def _recalls(self) -> None:
        while True:
            await self._have_leases.wait()
            try:
                dirs = await self.meta.lease_events(self.holder, POLL_S)
            except BackendError as exc:
                log.info(kv("lease.poll_failed", holder=f"{self.holder:x}", error=str(exc)))
                await trio.sleep(0.2)
                continue
            if not dirs:
                continue
            self.stats["recalls"] += 1
            log.info(kv("lease.recall", holder=f"{self.holder:x}",
                         dirs=",".join(map(str, dirs))))
            await self.reads.recalled(dirs)
            self._give_back([d for d in dirs if d in self.leases], recalled=True)
            for d in dirs:
                if d not in self.leases:
                    self.cooldown[d] = trio.current_time() + COOLDOWN_S
            # Release what the leader asked for even if we had dropped it
            # already: the release is idempotent, a stray one harmless.
            try:
                await self.flush()
            except BackendError as exc:
                log.info(kv("lease.flush_failed", holder=f"{self.holder:x}", error=str(exc)))

    # ------------------------------------------------------------ changes

    async def submit(self, command: Command) -> Result:
        await self.reads.before_change(command)
        if self.ahead:
            self._unahead(command)
        kind = type(command)
        if kind in (Create, Mkdir, Symlink):
            lease = await self._lease_for(command.parent)
            if lease is not None:
                return await self._new_node(lease, command)
        elif kind in (Unlink, Rmdir):
            if kind is Unlink and not command.keep_orphan:
                await self._lease_for(command.parent)
            answer = self._remove_owned(command)
            if answer is not None:
                return answer
        elif kind is Rename:
            for d in dict.fromkeys((command.parent, command.new_parent)):
                await self._lease_for(d)
            answer = self._rename_owned(command)
            if answer is not None:
                return answer
        elif kind is SetAttr:
            answer = self._setattr_owned(command)
            if answer is not None:
                return answer
        elif kind is CommitWrite:
            answer = self._commit_owned(command)
            if answer is not None:
                return answer
        return await self._send(command)

    async def _send(self, cmd: Command) -> Result:
        """A change not answered here: inside a batch when it touches a
        directory we lease, else on its own once what it names exists."""
        # A node we own that the leader changes (block data, a truncate, an
        # xattr that may set the mode...): from now on it answers for it.
        named = [n for n in (getattr(cmd, f, 0) for f in ("ino", "src")) if n]
        names = [n for n in named if n in self.owned]
        for n in names:
            self.owned.pop(n, None)
        # A node made or changed by a batch not applied yet, even one we
        # stopped owning (its lease was recalled): the batch goes first.
        unsent = [n for n in named if n in self.dirty or n in self.dirty_sent]
        ours = [d for d in named_dirs(cmd) if d in self.leases]
        if ours:
            self.stats["sync_ops"] += 1
            moved = self._renamed_nodes(cmd)
            result = await self.flush(extra=cmd)
            self._after_sync(cmd, result)
            if not result.err and moved:
                # A renamed directory's ctime (and '..') changed: only the
                # leader knows its attributes now.
                self._give_back([m for m in moved if m in self.leases], recalled=False)
                for m in moved:
                    self.owned.pop(m, None)
            return result
        if names or unsent:
            await self.flush()  # so that the node exists
        return await self.inner.submit(cmd)

    def _learn(self, result: Result) -> None:
        attr = getattr(result, "attr", None)
        if not result.err and attr is not None:
            self.owned.pop(attr.ino, None)  # as in _send: the leader answers for it now

    def _renamed_nodes(self, cmd: Command) -> list[int]:
        if not isinstance(cmd, Rename):
            return []
        out = []
        for parent, name in ((cmd.parent, cmd.name), (cmd.new_parent, cmd.new_name)):
            lease = self.leases.get(parent)
            entry = lease.entries.get(name) if lease is not None else None
            if entry is not None:
                out.append(entry[0])
        return out

    def _after_sync(self, cmd: Command, result: Result) -> None:
        """Keep the leased directories' listings and attributes right after
        a change the leader answered."""
        if result.err:
            return
        self._learn(result)
        parents = {a.ino: a for a in getattr(result, "parents", [])}
        for ino, attr in parents.items():
            if ino in self.leases:
                self._set_dir_attr(self.leases[ino], attr)
        if isinstance(cmd, (Unlink, Rmdir)) and cmd.parent in self.leases:
            self._drop_name(self.leases[cmd.parent], cmd.name)
        elif isinstance(cmd, Rename) and (cmd.parent in self.leases
                                          or cmd.new_parent in self.leases):
            # Rare enough (an older node moved in or out): let go of both.
            self._give_back([d for d in (cmd.parent, cmd.new_parent) if d in self.leases],
                            recalled=False)
        elif isinstance(cmd, (Link, Mknod, Clone)) and isinstance(result, EntryReply):
            parent, name = ((cmd.new_parent, cmd.new_name) if isinstance(cmd, Link)
                            else (cmd.parent, cmd.name))
            if parent in self.leases:
                self.leases[parent].entries[name] = (result.attr.ino,
                                                     stat.S_IFMT(result.attr.mode))
        elif isinstance(cmd, SetAttr) and cmd.ino in self.leases and isinstance(result, EntryReply):
            self._set_dir_attr(self.leases[cmd.ino], result.attr)
        elif isinstance(cmd, (SetXattr, RemoveXattr)) and cmd.ino in self.leases:
            # A default ACL may have come: new nodes there would inherit
            # it, which only the leader computes.
            self._give_back([cmd.ino], recalled=False)

    # ------------------------------------------------------------ queries

    async def lookup(self, parent: int, name: bytes) -> EntryReply:
        lease = self._live(parent)
        if lease is not None:
            if name not in lease.entries and not lease.complete:
                await self._absent(lease, name)  # asks the leader, remembers
            entry = lease.entries.get(name)
            if entry is None:
                return EntryReply(errno.ENOENT)
            attr = self._attr_of(entry[0])
            if attr is not None:
                return EntryReply(0, attr)
            ahead = await self._ahead(parent, name, entry[0])
            if ahead is not None:
                return ahead
            await self._flush_if_named(entry[0])
            return await self.inner.lookup(parent, name)
        return await self.reads.lookup(parent, name, self.inner.lookup)

    async def getattr(self, ino: int) -> EntryReply:
        attr = self._attr_of(ino)
        if attr is not None:
            return EntryReply(0, attr)
        await self._flush_if_named(ino)
        return await self.reads.getattr(ino, self.inner.getattr)

    def _unahead(self, command: Command) -> None:
        """Before our ``command`` goes anywhere: the nodes it changes are
        not answered from the read-ahead any more (a node the overlay
        changes is dirty as well, which ``_ahead`` checks)."""
        named = [getattr(command, "ino", 0), getattr(command, "src", 0)]
        pairs = []
        if isinstance(command, (Unlink, Rmdir, Rename)):
            pairs.append((command.parent, command.name))
        if isinstance(command, Rename):
            pairs.append((command.new_parent, command.new_name))
        for parent, name in pairs:
            lease = self.leases.get(parent)
            entry = lease.entries.get(name) if lease is not None else None
            if entry:
                named.append(entry[0])
        for ino in named:
            self.ahead.pop(ino, None)

    def _changed_here(self, ino: int) -> bool:
        return ino in self.owned or ino in self.dirty or ino in self.dirty_sent

    async def _ahead(self, parent: int, name: bytes, ino: int) -> EntryReply | None:
        """The attributes of listed node ``ino`` (named ``name`` in our
        leased ``parent``) from the read-ahead (module docstring), or None:
        ask the usual way."""
        if self._changed_here(ino):
            self.ahead.pop(ino, None)
            return None
        held = self.ahead.get(ino)
        if held is None or trio.current_time() - held[0] > AHEAD_S:
            asked = trio.current_time()
            # Every name > name[:-1]: ``name`` and what follows it.
            page = await self.inner.readdir(parent, name[:-1], AHEAD_PAGE, True)
            if page.err:
                return None
            if len(self.ahead) > AHEAD_MAX:
                self.ahead.clear()
            for e in page.entries:
                if e.attr is not None:
                    self.ahead[e.attr.ino] = (asked, entry_reply(e))
            self.stats["ahead_pages"] += 1
            held = self.ahead.get(ino)
            lease = self._live(parent)
            # Changed meanwhile (by us, or the lease went): ask the usual way.
            if (held is None or held[0] != asked or self._changed_here(ino) or lease is None
                    or (lease.entries.get(name) or (0,))[0] != ino):
                self.ahead.pop(ino, None)  # ahead_age must not shorten the usual answer
                return None
        self.stats["ahead_hits"] += 1
        return held[1]

    def hold_entry(self, parent: int, name: bytes, attr) -> float:
        """How long the kernel may keep this lookup answer (readleases.py)."""
        return self.reads.hold_entry(parent, name, attr)

    def hold_attr(self, attr) -> float:
        return self.reads.hold_attr(attr)

    def ahead_age(self, ino: int) -> float:
        """How old the read-ahead attributes held for ``ino`` are (0 when
        none are: a lookup that could not use them drops them): the FUSE
        layer shortens the kernel's attr_timeout by it."""
        held = self.ahead.get(ino)
        return trio.current_time() - held[0] if held is not None else 0.0

    async def _flush_if_named(self, ino: int) -> None:
        """A node we made or changed must be in the log before the leader
        is asked about it (a batch may be on its way: flush waits for it)."""
        if ino in self.owned or ino in self.dirty or ino in self.dirty_sent:
            await self.flush()

    async def readdir(self, ino: int, cursor: bytes = b"", limit: int = 1024,
                      plus: bool = False) -> DirPage:
        lease = self._live(ino)
        if lease is not None and lease.complete and lease.parent:
            page = self._local_page(lease, cursor, limit, plus)
            if page is not None:
                return page
        await self.flush()  # the leader lists what we made (our queries do not recall)
        return await self.inner.readdir(ino, cursor, limit, plus)

    async def readlink(self, ino: int) -> BytesReply:
        owned = self.owned.get(ino)
        if owned is not None and stat.S_ISLNK(owned.attr.mode):
            return BytesReply(0, owned.target)
        await self._flush_if_named(ino)
        return await self.inner.readlink(ino)

    async def getxattr(self, ino: int, name: bytes) -> BytesReply:
        if ino in self.owned and self._live(self.owned[ino].dir) is not None:
            return BytesReply(errno.ENODATA)  # no default ACL where we lease, no setxattr yet
        if self.reads.has_no_xattrs(ino):
            return BytesReply(errno.ENODATA)
        return await self.inner.getxattr(ino, name)

    async def listxattr(self, ino: int) -> NamesReply:
        if ino in self.owned and self._live(self.owned[ino].dir) is not None:
            return NamesReply(0, [])
        if self.reads.has_no_xattrs(ino):
            return NamesReply(0, [])
        return await self.inner.listxattr(ino)

    async def manifest(self, ino: int, start: int = 0, limit: int | None = None) -> ManifestPage:
        owned = self.owned.get(ino)
        if (owned is not None and owned.content is not None and self.chunk_bytes
                and self._live(owned.dir) is not None):
            slices = [s for s in owned.content if s.off + s.length > start]
            return ManifestPage(0, owned.attr.size, self.chunk_bytes, slices, 0, True, owned.attr)
        await self._flush_if_named(ino)
        page = await self.reads.manifest(ino, start, limit, self.inner.manifest)
        if not page.err:
            self.chunk_bytes = page.chunk_bytes
        return page

    async def drop_caches(self) -> None:
        """``chordfs drop-cache``: nothing is answered from what this mount
        made any more; every lease goes back (the next change asks again)."""
        self._give_back(list(self.leases), recalled=False)
        self.ahead.clear()
        await self.flush()
        await self.reads.drop_all()

    async def statfs(self) -> FsStat:
        return await self.inner.statfs()

    # ------------------------------------------------------------ data, sync

    async def put_chunks(self, chunks, after_index: int = 0) -> int:
        return await self.inner.put_chunks(chunks, after_index)

    async def get_chunk(self, chunk_id: bytes) -> bytes:
        return await self.inner.get_chunk(chunk_id)

    async def has_chunks(self, chunk_ids) -> list[bool]:
        return await self.inner.has_chunks(chunk_ids)

    async def sync(self) -> None:
        """fsync, fsyncdir: everything answered so far is in the log, or
        the error that lost it is reported (once)."""
        await self.flush()
        if self.lost is not None:
            why, self.lost = self.lost, None
            raise LeaseLost(f"changes made under a directory lease were lost: {why}")
        await self.inner.sync()

    def data_path_stats(self) -> dict[str, int]:
        return self.inner.data_path_stats()

    async def aclose(self) -> None:
        await self.aclose_leases()

    async def aclose_leases(self) -> None:
        """Unmount: flush and give every lease back (bounded). The cluster
        backend underneath is closed by whoever opened it."""
        self.on_lost = None  # the FUSE layer is gone
        with trio.move_on_after(UNMOUNT_FLUSH_S):
            try:
                self._give_back(list(self.leases), recalled=False)
                await self.flush()
                await self.reads.drop_all()
            except BackendError as exc:
                log.error(kv("lease.unmount_flush_failed", holder=f"{self.holder:x}",
                             error=str(exc)))
        log.info(kv("lease.stats", holder=f"{self.holder:x}", **self.stats,
                    **{f"read_{k}": v for k, v in self.reads.stats.items()}))

    def __getattr__(self, name: str):
        # Everything else the cluster backend offers (refresh_map, ring, ...).
        return getattr(self.inner, name)
