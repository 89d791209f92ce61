"""What a directory lease holder answers by itself (fusefs/leases.py): the
overlay of the leased directories (their entries and attributes) and of the
nodes this mount made there ("owned"), kept exactly as the state machine
will compute them once the batch applies (tests/fuse/test_leased_backend.py
checks that on seeded sequences).

Each ``_..._owned`` method answers a change locally and queues it, or
returns None: the change then goes to the leader (``LeasedBackend._send``).
What is answered here: creates, mkdirs and symlinks in a leased directory
(inode numbers from this session's range; the umask applies, a setgid
directory passes its group on: leased directories never have a default
ACL), and unlink, rmdir, rename, chmod/chown/utimes and inline writes of
owned nodes. A directory's attributes come only from its own lease (they
change with its entries); an owned file's from its parent's.
"""

from __future__ import annotations

import dataclasses
import errno
import stat

import trio

from server.meta import validate
from server.meta.types import (LINK_MAX, RENAME_NOREPLACE, AcquireLease, Attr, CommitWrite,
                               DirEntry, DirPage, EntryReply, Mkdir, ReleaseLease,
                               RemoveReply, Rename, Rmdir, SetAttr, Symlink, Unlink, Utime)

from .backend import BackendError


@dataclasses.dataclass
class DirLease:
    dir: int
    epoch: int
    attr: Attr
    # name -> (ino, S_IFMT). A complete lease holds the whole directory; an
    # incomplete one (a directory too big to list) what we learned, with
    # None for names known absent (nobody else can add them while we lease).
    entries: dict[bytes, tuple[int, int] | None]
    parent: int = 0                          # for '..' (readdir answered here)
    complete: bool = True
    granted: bool = False                    # the grant is applied (not only queued)
    last_used: float = 0.0
    recalled: bool = False


@dataclasses.dataclass
class Owned:
    """A node this mount created under a lease it still holds."""

    attr: Attr
    dir: int
    target: bytes = b""
    # A regular file's whole content while it is known here (inline
    # commits from offset 0, in order), else None.
    content: list | None = None


def _touch(attr: Attr, now_ns: int, nlink_delta: int = 0) -> Attr:
    return dataclasses.replace(attr, mtime_ns=now_ns, ctime_ns=now_ns,
                               nlink=attr.nlink + nlink_delta)


def _utime(value, current: int, now_ns: int) -> int:
    if value is Utime.OMIT:
        return current
    return now_ns if value is Utime.NOW else value


