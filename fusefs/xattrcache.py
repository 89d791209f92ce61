"""Extended attributes as this mount last saw them, for as long as the kernel
keeps attributes (``attr_timeout``).

Why: the kernel asks for ``security.capability`` before every write(2) to
a file (to drop file capabilities on write), and ``ls -l`` asks for
``security.selinux`` and the POSIX ACL names of every file it lists. On a
cluster each question is a linearizable read at the Raft leader; without a
cache, a program writing 4 KiB at a time pays a network round trip per
write. Staleness is the same as for attributes: a change made through
another mount shows here within the timeout; our own changes drop the
inode's entry at once.

Per inode the cache keeps answers by name (a value, or ``None`` for
ENODATA) and, after a listxattr, the full set of names, so every other name
is known absent. Bounded in inodes (LRU), in names per inode and in value
size: a value over ``VALUE_BYTES_MAX`` is asked for again each time.
"""

from __future__ import annotations

import collections
import dataclasses
import time

INODES_MAX = 16384
VALUE_BYTES_MAX = 4096
NAMES_PER_INODE_MAX = 64
ABSENT = object()   # known: no such attribute (ENODATA)
UNKNOWN = object()  # not cached: ask the backend


@dataclasses.dataclass
class _Entry:
    expires: float
    values: dict[bytes, bytes | None] = dataclasses.field(default_factory=dict)
    names: frozenset[bytes] | None = None


class XattrCache:
    def __init__(self, ttl_s: float, *, inodes_max: int = INODES_MAX,
                 clock=time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.inodes_max = inodes_max
        self.clock = clock
        self._entries: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self.hits = self.misses = 0
        # Bumped by every drop: an answer asked for before a change of ours
        # and arriving after it must not be cached (it may predate the change).
        self.epoch = 0

    def _fresh(self, ino: int) -> _Entry | None:
        entry = self._entries.get(ino)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            del self._entries[ino]
            return None
        return entry

    def _entry(self, ino: int) -> _Entry | None:
        if self.ttl_s <= 0:
            return None
        entry = self._fresh(ino)
        if entry is None:
            entry = self._entries[ino] = _Entry(self.clock() + self.ttl_s)
            while len(self._entries) > self.inodes_max:
                self._entries.popitem(last=False)
        self._entries.move_to_end(ino)
        return entry

    def get(self, ino: int, name: bytes):
        """The cached value, ``ABSENT``, or ``UNKNOWN``."""
        entry = self._fresh(ino)
        if entry is not None:
            if name in entry.values:
                self.hits += 1
                value = entry.values[name]
                return ABSENT if value is None else value
            if entry.names is not None and name not in entry.names:
                self.hits += 1
                return ABSENT
        self.misses += 1
        return UNKNOWN

    def put(self, ino: int, name: bytes, value: bytes | None, epoch: int) -> None:
        """Remember a getxattr answer (``None``: ENODATA) asked for when
        ``self.epoch`` was ``epoch``."""
        if epoch != self.epoch or (value is not None and len(value) > VALUE_BYTES_MAX):
            return
        entry = self._entry(ino)
        if entry is not None and (name in entry.values or len(entry.values) < NAMES_PER_INODE_MAX):
            entry.values[name] = value

    def put_names(self, ino: int, names, epoch: int) -> None:
        """Remember a listxattr answer: every other name is absent."""
        entry = self._entry(ino) if epoch == self.epoch else None
        if entry is not None:
            entry.names = frozenset(names)
            stale = [n for n, v in entry.values.items() if (v is None) == (n in entry.names)]
            for name in stale:  # the list is newer than these answers
                del entry.values[name]

    def drop(self, ino: int) -> None:
        """After (and before) our own change to ``ino``'s attributes."""
        self.epoch += 1
        self._entries.pop(ino, None)
