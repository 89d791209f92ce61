"""In-memory chunk store cluster for replication and repair tests: one
StoreService per node name, reached through a pool stand-in that opens
rpc Connections over trio memory streams and can take nodes down."""

from __future__ import annotations

import trio
import trio.testing

import rpc
from server.ring.ringmath import Ring
from server.store import AsyncChunkStore
from server.store.service import ChunkStoreServer, StoreService


class HangingServer(ChunkStoreServer):
    """A replica that accepts calls and never answers them."""

    async def get(self, params, results):
        await trio.sleep_forever()

    async def has(self, params, results):
        await trio.sleep_forever()


class MemPool:
    """rpc.pool.Pool's ``bootstrap`` over memory streams."""

    def __init__(self, nursery, factories: dict):
        self._nursery = nursery
        self.factories = factories  # addr -> bootstrap factory
        self.down: set[str] = set()
        self._conns: dict[str, tuple] = {}

    async def bootstrap(self, addr, interface, *, timeout_s=None):
        if addr in self.down:
            raise rpc.ConnectionLost(f"cannot connect to {addr}: refused")
        pair = self._conns.get(addr)
        if pair is None or pair[0].is_closed:
            left, right = trio.testing.memory_stream_pair()
            client = rpc.Connection(left, peer=addr)
            server = rpc.Connection(right, bootstrap=self.factories[addr](), peer="client")
            await self._nursery.start(server.run)
            await self._nursery.start(client.run)
            pair = self._conns[addr] = (client, server)
        return await pair[0].bootstrap(interface, timeout_s=timeout_s)

    def kill(self, addr: str) -> None:
        self.down.add(addr)
        pair = self._conns.pop(addr, None)
        if pair is not None:
            pair[0].close("killed by test")
            pair[1].close("killed by test")

    def revive(self, addr: str) -> None:
        self.down.discard(addr)


class NamePool:
    """Maintenance dials node names; the memory cluster knows them as addrs."""

    def __init__(self, cluster):
        self.cluster = cluster

    async def bootstrap(self, name, interface, *, timeout_s=None):
        return await self.cluster.pool.bootstrap(self.cluster.addr_of[name], interface,
                                                 timeout_s=timeout_s)


class Cluster:
    def __init__(self, names, stores, services, pool):
        self.names = names
        self.stores = stores      # name -> AsyncChunkStore
        self.services = services  # name -> StoreService
        self.pool = pool
        self.ring = Ring(names, virtual_ids=16)
        self.addr_of = {n: f"{n}:1" for n in names}

    def kill(self, name):
        self.pool.kill(self.addr_of[name])

    def hang(self, name):
        self.pool.factories[self.addr_of[name]] = lambda: HangingServer(self.services[name])
        self.pool.kill(self.addr_of[name])
        self.pool.revive(self.addr_of[name])

    def holders(self, chunk_id) -> set[str]:
        return {n for n, s in self.stores.items() if s.store.has(chunk_id)}

    def close(self):
        for s in self.stores.values():
            s.close()


async def open_cluster(nursery, tmp_path, count=5, **store_options) -> Cluster:
    names = [f"n{i}" for i in range(count)]
    stores, services, factories = {}, {}, {}
    store_options.setdefault("fsync_enabled", False)
    for name in names:
        stores[name] = await AsyncChunkStore.open(tmp_path / name, **store_options)
        services[name] = StoreService(stores[name])
        factories[f"{name}:1"] = services[name].server
    return Cluster(names, stores, services, MemPool(nursery, factories))
