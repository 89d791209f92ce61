"""Sends Raft messages to peers over RPC (Raft.step), one sender per peer.

``send`` never blocks the driver: messages go into a bounded per-peer queue
and a full queue drops the newest (Raft tolerates loss: heartbeats and
retries recover).  Each peer's sender takes everything queued, up to a batch
limit, and delivers it in one call with a deadline; while that call is in
flight, new messages accumulate into the next batch, which is what makes
AppendEntries pipelining cheap.  A failed call drops its batch and waits a
short backoff before the next, so a dead peer costs one timeout per backoff
period rather than one per message.  A batch is also bounded in bytes, so it
fits the peer's frame limit; a snapshot larger than a part goes as parts
(``snapparts``), one call each."""

import collections
import logging

import trio

import rpc
from rpc import trace
from rpc.logfmt import kv

from . import wire
from .messages import AppendEntries, InstallSnapshot, SnapshotFile
from .snapparts import PART_BYTES, parts


def _wire_bytes(m) -> int:
    """A generous estimate of a message's size on the wire."""
    kind = type(m)
    if kind is AppendEntries:
        return 96 + sum(32 + len(e.data) for e in m.entries)
    if kind is InstallSnapshot:
        return 96 + len(m.snapshot.data)
    return 96

log = logging.getLogger("chordfs.raft")


class _Peer:
    def __init__(self, addr: str):
        self.addr = addr
        self.queue: collections.deque = collections.deque()
        self.wake = trio.Event()
        self.dropped = 0
        self.failures = 0


