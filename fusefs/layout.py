"""The byte-range structures a mount keeps per open file (pure, no I/O).

``Extents`` is the file as committed, plus this mount's uploaded but not yet
committed slices: non-overlapping ``Slice``s in offset order. ``apply``
follows exactly the state machine's rule (``server/meta/blocks.py``): a new
slice replaces whatever it overlaps and keeps the rest, so this view and the
committed layout agree after every commit.

``Dirty`` holds bytes written but not yet packed into a block or inline
slice: non-overlapping, non-adjacent ranges in offset order, merged as
writes arrive, so a sequential writer grows one range and random 4 KiB
writes cost one small range each.
"""

from __future__ import annotations

import bisect
import dataclasses

from server.meta.types import Slice

PURE_CORE = True


class Extents:
    def __init__(self, slices: list[Slice] | None = None) -> None:
        self.starts: list[int] = []
        self.items: list[Slice] = []
        for s in slices or ():
            self.apply(s)

    def __len__(self) -> int:
        return len(self.items)

    def _first_overlapping(self, start: int) -> int:
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and self.items[i].off + self.items[i].length > start:
            return i
        return i + 1

    def overlapping(self, start: int, end: int) -> list[Slice]:
        i = self._first_overlapping(start)
        out = []
        while i < len(self.items) and self.items[i].off < end:
            out.append(self.items[i])
            i += 1
        return out

    def cut(self, start: int, end: int | None = None) -> None:
        """Remove [start, end) (end None: everything from start on)."""
        i = self._first_overlapping(start)
        j = i
        keep: list[Slice] = []
        while j < len(self.items) and (end is None or self.items[j].off < end):
            s = self.items[j]
            if s.off < start:
                keep.append(_sub(s, s.off, start))
            if end is not None and s.off + s.length > end:
                keep.append(_sub(s, end, s.off + s.length))
            j += 1
        self.items[i:j] = keep
        self.starts[i:j] = [s.off for s in keep]

    def apply(self, s: Slice) -> None:
        self.cut(s.off, s.off + s.length)
        i = bisect.bisect_left(self.starts, s.off)
        plain = dataclasses.replace(s, fresh=False)
        self.items.insert(i, plain)
        self.starts.insert(i, s.off)

    def after(self, pos: int) -> Slice | None:
        """The first extent starting at or after ``pos``."""
        i = bisect.bisect_left(self.starts, pos)
        return self.items[i] if i < len(self.items) else None


def _sub(s: Slice, start: int, end: int) -> Slice:
    """The part [start, end) of slice ``s`` (which covers it)."""
    skip = start - s.off
    if s.block_id:
        return Slice(start, end - start, s.block_id, s.block_off + skip, s.block_size)
    return Slice(start, end - start, data=s.data[skip:skip + end - start])


class Dirty:
    def __init__(self) -> None:
        self.starts: list[int] = []
        self.bufs: list[bytearray] = []
        self.total = 0

    def __bool__(self) -> bool:
        return bool(self.bufs)

    def write(self, off: int, data: bytes | memoryview) -> None:
        end = off + len(data)
        # Ranges touching [off, end] (adjacent ones too) merge into one.
        i = bisect.bisect_left(self.starts, off)
        if i > 0 and self.starts[i - 1] + len(self.bufs[i - 1]) >= off:
            i -= 1
        j = i
        while j < len(self.starts) and self.starts[j] <= end:
            j += 1
        if i == j:
            self.starts.insert(i, off)
            self.bufs.insert(i, bytearray(data))
            self.total += len(data)
            return
        new_start = min(off, self.starts[i])
        last_end = self.starts[j - 1] + len(self.bufs[j - 1])
        if j - i == 1 and new_start == self.starts[i]:
            buf = self.bufs[i]   # the common case: writing inside or past one range
        else:
            buf = bytearray(max(end, last_end) - new_start)
            for k in range(i, j):
                pos = self.starts[k] - new_start
                buf[pos:pos + len(self.bufs[k])] = self.bufs[k]
        before = sum(len(self.bufs[k]) for k in range(i, j))
        pos = off - new_start
        buf[pos:pos + len(data)] = data
        self.starts[i:j] = [new_start]
        self.bufs[i:j] = [buf]
        self.total += len(buf) - before

    def overlapping(self, start: int, end: int) -> list[tuple[int, bytearray]]:
        i = max(0, bisect.bisect_right(self.starts, start) - 1)
        out = []
        while i < len(self.starts) and self.starts[i] < end:
            if self.starts[i] + len(self.bufs[i]) > start:
                out.append((self.starts[i], self.bufs[i]))
            i += 1
        return out

    def take(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        """Remove and return ranges in offset order, at most ``limit`` bytes
        in all (the last range taken is split)."""
        out: list[tuple[int, bytes]] = []
        budget = self.total if limit is None else limit
        while self.bufs and budget > 0:
            start, buf = self.starts[0], self.bufs[0]
            if len(buf) <= budget:
                out.append((start, bytes(buf)))
                del self.starts[0], self.bufs[0]
                taken = len(buf)
            else:
                out.append((start, bytes(buf[:budget])))
                self.starts[0] = start + budget
                self.bufs[0] = buf[budget:]
                taken = budget
            budget -= taken
            self.total -= taken
        return out

    def truncate(self, size: int) -> None:
        while self.starts and self.starts[-1] >= size:
            self.total -= len(self.bufs.pop())
            self.starts.pop()
        if self.starts and self.starts[-1] + len(self.bufs[-1]) > size:
            keep = size - self.starts[-1]
            self.total -= len(self.bufs[-1]) - keep
            del self.bufs[-1][keep:]


def paint(out: bytearray, start: int, pieces) -> None:
    """Copy (offset, bytes) pieces over ``out``, which holds file bytes
    [start, start + len(out)); later pieces win."""
    end = start + len(out)
    for off, data in pieces:
        a, b = max(off, start), min(off + len(data), end)
        if a < b:
            out[a - start:b - start] = data[a - off:b - off]
