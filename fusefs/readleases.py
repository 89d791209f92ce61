"""Directory read leases on the mount: lookups, getattrs and the open-time
manifest of files in a directory this mount reads a lot are answered from
its cache, with no round trip, while it holds a shared lease there.

Why it is safe (server/meta/leases.py, recall.py): while our read lease on
a directory D lives in the log, no change that could make an answer here
stale applies (D's entries and attributes, the attributes, xattrs, content
and links of every node named in D): the state machine refuses it with
LEASED, and the leader first asks us, through the lease long poll, to give
D back. We drop everything cached for D before the release is sent, so a
change another mount closes before our open is seen at that open
(close-to-open). If we cannot be reached, our lease runs out in log time;
we stop answering from the cache ``MARGIN_S`` earlier than that, counted
from when we *sent* the grant request.

A reply that was on its way while D was dropped must not be cached: every
drop bumps D's generation, and a reply is kept only if the generation it
was asked under is still current.

Our own changes are not held back by our own read lease in a batch, and a
plain change of ours would be (we are not the batch's holder then): so
before any change goes out, the directories and nodes it names are dropped
here, and read leases it would collide with are given back first
(``before_change``). What we miss the leader recalls, at the cost of a
round trip; nothing stale is ever answered.

Policy: a directory gets a read lease after ``WANT_QUERIES`` cacheable
queries within ``WANT_WINDOW_S``, unless this mount changed something there
in the last ``COOLDOWN_S`` or holds its write lease; an idle read lease goes
back after ``IDLE_S``; a used one is renewed at half its life.

Read-ahead: a directory asked that often is being walked (`cp -r`, `tar c`,
a build reading its sources, `cat *`), and each name would otherwise cost
one round trip the first time.  Once its read lease is granted, the
directory is listed with attributes (readdirplus pages, up to
``PREFETCH_ENTRIES_MAX`` names), every entry cached as if looked up; a
listing that reached the end makes the directory complete, and a name not
in it is answered ENOENT with no round trip.  Once ``LAYOUTS_AHEAD_AFTER``
files there have been opened under the lease, the layouts of the small
regular files of that listing (``LAYOUT_AHEAD_BYTES`` at most; their data
is usually inline) are fetched ahead too, ``LAYOUTS_BATCH`` files per
query (the ``manifests`` of the backend underneath: LocalBackend's or
ClusterBackend's), ``LAYOUT_BATCHES_IN_FLIGHT`` queries at a
time, in name order, so an open finds its layout cached.  Both run under the
lease and are guarded like any other answer (the generation check).

The kernel's own caches: an answer given from the lease may be kept by the
kernel (dentry and attributes) for as long as the lease is left, not only
the default entry/attr timeout (``hold_entry``, ``hold_attr``; an answer
equal to what the lease holds, at least ``KERNEL_HOLD_MIN_S`` left), so a
second pass over the directory (warm reads, `ls -l` again, `make` re-reading
its sources) asks nothing at all.  What the kernel keeps that way is dropped
before the lease is given back: attributes at once (that takes no lock),
dentries through the invalidator thread, which a recall and an idle release
wait for (``KERNEL_FORGET_WAIT_S`` at most).  A release for our own change
cannot wait: the kernel holds the directory locked for that request, and the
thread needs the lock to drop a dentry there; those dentries go once the
request is answered, and until then another mount may change the directory
(milliseconds; without a lease the kernel keeps a dentry for the whole entry
timeout anyway). The time left is counted like every answer's, so a lease
that runs out unreachable takes the kernel's copies with it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import stat

import trio

from rpc.logfmt import kv
from server.meta.leases import named_dirs
from server.meta.types import (READDIR_PAGE_MAX, AcquireLease, Command, DirEntry, EntryReply,
                               LeaseReply, ManifestPage, ReleaseLease, Rename, Rmdir, Unlink)

from .backend import BackendError

log = logging.getLogger("chordfs.fuse.readlease")

WANT_QUERIES = 16
WANT_WINDOW_S = 2.0
IDLE_S = 5.0
COOLDOWN_S = 5.0
PREFETCH_ENTRIES_MAX = 16 * READDIR_PAGE_MAX   # per directory
CACHED_ENTRIES_MAX = 256 * 1024                # no read-ahead past this many names cached
LAYOUTS_AHEAD_AFTER = 8
LAYOUT_AHEAD_BYTES = 64 * 1024
LAYOUTS_BATCH = 32              # files per query (``manifests``)
LAYOUT_BATCHES_IN_FLIGHT = 2
KERNEL_HOLD_MIN_S = 1.0        # the default timeouts do as well below this
KERNEL_FORGET_WAIT_S = 1.0


def entry_reply(e: DirEntry) -> EntryReply:
    """A readdirplus entry as the lookup answer it stands for (its xattr
    flag included: `ls -l` then asks no ACL of a node that has none)."""
    return EntryReply(0, e.attr, xattrs=2 if e.xattrs else 1)


@dataclasses.dataclass
class ReadLease:
    epoch: int
    valid_until: float
    last_used: float


class ReadLeases:
    def __init__(self, owner, nursery: trio.Nursery) -> None:
        """``owner``: the LeasedBackend (holder, epochs, write leases, the
        backend underneath, lease timing)."""
        self.owner = owner
        self.nursery = nursery
        self.leases: dict[int, ReadLease] = {}
        self.gen: dict[int, int] = {}
        self.entries: dict[tuple[int, bytes], EntryReply] = {}
        self.attrs: dict[int, tuple[int, EntryReply]] = {}     # ino -> (dir, reply)
        self.pages: dict[int, tuple[int, ManifestPage]] = {}   # ino -> (dir, first page)
        self.by_dir: dict[int, set] = {}   # dir -> names and inos cached under it
        self.wanted: dict[int, tuple[int, float]] = {}  # dir -> (queries, window start)
        self.asking: set[int] = set()
        self.cooldown: dict[int, float] = {}
        # The epoch of our last grant per directory: a renewal on its way
        # while we gave the lease back can bring the row back, and the
        # leader's next recall must still find us able to release it.
        self.epochs: dict[int, int] = {}
        self.complete: set[int] = set()   # dirs whose whole listing is cached
        self.listing: dict[int, list[int]] = {}   # dir -> inos read ahead, in name order
        self.opens: dict[int, int] = {}   # dir -> layouts asked under its lease
        # What the kernel may keep past its default timeouts, per leased dir:
        # ("e", name) for a dentry, ("a", ino) for attributes -> until when.
        self.kernel = None   # the mount's fusefs.kernel.Invalidator (None: no kernel)
        self.held: dict[int, dict[tuple, float]] = {}
        self.held_count = 0
        self.unheld: dict[int, trio.Event] = {}   # dir -> its dentries are gone
        self.stats = {"hits": 0, "grants": 0, "recalled": 0, "released": 0, "prefetched": 0,
                      "layouts_ahead": 0, "kernel_held": 0, "kernel_dropped": 0}
        nursery.start_soon(self._upkeep)

    # ------------------------------------------------------------ state

    def live(self, dir_ino: int) -> bool:
        lease = self.leases.get(dir_ino)
        if lease is None:
            return False
        now = trio.current_time()
        if now >= lease.valid_until:
            return False
        lease.last_used = now
        return True

    def _note(self, dir_ino: int) -> None:
        """A cacheable query we had to ask; in a directory we do not
        read-lease, it counts towards asking for one."""
        now = trio.current_time()
        if (dir_ino in self.asking or dir_ino in self.leases or dir_ino in self.owner.leases
                or self.cooldown.get(dir_ino, 0.0) > now):
            return
        count, start = self.wanted.get(dir_ino, (0, now))
        if now - start > WANT_WINDOW_S:
            count, start = 0, now
        count += 1
        if count >= WANT_QUERIES:
            self.wanted.pop(dir_ino, None)
            self.asking.add(dir_ino)
            self.nursery.start_soon(self._acquire, dir_ino)
        else:
            self.wanted[dir_ino] = (count, start)

    async def _acquire(self, dir_ino: int) -> None:
        try:
            epoch = self.owner._next_epoch()
            self.epochs[dir_ino] = epoch
            sent = trio.current_time()
            gen = self.gen.get(dir_ino, 0)
            reply = await self._grant(dir_ino, epoch)
            if not isinstance(reply, LeaseReply) or reply.err:
                self.cooldown[dir_ino] = trio.current_time() + COOLDOWN_S
                return
            if self.gen.get(dir_ino, 0) != gen or dir_ino in self.owner.leases:
                # Dropped while the grant was on its way (a change of ours
                # there, a recall): give it straight back.
                await self._release(dir_ino, epoch)
                return
            self.leases[dir_ino] = ReadLease(epoch, self._valid_until(sent), sent)
            self.stats["grants"] += 1
            self.owner._have_leases.set()  # the recall long poll must run
            if len(self.entries) < CACHED_ENTRIES_MAX:
                self.nursery.start_soon(self._prefetch, dir_ino)
        except BackendError as exc:
            log.info(kv("readlease.grant_failed", dir=dir_ino, error=str(exc)))
            self.cooldown[dir_ino] = trio.current_time() + COOLDOWN_S
        finally:
            self.asking.discard(dir_ino)

    async def _prefetch(self, dir_ino: int) -> None:
        """Read-ahead of a newly leased directory (module docstring)."""
        gen = self.gen.get(dir_ino, 0)
        cursor, fetched = b"", 0
        try:
            while fetched < PREFETCH_ENTRIES_MAX:
                page = await self.owner.inner.readdir(dir_ino, cursor, READDIR_PAGE_MAX, True)
                if page.err or self.gen.get(dir_ino, 0) != gen or not self.live(dir_ino):
                    return
                for e in page.entries:
                    if e.attr is None or (dir_ino, e.name) in self.entries:
                        continue  # a lookup answered meanwhile: as fresh
                    reply = entry_reply(e)
                    if not self._keep(dir_ino, gen, e.name):
                        return
                    self.entries[(dir_ino, e.name)] = reply
                    if e.attr.ino not in self.attrs and self._keep(dir_ino, gen, e.attr.ino):
                        self.attrs[e.attr.ino] = (dir_ino, reply)
                    self.listing.setdefault(dir_ino, []).append(e.attr.ino)
                fetched += len(page.entries)
                self.stats["prefetched"] += len(page.entries)
                if page.done:
                    self.complete.add(dir_ino)
                    return
                cursor = page.cursor
        except BackendError as exc:
            log.info(kv("readlease.prefetch_failed", dir=dir_ino, error=str(exc)))

    async def _layouts_ahead(self, dir_ino: int) -> None:
        """The layouts of the small files read ahead in ``dir_ino`` (module
        docstring)."""
        gen = self.gen.get(dir_ino, 0)
        todo = []
        for ino in self.listing.get(dir_ino, ()):
            held = self.attrs.get(ino)
            if (held is not None and held[0] == dir_ino and ino not in self.pages
                    and stat.S_ISREG(held[1].attr.mode)
                    and held[1].attr.size <= LAYOUT_AHEAD_BYTES):
                todo.append(ino)
        todo.reverse()

        async def worker():
            while todo and self.gen.get(dir_ino, 0) == gen and self.live(dir_ino):
                batch = []
                while todo and len(batch) < LAYOUTS_BATCH:
                    ino = todo.pop()
                    if ino not in self.pages:
                        batch.append(ino)
                if not batch:
                    continue
                try:
                    pages = await self.owner.inner.manifests(batch)
                except BackendError as exc:
                    log.info(kv("readlease.layout_ahead_failed", dir=dir_ino, error=str(exc)))
                    return
                if not pages:
                    return
                todo.extend(reversed(batch[len(pages):]))  # not answered: next round
                for ino, page in zip(batch, pages):
                    if (not page.err and page.done and ino not in self.pages
                            and self._keep(dir_ino, gen, ino)):
                        self.pages[ino] = (dir_ino, page)
                        self.stats["layouts_ahead"] += 1
        async with trio.open_nursery() as nursery:
            for _ in range(LAYOUT_BATCHES_IN_FLIGHT):
                nursery.start_soon(worker)

    async def _grant(self, dir_ino: int, epoch: int):
        """Ask for (or renew) our read lease on ``dir_ino`` under ``epoch``."""
        return await self.owner.inner.submit(AcquireLease(
            self.owner.holder, dir_ino, epoch, int(self.owner.lease_s * 1e9), 0, True))

    def _valid_until(self, sent: float) -> float:
        """Answers stop this long after the request was *sent* (module docstring)."""
        return sent + self.owner.lease_s - self.owner.margin_s

    async def _release(self, dir_ino: int, epoch: int) -> None:
        try:
            await self.owner.inner.submit(ReleaseLease(self.owner.holder, dir_ino, epoch))
            self.stats["released"] += 1
        except BackendError:
            pass  # it runs out in log time

    def drop(self, dir_ino: int) -> ReadLease | None:
        """Forget everything cached under ``dir_ino`` and stop answering
        there; returns the lease, which the caller gives back."""
        self.gen[dir_ino] = self.gen.get(dir_ino, 0) + 1
        held = self.held.pop(dir_ino, None)
        if held:
            self._unhold(dir_ino, held)
        self.complete.discard(dir_ino)
        self.listing.pop(dir_ino, None)
        self.opens.pop(dir_ino, None)
        for key in self.by_dir.pop(dir_ino, ()):
            if isinstance(key, bytes):
                self.entries.pop((dir_ino, key), None)
            else:
                if self.attrs.get(key, (0,))[0] == dir_ino:
                    del self.attrs[key]
                if self.pages.get(key, (0,))[0] == dir_ino:
                    del self.pages[key]
        return self.leases.pop(dir_ino, None)

    # ------------------------------------------------------------ the kernel's copies

    def hold_entry(self, parent: int, name: bytes, attr) -> float:
        """How long the kernel may keep the dentry ``parent``/``name`` and
        the attributes ``attr`` it is about to be given (module docstring);
        0: its default timeouts."""
        cached = self.entries.get((parent, name))
        if cached is None or cached.err or cached.attr != attr:
            return 0.0
        return self._hold(parent, (("e", name), ("a", attr.ino)))

    def hold_attr(self, attr) -> float:
        """The same for attributes alone (a getattr)."""
        held = self.attrs.get(attr.ino)
        if held is None or held[1].attr != attr:
            return 0.0
        return self._hold(held[0], (("a", attr.ino),))

    def _hold(self, dir_ino: int, keys) -> float:
        lease = self.leases.get(dir_ino)
        if lease is None or self.kernel is None or self.held_count >= CACHED_ENTRIES_MAX:
            return 0.0
        now = trio.current_time()
        left = lease.valid_until - now
        if left < KERNEL_HOLD_MIN_S:
            return 0.0
        held = self.held.setdefault(dir_ino, {})
        for key in keys:
            if key not in held:
                self.held_count += 1
            held[key] = now + left
        self.stats["kernel_held"] += 1
        return left

    def _unhold(self, dir_ino: int, held: dict) -> None:
        """``dir_ino`` is being dropped: what the kernel keeps from its
        lease goes (attributes now, dentries queued; ``unheld`` is set once
        the kernel dropped those)."""
        self.held_count -= len(held)
        now = trio.current_time()
        names = []
        for (kind, key), until in held.items():
            if until <= now:
                continue
            if kind == "a":
                self.kernel.attr_now(key)
            else:
                names.append((dir_ino, key))
        self.stats["kernel_dropped"] += len(held)
        if not names:
            return
        done = self.unheld[dir_ino] = trio.Event()
        token = trio.lowlevel.current_trio_token()
        self.kernel.entries(names, lambda: token.run_sync_soon(done.set))

    async def _kernel_forgot(self, dir_ino: int, wait: bool) -> None:
        """Before a release: wait (bounded) until the kernel dropped the
        dentries it kept from this lease."""
        done = self.unheld.pop(dir_ino, None)
        if done is not None and wait:
            with trio.move_on_after(KERNEL_FORGET_WAIT_S):
                await done.wait()
            if not done.is_set():
                log.warning(kv("readlease.kernel_slow", dir=dir_ino,
                               waited_s=KERNEL_FORGET_WAIT_S))

    def _forget_node(self, ino: int) -> None:
        self.attrs.pop(ino, None)
        self.pages.pop(ino, None)

    async def give_back(self, dirs, *, cooldown: bool, wait: bool = False) -> None:
        """``wait``: for the kernel to drop what it kept from these leases
        (never on the path of a request there: module docstring)."""
        now = trio.current_time()
        for d in dirs:
            lease = self.drop(d)
            if cooldown:
                self.cooldown[d] = now + COOLDOWN_S
            await self._kernel_forgot(d, wait)
            if lease is not None:
                await self._release(d, lease.epoch)

    async def recalled(self, dirs) -> None:
        mine = [d for d in dirs if d in self.epochs]
        if not mine:
            return
        self.stats["recalled"] += 1
        now = trio.current_time()
        for d in mine:
            lease = self.drop(d)
            self.cooldown[d] = now + COOLDOWN_S
            await self._kernel_forgot(d, wait=True)
            # Released even when we let it go already: idempotent, and a
            # renewal that landed after our release revived the row.
            await self._release(d, lease.epoch if lease is not None else self.epochs[d])

    async def before_change(self, cmd: Command) -> None:
        """Our own change ``cmd`` is about to go out (module docstring)."""
        if not (self.leases or self.by_dir):
            return
        dirs = [d for d in named_dirs(cmd) if d]
        nodes = [n for n in (getattr(cmd, "ino", 0), getattr(cmd, "src", 0)) if n]
        if isinstance(cmd, (Unlink, Rmdir, Rename)):
            pairs = [(cmd.parent, cmd.name)]
            if isinstance(cmd, Rename):
                pairs.append((cmd.new_parent, cmd.new_name))
            for parent, name in pairs:
                cached = self.entries.get((parent, name))
                if cached is not None and not cached.err:
                    nodes.append(cached.attr.ino)
        for ino in dirs + nodes:
            held = self.attrs.get(ino)
            if held is not None:
                dirs.append(held[0])  # the directory naming it
            self._forget_node(ino)
        await self.give_back(list(dict.fromkeys(dirs)), cooldown=True)

    async def drop_all(self) -> None:
        await self.give_back(list(set(self.leases) | set(self.by_dir)), cooldown=False)

    def _keep(self, dir_ino: int, gen: int, key) -> bool:
        if self.gen.get(dir_ino, 0) != gen or not self.live(dir_ino):
            return False
        self.by_dir.setdefault(dir_ino, set()).add(key)
        return True

    # ------------------------------------------------------------ queries

    async def lookup(self, parent: int, name: bytes, ask) -> EntryReply:
        if self.live(parent):
            cached = self.entries.get((parent, name))
            if cached is not None:
                self.stats["hits"] += 1
                return cached
            if parent in self.complete:
                self.stats["hits"] += 1
                return EntryReply(errno.ENOENT)
        else:
            self._note(parent)
        gen = self.gen.get(parent, 0)
        reply = await ask(parent, name)
        if reply.err in (0, errno.ENOENT) and self._keep(parent, gen, name):
            self.entries[(parent, name)] = reply
            if not reply.err and self._keep(parent, gen, reply.attr.ino):
                self.attrs[reply.attr.ino] = (parent, reply)
        return reply

    async def getattr(self, ino: int, ask) -> EntryReply:
        held = self.attrs.get(ino)
        if held is not None and self.live(held[0]):
            self.stats["hits"] += 1
            return held[1]
        if held is not None:
            self._note(held[0])
        reply = await ask(ino)
        if held is not None and not reply.err and self._keep(held[0], self.gen.get(held[0], 0),
                                                             ino):
            self.attrs[ino] = (held[0], reply)
        return reply

    def has_no_xattrs(self, ino: int) -> bool:
        """Whether a live read lease holds ``ino``'s attributes from an
        answer that said it has no extended attributes (an xattr change
        there would have recalled it): `ls -l` asks every file for its ACL
        again once the kernel's own cache of that answer is gone."""
        held = self.attrs.get(ino)
        if held is None or held[1].xattrs != 1 or not self.live(held[0]):
            return False
        self.stats["hits"] += 1
        return True

    async def manifest(self, ino: int, start: int, limit, ask) -> ManifestPage:
        held = self.attrs.get(ino)
        if start == 0 and limit is None and held is not None:
            page = self.pages.get(ino)
            if page is not None and page[0] == held[0] and self.live(held[0]):
                self.stats["hits"] += 1
                return page[1]
            self._note(held[0])
            if self.live(held[0]):
                opened = self.opens[held[0]] = self.opens.get(held[0], 0) + 1
                if opened == LAYOUTS_AHEAD_AFTER and held[0] in self.listing:
                    self.nursery.start_soon(self._layouts_ahead, held[0])
            gen = self.gen.get(held[0], 0)
            reply = await ask(ino, start, limit)
            if not reply.err and reply.done and self._keep(held[0], gen, ino):
                self.pages[ino] = (held[0], reply)
            return reply
        return await ask(ino, start, limit)

    # ------------------------------------------------------------ upkeep

    async def _upkeep(self) -> None:
        """Idle read leases go back; used ones are renewed before half of
        their life is left."""
        while True:
            await trio.sleep(0.5)
            now = trio.current_time()
            for d, lease in list(self.leases.items()):
                if now - lease.last_used > IDLE_S:
                    await self.give_back([d], cooldown=False, wait=True)
                elif lease.valid_until - now < self.owner.lease_s / 2 and d not in self.asking:
                    self.asking.add(d)
                    self.nursery.start_soon(self._renew, d, lease)

    async def _renew(self, dir_ino: int, lease: ReadLease) -> None:
        try:
            sent = trio.current_time()
            gen = self.gen.get(dir_ino, 0)
            reply = await self._grant(dir_ino, lease.epoch)
            if (isinstance(reply, LeaseReply) and not reply.err
                    and self.leases.get(dir_ino) is lease and self.gen.get(dir_ino, 0) == gen):
                lease.valid_until = self._valid_until(sent)
        except BackendError as exc:
            log.info(kv("readlease.renew_failed", dir=dir_ino, error=str(exc)))
        finally:
            self.asking.discard(dir_ino)
