"""Census: how many of the blocks the filesystem uses are stored as often as
placement asks, counted rather than guessed.

Repair's own figures say what a pass copied, not what is still short: with
three nodes and one of them down, every block has two copies and there is
no third node to copy to, so repair copies nothing while every block is
under-replicated.  The census asks instead.  It walks the blocks the
metadata replica references (``reader.live_blocks``, in id order, a page at
a time) and, per block, asks its replica set in the ring's current view of
live members, plus ``extra`` successors, whether they hold a copy
(``ChunkStore.has`` in batches, one call per node per page, all nodes at
once).  Per block:

  healthy           a copy on each of the R nodes placement names now;
  under-replicated  fewer than that (repair adds them where it can);
  missing           no copy on any node asked: the block's data is gone
                    unless a node that is down comes back with it.

A node that does not answer counts as holding nothing: its copies cannot
be read either, and the nodes it failed for are named in the report.

Run on the metadata leader (only it is sure to have applied every commit);
a pass is paced to ``lookups_per_s`` so a large namespace costs steady
background work, and every remote call has a deadline."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import trio

import rpc

from .keyrange import ring_key
from .service import RemoteStore, RemoteStoreError, store_capnp

log = logging.getLogger("chordfs.store.census")

EXAMPLES_MAX = 10


@dataclasses.dataclass
class CensusReport:
    blocks_total: int = 0          # live blocks when the pass started
    blocks_checked: int = 0
    healthy: int = 0
    under_replicated: int = 0
    missing: int = 0
    copies_seen: int = 0
    nodes_unreachable: list[str] = dataclasses.field(default_factory=list)
    missing_examples: list[str] = dataclasses.field(default_factory=list)  # hex ids
    complete: bool = False
    started_wall_s: float = 0.0
    finished_wall_s: float | None = None
    took_s: float | None = None


class Census:
    """One pass at a time over ``reader``'s live blocks against the ring
    view ``view()`` (a ringmath.Ring of live members)."""

    def __init__(self, reader, view: Callable[[], object], pool, R: int, *,
                 extra: int = 2, page_max: int = 4096, lookups_per_s: float = 50_000,
                 timeout_s: float = 10.0):
        if R < 1 or page_max < 1 or lookups_per_s <= 0:
            raise ValueError("R and page_max must be >= 1 and lookups_per_s > 0")
        self.reader, self.view, self.pool, self.R = reader, view, pool, R
        self.extra, self.page_max = extra, page_max
        self.lookups_per_s, self.timeout_s = lookups_per_s, timeout_s

    async def run(self, report: CensusReport | None = None) -> CensusReport:
        """A whole pass; ``report`` (if given) is filled in as it goes, so a
        status query can show progress."""
        report = report if report is not None else CensusReport()
        report.started_wall_s = time.time()
        started_s = trio.current_time()
        report.blocks_total = self.reader.live_block_count()
        unreachable: set[str] = set()
        after, lookups = b"", 0
        while True:
            page = self.reader.live_blocks(after, self.page_max)
            if not page:
                break
            view = self.view()
            lookups += await self._check_page(page, view, report, unreachable)
            after = page[-1]
            report.nodes_unreachable = sorted(unreachable)
            await trio.sleep_until(started_s + lookups / self.lookups_per_s)
            if len(page) < self.page_max:
                break
        report.complete = True
        report.finished_wall_s = time.time()
        report.took_s = round(trio.current_time() - started_s, 3)
        log.info("census: %d blocks, %d under-replicated, %d missing, unreachable %s",
                 report.blocks_checked, report.under_replicated, report.missing,
                 report.nodes_unreachable or "-")
        return report

    async def _check_page(self, page: list[bytes], view, report: CensusReport,
                          unreachable: set[str]) -> int:
        placed = {cid: list(view.replicas(ring_key(cid), self.R + self.extra)) for cid in page}
        asks: dict[str, list[bytes]] = {}
        for cid, names in placed.items():
            for name in names:
                asks.setdefault(name, []).append(cid)
        held: dict[str, set[bytes]] = {}

        async def ask(name: str, ids: list[bytes]) -> None:
            try:
                with trio.fail_after(self.timeout_s):
                    cap = await self.pool.bootstrap(name, store_capnp.ChunkStore,
                                                    timeout_s=self.timeout_s)
                    present = await RemoteStore(cap, name, timeout_s=self.timeout_s).has_many(ids)
                held[name] = {cid for cid, yes in zip(ids, present) if yes}
            except (rpc.RpcError, RemoteStoreError, trio.TooSlowError, OSError) as e:
                unreachable.add(name)
                log.info("census: %s did not answer: %s: %s", name, type(e).__name__, e)

        async with trio.open_nursery() as nursery:
            for name, ids in asks.items():
                nursery.start_soon(ask, name, ids)
        for cid, names in placed.items():
            placed_copies = sum(cid in held.get(n, ()) for n in names[:self.R])
            copies = sum(cid in held.get(n, ()) for n in names)
            report.blocks_checked += 1
            report.copies_seen += copies
            if copies == 0:
                report.missing += 1
                if len(report.missing_examples) < EXAMPLES_MAX:
                    report.missing_examples.append(cid.hex())
            elif placed_copies < self.R:
                report.under_replicated += 1
            else:
                report.healthy += 1
        return sum(len(ids) for ids in asks.values())
