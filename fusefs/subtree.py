"""A mount confined to a directory of the filesystem: the backend of a
client whose certificate carries ``--subdir`` (server/subtree.py enforces
the same on the nodes).

The kernel knows the mount's root as inode 1; the cluster knows that
directory under its own inode number.  ``SubtreeBackend`` translates the
one number both ways: a call naming 1 names the subtree's root, and a reply
carrying the root's number says 1.  Every other inode number is the
cluster's.  The root's ``..`` is the kernel's business (it never asks past
a mount's root), so the parent outside is never shown.

Such a mount runs without directory leases (like ``-o sync_meta``): a
lease batch names inodes the nodes cannot place in the subtree yet."""

from __future__ import annotations

import dataclasses

from server.meta.types import DirPage, EntryReply, ManifestPage

from .cluster import ROOT_INO

_INO_FIELDS = ("parent", "new_parent", "ino", "src", "dir")


class SubtreeUnavailable(Exception):
    """The certificate's directory does not exist (or is not a directory)."""


async def find_root(backend, path: str) -> int:
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p]:
        reply = await backend.lookup(ino, part.encode())
        if reply.err or reply.attr is None:
            raise SubtreeUnavailable(f"{path} does not exist in the filesystem")
        ino = reply.attr.ino
    attr = (await backend.getattr(ino)).attr
    if attr is None or (attr.mode & 0o170000) != 0o040000:
        raise SubtreeUnavailable(f"{path} is not a directory")
    return ino


class SubtreeBackend:
    def __init__(self, inner, root: int) -> None:
        self.inner, self.root = inner, root

    def __getattr__(self, name):
        return getattr(self.inner, name)  # chunks, statfs, put/get, sync, aclose...

    def _in(self, ino: int) -> int:
        return self.root if ino == ROOT_INO else ino

    def _out_attr(self, attr):
        return dataclasses.replace(attr, ino=ROOT_INO) if attr is not None and attr.ino == self.root else attr

    def _out(self, reply):
        if isinstance(reply, (EntryReply, ManifestPage)) and reply.attr is not None:
            return dataclasses.replace(reply, attr=self._out_attr(reply.attr))
        return reply

    async def submit(self, command):
        changes = {f: self.root for f in _INO_FIELDS
                   if getattr(command, f, None) == ROOT_INO}
        if changes:
            command = dataclasses.replace(command, **changes)
        return self._out(await self.inner.submit(command))

    async def lookup(self, parent: int, name: bytes) -> EntryReply:
        return self._out(await self.inner.lookup(self._in(parent), name))

    async def getattr(self, ino: int) -> EntryReply:
        return self._out(await self.inner.getattr(self._in(ino)))

    async def readdir(self, ino: int, *args, **kw) -> DirPage:
        page = await self.inner.readdir(self._in(ino), *args, **kw)
        if ino == ROOT_INO and page.parent:
            page = dataclasses.replace(page, parent=ROOT_INO)  # never the directory above
        return page

    async def readlink(self, ino: int):
        return await self.inner.readlink(self._in(ino))

    async def getxattr(self, ino: int, name: bytes):
        return await self.inner.getxattr(self._in(ino), name)

    async def listxattr(self, ino: int):
        return await self.inner.listxattr(self._in(ino))

    async def manifest(self, ino: int, *args, **kw) -> ManifestPage:
        return self._out(await self.inner.manifest(self._in(ino), *args, **kw))
