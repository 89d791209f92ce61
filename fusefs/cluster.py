"""The cluster backend: ``fusefs.backend.Backend`` over RPC to a chordfs
cluster.

- Metadata changes are Raft proposals and reads are linearizable queries,
  both sent to the node believed to lead (``fusefs.clustermeta``: leader
  following, retries with backoff until ``call_deadline_s``, then
  ``Unavailable`` → EIO; how an uncertain proposal is retried is described
  there).
- Chunks go through ``server.store.replication.ReplicatedStore`` on a ring
  view of the configured nodes: a put returns after the cluster's
  ``write_quorum_min`` fsynced copies (busy replicas retried, full ones
  skipped, missing copies left to repair and counted), with the lowest
  stamp of its copies; a get asks the owner, hedging to the successors when
  it is slow (module docstring there).

Durability and ``sync``: a proposal returns only once it is committed
(written and fsynced on a quorum) and applied, and a chunk put once W_min
replicas fsynced it, so everything acknowledged already survives the crash
of any minority; ``sync`` has nothing left to do.

``has_chunks`` always answers "not stored": ``ReplicatedStore.put`` asks
every replica ``has`` before sending the bytes of a large chunk, so asking
first would only add a round trip per chunk and could not tell whether W
copies exist anyway.

Ring view: first the node list given at mount time (every node also stores
chunks); then, every ``ring_refresh_s``, the alive and suspect members one
node reports through ``RingPeer.members`` (the leader first, then the others
in turn), plus the mount-time nodes it does not report dead or gone (a node
whose ring has not converged yet may know only itself). A node that does
not serve RingPeer, or no answer at all, keeps the view as it was:
placement then lags membership, which reads survive (they fall through to
successors) and repair corrects for writes.

One ``rpc.pool.Pool`` per backend, owned by the nursery ``open_cluster``
holds; every call has a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import ssl
from collections.abc import AsyncIterator, Sequence

import trio

import rpc
from rpc.logfmt import kv
from rpc.pool import Pool
from server.meta.types import (MANIFESTS_MAX, READDIR_PAGE_MAX, BytesReply, Command, DirPage,
                               EntryReply, ManifestPage, ManifestPages, NamesReply, Result,
                               StatFs)
from rpc.schema import load as load_schema
from server.raft.wire import raft_capnp
from server.ring.ringmath import VIRTUAL_IDS_DEFAULT, Ring
from server.store.errors import StoreError
from server.store.replication import (ChunkUnavailable, ReplicatedStore,
                                      WriteQuorumNotMet)
from server.store.service import RemoteStore, store_capnp

from .backend import Backend, BackendError, ChunkCorrupt, ChunkMissing, FsStat, Unavailable
from .clustermeta import MetaClient

log = logging.getLogger("chordfs.fuse.cluster")

PUTS_IN_FLIGHT_MAX = 8
ROOT_INO = 1
FIRST_ANSWER_S = 4.0  # a mount's first metadata answer, or it says why not
ring_capnp = load_schema("ring")
# Members that still own their ranges (a suspect may be alive: SWIM).
PLACED_STATUSES = frozenset(("alive", "suspect"))


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """``nodes``: the cluster's node names, which are their ``host:port``."""

    nodes: tuple[str, ...]
    call_deadline_s: float = 15.0
    attempt_timeout_s: float = 5.0
    connect_timeout_s: float = 1.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    replicas: int = 3
    write_acks: int | None = None  # None: every live replica, at least 2
    chunk_timeout_s: float = 10.0
    ssl_context: ssl.SSLContext | None = None  # the mount's client certificate (None: plain TCP)
    chunk_deadline_s: float = 30.0
    ring_refresh_s: float = 5.0  # 0: keep the mount-time node list
    # Until the cluster's committed settings are read (refresh_map), which
    # then replace these two and the write quorum floor.
    virtual_ids: int = VIRTUAL_IDS_DEFAULT

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ValueError("no cluster nodes given")
        for name in self.nodes:
            host, _, port = name.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"node address {name!r} is not host:port")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("a node address is given twice")
        if self.ring_refresh_s < 0 or self.virtual_ids < 1:
            raise ValueError("ring_refresh_s must not be negative, virtual_ids at least 1")
        if min(self.call_deadline_s, self.attempt_timeout_s, self.connect_timeout_s,
               self.chunk_timeout_s, self.chunk_deadline_s) <= 0:
            raise ValueError("deadlines and timeouts must be positive")


