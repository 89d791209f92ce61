"""Connections keyed by address, reconnected with backoff.

``await pool.get(addr)`` returns a live Connection, sharing one connect
attempt among concurrent callers.  After a failed attempt the address is in
backoff (exponential with jitter, capped): callers get ConnectionLost at once
instead of piling up on a dead node, which is what replica fallback wants.
A connection that dies is dropped; the next ``get`` dials again."""

import logging
import random
import ssl

import trio

from .connection import Connection
from .errors import ConnectionLost
from .interface import Capability
from .limits import Limits
from .logfmt import kv
from .transport import open_tcp_stream

log = logging.getLogger("chordfs.rpc")


class _Entry:
    __slots__ = ("conn", "connecting", "failures", "retry_at", "error", "caps")

    def __init__(self):
        self.conn: Connection | None = None
        self.connecting: trio.Event | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.error = ""
        self.caps: dict[int, Capability] = {}


class Pool:
    def __init__(self, nursery, *, limits: Limits = Limits(), bootstrap=None,
                 ssl_context: ssl.SSLContext | None = None, connect_timeout_s: float = 3.0,
                 backoff_initial_s: float = 0.05, backoff_max_s: float = 5.0,
                 rng: random.Random | None = None):
        self._nursery = nursery
        self._limits = limits
        self._bootstrap = bootstrap
        self._ssl = ssl_context
        self._connect_timeout_s = connect_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._rng = rng or random.Random()
        self._entries: dict[str, _Entry] = {}

    async def get(self, addr: str) -> Connection:
        entry = self._entries.setdefault(addr, _Entry())
        while True:
            if entry.conn is not None and not entry.conn.is_closed:
                return entry.conn
            if entry.connecting is not None:
                await entry.connecting.wait()
                if entry.conn is None:
                    raise ConnectionLost(entry.error)
                continue
            now = trio.current_time()
            if now < entry.retry_at:
                raise ConnectionLost(f"{entry.error} (retrying in {entry.retry_at - now:.2f}s)")
            return await self._dial(addr, entry)

    async def _dial(self, addr: str, entry: _Entry) -> Connection:
        entry.connecting = trio.Event()
        entry.conn, entry.caps = None, {}
        try:
            stream = await open_tcp_stream(addr, ssl_context=self._ssl,
                                           connect_timeout_s=self._connect_timeout_s)
            conn = Connection(stream, bootstrap=self._bootstrap, limits=self._limits, peer=addr)
            await self._nursery.start(self._run, addr, conn)
            entry.conn, entry.failures = conn, 0
            return conn
        except ConnectionLost as e:
            entry.failures += 1
            first, cap = self._backoff
            delay = min(cap, first * 2 ** (entry.failures - 1)) * (0.5 + self._rng.random())
            entry.retry_at = trio.current_time() + delay
            entry.error = str(e)
            log.info(kv("rpc.dial_failed", addr=addr, failures=entry.failures, retry_s=round(delay, 3)))
            raise
        finally:
            entry.connecting.set()
            entry.connecting = None

    async def _run(self, addr: str, conn: Connection, task_status=trio.TASK_STATUS_IGNORED):
        await conn.run(task_status=task_status)
        entry = self._entries.get(addr)
        if entry is not None and entry.conn is conn:
            entry.conn, entry.caps = None, {}

    async def bootstrap(self, addr: str, interface, *, timeout_s: float | None = None) -> Capability:
        """The bootstrap capability of ``addr`` cast to ``interface``, cached
        for the life of the connection."""
        conn = await self.get(addr)
        entry = self._entries[addr]
        key = interface.schema.node.id
        cap = entry.caps.get(key)
        if cap is None or cap.connection is not conn:
            cap = await conn.bootstrap(interface, timeout_s=timeout_s)
            if entry.conn is conn:
                entry.caps[key] = cap
        return cap

    def close(self) -> None:
        for entry in self._entries.values():
            if entry.conn is not None:
                entry.conn.close("pool closed")
        self._entries.clear()
