"""pyfuse3 Operations for chordfs: every request of the kernel, written
against ``fusefs.backend.Backend``.

Request handlers translate between the kernel's shapes and the metadata
commands/queries, and keep only cache state here (``InodeTable``, open
files' ``FileData``, the chunk cache). Every handler is wrapped by
``fuse_op``: a deadline, and every failure mapped to one errno.

Own changes and the kernel caches: the kernel updates its own dentries and
attributes for the changes it sends us; what it cannot know (a commit that
changes ctime/mtime after close) is invalidated through ``Invalidator``,
never from inside a handler.

Unlink/rename while this mount has any file open pass ``keep_orphan``: the
state machine then keeps a last-link inode as an orphan, which we release at
once unless it is one of our open files (then at its last close).

Control channel. Setting the extended attribute ``DROP_CACHE_XATTR`` on the
mount root (what ``chordfs drop-cache MOUNTPOINT`` does) empties this
mount's chunk cache, xattr cache and page-cache stamps, and drops the
kernel's cached attributes and pages of every inode the kernel holds from
us; it returns once the kernel has done so, so the next read comes from the
backend. Only root or the user who mounted may set it (EPERM otherwise);
the name is never stored, listed or readable (ENODATA), and on any other
inode it is refused (EPERM). It lives in ``system.``, which the VFS passes
to us without a write-permission check on the root directory (we check the
caller ourselves), and which a mount without this channel refuses
(EOPNOTSUPP) instead of storing it as an ordinary attribute.

Setting ``CLONE_XATTR`` on a directory D with the value ``b"<ino>/<name>"``
(``ino`` in decimal ASCII, then the new entry's name; what ``chordfs clone``
does) creates D/name as a clone of regular file ``ino``: Clone shares the
source's blocks, so no data moves. The VFS checks no permission for
``system.*`` names, so we do, for every caller but root: write and search
permission on D, read permission on the source, and proof that the caller
reached the source by a path: the calling thread must hold it open on this
mount (FUSE passes the thread id; an inode number alone would bypass the
search permission of every directory above the source). The clone gets the caller's uid/gid and the
source's permission bits, without setuid/setgid unless the caller is root.
Buffered writes of the source on this mount are committed first. The name is
never stored, listed or readable, like ``DROP_CACHE_XATTR``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time

import pyfuse3
import trio

from rpc.logfmt import kv
from server.meta import acl
from server.meta.types import (Attr, Clone, Link, Mkdir, Mknod, ReleaseOrphan,
                               RemoveReply, RemoveXattr, Rename, Rmdir,
                               SetAttr, SetXattr, Symlink, Unlink, Utime)

from .access import caller_groups, may
from .backend import Backend
from .errors import check, fuse_op, fuse_op_quiet
from .filedata import CACHE_BYTES_DEFAULT, ChunkCache, ChunkReader
from .fileops import FileOpsMixin
from .kernel import (DOT, DOTDOT, DirAttrs, DirHandle, InodeTable, Invalidator, Timeouts,
                     dot_attrs, entry_attributes)
from .xattrcache import ABSENT, UNKNOWN, XattrCache

log = logging.getLogger("chordfs.fuse")

STATFS_BLOCK_BYTES = 4096
DROP_CACHE_XATTR = b"system.chordfs.drop_cache"
CLONE_XATTR = b"system.chordfs.clone"
CONTROL_XATTRS = (DROP_CACHE_XATTR, CLONE_XATTR)


def _unsupported_xattr(name: bytes, acls: bool) -> bool:
    """POSIX ACLs are kept only when the kernel enforces them (FUSE_POSIX_ACL,
    ``acls``); other system.* names have no meaning here, and SELinux labels
    of a FUSE mount come from the policy, not from the file: refuse them,
    don't pretend. EOPNOTSUPP also tells ls(1) to stop asking for every
    file."""
    if name in acl.NAMES:
        return not acls
    return name.startswith(b"system.") or name == b"security.selinux"


def parse_clone_value(value: bytes) -> tuple[int, bytes]:
    """``b"<ino>/<name>"`` -> (ino, name); EINVAL if malformed (the name
    itself is judged by the state machine)."""
    digits, sep, name = value.partition(b"/")
    if not sep or not digits.isdigit() or len(digits) > 20:
        raise pyfuse3.FUSEError(errno.EINVAL)
    return int(digits), name


class ChordOps(FileOpsMixin, pyfuse3.Operations):
    def __init__(self, backend: Backend, *, timeouts: Timeouts = Timeouts(),
                 cache_bytes: int = CACHE_BYTES_DEFAULT, writeback: bool = False,
                 owner_uid: int | None = None, acls: bool = True) -> None:
        super().__init__()
        # Read by pyfuse3 at FUSE INIT: the kernel enforces POSIX ACLs it
        # reads as system.posix_acl_* xattrs and leaves the umask to us;
        # the state machine keeps modes and ACLs in step (server/meta/acl.py).
        self.enable_acl = acls
        # Read by pyfuse3 when FUSE INIT arrives: the kernel then buffers
        # writes in its page cache and sends them at writeback, fsync and
        # close (flush), and keeps size and mtime of regular files itself.
        self.enable_writeback_cache = writeback
        # Besides root, the one user who may drop this mount's caches.
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self.backend = backend
        # How old a lookup answer the backend read ahead is (fusefs/leases.py).
        self._ahead_age = getattr(backend, "ahead_age", None)
        # How long the kernel may keep an answer given under a read lease.
        self._hold_entry = getattr(backend, "hold_entry", None)
        self._hold_attr = getattr(backend, "hold_attr", None)
        self.timeouts = timeouts
        self.inodes = InodeTable()
        self.cache = ChunkCache(cache_bytes)
        self.reader = ChunkReader(backend, self.cache)
        self.invalidator = Invalidator()
        self.xattrs = XattrCache(timeouts.attr_s)
        self.dir_attrs = DirAttrs(timeouts.attr_s)
        self.dirs: dict[int, DirHandle] = {}
        # fh -> (pid of the opener, ino): a clone's proof of path access.
        self.openers: dict[int, tuple[int, int]] = {}
        self.nursery: trio.Nursery | None = None
        self.initialized = trio.Event()
        self._init_files()

    def init(self) -> None:
        """FUSE INIT arrived (called synchronously by pyfuse3)."""
        self.initialized.set()

    def bind(self, nursery: trio.Nursery) -> None:
        """Background uploads run in ``nursery`` (the mount's supervisor)."""
        self.nursery = nursery
        reads = getattr(self.backend, "reads", None)
        if reads is not None:
            # What the kernel keeps from a read lease goes before the lease
            # does (fusefs/readleases.py).
            reads.kernel = self.invalidator
        if hasattr(self.backend, "on_lost"):
            # Changes answered under a directory lease never made it: what
            # the kernel was told about them must go (fusefs/leases.py).
            self.backend.on_lost = lambda: nursery.start_soon(self.drop_caches)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        data = self.files.get(attr.ino)
        if data is not None and data.changed:
            self.told.pop(attr.ino, None)  # not what the backend holds
            return entry_attributes(attr, self.timeouts, size=data.size,
                                    mtime_ns=data.mtime_ns)
        self._tell(attr)
        return entry_attributes(attr, self.timeouts)

    async def _submit_new(self, command) -> Attr:
        """Commit a command that creates a node; its attributes. A node we
        just created has no extended attributes unless it inherited an ACL:
        the kernel's question for security.capability before each write to
        it then needs no round trip."""
        epoch = self.xattrs.epoch
        plain = (not self.enable_acl or isinstance(command, (Symlink, Clone))
                 or await self._no_default_acl(command.parent))
        reply = check(await self.backend.submit(command))
        self.dir_attrs.put(reply.parents)
        if plain:
            self.xattrs.put_names(reply.attr.ino, (), epoch)
        return reply.attr

    async def _no_default_acl(self, parent: int) -> bool:
        """Whether ``parent`` has no default ACL to pass on (cached like any
        xattr answer, so this costs a query per directory per attr_timeout)."""
        try:
            return await self._xattr(parent, acl.DEFAULT) is None
        except pyfuse3.FUSEError:
            return False  # unknown: the new node's xattrs are asked for when wanted

    async def _submit_xattr_change(self, inode: int, command) -> None:
        # Dropping before makes a getxattr already on its way not cache its
        # (older) answer; dropping after, one that read between the two.
        self.dir_attrs.drop(inode)  # ctime, and the mode an ACL sets
        self.xattrs.drop(inode)
        try:
            check(await self.backend.submit(command))
        finally:
            self.xattrs.drop(inode)

    def _new_entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """Reply for a request that hands the kernel a lookup reference."""
        self.inodes.remember(attr.ino)
        return self._entry(attr)

    # ------------------------------------------------------------ lookups

    @fuse_op
    async def lookup(self, parent_inode, name, ctx):
        if name == b".":
            attr = check(await self.backend.getattr(parent_inode)).attr
        elif name == b"..":
            attr = (await dot_attrs(self.backend, parent_inode))[1]
        else:
            epoch = self.xattrs.epoch
            reply = await self.backend.lookup(parent_inode, name)
            if reply.err == errno.ENOENT:
                return self._negative_entry()
            attr = check(reply).attr
            self._learn_xattrs(reply, epoch)
            entry = self._new_entry(attr)
            if self._held_long(entry, parent_inode, name, attr):
                return entry
            if self._ahead_age is not None:
                # Read ahead (fusefs/leases.py): the kernel keeps it only for
                # what is left of attr_timeout.
                entry.attr_timeout = max(0.0, entry.attr_timeout - self._ahead_age(attr.ino))
            return entry
        return self._new_entry(attr)

    def _held_long(self, entry: pyfuse3.EntryAttributes, parent: int, name: bytes,
                   attr: Attr) -> bool:
        """Whether the kernel may keep this answer (dentry and attributes)
        past its default timeouts: it came from a read lease, whose time
        left ``entry`` now carries (fusefs/readleases.py). Not for a file
        open here, whose attributes may be ours rather than the lease's."""
        if self._hold_entry is None or attr.ino in self.files:
            return False
        hold = self._hold_entry(parent, name, attr)
        if hold <= entry.entry_timeout:
            return False
        entry.entry_timeout = entry.attr_timeout = hold
        return True

    def _learn_xattrs(self, reply, epoch: int) -> None:
        """A lookup or getattr that said the node has no xattrs: its ACL
        questions (`ls -l` asks each file) need no round trip."""
        if reply.xattrs == 1:
            self.xattrs.put_names(reply.attr.ino, (), epoch)

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        """ENOENT the kernel may cache for the entry timeout: git, make and
        compilers probe many missing names. Our own creates replace the
        negative dentry in the kernel; other clients' show up after the
        timeout, like any other change of theirs."""
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = 0
        entry.entry_timeout = self.timeouts.entry_s
        return entry

    @fuse_op_quiet
    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @fuse_op
    async def getattr(self, inode, ctx):
        attr = self.dir_attrs.get(inode)
        if attr is None:
            epoch = self.xattrs.epoch
            reply = check(await self.backend.getattr(inode))
            attr = reply.attr
            self._learn_xattrs(reply, epoch)
            if self._hold_attr is not None and inode not in self.files:
                entry = self._entry(attr)
                entry.attr_timeout = max(entry.attr_timeout, self._hold_attr(attr))
                return entry
        return self._entry(attr)

    @fuse_op
    async def setattr(self, inode, attr, fields, fh, ctx):
        now = time.time_ns()
        cmd = SetAttr(
            inode, now,
            mode=attr.st_mode & 0o7777 if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime=attr.st_atime_ns if fields.update_atime else Utime.OMIT,
            mtime=attr.st_mtime_ns if fields.update_mtime else Utime.OMIT,
        )
        self.dir_attrs.drop(inode)
        if fields.update_mode and self.enable_acl:
            self.xattrs.drop(inode)  # chmod rewrites the access ACL (acl.py)
        data = self.files.get(inode)
        try:
            if data is not None:
                new = await data.setattr(cmd)
                self._stamp(new)
            else:
                new = check(await self.backend.submit(cmd)).attr
        finally:
            if fields.update_mode and self.enable_acl:
                self.xattrs.drop(inode)
        return self._entry(new)

    @fuse_op
    async def readlink(self, inode, ctx):
        return check(await self.backend.readlink(inode)).value

    # ------------------------------------------------------------ namespace

    @fuse_op
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._new_entry(await self._submit_new(Mknod(
            parent_inode, name, mode, rdev, ctx.uid, ctx.gid, time.time_ns(), ctx.umask)))

    @fuse_op
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._new_entry(await self._submit_new(Mkdir(
            parent_inode, name, mode, ctx.uid, ctx.gid, time.time_ns(), ctx.umask)))

    @fuse_op
    async def symlink(self, parent_inode, name, target, ctx):
        return self._new_entry(await self._submit_new(Symlink(
            parent_inode, name, target, ctx.uid, ctx.gid, time.time_ns())))

    @fuse_op
    async def link(self, inode, new_parent_inode, new_name, ctx):
        reply = check(await self.backend.submit(Link(
            inode, new_parent_inode, new_name, time.time_ns())))
        self.dir_attrs.put(reply.parents)
        return self._new_entry(reply.attr)

    @fuse_op
    async def unlink(self, parent_inode, name, ctx):
        keep = self.inodes.any_open
        reply = check(await self.backend.submit(Unlink(
            parent_inode, name, time.time_ns(), keep_orphan=keep)))
        self.dir_attrs.put(reply.parents)
        await self._after_remove(reply, keep)

    @fuse_op
    async def rmdir(self, parent_inode, name, ctx):
        reply = check(await self.backend.submit(Rmdir(parent_inode, name, time.time_ns())))
        self.dir_attrs.drop(reply.ino)
        self.dir_attrs.put(reply.parents)

    @fuse_op
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new,
                     flags, ctx):
        keep = self.inodes.any_open
        # A moved directory changes too (ctime, '..'), and we hold no ino of it.
        self.dir_attrs.drop()
        reply = check(await self.backend.submit(Rename(
            parent_inode_old, name_old, parent_inode_new, name_new, flags,
            time.time_ns(), keep_orphan=keep)))
        self.dir_attrs.put(reply.parents)
        await self._after_remove(reply, keep)

    async def _after_remove(self, reply: RemoveReply, kept: bool) -> None:
        """An inode that lost its last link survives only while open here."""
        if not (kept and reply.ino and reply.nlink == 0):
            return
        if self.inodes.is_open(reply.ino):
            self.inodes.orphaned.add(reply.ino)
        else:
            check(await self.backend.submit(ReleaseOrphan(reply.ino, time.time_ns())))

    # ------------------------------------------------------------ directories

    @fuse_op
    async def opendir(self, inode, ctx):
        fh = self._next_fh
        self._next_fh += 1
        self.dirs[fh] = DirHandle(inode)
        return fh

    @fuse_op
    async def readdir(self, fh, start_id, token):
        handle = self.dirs[fh]
        handle.start(start_id)
        if start_id < DOTDOT:
            if handle.dots is None:
                handle.dots = await dot_attrs(self.backend, handle.ino)
            me, parent = handle.dots
            if start_id < DOT and not pyfuse3.readdir_reply(
                    token, b".", entry_attributes(me, self.timeouts), DOT):
                return
            if not pyfuse3.readdir_reply(
                    token, b"..", entry_attributes(parent, self.timeouts), DOTDOT):
                return
        epoch = self.xattrs.epoch

        def learned(entries):
            # No extended attribute at all: `ls -l` asking each file for its
            # ACL (and writes for security.capability) need no round trip.
            for entry in entries:
                if not entry.xattrs:
                    self.xattrs.put_names(entry.ino, (), epoch)

        while True:
            item = await handle.peek(self.backend, learned)
            if item is None:
                return
            off, entry = item
            reply = self._entry(entry.attr)
            self._held_long(reply, handle.ino, entry.name, entry.attr)
            if not pyfuse3.readdir_reply(token, entry.name, reply, off):
                return
            handle.accept()
            self.inodes.remember(entry.ino)

    @fuse_op
    async def releasedir(self, fh):
        del self.dirs[fh]

    @fuse_op
    async def fsyncdir(self, fh, datasync):
        await self.backend.sync()

    # ------------------------------------------------------------ fs-wide

    @fuse_op
    async def statfs(self, ctx):
        st = await self.backend.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = STATFS_BLOCK_BYTES
        out.f_blocks = st.total_bytes // STATFS_BLOCK_BYTES
        out.f_bfree = out.f_bavail = st.free_bytes // STATFS_BLOCK_BYTES
        # Inodes are rows, not a preallocated table: report plenty free.
        out.f_files = st.inodes + (1 << 32)
        out.f_ffree = out.f_favail = 1 << 32
        out.f_namemax = st.name_bytes_max
        return out

    # ------------------------------------------------------------ xattrs

    async def getxattr(self, inode, name, ctx):
        # The kernel asks for security.capability before every write(2)
        # (libfuse 3.14 cannot offer FUSE_HANDLE_KILLPRIV_V2, which would
        # let it skip that): a known absence is answered here, without the
        # per-op deadline scope, the cheapest reply a write's twin can get.
        if not _unsupported_xattr(name, self.enable_acl) and self.xattrs.get(inode, name) is ABSENT:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return await self._getxattr(inode, name)

    @fuse_op
    async def _getxattr(self, inode, name):
        if name in CONTROL_XATTRS:
            raise pyfuse3.FUSEError(errno.ENODATA)
        if _unsupported_xattr(name, self.enable_acl):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        value = await self._xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def _xattr(self, inode: int, name: bytes) -> bytes | None:
        """The value (None: ENODATA) through the xattr cache; other errors
        raise as FUSEError."""
        cached = self.xattrs.get(inode, name)
        if cached is ABSENT:
            return None
        if cached is not UNKNOWN:
            return cached
        epoch = self.xattrs.epoch
        reply = await self.backend.getxattr(inode, name)
        if reply.err == errno.ENODATA:
            self.xattrs.put(inode, name, None, epoch)
            return None
        value = check(reply).value
        self.xattrs.put(inode, name, value, epoch)
        return value

    @fuse_op
    async def setxattr(self, inode, name, value, ctx):
        if name == DROP_CACHE_XATTR:
            if inode != pyfuse3.ROOT_INODE or ctx.uid not in (0, self.owner_uid):
                raise pyfuse3.FUSEError(errno.EPERM)
            await self.drop_caches()
            return
        if name == CLONE_XATTR:
            await self.clone_into(inode, value, ctx)
            return
        if _unsupported_xattr(name, self.enable_acl):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        # pyfuse3 checks XATTR_CREATE/XATTR_REPLACE itself (with getxattr)
        # and does not pass the flags on.
        await self._submit_xattr_change(inode, SetXattr(inode, name, value, 0, time.time_ns()))

    @fuse_op
    async def listxattr(self, inode, ctx):
        epoch = self.xattrs.epoch
        names = check(await self.backend.listxattr(inode)).names
        self.xattrs.put_names(inode, names, epoch)
        return names

    @fuse_op
    async def removexattr(self, inode, name, ctx):
        if name in CONTROL_XATTRS:
            raise pyfuse3.FUSEError(errno.ENODATA)
        await self._submit_xattr_change(inode, RemoveXattr(inode, name, time.time_ns()))

    # ------------------------------------------------------------ control

    async def drop_caches(self) -> None:
        """Forget every cached answer (see the module docstring): the next
        read of any file asks the backend. Open files keep what they have
        not committed yet, and their loaded manifests."""
        old = self.reader.cache
        chunk_bytes = old.used_bytes
        # A new cache object rather than emptying the old one's insides: a
        # fetch in flight puts into whichever cache the reader holds then.
        self.cache = self.reader.cache = ChunkCache(old.capacity_bytes)
        epoch = self.xattrs.epoch
        self.xattrs = XattrCache(self.timeouts.attr_s)
        # An answer asked for before the drop must not land in the new cache.
        self.xattrs.epoch = epoch + 1
        # Reopening an unchanged file must not keep the kernel's pages either.
        self.stamps.clear()
        self.told.clear()
        self.dir_attrs.drop()
        inodes = [pyfuse3.ROOT_INODE, *self.inodes.lookups]
        await self.invalidator.drop_all(inodes)
        drop = getattr(self.backend, "drop_caches", None)
        if drop is not None:
            await drop()  # directory write-behind: what it answers from (fusefs/leases.py)
        log.info(kv("caches_dropped", chunk_bytes=chunk_bytes, inodes=len(inodes)))

    async def open(self, inode, flags, ctx):
        info = await super().open(inode, flags, ctx)
        self.openers[info.fh] = (ctx.pid, inode)
        return info

    async def release(self, fh):
        self.openers.pop(fh, None)
        await super().release(fh)

    async def clone_into(self, parent: int, value: bytes, ctx) -> None:
        """CLONE_XATTR set on ``parent`` (see the module docstring)."""
        src, name = parse_clone_value(value)
        pattr = check(await self.backend.getattr(parent)).attr
        if not stat.S_ISDIR(pattr.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        groups = caller_groups(ctx)
        if not may(pattr, ctx.uid, groups, os.W_OK | os.X_OK):
            raise pyfuse3.FUSEError(errno.EACCES)
        sattr = check(await self.backend.getattr(src)).attr
        if stat.S_ISDIR(sattr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not stat.S_ISREG(sattr.mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        if ctx.uid != 0 and not (ctx.pid and (ctx.pid, src) in self.openers.values()
                                 and may(sattr, ctx.uid, groups, os.R_OK)):
            raise pyfuse3.FUSEError(errno.EACCES)
        data = self.files.get(src)
        if data is not None and data.changed:
            self._committed(await data.flush())
        mode = sattr.mode & (0o7777 if ctx.uid == 0 else 0o1777)
        attr = await self._submit_new(Clone(src, parent, name, mode, ctx.uid, ctx.gid,
                                            time.time_ns()))
        # The kernel may hold a negative dentry for the name (a lookup
        # before the clone); it cannot know the entry we added. Queued: the
        # caller of setxattr holds the directory's lock until we answer.
        self.invalidator.entry(parent, name)
        self.invalidator.inode(parent)
        log.debug(kv("cloned", src=src, parent=parent, ino=attr.ino, size=attr.size))

    # ------------------------------------------------------------ shutdown

    async def flush_all(self) -> None:
        """Commit every open file's buffered writes (unmount with files
        still open, e.g. on SIGTERM); failures are logged per file."""
        for data in list(self.files.values()):
            try:
                await data.flush()
            except Exception as exc:  # noqa: BLE001 - keep flushing the others
                log.error("flush_at_unmount_failed ino=%d kind=%s", data.ino,
                          type(exc).__name__)
