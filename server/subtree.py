"""A client certificate confined to a directory (``--subdir``), enforced on
the node for every call, as MooseFS exports are.

The subtree is the directory at the certificate's path, found by lookups
from the root when the client first needs it (renaming it or its parents
later keeps its inode, so the confinement follows the directory, not the
name).  An inode is inside when it is that directory or when one of its
names (dentries; a file may have several) leads up to it.  Checked:

  queries   the inode each one reads (lookup's parent, getattr, readdir,
            readlink, xattrs, manifest); statfs is cluster-wide and allowed;
            lookups along the path down to the subtree are allowed, so a
            mount can find its root
  commands  every inode a command names (parent, new parent, inode, clone
            source, lease directory), and each op of a lease batch

A check that fails on this replica is tried once more after the node has
caught up with the leader (the inode may be new), then refused with
PermissionDenied.  Chunk get/put are not confined: blocks are named by the
hash of their content, so a client can only ask for bytes it already knows.

Invariant: nothing outside the subtree is read or changed through this
client's calls, whatever inode numbers it sends."""

from __future__ import annotations

from .meta import codec

ROOT_INO = 1
DEPTH_MAX = 4096  # the walk up from an inode never takes longer than this
_QUERY_INO = {"getattr": ("getattr", "ino"), "readdir": ("readdir", "dirIno"),
              "readlink": ("readlink", "linkIno"), "getxattr": ("getxattr", "xattrIno"),
              "listxattr": ("listxattr", "listIno"), "manifest": ("manifest", "fileIno")}
_COMMAND_INO_FIELDS = ("parent", "new_parent", "ino", "src", "dir")


class Subtree:
    def __init__(self, path: str) -> None:
        self.path = path
        self.parts = [p.encode() for p in path.split("/") if p]
        self.root: int | None = None
        self._steps: set[tuple[int, bytes]] = set()  # (parent, name) down to the root

    def resolve(self, store) -> int | None:
        """The subtree's inode, or None if the path does not lead to a
        directory on this replica (yet)."""
        if self.root is not None:
            return self.root
        ino, steps = ROOT_INO, set()
        for name in self.parts:
            steps.add((ino, name))
            reply = store.lookup(ino, name)
            if reply.err or reply.attr is None:
                return None
            ino = reply.attr.ino
        self.root, self._steps = ino, steps
        return ino

    def contains(self, store, ino: int) -> bool:
        root = self.resolve(store)
        if root is None:
            return False
        seen, frontier = {ino}, [ino]
        for _ in range(DEPTH_MAX):
            if root in frontier:
                return True
            up = []
            for node in frontier:
                if node == ROOT_INO:
                    continue
                for parent in store.parents(node):
                    if parent not in seen:
                        seen.add(parent)
                        up.append(parent)
            if not up:
                return False
            frontier = up
        return False

    # ---- what a call names ---------------------------------------------------
    def query_inos(self, store, q) -> list[int] | None:
        """The inodes a query reads; None when it needs no check."""
        which = q.which()
        if which == "statfs":
            return None
        if which == "lookup":
            parent, name = q.lookup.parent, bytes(q.lookup.name)
            self.resolve(store)
            if (parent, name) in self._steps:
                return None  # the way down to the subtree's root
            return [parent]
        group, field = _QUERY_INO[which]
        return [getattr(getattr(q, group), field)]

    @staticmethod
    def command_inos(command: bytes) -> list[int]:
        cmd = codec.decode_command(command)
        inos = [getattr(cmd, f) for f in _COMMAND_INO_FIELDS
                if isinstance(getattr(cmd, f, None), int) and getattr(cmd, f)]
        for op in getattr(cmd, "ops", ()):
            inos += Subtree.command_inos(op)
        inos += list(getattr(cmd, "leases", ()))
        return inos

    def outside(self, store, inos: list[int]) -> int | None:
        """The first inode outside the subtree, or None."""
        return next((i for i in inos if not self.contains(store, i)), None)
