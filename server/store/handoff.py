"""Dropping copies this node no longer has to hold.

After the ring changes (a node joins, or comes back), repair copies each
range to its new replicas, and the old holders keep copies nobody asks
them for.  A copy is dropped only when every replica of its key under the
current view confirms, by a ``has`` answered over RPC, that it holds the
chunk: a replica that is down or slow to confirm keeps our copy alive, so
dropping never takes a chunk below R confirmed copies.  The walk over local
ids is bounded per pass and resumes where it stopped.

Stamps (chunkstore's docstring): a copy must not lose its protection by
moving. After the batched ``has`` confirms, each replica's copy is raised
to at least our copy's stamp (``RemoteStore.raise_stamp``, one call per
copy, ``raises_in_flight_max`` at once), and ours is deleted only if its
stamp is still the one we sent (``delete_below(stamp + 1)``): a writer
that raised it meanwhile keeps it, and the next walk hands it over again."""

import collections
import logging

import trio

import rpc
from rpc.logfmt import kv

from .keyrange import KeyRange, ring_key
from .service import RemoteStore, RemoteStoreError, store_capnp

log = logging.getLogger("chordfs.store")
PAGE_IDS = 1024
RAISES_IN_FLIGHT_MAX = 8


async def drop_handed_over(store, name: str, view, pool, replicas: int, *, timeout_s: float,
                           after_id: bytes | None = None, ids_max: int = 16384):
    """One bounded walk; returns (examined, dropped, kept, resume_after_id or
    None when the walk reached the end). ``kept``: copies we no longer
    replicate that stay because a replica did not confirm yet (a new holder
    still pulling, or one that did not answer): worth another walk soon."""
    if not len(view):
        # Nobody alive in our view (every node stopping, or this one cut
        # off): no holder to ask, so every copy stays; nothing to report.
        return 0, 0, 0, None
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
        stamps = dict(zip(foreign, await store.stamps_of(list(foreign))))
        foreign = {c: h for c, h in foreign.items() if stamps[c] is not None}
        confirmed = await _confirmed(foreign, pool, timeout_s)
        protected = await _protected({c: foreign[c] for c in confirmed}, stamps, pool, timeout_s)
        for chunk_id in protected:
            if await store.delete_below(chunk_id, stamps[chunk_id] + 1) == "deleted":
                dropped += 1
        kept = len(foreign) - dropped
        log.info(kv("handoff.pass", node=name, examined=examined, foreign=len(foreign),
                    dropped=dropped, kept=kept))
    return examined, dropped, kept, cursor


async def _protected(confirmed: dict[bytes, tuple[str, ...]], stamps: dict[bytes, int | None],
                     pool, timeout_s: float) -> list[bytes]:
    """The ids whose every replica raised its copy to our copy's stamp."""
    raised: dict[bytes, int] = collections.Counter()
    slots = trio.Semaphore(RAISES_IN_FLIGHT_MAX)

    async def one(holder: str, chunk_id: bytes) -> None:
        try:
            with trio.fail_after(timeout_s):
                cap = await pool.bootstrap(holder, store_capnp.ChunkStore, timeout_s=timeout_s)
                stamp = await RemoteStore(cap, holder, timeout_s=timeout_s).raise_stamp(
                    chunk_id, stamps[chunk_id])
        except (rpc.RpcError, RemoteStoreError, trio.TooSlowError):
            return  # unconfirmed: our copy stays
        finally:
            slots.release()
        raised[chunk_id] += stamp is not None

    async with trio.open_nursery() as nursery:
        for chunk_id, holders in confirmed.items():
            for holder in holders:
                await slots.acquire()  # bounded tasks, not only bounded calls
                nursery.start_soon(one, holder, chunk_id)
    return [c for c, holders in confirmed.items() if raised[c] == len(holders)]


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
