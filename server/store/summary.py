"""Per-range summaries of chunk-id sets, for anti-entropy between replicas.

A RangeSummary of a key range is (count, digest) where digest is the xxh3_128
of the concatenated ids of the range in ring order. Two replicas with equal
summaries hold the same ids in that range (barring a 128-bit collision); when
they differ, each side splits the range into ``parts`` sub-ranges and compares
again, descending only into sub-ranges that differ, until a sub-range is small
enough (``leaf_ids_max``) to exchange its ids outright. For d differences among
n ids this costs about d * parts * log_parts(n / leaf_ids_max) summaries plus
d * leaf_ids_max ids on the wire instead of n ids.

``reconcile`` runs that descent against any pair of objects offering async
``range_summaries(key_range, parts)`` and ``list_ids(key_range, after_id,
ids_max)`` — a local AsyncChunkStore, or later an RPC stub for a neighbour.
It only finds differences; copying chunks is the repair service's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol

import xxhash

from .keyrange import KeyRange, ring_key

PARTS_MAX = 256
LEAF_IDS_MAX = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class RangeSummary:
    key_range: KeyRange
    count: int
    digest: bytes


def summarize(ids_in_ring_order: Iterable[bytes], key_range: KeyRange, parts: int) -> list[RangeSummary]:
    """Summaries of ``parts`` equal sub-ranges from one ordered pass over the
    ids of ``key_range`` (as ChunkStore.iter_ids yields them)."""
    if not 1 <= parts <= PARTS_MAX:
        raise ValueError(f"parts must be in [1, {PARTS_MAX}], got {parts}")
    subranges = key_range.split(parts)
    counts = [0] * len(subranges)
    hashers = [xxhash.xxh3_128() for _ in subranges]
    index = 0
    previous: tuple[int, bytes] | None = None
    for chunk_id in ids_in_ring_order:
        order = key_range.order_key(chunk_id)
        # The digest is only comparable if both sides hash in the same order.
        assert previous is None or order > previous, "ids not in ring order"
        previous = order
        while not subranges[index].contains_key(ring_key(chunk_id)):
            index += 1
        counts[index] += 1
        hashers[index].update(chunk_id)
    return [
        RangeSummary(r, c, h.digest()) for r, c, h in zip(subranges, counts, hashers, strict=True)
    ]


class SummarySource(Protocol):
    async def range_summaries(self, key_range: KeyRange, parts: int) -> list[RangeSummary]: ...

    async def list_ids(
        self, key_range: KeyRange, after_id: bytes | None, ids_max: int
    ) -> list[bytes]: ...


@dataclasses.dataclass
class RangeDiff:
    """Ids one side has and the other lacks. ``truncated`` means the
    ``diff_ids_max`` limit stopped the search: repair what was found, then run
    again."""

    missing_local: list[bytes] = dataclasses.field(default_factory=list)
    missing_remote: list[bytes] = dataclasses.field(default_factory=list)
    summaries_compared: int = 0
    ids_listed: int = 0
    truncated: bool = False


async def _all_ids(source: SummarySource, key_range: KeyRange, page_ids_max: int) -> list[bytes]:
    out: list[bytes] = []
    after: bytes | None = None
    while True:
        page = await source.list_ids(key_range, after, page_ids_max)
        out.extend(page)
        if len(page) < page_ids_max:
            return out
        after = page[-1]


async def reconcile(
    local: SummarySource,
    remote: SummarySource,
    key_range: KeyRange,
    *,
    parts: int = 16,
    leaf_ids_max: int = 256,
    diff_ids_max: int = 100_000,
) -> RangeDiff:
    """Find the ids that differ between ``local`` and ``remote`` in
    ``key_range`` by descending through differing sub-range summaries."""
    if not 2 <= parts <= PARTS_MAX or not 1 <= leaf_ids_max <= LEAF_IDS_MAX:
        raise ValueError("parts must be in [2, 256] and leaf_ids_max in [1, 65536]")
    diff = RangeDiff()
    # Depth-first with an explicit stack so the descent is bounded by the
    # stack size (at most 64 / log2(parts) levels times parts entries).
    stack = [key_range]
    while stack:
        if len(diff.missing_local) + len(diff.missing_remote) >= diff_ids_max:
            diff.truncated = True
            break
        current = stack.pop()
        mine = await local.range_summaries(current, parts)
        theirs = await remote.range_summaries(current, parts)
        diff.summaries_compared += len(mine)
        assert [s.key_range for s in mine] == [s.key_range for s in theirs]
        for a, b in reversed(list(zip(mine, theirs, strict=True))):
            if (a.count, a.digest) == (b.count, b.digest):
                continue
            sub = a.key_range
            if max(a.count, b.count) <= leaf_ids_max or sub.length <= parts:
                await _diff_leaf(local, remote, sub, leaf_ids_max, diff)
            else:
                stack.append(sub)
    return diff


async def _diff_leaf(
    local: SummarySource, remote: SummarySource, sub: KeyRange, page_ids_max: int, diff: RangeDiff
) -> None:
    ours = await _all_ids(local, sub, page_ids_max)
    theirs = await _all_ids(remote, sub, page_ids_max)
    diff.ids_listed += len(ours) + len(theirs)
    ours_set, theirs_set = set(ours), set(theirs)
    diff.missing_local.extend(i for i in theirs if i not in ours_set)
    diff.missing_remote.extend(i for i in ours if i not in theirs_set)
