"""Chunk ids, ring keys and key ranges on the 2^64 ring.

A chunk id is the 16-byte xxh3_128 digest of the chunk's bytes; its ring key is
the high 64 bits read as a big-endian unsigned integer. A node owns the keys in
the half-open range (predecessor, self], so ranges here are half-open
``(start, end]`` on a circle of 2^64 keys and may wrap past zero. By the same
convention a range whose start equals its end is the whole circle (the range a
lone node owns), never the empty one.

Ring order inside a range runs clockwise from just after ``start`` to ``end``;
ids that share a ring key are ordered by their remaining bytes. Both replicas of
a range enumerate ids in this order, which is what makes range digests
comparable.

Invariants: 0 <= start, end < 2^64; ids are exactly ID_BYTES long.
No I/O happens here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import xxhash

from .errors import BadChunkId

ID_BYTES = 16
KEY_BITS = 64
RING_SIZE = 1 << KEY_BITS
KEY_MAX = RING_SIZE - 1


def check_id(chunk_id: bytes) -> bytes:
    """Return ``chunk_id`` as bytes after checking its length; ids come from the
    wire, so a wrong one is an input error, not an assertion."""
    if not isinstance(chunk_id, (bytes, bytearray, memoryview)):
        raise BadChunkId(f"chunk id must be bytes, not {type(chunk_id).__name__}")
    chunk_id = bytes(chunk_id)
    if len(chunk_id) != ID_BYTES:
        raise BadChunkId(f"chunk id must be {ID_BYTES} bytes, got {len(chunk_id)}")
    return chunk_id


def id_from_hex(text: str) -> bytes:
    if len(text) != 2 * ID_BYTES:
        raise BadChunkId(f"chunk id hex must be {2 * ID_BYTES} digits, got {text!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise BadChunkId(f"chunk id hex has a non-hex digit: {text!r}") from None


def chunk_id_of(data: bytes | bytearray | memoryview) -> bytes:
    """The id a chunk with these bytes has."""
    return xxhash.xxh3_128_digest(data)


def ring_key(chunk_id: bytes) -> int:
    """High 64 bits of the id, big-endian: the id's place on the ring."""
    return int.from_bytes(chunk_id[:8], "big")


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRange:
    """Half-open ring range ``(start, end]``; ``start == end`` is the full circle."""

    start: int
    end: int

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= KEY_MAX:
                raise ValueError(f"range {name} must be an int in [0, 2^64), got {value!r}")

    @classmethod
    def full(cls, start: int = 0) -> KeyRange:
        return cls(start, start)

    @property
    def is_full(self) -> bool:
        return self.start == self.end

    @property
    def length(self) -> int:
        """Number of keys in the range, from 1 to 2^64."""
        return (self.end - self.start) % RING_SIZE or RING_SIZE

    def contains_key(self, key: int) -> bool:
        # Distance clockwise from start: the key is inside when it lies within
        # (0, length], which handles wrap-around without special cases.
        distance = (key - self.start) % RING_SIZE
        return 0 < distance <= self.length or (self.is_full and distance == 0)

    def contains_id(self, chunk_id: bytes) -> bool:
        return self.contains_key(ring_key(chunk_id))

    def order_key(self, chunk_id: bytes) -> tuple[int, bytes]:
        """Sort key giving ring order inside this range (clockwise from start)."""
        distance = (ring_key(chunk_id) - self.start - 1) % RING_SIZE
        return distance, chunk_id[8:]

    def segments(self) -> list[tuple[int, int]]:
        """The range as one or two linear inclusive key intervals, in ring order.

        (start, end] wraps when start >= end; it then covers start+1..KEY_MAX
        followed by 0..end.
        """
        first = (self.start + 1) % RING_SIZE
        if self.is_full:
            if first == 0:
                return [(0, KEY_MAX)]
            return [(first, KEY_MAX), (0, self.start)]
        if first <= self.end:
            return [(first, self.end)]
        return [(first, KEY_MAX), (0, self.end)]

    def split(self, parts: int) -> list[KeyRange]:
        """Cut the range into ``parts`` consecutive sub-ranges of near-equal
        length (fewer when the range holds fewer keys than ``parts``)."""
        if parts < 1:
            raise ValueError(f"parts must be >= 1, got {parts}")
        parts = min(parts, self.length)
        bounds = [(self.start + self.length * i // parts) % RING_SIZE for i in range(parts + 1)]
        out = [KeyRange(bounds[i], bounds[i + 1]) for i in range(parts)]
        # A one-part split of the full circle must stay full, not become empty.
        assert sum(r.length for r in out) == self.length
        return out

    def __str__(self) -> str:
        return f"({self.start:#018x}, {self.end:#018x}]"


def in_ring_order(key_range: KeyRange, ids: Iterable[bytes]) -> list[bytes]:
    """Reference enumeration: the ids of ``ids`` inside the range, in ring order."""
    inside = [i for i in ids if key_range.contains_id(i)]
    return sorted(inside, key=key_range.order_key)
