"""File handle requests: create, open, read, write, flush, fsync, release.

Close-to-open: ``open`` reads fresh attributes and, when no other handle of
this mount has the file open with buffered writes, the manifest again; it
keeps the kernel page cache (``keep_cache``) only if the file's (mtime, size)
equals what it was when this mount last closed it or committed to it, so
reopening an unchanged file reads from the page cache; otherwise it also
drops the kernel's cached attributes, whose size would cut reads short. ``flush`` (every
close) and ``fsync`` return only after the data is stored and committed.

Open files unlinked here are orphans (see ``InodeTable``); their last
``release`` frees them with ReleaseOrphan.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
import time

import pyfuse3

from rpc.logfmt import kv
from server.meta.types import Attr, Create, ReleaseOrphan, SetAttr

from .access import caller_groups, may
from .errors import check, fuse_op
from .filedata import FileData

log = logging.getLogger("chordfs.fuse.files")

STAMPS_MAX = 65536
CREATE_OPEN_TRIES = 3


class FileOpsMixin:
    """Mixed into ``ChordOps``; uses its backend, inodes, files, handles."""

    def _init_files(self) -> None:
        self.files: dict[int, FileData] = {}
        self.handles: dict[int, int] = {}
        self._next_fh = 1
        self.chunk_bytes = 0
        # ino -> (mtime_ns, size) when this mount last knew its page cache
        # matched the backend; bounded, so an old entry only costs a re-read.
        self.stamps: collections.OrderedDict[int, tuple[int, int]] = collections.OrderedDict()
        # ino -> (ctime_ns, mtime_ns, size) of the attributes last handed to
        # the kernel: an open that finds the same needs no attribute drop
        # (which costs the reader a getattr request); ctime moves with every
        # change and cannot be set. Bounded like the stamps: a forgotten
        # entry only costs that drop.
        self.told: collections.OrderedDict[int, tuple[int, int, int]] = collections.OrderedDict()

    def _stamp(self, attr: Attr) -> None:
        _put_bounded(self.stamps, attr.ino, (attr.mtime_ns, attr.size))

    def _tell(self, attr: Attr) -> None:
        _put_bounded(self.told, attr.ino, (attr.ctime_ns, attr.mtime_ns, attr.size))

    def _new_fh(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = ino
        self.inodes.opened(ino)
        return fh

    def _file(self, fh: int) -> FileData:
        return self.files[self.handles[fh]]

    def _committed(self, attr: Attr | None) -> None:
        """After our own commit: our page cache holds what we wrote; the
        attributes the kernel holds lack the commit's ctime and mtime. Dropped
        here, not through the invalidator's thread: an attribute-only drop
        takes no lock, and the hand-off to the thread cost every small file's
        close more than the drop itself."""
        if attr is not None:
            self._stamp(attr)
            self.invalidator.attr_now(attr.ino)

    @fuse_op
    async def create(self, parent_inode, name, mode, flags, ctx):
        for _ in range(CREATE_OPEN_TRIES):
            try:
                attr = await self._submit_new(Create(
                    parent_inode, name, mode, ctx.uid, ctx.gid, time.time_ns(), ctx.umask))
                break
            except pyfuse3.FUSEError as e:
                if e.errno != errno.EEXIST or flags & os.O_EXCL:
                    raise
            # The kernel asks us to create only a name it believes absent;
            # it can be present when another mount created it after this
            # kernel cached its absence. Without O_EXCL that is an open.
            opened = await self._open_existing(parent_inode, name, flags, ctx)
            if opened is not None:
                return opened
        else:
            raise pyfuse3.FUSEError(errno.EEXIST)  # created and removed under us, again and again
        data = FileData(attr.ino, self.backend, self.reader, self.nursery)
        if self.chunk_bytes:
            data.start_empty(self.chunk_bytes, attr)
        else:
            await data.load()
            self.chunk_bytes = data.chunk_bytes
        self.files[attr.ino] = data
        self._stamp(attr)
        self.inodes.remember(attr.ino)
        fh = self._new_fh(attr.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True), self._entry(attr)

    async def _open_existing(self, parent: int, name: bytes, flags: int, ctx):
        """create() of a name that exists: open it as open(2) would have,
        permission checks included (the kernel checked none: it meant to
        create). None when the name is gone again."""
        reply = await self.backend.lookup(parent, name)
        if reply.err == errno.ENOENT:
            return None
        attr = check(reply).attr
        if stat.S_ISDIR(attr.mode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not stat.S_ISREG(attr.mode):
            raise pyfuse3.FUSEError(errno.EEXIST)  # the kernel would have followed a symlink
        want = {os.O_RDONLY: os.R_OK, os.O_WRONLY: os.W_OK}.get(flags & os.O_ACCMODE,
                                                                 os.R_OK | os.W_OK)
        if flags & os.O_TRUNC:
            want |= os.W_OK
        if not may(attr, ctx.uid, caller_groups(ctx), want):
            raise pyfuse3.FUSEError(errno.EACCES)
        fh, attr, keep = await self._open_handle(attr.ino, flags, attr)
        self.invalidator.attr_now(attr.ino)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep), self._new_entry(attr)

    @fuse_op
    async def open(self, inode, flags, ctx):
        fh, attr, keep = await self._open_handle(inode, flags)
        if not keep and self.told.get(inode) != (attr.ctime_ns, attr.mtime_ns, attr.size):
            # The kernel may hold this file's old size from a lookup or
            # readdirplus of up to attr_timeout ago and would cut reads at
            # it: close-to-open needs the size the file has now. (What we
            # last told it may be that already.)
            self.invalidator.attr_now(inode)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _open_handle(self, ino: int, flags: int,
                           attr: Attr | None = None) -> tuple[int, Attr, bool]:
        """A new handle on ``ino``, its data installed or refreshed and
        O_TRUNC applied: (fh, fresh attributes, keep_cache). ``attr``: what
        the caller knows already, used if the layout is not reread."""
        fh = self._new_fh(ino)
        try:
            attr, keep = await self._open_data(ino, attr)
            if flags & os.O_TRUNC:
                attr = await self.files[ino].setattr(SetAttr(ino, time.time_ns(), size=0))
                self._stamp(attr)
        except BaseException:
            await self._drop_handle(fh)
            raise
        return fh, attr, keep

    async def _open_data(self, ino: int, attr: Attr | None) -> tuple[Attr, bool]:
        """Install or refresh the file's data; returns its fresh attributes
        and keep_cache. The layout query answers with the attributes too,
        so a clean open costs one round trip."""
        data = self.files.get(ino)
        if data is None:
            data = FileData(ino, self.backend, self.reader, self.nursery)
            self.files[ino] = data
            fresh = await data.load()
            self.chunk_bytes = self.chunk_bytes or data.chunk_bytes
        elif data.changed:
            fresh = None
        else:
            fresh = await data.load()
        if fresh is None:
            # Open here with buffered writes: the kernel page cache already
            # reflects them, and our view is the newest there is.
            return attr or check(await self.backend.getattr(ino)).attr, True
        data.attr = fresh
        return fresh, self.stamps.get(ino) == (fresh.mtime_ns, fresh.size)

    @fuse_op
    async def read(self, fh, off, size):
        return await self._file(fh).read(off, size)

    @fuse_op
    async def write(self, fh, off, buf):
        return await self._file(fh).write(off, buf)

    @fuse_op
    async def flush(self, fh):
        self._committed(await self._file(fh).flush())

    @fuse_op
    async def fsync(self, fh, datasync):
        self._committed(await self._file(fh).flush())
        await self.backend.sync()

    @fuse_op
    async def release(self, fh):
        data = self._file(fh)
        try:
            self._committed(await data.flush())
        except pyfuse3.FUSEError as exc:
            # release has no caller to tell; close() already got flush's error.
            log.error(kv("release_flush_failed", ino=data.ino, err=exc.errno))
        finally:
            await self._drop_handle(fh)

    async def _drop_handle(self, fh: int) -> None:
        ino = self.handles.pop(fh)
        if not self.inodes.closed(ino):
            return
        data = self.files.pop(ino, None)
        if data is not None and data.attr is not None and not data.changed:
            self._stamp(data.attr)
        if ino in self.inodes.orphaned:
            self.inodes.orphaned.discard(ino)
            check(await self.backend.submit(ReleaseOrphan(ino, time.time_ns())))


def _put_bounded(table: collections.OrderedDict, ino: int, value) -> None:
    """Newest last; the oldest go past STAMPS_MAX entries."""
    table[ino] = value
    table.move_to_end(ino)
    while len(table) > STAMPS_MAX:
        table.popitem(last=False)
