"""Ring math: ids, placement, responsibility ranges and the ranges that move.

Every place on the ring is a 64-bit integer. A node's ids are ``xxh3_64`` of its
stable name's UTF-8 bytes with seed 0 (its primary id, the one Chord routes
on) and seeds 1..V-1 (its virtual ids, which spread its load). Names and keys
are hashed in full, never truncated, so short names land on distinct points.

Placement (DESIGN "Identifiers and placement"): the owner of key ``k`` is the
node holding the first point clockwise with ``point >= k`` (wrapping past
2^64 - 1 to 0); the replica set is the owner followed by the next R-1
*distinct physical* nodes clockwise.

Ranges are half-open ``(start, end]`` and may wrap; ``start == end`` is the
whole circle (what a lone node owns), never the empty range. This is the same
convention as ``server/store/keyrange.py`` so the store's repair can take
ranges from the ring events directly.

Invariants: a Ring's points are strictly increasing (two nodes whose points
collide is an explicit ``IdCollision``); every range produced is non-empty;
the segments of a ring tile the circle exactly once.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
from collections.abc import Iterable

import xxhash

PURE_CORE = True

KEY_BITS = 64
RING_SIZE = 1 << KEY_BITS
KEY_MAX = RING_SIZE - 1
REPLICAS_DEFAULT = 3
VIRTUAL_IDS_DEFAULT = 256


class IdCollision(ValueError):
    """Two distinct nodes hashed to the same point; one name must change."""


def key_of_name(name: str) -> int:
    """Ring key of a name (file names in the balance test, node names)."""
    return xxhash.xxh3_64_intdigest(name.encode("utf-8"))


def key_of_chunk(chunk_id: bytes) -> int:
    """Ring key of a 16-byte chunk id: its high 64 bits, big-endian."""
    if len(chunk_id) != 16:
        raise ValueError(f"chunk id must be 16 bytes, got {len(chunk_id)}")
    return int.from_bytes(chunk_id[:8], "big")


def chunk_id_of(data: bytes) -> bytes:
    return xxhash.xxh3_128_digest(data)


def node_id(name: str) -> int:
    """Primary ring id of a node: the point Chord routes on."""
    return key_of_name(name)


@functools.lru_cache(maxsize=4096)
def node_points(name: str, virtual_ids: int) -> tuple[int, ...]:
    """All points of a node; index 0 is the primary id. Cached because every
    membership change rebuilds rings from the same names."""
    if virtual_ids < 1:
        raise ValueError("virtual_ids must be >= 1")
    raw = name.encode("utf-8")
    return tuple(xxhash.xxh3_64_intdigest(raw, seed=i) for i in range(virtual_ids))


def in_open_closed(x: int, a: int, b: int) -> bool:
    """x in (a, b] on the circle; a == b is the whole circle."""
    if a == b:
        return True
    if a < b:
        return a < x <= b
    return x > a or x <= b


def in_open_open(x: int, a: int, b: int) -> bool:
    """x in (a, b) on the circle; a == b is the circle without a."""
    if a == b:
        return x != a
    if a < b:
        return a < x < b
    return x > a or x < b


def distance(a: int, b: int) -> int:
    """Clockwise distance from a to b."""
    return (b - a) % RING_SIZE


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class KeyRange:
    """Half-open ring range ``(start, end]``; ``start == end`` is the full circle."""

    start: int
    end: int

    def __post_init__(self) -> None:
        assert 0 <= self.start <= KEY_MAX and 0 <= self.end <= KEY_MAX, self

    @property
    def length(self) -> int:
        return RING_SIZE if self.start == self.end else distance(self.start, self.end)

    def __contains__(self, key: int) -> bool:
        return in_open_closed(key, self.start, self.end)


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    """A range whose replica set differs between two rings."""

    range: KeyRange
    before: tuple[str, ...]
    after: tuple[str, ...]


def merge_ranges(ranges: Iterable[KeyRange]) -> tuple[KeyRange, ...]:
    """Join ranges that touch (one's end is the next one's start), sorted."""
    out: list[KeyRange] = []
    for r in sorted(ranges, key=lambda r: r.start):
        if out and out[-1].end == r.start and not out[-1].start == out[-1].end:
            out[-1] = KeyRange(out[-1].start, r.end)
        else:
            out.append(r)
    # The last range may continue into the first across zero.
    if len(out) > 1 and out[-1].end == out[0].start:
        out[0] = KeyRange(out[-1].start, out[0].end)
        out.pop()
    return tuple(out)


class Ring:
    """An immutable placement view: the points of a set of physical nodes.

    Built from member names (the SWIM member list) and the cluster's
    ``virtual_ids``; all queries are pure functions of that set, so two nodes
    with the same member list place every key identically (one-hop placement).
    """

    __slots__ = ("names", "virtual_ids", "_ids_cache", "_owners", "_segments")

    def __init__(self, names: Iterable[str], virtual_ids: int = VIRTUAL_IDS_DEFAULT):
        self.names = frozenset(names)
        self.virtual_ids = virtual_ids
        self._ids_cache: list[int] | None = None  # built on first query
        self._owners: list[str] = []
        self._segments: dict[int, tuple[tuple[KeyRange, tuple[str, ...]], ...]] = {}

    @property
    def _ids(self) -> list[int]:
        """Sorted points, built lazily: events carry rings that most
        subscribers never query, and a big ring is 25,600 points."""
        if self._ids_cache is None:
            points = sorted(
                (p, n) for n in self.names for p in node_points(n, self.virtual_ids)
            )
            for (p1, n1), (p2, n2) in zip(points, points[1:]):
                if p1 == p2:
                    raise IdCollision(f"{n1!r} and {n2!r} share point {p1:#x}")
            self._owners = [n for _, n in points]
            self._ids_cache = [p for p, _ in points]
        return self._ids_cache

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Ring) and self.names == other.names
                and self.virtual_ids == other.virtual_ids)

    def __hash__(self) -> int:
        return hash((self.names, self.virtual_ids))

    def with_node(self, name: str) -> Ring:
        return Ring(self.names | {name}, self.virtual_ids)

    def without_node(self, name: str) -> Ring:
        return Ring(self.names - {name}, self.virtual_ids)

    def _index(self, key: int) -> int:
        ids = self._ids
        if not ids:
            raise LookupError("empty ring")
        return bisect.bisect_left(ids, key) % len(ids)

    def successor(self, key: int) -> str:
        """Owner of ``key``: node of the first point >= key, wrapping."""
        i = self._index(key)
        return self._owners[i]

    def replicas(self, key: int, replicas: int = REPLICAS_DEFAULT) -> tuple[str, ...]:
        """Owner plus the next distinct physical nodes clockwise (at most
        ``replicas``, fewer when the ring has fewer physical nodes)."""
        return self._walk(self._index(key), replicas)

    def _walk(self, start: int, replicas: int) -> tuple[str, ...]:
        self._ids  # noqa: B018 - builds _owners
        want = min(replicas, len(self.names))
        found: list[str] = []
        i, n = start, len(self._owners)
        while len(found) < want:
            owner = self._owners[i]
            if owner not in found:
                found.append(owner)
            i = (i + 1) % n
        return tuple(found)

    def segments(self, replicas: int = REPLICAS_DEFAULT) -> tuple[tuple[KeyRange, tuple[str, ...]], ...]:
        """The circle cut at every point: ``(prev_point, point]`` with the
        replica set of that point. Tiles the ring exactly once."""
        cached = self._segments.get(replicas)
        if cached is not None:
            return cached
        ids = self._ids
        out = tuple(
            (KeyRange(ids[i - 1], ids[i]), self._walk(i, replicas)) for i in range(len(ids))
        )
        self._segments[replicas] = out
        return out

    def primary_ranges(self, name: str) -> tuple[KeyRange, ...]:
        """Ranges whose owner is ``name`` (merged where adjacent)."""
        return merge_ranges(r for r, reps in self.segments(1) if reps[0] == name)

    def replica_ranges(self, name: str, replicas: int = REPLICAS_DEFAULT) -> tuple[KeyRange, ...]:
        """Ranges for which ``name`` is in the replica set: what it must store."""
        return merge_ranges(r for r, reps in self.segments(replicas) if name in reps)

    def load_share(self, name: str) -> float:
        """Fraction of the key space ``name`` owns."""
        return sum(r.length for r in self.primary_ranges(name)) / RING_SIZE


def moved_ranges(before: Ring, after: Ring, replicas: int = REPLICAS_DEFAULT) -> tuple[Move, ...]:
    """Every range whose replica set differs between two rings, with both
    sets. Computed on the union of both rings' cut points, so each piece has
    one replica set on either side; adjacent pieces with equal sets merge."""
    if not before.names or not after.names:
        raise ValueError("moved_ranges needs two non-empty rings")
    cuts = sorted(set(before._ids) | set(after._ids))
    moves: list[Move] = []
    for i, end in enumerate(cuts):
        start = cuts[i - 1]
        old, new = before.replicas(end, replicas), after.replicas(end, replicas)
        if old == new:
            continue
        if moves and moves[-1].range.end == start and (moves[-1].before, moves[-1].after) == (old, new):
            moves[-1] = Move(KeyRange(moves[-1].range.start, end), old, new)
        else:
            moves.append(Move(KeyRange(start, end), old, new))
    # The first piece (cuts[-1], cuts[0]] and the last one may continue each other.
    if len(moves) > 1 and moves[-1].range.end == moves[0].range.start and (
            moves[-1].before, moves[-1].after) == (moves[0].before, moves[0].after):
        moves[0] = Move(KeyRange(moves[-1].range.start, moves[0].range.end), moves[0].before, moves[0].after)
        moves.pop()
    return tuple(moves)


def gained_lost(moves: Iterable[Move], name: str) -> tuple[tuple[KeyRange, ...], tuple[KeyRange, ...]]:
    """The ranges ``name`` must newly hold and may drop, from a list of moves."""
    moves = list(moves)
    gained = merge_ranges(m.range for m in moves if name in m.after and name not in m.before)
    lost = merge_ranges(m.range for m in moves if name in m.before and name not in m.after)
    return gained, lost
