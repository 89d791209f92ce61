"""Compaction of file layouts (issue 11): on the metadata leader, rewrite
ranges that random writes have fragmented into one fresh block each.

Why: a write stores only the bytes it wrote (``server/meta/blocks.py``), so
after many small overwrites a region of a file is many small extents, some
inline in the metadata, naming blocks of which little is still used. Reads
then touch many blocks, the metadata grows, and dead bytes of half-used
blocks stay on disk. The compactor bounds both: a region (``chunk_bytes``
of file offsets) is rewritten when its file is fragmented (the state
machine's ``inode_fragmented`` index: more extents than the size explains,
or inline bytes in a big file) or when it uses a block that is mostly dead
weight (``block_sparse``). Rewriting lets the old blocks' references drop;
once a block has none it is dying and GC deletes it.

How: read the region's extents and their digest from the local replica,
assemble the bytes they cover (holes stay holes: covered runs are packed
into the new block one after another), store the block on its replica set
with stamps, and propose ``Compact(ino, off, length, digest, slices,
observed)``. The state machine applies it only if the region still has that
digest, so a writer that changed the region meanwhile wins and the rewrite
is dropped (its block is never committed; the sweeper reclaims it). To not
fight an active writer, a region is rewritten only when two looks
``settle_s`` apart saw the same digest.

Bounds: regions per pass, blocks cached per pass (by bytes), one region in
flight; every call has the replicated store's deadline and every proposal
a timeout.
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from rpc.logfmt import kv
from server.meta import codec
from server.meta.types import INLINE_BYTES_MAX, Compact, Slice
from server.raft.messages import Role

from .replication import ChunkUnavailable, ReplicatedStore
from .keyrange import chunk_id_of

log = logging.getLogger("chordfs.store.compactor")


@dataclasses.dataclass(frozen=True)
class CompactorLimits:
    interval_s: float = 2.0          # between passes that found nothing to do
    settle_s: float = 1.0            # a region must look the same this long
    regions_per_pass_max: int = 64
    block_cache_bytes_max: int = 64 << 20
    propose_timeout_s: float = 10.0


@dataclasses.dataclass
class CompactorStats:
    passes: int = 0
    regions_rewritten: int = 0
    regions_raced: int = 0           # the region changed before Compact applied
    stale: int = 0                   # changed while its blocks were read (and collected)
    bytes_written: int = 0
    failures: int = 0


class Compactor:
    def __init__(self, name: str, metadata, store: ReplicatedStore, *,
                 limits: CompactorLimits = CompactorLimits()) -> None:
        self.name = name
        self.metadata = metadata
        self.store = store
        self.limits = limits
        self.stats = CompactorStats()
        self._seen: dict[tuple[int, int], tuple[bytes, float]] = {}

    def status(self) -> dict:
        return dataclasses.asdict(self.stats)

    def _leads(self) -> bool:
        return self.metadata.group.service.core.role == Role.LEADER

    async def run(self) -> None:
        while True:
            busy = False
            if self._leads():
                try:
                    busy = await self.run_once()
                except Exception as e:  # noqa: BLE001 - a failed pass is retried
                    self.stats.failures += 1
                    log.warning(kv("compact.failed", node=self.name,
                                   error=f"{type(e).__name__}: {e}"))
            await trio.sleep(self.limits.settle_s if busy else self.limits.interval_s)

    # ---------------------------------------------------------------- planning

    def candidates(self) -> list[tuple[int, int]]:
        """(ino, region start) worth a look, at most regions_per_pass_max."""
        reader = self.metadata.reader
        cb = reader.chunk_bytes()
        regions: dict[tuple[int, int], None] = {}
        limit = self.limits.regions_per_pass_max
        for ino, off in reader.sparse_blocks(limit):
            regions[(ino, off - off % cb)] = None
        for ino in reader.fragmented_files(limit):
            for region in self._fragmented_regions(ino):
                regions[(ino, region)] = None
                if len(regions) >= limit:
                    break
            if len(regions) >= limit:
                break
        return list(regions)[:limit]

    def _fragmented_regions(self, ino: int) -> list[int]:
        reader = self.metadata.reader
        cb, size = reader.chunk_bytes(), self._size(ino)
        regions: dict[int, tuple[list[int], set[bytes]]] = {}
        start = 0
        while True:
            page = reader.manifest(ino, start)
            for s in page.slices:
                counts, blocks = regions.setdefault(s.off - s.off % cb, ([0, 0], set()))
                counts[0] += 1
                counts[1] += 0 if s.block_id else s.length
                if s.block_id:
                    blocks.add(s.block_id)
            if page.done or page.err:
                break
            start = page.next_off
        # A region whose extents all name one block is as compact as a
        # rewrite could make it (holes stay holes): rewriting it again would
        # loop forever on a sparse file.
        return [r for r, ((n, inline), blocks) in sorted(regions.items())
                if (n > 2 and len(blocks) > 1) or (inline and size > INLINE_BYTES_MAX)]

    # ---------------------------------------------------------------- work

    async def run_once(self) -> bool:
        """One pass; True if it rewrote or saw settling work."""
        self.stats.passes += 1
        cache: dict[bytes, bytes] = {}
        work = False
        now = trio.current_time()
        for ino, region in self.candidates():
            work = True
            digest = self._digest(ino, region)
            if digest is None:
                continue
            seen = self._seen.get((ino, region))
            if seen is None or seen[0] != digest or now - seen[1] < self.limits.settle_s:
                if seen is None or seen[0] != digest:
                    self._seen[(ino, region)] = (digest, now)
                continue
            del self._seen[(ino, region)]
            await self._rewrite(ino, region, digest, cache)
        if len(self._seen) > 4 * self.limits.regions_per_pass_max:
            self._seen.clear()  # forgotten files: looking again costs one pass
        return work

    def _size(self, ino: int) -> int:
        reply = self.metadata.reader.getattr(ino)
        return reply.attr.size if reply.err == 0 else 0

    def _region(self, ino: int, region: int) -> tuple[int, int] | None:
        end = min(region + self.metadata.reader.chunk_bytes(), self._size(ino))
        return (region, end) if end > region else None

    def _digest(self, ino: int, region: int) -> bytes | None:
        bounds = self._region(ino, region)
        if bounds is None:
            return None
        start, end = bounds
        return self.metadata.reader.range_digest(ino, start, end - start)

    async def _rewrite(self, ino: int, region: int, digest: bytes,
                       cache: dict[bytes, bytes]) -> None:
        bounds = self._region(ino, region)
        if bounds is None:
            return
        start, end = bounds
        reader = self.metadata.reader
        # Read extents and digest together (no await in between: the
        # replica cannot apply anything meanwhile).
        extents = reader.extents_in(ino, start, end)
        if reader.range_digest(ino, start, end - start) != digest:
            return
        runs: list[tuple[int, bytearray]] = []
        for off, length, block_id, block_off, data in extents:
            a, b = max(off, start), min(off + length, end)
            if block_id:
                try:
                    block = await self._block(bytes(block_id), cache)
                except ChunkUnavailable:
                    if reader.range_digest(ino, start, end - start) != digest:
                        # Overwritten or deleted while we read, and its old
                        # blocks collected: nothing to compact any more.
                        self.stats.stale += 1
                        log.info(kv("compact.stale", node=self.name, ino=ino, region=region))
                        return
                    raise  # still referenced and nowhere: repair's business, loudly
                piece = block[block_off + a - off:block_off + b - off]
            else:
                piece = data[a - off:b - off]
            if runs and runs[-1][0] + len(runs[-1][1]) == a:
                runs[-1][1].extend(piece)
            else:
                runs.append((a, bytearray(piece)))
        if not runs:
            return
        block = b"".join(bytes(buf) for _, buf in runs)
        block_id = chunk_id_of(block)
        applied = reader.applied_index
        result = await self.store.put(block_id, block, after_index=applied)
        slices, pos = [], 0
        for off, buf in runs:
            slices.append(Slice(off, len(buf), block_id, pos, len(block), fresh=True))
            pos += len(buf)
        cmd = Compact(ino, start, end - start, digest, slices, result.stamp)
        _, _, answer = await self.metadata.group.service.propose(
            codec.encode_command(cmd), timeout_s=self.limits.propose_timeout_s)
        err = codec.decode_result(answer).err
        if err:
            self.stats.regions_raced += 1
            log.info(kv("compact.skipped", node=self.name, ino=ino, off=start, err=err))
            return
        self.stats.regions_rewritten += 1
        self.stats.bytes_written += len(block)
        log.info(kv("compact.rewrote", node=self.name, ino=ino, off=start,
                    extents=len(extents), bytes=len(block)))

    async def _block(self, block_id: bytes, cache: dict[bytes, bytes]) -> bytes:
        block = cache.get(block_id)
        if block is None:
            block = await self.store.get(block_id)
            if sum(len(b) for b in cache.values()) + len(block) > self.limits.block_cache_bytes_max:
                cache.clear()
            cache[block_id] = block
        return block