class RaftTransport:
    def __init__(self, pool, addrs: dict[int, str], *, self_id: int, on_report=None, resolve=None,
                 queue_messages_max: int = 4096, batch_messages_max: int = 256,
                 batch_bytes_max: int = 4 << 20, part_bytes: int = PART_BYTES,
                 call_timeout_s: float = 2.0, backoff_s: float = 0.05):
        self._pool = pool
        self._addrs = dict(addrs)
        self._self_id = self_id
        self._peers: dict[int, _Peer] = {}
        self._queue_max = queue_messages_max
        self._batch_max = batch_messages_max
        self._batch_bytes_max = batch_bytes_max
        self._part_bytes = part_bytes
        self._timeout_s = call_timeout_s
        self._backoff_s = backoff_s
        self._nursery = None
        # Stamped on every step call; receivers refuse another cluster's
        # traffic ("" until a joining node has been admitted).
        self.cluster_id = ""
        self.self_addr = ""  # stamped too: where peers answer us
        # Members added after start (learners) are found by id through the
        # node's member list: names are addresses and ids are their hashes.
        self._resolve = resolve or (lambda node_id: None)
        # on_report(kind, node_id, ok): "unreachable" after a failed send,
        # "snapshot" once a batch holding an InstallSnapshot was (not)
        # delivered -- the core needs both to leave probe/snapshot states.
        self._on_report = on_report or (lambda kind, node_id, ok: None)
        # Messages that came back in an exchange's answer (see _step).
        self._on_answers = lambda messages: None
        self._no_exchange: set = set()  # capabilities of peers without it
        self.answers_received = 0  # messages that came back in exchange replies

    def on_report(self, callback) -> None:
        self._on_report = callback

    def on_answers(self, callback) -> None:
        self._on_answers = callback

    def set_address(self, node_id: int, addr: str) -> None:
        self._addrs[node_id] = addr
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.addr = addr

    def learn_address(self, node_id: int, addr: str) -> None:
        """Where a peer that wrote to us serves, for ids no configuration
        we hold names yet; never overrides a known address."""
        if node_id != self._self_id and node_id not in self._addrs and self._resolve(node_id) is None:
            self.set_address(node_id, addr)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def send(self, messages) -> None:
        for m in messages:
            peer = self._peers.get(m.to)
            if peer is None:
                addr = self._addrs.get(m.to) or self._resolve(m.to)
                if addr is None or m.to == self._self_id:
                    log.debug(kv("raft.no_route", to=m.to))
                    continue
                peer = self._peers[m.to] = _Peer(addr)
                self._nursery.start_soon(self._sender, m.to, peer)
            if len(peer.queue) >= self._queue_max:
                peer.dropped += 1
                continue
            peer.queue.append(m)
            peer.wake.set()

    async def _sender(self, node_id: int, peer: _Peer) -> None:
        while True:
            await peer.wake.wait()
            peer.wake = trio.Event()
            while peer.queue:
                batch = [peer.queue.popleft()]
                size = _wire_bytes(batch[0])
                while peer.queue and len(batch) < self._batch_max:
                    size += _wire_bytes(peer.queue[0])
                    if size > self._batch_bytes_max:
                        break
                    batch.append(peer.queue.popleft())
                if not await self._deliver(node_id, peer, batch):
                    await trio.sleep(self._backoff_s * min(8, 1 + peer.failures))

    async def _deliver(self, node_id: int, peer: _Peer, batch) -> bool:
        has_snapshot = any(type(m) is InstallSnapshot for m in batch)
        try:
            cap = await self._pool.bootstrap(peer.addr, wire.raft_capnp.Raft, timeout_s=self._timeout_s)
            pending = []
            for m in batch:
                if type(m) is InstallSnapshot and (isinstance(m.snapshot.data, SnapshotFile)
                                                   or len(m.snapshot.data) > self._part_bytes):
                    if pending:
                        await self._step(cap, pending)
                        pending = []
                    await self._send_parts(cap, node_id, m)
                else:
                    pending.append(m)
            if pending:
                await self._step(cap, pending)
        except (rpc.RpcError, OSError) as e:
            # OSError: the snapshot file was replaced by a newer one before
            # its transfer opened it; the core sends the newer one.
            self._on_report("unreachable", node_id, False)
            if has_snapshot:
                self._on_report("snapshot", node_id, False)
            peer.failures += 1
            if peer.failures in (1, 10) or peer.failures % 100 == 0:
                log.info(kv("raft.send_failed", to=node_id, addr=peer.addr, dropped=len(batch),
                            failures=peer.failures, error=str(e)[:200]))
            return False
        if has_snapshot:
            self._on_report("snapshot", node_id, True)
        peer.failures = 0
        return True

    async def _step(self, cap, messages, exchange: bool = False) -> None:
        """One call. Appends go as an exchange: the follower answers them
        (after its fsync) in the reply, which saves it a call of its own
        per commit and the leader that call's handling; everything else,
        and peers that do not know exchange, as a plain step."""
        def fill(p):
            wire.fill_batch(p, messages)
            p.clusterId, p.fromAddr = self.cluster_id, self.self_addr
        if trace.ENABLED:
            trace.mark(f"raft.send {' '.join(type(m).__name__ for m in messages)}")
        if exchange or (cap not in self._no_exchange
                        and any(type(m) is AppendEntries for m in messages)):
            try:
                reply = await cap.call("exchange", fill=fill, timeout_s=self._timeout_s)
            except rpc.Unimplemented:
                if exchange:  # snapshot parts are joined on disk, by exchange only
                    raise
                self._no_exchange.add(cap)
            else:
                answers = [wire.message_from(r) for r in reply.answers]
                if answers:
                    self.answers_received += len(answers)
                    if trace.ENABLED:
                        trace.mark(f"raft.answers {' '.join(type(m).__name__ for m in answers)}")
                    self._on_answers(answers)
                return
        await cap.call("step", fill=fill, timeout_s=self._timeout_s)

    async def _send_parts(self, cap, node_id: int, m: InstallSnapshot) -> None:
        started = trio.current_time()
        sent = 0
        async for part in parts(m, self._part_bytes):
            await self._step(cap, [part], exchange=True)
            sent += 1
        log.info(kv("raft.snapshot_sent", node=self._self_id, term=m.term, to=node_id,
                    index=m.snapshot.meta.index, bytes=len(m.snapshot.data), parts=sent,
                    took_s=round(trio.current_time() - started, 3)))