class Overlay:
    """Mixin of LeasedBackend: ``leases``, ``owned``, ``holder``, ``inner``
    and the queue are its."""

    async def _new_node(self, lease: DirLease, cmd) -> EntryReply:
        err = validate.check(cmd)
        if err:
            return EntryReply(err)
        if not await self._absent(lease, cmd.name):
            return EntryReply(errno.EEXIST)
        if isinstance(cmd, Mkdir) and lease.attr.nlink >= LINK_MAX:
            return EntryReply(errno.EMLINK)
        ino = await self._take_ino()
        if self._live(lease.dir) is not lease:
            return await self._send(cmd)  # lost or recalled while we waited
        pdir, now = lease.attr, cmd.now_ns
        gid, size, target = cmd.gid, 0, b""
        if isinstance(cmd, Symlink):
            mode, target, size = stat.S_IFLNK | 0o777, cmd.target, len(cmd.target)
        else:
            kind = stat.S_IFDIR if isinstance(cmd, Mkdir) else stat.S_IFREG
            mode = (kind | (cmd.mode & 0o7777)) & ~(cmd.umask & 0o777)
        if pdir.mode & stat.S_ISGID:
            gid = pdir.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        is_dir = stat.S_ISDIR(mode)
        attr = Attr(ino, mode, cmd.uid, gid, size, 2 if is_dir else 1, 0, now, now, now)
        self._set_dir_attr(lease, _touch(pdir, now, 1 if is_dir else 0))
        lease.entries[cmd.name] = (ino, stat.S_IFMT(mode))
        self.owned[ino] = Owned(attr, lease.dir, target,
                                [] if stat.S_ISREG(mode) else None)
        self._enqueue(cmd, ino, self._relied(lease.dir))
        if is_dir:
            epoch = self._next_epoch()
            self.leases[ino] = DirLease(ino, epoch, attr, {}, lease.dir,
                                        last_used=trio.current_time())
            self._enqueue(AcquireLease(self.holder, ino, epoch, int(self.lease_s * 1e9)))
            self.queue[-1].grant = ino
        return EntryReply(0, attr, [lease.attr])

    def _set_dir_attr(self, lease: DirLease, attr: Attr) -> None:
        """A directory we lease and may own too: one set of attributes."""
        lease.attr = attr
        owned = self.owned.get(lease.dir)
        if owned is not None:
            owned.attr = attr

    async def _absent(self, lease: DirLease, name: bytes) -> bool:
        """Whether ``name`` is free in a directory we lease (asking the
        leader once for a name an incomplete lease has not seen)."""
        if name in lease.entries:
            return lease.entries[name] is None
        if lease.complete:
            return True
        reply = await self.inner.lookup(lease.dir, name)
        if reply.err not in (0, errno.ENOENT):
            raise BackendError(f"lookup answered errno {reply.err}")
        if name not in lease.entries:  # unless we made it meanwhile
            lease.entries[name] = None if reply.err else (reply.attr.ino,
                                                          stat.S_IFMT(reply.attr.mode))
        return lease.entries[name] is None

    def _drop_name(self, lease: DirLease, name: bytes) -> None:
        if lease.complete:
            lease.entries.pop(name, None)
        else:
            lease.entries[name] = None

    def _owned_entry(self, parent: int, name: bytes) -> tuple[DirLease, Owned] | None:
        lease = self._live(parent)
        if lease is None:
            return None
        entry = lease.entries.get(name)
        owned = self.owned.get(entry[0]) if entry else None
        if owned is None or owned.attr.nlink > (2 if stat.S_ISDIR(owned.attr.mode) else 1):
            return None  # not ours, or linked from elsewhere too
        return lease, owned

    def _remove_older(self, cmd: Unlink) -> RemoveReply | None:
        """unlink of a non-directory older than our lease, when no file is
        open on this mount (``keep_orphan`` false): the FUSE layer then
        uses nothing of the reply but the error, so the inode's remaining
        link count, which only the leader knows, is not needed (0 here)."""
        lease = self._live(cmd.parent)
        entry = lease.entries.get(cmd.name) if lease is not None else None
        if (entry is None or entry[1] == stat.S_IFDIR or cmd.keep_orphan
                or entry[0] in self.owned or validate.check(cmd)):
            return None
        self._drop_name(lease, cmd.name)
        self.dirty.add(entry[0])
        self._set_dir_attr(lease, _touch(lease.attr, cmd.now_ns))
        self._enqueue(cmd, 0, self._relied(lease.dir))
        return RemoveReply(0, entry[0], 0, [lease.attr])

    def _remove_owned(self, cmd) -> RemoveReply | None:
        found = self._owned_entry(cmd.parent, cmd.name)
        if found is None:
            return self._remove_older(cmd) if isinstance(cmd, Unlink) else None
        lease, owned = found
        is_dir = stat.S_ISDIR(owned.attr.mode)
        if isinstance(cmd, Rmdir) != is_dir:
            return RemoveReply(errno.ENOTDIR if isinstance(cmd, Rmdir) else errno.EISDIR)
        if is_dir:
            child = self.leases.get(owned.attr.ino)
            if child is None or child.recalled or not child.complete:
                return None
            if child.entries:
                return RemoveReply(errno.ENOTEMPTY)
        err = validate.check(cmd)
        if err:
            return RemoveReply(err)
        ino = owned.attr.ino
        self._drop_name(lease, cmd.name)
        self._set_dir_attr(lease, _touch(lease.attr, cmd.now_ns, -1 if is_dir else 0))
        self._enqueue(cmd, 0, self._relied(lease.dir))
        if is_dir:
            child = self.leases.pop(ino)
            self._enqueue(ReleaseLease(self.holder, ino, child.epoch))
            del self.owned[ino]
        elif isinstance(cmd, Unlink) and cmd.keep_orphan:
            owned.attr = dataclasses.replace(owned.attr, nlink=0, ctime_ns=cmd.now_ns)
        else:
            del self.owned[ino]
        return RemoveReply(0, ino, 0, [lease.attr])

    def _rename_owned(self, cmd: Rename) -> RemoveReply | None:
        """A rename of a file, symlink or other non-directory between leased
        directories onto a free name or onto a node we own. The source may
        be older than our lease: its inode then changes on the leader only
        (ctime), and stays "dirty" (asked about only after a flush) until the
        batch is in."""
        if cmd.flags & ~RENAME_NOREPLACE or validate.check(cmd):
            return None
        src, dst = self._live(cmd.parent), self._live(cmd.new_parent)
        entry = src.entries.get(cmd.name) if src is not None else None
        if entry is None or dst is None or entry[1] == stat.S_IFDIR:
            return None  # unknown, or a directory ('..' moves): the leader answers
        ino, kind = entry
        owned = self.owned.get(ino)
        if owned is not None and owned.dir != src.dir:
            return None
        if cmd.new_name not in dst.entries and not dst.complete:
            return None  # unknown there: the leader knows
        victim = dst.entries.get(cmd.new_name)
        replaced = None
        if victim is not None:
            if cmd.flags & RENAME_NOREPLACE:
                return RemoveReply(errno.EEXIST)
            if victim[0] == ino:
                return RemoveReply(0)
            found_dst = self._owned_entry(cmd.new_parent, cmd.new_name)
            if found_dst is None or stat.S_ISDIR(found_dst[1].attr.mode):
                return None
            replaced = found_dst[1]
        now = cmd.now_ns
        self._drop_name(src, cmd.name)
        dst.entries[cmd.new_name] = (ino, kind)
        if owned is not None:
            owned.attr = dataclasses.replace(owned.attr, ctime_ns=now)
            owned.dir = dst.dir
        else:
            self.dirty.add(ino)
        self._set_dir_attr(src, _touch(src.attr, now))
        self._set_dir_attr(dst, _touch(dst.attr, now))
        self._enqueue(cmd, 0, self._relied(src.dir))
        if dst is not src:
            self.queue[-1].also = self._relied(dst.dir)
        reply_ino = reply_nlink = 0
        if replaced is not None:
            reply_ino = replaced.attr.ino
            if cmd.keep_orphan:
                replaced.attr = dataclasses.replace(replaced.attr, nlink=0, ctime_ns=now)
            else:
                del self.owned[reply_ino]
        parents = [src.attr] if dst is src else [src.attr, dst.attr]
        return RemoveReply(0, reply_ino, reply_nlink, parents)

    def _setattr_owned(self, cmd: SetAttr) -> EntryReply | None:
        owned = self.owned.get(cmd.ino)
        if owned is None or cmd.size is not None or self._live(owned.dir) is None:
            return None
        err = validate.check(cmd)
        if err:
            return EntryReply(err)
        a = owned.attr
        mode = a.mode if cmd.mode is None else stat.S_IFMT(a.mode) | (cmd.mode & 0o7777)
        owned.attr = dataclasses.replace(
            a, mode=mode, uid=a.uid if cmd.uid is None else cmd.uid,
            gid=a.gid if cmd.gid is None else cmd.gid,
            atime_ns=_utime(cmd.atime, a.atime_ns, cmd.now_ns),
            mtime_ns=_utime(cmd.mtime, a.mtime_ns, cmd.now_ns), ctime_ns=cmd.now_ns)
        if cmd.ino in self.leases:  # a directory we own and lease: one set of attributes
            self._set_dir_attr(self.leases[cmd.ino], owned.attr)
        self._enqueue(cmd, 0, self._relied(owned.dir))
        return EntryReply(0, owned.attr)

    def _commit_owned(self, cmd: CommitWrite) -> EntryReply | None:
        owned = self.owned.get(cmd.ino)
        if (owned is None or not stat.S_ISREG(owned.attr.mode) or self._live(owned.dir) is None
                or any(s.block_id for s in cmd.slices)):
            return None
        err = validate.check(cmd)
        if err:
            return None  # let the leader answer it
        end = max((s.off + s.length for s in cmd.slices), default=0)
        size = max(owned.attr.size, cmd.size, end)
        owned.attr = dataclasses.replace(owned.attr, size=size, mtime_ns=cmd.now_ns,
                                         ctime_ns=cmd.now_ns)
        inline = sum(len(s.data) for s in cmd.slices)
        if owned.content is not None:
            known = sum(s.length for s in owned.content)
            for s in sorted(cmd.slices, key=lambda s: s.off):
                if s.off != known or s.length != len(s.data):
                    owned.content = None  # not a plain append: the leader knows
                    break
                owned.content.append(s)
                known += s.length
            if owned.content is not None and known != size:
                owned.content = None
        self._enqueue(cmd, 0, self._relied(owned.dir), inline)
        return EntryReply(0, owned.attr)

    def _relied(self, dir_ino: int) -> int:
        lease = self.leases.get(dir_ino)
        return dir_ino if lease is not None and lease.granted else 0

    def _attr_of(self, ino: int) -> Attr | None:
        """What we know of a node for sure: a directory we lease (its
        attributes move with every entry we add), or a node we own."""
        lease = self._live(ino)
        if lease is not None:
            return lease.attr
        owned = self.owned.get(ino)
        if (owned is not None and not stat.S_ISDIR(owned.attr.mode)
                and self._live(owned.dir) is not None):
            return owned.attr  # (a directory's change with its entries: only its lease says)
        return None

    def _local_page(self, lease: DirLease, cursor: bytes, limit: int,
                    plus: bool) -> DirPage | None:
        """A page of a leased directory from our whole listing; None when
        readdirplus needs attributes only the leader has."""
        names = sorted(n for n in lease.entries if n > cursor)
        limit = max(1, min(limit, 1024))
        entries = []
        for name in names[:limit]:
            ino, kind = lease.entries[name]
            if plus:
                attr = self._attr_of(ino)
                if attr is None:
                    return None
                entries.append(DirEntry(name, ino, kind, attr, False))
            else:
                entries.append(DirEntry(name, ino, kind))
        cursor = entries[-1].name if entries else cursor
        return DirPage(0, entries, cursor, len(names) <= limit, lease.parent)
