"""Dropping copies this node no longer has to hold.

After the ring changes (a node joins, or comes back), repair copies each
range to its new replicas, and the old holders keep copies nobody asks
them for.  A copy is dropped only when every replica of its key under the
current view confirms, by a ``has`` answered over RPC, that it holds the
chunk: a replica that is down or slow to confirm keeps our copy alive, so
dropping never takes a chunk below R confirmed copies.  The walk over local
ids is bounded per pass and resumes where it stopped."""

import collections
import logging

import trio

import rpc
from rpc.logfmt import kv

from .keyrange import KeyRange, ring_key
from .service import RemoteStore, RemoteStoreError, store_capnp

log = logging.getLogger("chordfs.store")
PAGE_IDS = 1024


async def drop_handed_over(store, name: str, view, pool, replicas: int, *, timeout_s: float,
                           after_id: bytes | None = None, ids_max: int = 16384):
    """One bounded walk; returns (examined, dropped, kept, resume_after_id or
    None when the walk reached the end). ``kept``: copies we no longer
    replicate that stay because a replica did not confirm yet (a new holder
    still pulling, or one that did not answer): worth another walk soon."""
    examined = dropped = 0
    foreign: dict[bytes, tuple[str, ...]] = {}
    cursor = after_id
    while examined < ids_max:
        page = await store.list_ids(KeyRange(0, 0), cursor, PAGE_IDS)
        if not page:
            cursor = None
            break
        for chunk_id in page:
            holders = view.replicas(ring_key(chunk_id), replicas)
            if name not in holders and len(holders) >= replicas:
                foreign[chunk_id] = holders
        examined += len(page)
        cursor = page[-1]
    kept = 0
    if foreign:
        confirmed = await _confirmed(foreign, pool, timeout_s)
        kept = len(foreign) - len(confirmed)
        for chunk_id in confirmed:
            if await store.delete(chunk_id):
                dropped += 1
        log.info(kv("handoff.pass", node=name, examined=examined, foreign=len(foreign),
                    dropped=dropped, kept=kept))
    return examined, dropped, kept, cursor


async def _confirmed(foreign: dict[bytes, tuple[str, ...]], pool, timeout_s: float) -> list[bytes]:
    """The ids every one of whose replicas answered that it holds them."""
    asked: dict[str, list[bytes]] = collections.defaultdict(list)
    for chunk_id, holders in foreign.items():
        for holder in holders:
            asked[holder].append(chunk_id)
    held: dict[bytes, int] = collections.Counter()

    async def ask(holder: str, ids: list[bytes]) -> None:
        try:
            with trio.fail_after(timeout_s):
                cap = await pool.bootstrap(holder, store_capnp.ChunkStore, timeout_s=timeout_s)
                present = await RemoteStore(cap, holder, timeout_s=timeout_s).has_many(ids)
        except (rpc.RpcError, RemoteStoreError, trio.TooSlowError):
            return  # an unconfirmed holder keeps our copies alive
        for chunk_id, yes in zip(ids, present):
            held[chunk_id] += bool(yes)

    async with trio.open_nursery() as nursery:
        for holder, ids in asked.items():
            nursery.start_soon(ask, holder, ids)
    return [c for c, holders in foreign.items() if held[c] == len(holders)]