def placed_members(reported: Sequence[tuple[str, str]], configured: Sequence[str]) -> list[str]:
    """The ring view from one node's member list: the members it holds alive
    or suspect, plus every node we were given at mount time that it does not
    report dead or gone. A node whose ring has not converged yet (just
    started) knows few members, maybe only itself; taking its list as it is
    would put every chunk on that one node."""
    status = dict(reported)
    names = {name for name, st in reported if st in PLACED_STATUSES}
    names.update(n for n in configured if status.get(n, "alive") in PLACED_STATUSES)
    return sorted(names)


def storable_bytes(node_bytes: Sequence[int], copies: int) -> int:
    """How many bytes fit when each is stored on ``copies`` distinct nodes
    holding ``node_bytes`` each: the largest S with sum(min(b, S)) >= copies*S.
    With the nodes sorted largest first that is the minimum over j < copies
    of (sum of all but the j largest) / (copies - j); on equal nodes it is
    sum / copies, and 0 when fewer than ``copies`` nodes have any room."""
    assert copies >= 1 and all(b >= 0 for b in node_bytes), (copies, node_bytes)
    ordered = sorted(node_bytes, reverse=True)
    if len(ordered) < copies:
        return 0
    return min(sum(ordered[j:]) // (copies - j) for j in range(copies))


def parse_nodes(text: str) -> tuple[str, ...]:
    """``host:port,host:port`` → names; ValueError with one sentence."""
    nodes = tuple(part.strip() for part in text.split(",") if part.strip())
    ClusterConfig(nodes)  # validates
    return nodes


class ClusterBackend(Backend):
    def __init__(self, cfg: ClusterConfig, nursery: trio.Nursery) -> None:
        self.cfg = cfg
        self.pool = Pool(nursery, connect_timeout_s=cfg.connect_timeout_s,
                         backoff_initial_s=cfg.backoff_initial_s,
                         backoff_max_s=cfg.backoff_max_s, ssl_context=cfg.ssl_context)
        self.meta = MetaClient(self.pool, cfg.nodes, deadline_s=cfg.call_deadline_s,
                               attempt_timeout_s=cfg.attempt_timeout_s,
                               backoff_initial_s=cfg.backoff_initial_s,
                               backoff_max_s=cfg.backoff_max_s)
        self.ring = Ring(cfg.nodes, cfg.virtual_ids)
        self.virtual_ids = cfg.virtual_ids
        self.map_epoch = 0  # index of the committed configuration the settings came from
        self.chunks = ReplicatedStore(
            self.pool, lambda: self.ring, lambda name: name,
            R=cfg.replicas, W=cfg.write_acks,
            timeout_s=cfg.chunk_timeout_s, repair_nursery=nursery)
        self._put_slots = trio.Semaphore(PUTS_IN_FLIGHT_MAX)

    # ------------------------------------------------------------ metadata

    async def submit(self, command: Command) -> Result:
        return await self.meta.submit(command)

    async def lookup(self, parent: int, name: bytes) -> EntryReply:
        return await self.meta.lookup(parent, name)

    async def getattr(self, ino: int) -> EntryReply:
        def fill(q):
            q.init("getattr").ino = ino
        return await self.meta.query("getattr", EntryReply, fill)

    async def readdir(self, ino: int, cursor: bytes = b"", limit: int = READDIR_PAGE_MAX,
                      plus: bool = False) -> DirPage:
        def fill(q):
            g = q.init("readdir")
            g.dirIno, g.cursor, g.limit, g.plus = ino, cursor, limit, plus
        return await self.meta.query("readdir", DirPage, fill)

    async def readlink(self, ino: int) -> BytesReply:
        def fill(q):
            q.init("readlink").linkIno = ino
        return await self.meta.query("readlink", BytesReply, fill)

    async def getxattr(self, ino: int, name: bytes) -> BytesReply:
        def fill(q):
            g = q.init("getxattr")
            g.xattrIno, g.xattrName = ino, name
        return await self.meta.query("getxattr", BytesReply, fill)

    async def listxattr(self, ino: int) -> NamesReply:
        def fill(q):
            q.init("listxattr").listIno = ino
        return await self.meta.query("listxattr", NamesReply, fill)

    async def manifest(self, ino: int, start: int = 0,
                       limit: int | None = None) -> ManifestPage:
        def fill(q):
            g = q.init("manifest")
            g.fileIno, g.startOff, g.pageLimit = ino, start, limit or 0
        return await self.meta.query("manifest", ManifestPage, fill)

    async def manifests(self, inos: Sequence[int]) -> list[ManifestPage]:
        """The first layout page of each of a prefix of ``inos`` (at least
        one; server/meta/types.ManifestPages): one query for many files."""
        inos = list(inos)[:MANIFESTS_MAX]

        def fill(q):
            g = q.init("manifests").init("manifestInos", len(inos))
            for i, ino in enumerate(inos):
                g[i] = ino
        reply = await self.meta.query("manifests", ManifestPages, fill)
        return reply.pages[:len(inos)]

    async def statfs(self) -> FsStat:
        """Space as a user sees it: every byte is stored R times on R
        distinct nodes, so total and free are what one more file of R copies
        could still take: ``storable_bytes`` of the nodes' capacities
        (chunk bytes held + free above the reserve) and of their free bytes.
        On nodes with equal space that is the sum over the nodes divided by
        R; on unequal nodes it is less (the largest node cannot hold two
        copies of one chunk). df's "used" (total - free) therefore counts
        every copy, divided by R. Nodes that do not answer in time are left
        out (and R is capped by the number that did); a node with less than a chunk free is logged and skipped for
        new placements (``ReplicatedStore.mark_full``). ``used_bytes`` is
        the metadata's sum of file sizes."""
        def fill(q):
            q.statfs = None
        meta = await self.meta.query("statfs", StatFs, fill)
        spaces = await self._store_space()
        # Capped by the nodes that answered: one that is down for a moment
        # would otherwise make the whole filesystem look full.
        copies = max(1, min(self.chunks.R, len(spaces)))
        return FsStat(inodes=meta.inodes, used_bytes=meta.bytes,
                      total_bytes=storable_bytes([used + free for used, free in spaces.values()], copies),
                      free_bytes=storable_bytes([free for _, free in spaces.values()], copies),
                      name_bytes_max=meta.name_bytes_max)

    async def _store_space(self) -> dict[str, tuple[int, int]]:
        """node -> (chunk bytes held, bytes free above its reserve), for the
        ring's chunk stores that answer in time; a full one is logged and
        marked full for placement."""
        spaces: dict[str, tuple[int, int]] = {}

        async def one(addr: str) -> None:
            with trio.move_on_after(self.cfg.attempt_timeout_s):
                try:
                    cap = await self.pool.bootstrap(addr, store_capnp.ChunkStore,
                                                    timeout_s=self.cfg.attempt_timeout_s)
                    stats = await RemoteStore(cap, addr, timeout_s=self.cfg.attempt_timeout_s).stats()
                except (rpc.RpcError, StoreError) as exc:
                    log.info(kv("cluster.stats_failed", node=addr, kind=type(exc).__name__))
                    return
                free = max(0, stats["freeBytes"] - stats["reserveBytes"])
                spaces[addr] = (stats["usedBytes"], free)
                if free < max(1, stats["chunkBytesMax"]):
                    log.warning(kv("cluster.node_full", node=addr, free_bytes=free,
                                   reserve_bytes=stats["reserveBytes"]))
                    self.chunks.mark_full(addr)

        async with trio.open_nursery() as nursery:
            for addr in sorted(self.ring.names):
                nursery.start_soon(one, addr)
        return spaces

    # ------------------------------------------------------------ ring view

    async def refresh_ring_forever(self) -> None:
        while True:
            await trio.sleep(self.cfg.ring_refresh_s)
            await self.refresh_map()
            await self.refresh_ring()

    def _sources(self) -> list[str]:
        leader = self.meta.leader
        return ([leader] if leader else []) + [n for n in self.cfg.nodes if n != leader]

    async def refresh_map(self) -> bool:
        """Take the placement settings (virtual ids, replication factor,
        write quorum) from the committed cluster configuration, as the nodes
        do: a mount must place chunks where the nodes repair and collect
        them.  Checked again whenever the ring is refreshed; the settings
        change only with the configuration's index (the map epoch)."""
        timeout_s = self.cfg.attempt_timeout_s
        for addr in self._sources():
            try:
                with trio.fail_after(timeout_s):
                    cap = await self.pool.bootstrap(addr, raft_capnp.Raft, timeout_s=timeout_s)
                    st = await cap.status(timeout_s=timeout_s)
            except (rpc.RpcError, trio.TooSlowError) as exc:
                log.debug(kv("cluster.map_failed", node=addr, kind=type(exc).__name__))
                continue
            params = dict(zip(st.paramKeys, st.paramValues))
            if not params or st.configIndex <= self.map_epoch:
                return bool(params)
            self._take_map(st.configIndex, params, addr)
            return True
        return False

    def _take_map(self, epoch: int, params: dict, source: str) -> None:
        vids = params.get("virtual_ids_per_node", self.virtual_ids)
        replicas = params.get("replication_factor", self.chunks.R)
        quorum = params.get("write_quorum_min", self.chunks.W_min)
        if (vids, replicas, quorum) != (self.virtual_ids, self.chunks.R, self.chunks.W_min):
            log.info(kv("cluster.map", source=source, epoch=epoch, virtual_ids=vids,
                        replicas=replicas, write_quorum_min=quorum))
        if vids != self.virtual_ids:
            self.virtual_ids = vids
            self.ring = Ring(self.ring.names, vids)
        self.chunks.R, self.chunks.W_min = replicas, quorum
        self.map_epoch = epoch

    async def refresh_ring(self) -> bool:
        """Take the placed members one node reports as the ring view; False
        (view unchanged) when no node answered with any."""
        timeout_s = self.cfg.attempt_timeout_s
        for addr in self._sources():
            try:
                with trio.fail_after(timeout_s):
                    cap = await self.pool.bootstrap(addr, ring_capnp.RingPeer, timeout_s=timeout_s)
                    reply = await cap.members(timeout_s=timeout_s)
                names = placed_members([(str(u.name), str(u.status)) for u in reply.members],
                                       self.cfg.nodes)
            except (rpc.RpcError, trio.TooSlowError) as exc:
                log.debug(kv("cluster.ring_members_failed", node=addr, kind=type(exc).__name__))
                continue
            if not names:
                continue
            ring = Ring(names, self.virtual_ids)
            if ring != self.ring:
                log.info(kv("cluster.ring_view", source=addr, members=",".join(names)))
                self.ring = ring
            return True
        return False

    # ------------------------------------------------------------ chunks

    async def put_chunks(self, chunks: Sequence[tuple[bytes, bytes]], after_index: int = 0) -> int:
        """Store the chunks (each on at least the write quorum; missing
        copies are left to repair and counted in ``data_path_stats``) and
        return the lowest stamp over every acked copy of every chunk: the
        ``observed`` index a commit of these chunks may claim
        (../shared spec "Stamps"); ``after_index`` when ``chunks`` is empty."""
        errors: list[BackendError] = []
        stamps: list[int] = []
        try:
            with trio.fail_after(self.cfg.chunk_deadline_s):
                async with trio.open_nursery() as nursery:
                    for chunk_id, data in chunks:
                        await self._put_slots.acquire()
                        nursery.start_soon(self._put_one, chunk_id, data, after_index, stamps, errors)
        except trio.TooSlowError:
            raise Unavailable(f"chunk upload took over {self.cfg.chunk_deadline_s:g}s") from None
        if errors:
            raise errors[0]
        return min(stamps, default=after_index)

    async def _put_one(self, chunk_id: bytes, data: bytes, after_index: int,
                       stamps: list[int], errors: list) -> None:
        # Errors are collected, not raised: one failed chunk must not turn
        # into an exception group the FUSE layer would not recognise.
        try:
            result = await self.chunks.put(chunk_id, data, after_index)
        except WriteQuorumNotMet as exc:
            errors.append(Unavailable(str(exc)))
            return
        except StoreError as exc:
            errors.append(BackendError(str(exc)))
            return
        finally:
            self._put_slots.release()
        stamps.append(result.stamp)
        log.debug(kv("cluster.chunk_put", chunk=chunk_id.hex(), acked=len(result.acked),
                     uploaded=len(result.uploaded), stamp=result.stamp))

    async def get_chunk(self, chunk_id: bytes) -> bytes:
        try:
            with trio.fail_after(self.cfg.chunk_deadline_s):
                return await self.chunks.get(chunk_id)
        except trio.TooSlowError:
            raise Unavailable(f"chunk {chunk_id.hex()}: no replica answered in time") from None
        except ChunkUnavailable as exc:
            if exc.errno == errno.ENOENT:
                raise ChunkMissing(str(exc)) from exc
            raise Unavailable(str(exc)) from exc
        except StoreError as exc:
            raise ChunkCorrupt(f"{chunk_id.hex()}: {exc}") from exc

    async def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        return [False] * len(chunk_ids)  # put dedups per replica: module docstring

    async def sync(self) -> None:
        """Nothing to do: acknowledged means durable on a quorum already."""

    def data_path_stats(self) -> dict[str, int]:
        """Counters of the chunk path (retries, redirects, copies left to
        repair, hedged reads...), for the mount to expose."""
        return dataclasses.asdict(self.chunks.stats)

    async def aclose(self) -> None:
        log.info(kv("cluster.data_path", **self.data_path_stats()))
        self.pool.close()


async def _first_answer(backend, cfg: ClusterConfig) -> EntryReply:
    """The root's attributes. When no node even takes a connection (a wrong
    port, a stopped cluster) the mount says so after FIRST_ANSWER_S instead
    of the whole call deadline; a cluster that answers but is still electing
    gets the whole deadline."""
    def fill(q):
        q.init("getattr").ino = ROOT_INO
    try:
        return await backend.meta.query("getattr", EntryReply, fill,
                                        deadline_s=min(cfg.call_deadline_s, FIRST_ANSWER_S))
    except Unavailable:
        if not await _any_reachable(backend, cfg):
            raise
    return await backend.meta.query("getattr", EntryReply, fill)


async def _any_reachable(backend, cfg: ClusterConfig) -> bool:
    for addr in cfg.nodes:
        try:
            await backend.pool.bootstrap(addr, raft_capnp.Raft, timeout_s=cfg.connect_timeout_s)
            return True
        except rpc.RpcError:
            continue
    return False


@contextlib.asynccontextmanager
async def open_cluster(cfg: ClusterConfig, *, check: bool = True) -> AsyncIterator[ClusterBackend]:
    """A backend whose pool lives in a nursery of its own; with ``check``,
    the root directory must answer first (a mount of a cluster that cannot
    be reached fails at once instead of serving EIO)."""
    async with trio.open_nursery() as nursery:
        backend = ClusterBackend(cfg, nursery)
        try:
            if check:
                root = await _first_answer(backend, cfg)
                if root.err:
                    raise BackendError(f"the cluster has no root directory (errno {root.err})")
            await backend.refresh_map()
            if cfg.ring_refresh_s > 0:
                from_ring = await backend.refresh_ring()
                nursery.start_soon(backend.refresh_ring_forever)
            else:
                from_ring = False
            log.info(kv("cluster_backend_open", nodes=",".join(cfg.nodes),
                        leader=backend.meta.leader, ring_from_members=from_ring))
            yield backend
        finally:
            await backend.aclose()
            nursery.cancel_scope.cancel()
