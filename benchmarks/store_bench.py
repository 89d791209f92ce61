"""Replicated chunk store throughput: put/get MB/s with R=3 across local
server processes, and anti-entropy repair throughput.

Starts ``--servers`` chunk store servers as separate processes on
127.0.0.1 (each its own store under a temp dir, fsync on), then from this
process:
- put: ReplicatedStore.put of distinct random chunks (1 MiB and 4 MiB),
  ``--concurrency`` puts in flight, each acknowledged after all 3 replicas
  fsynced; MB/s counts client payload (the wire carries 3x that);
- get: ReplicatedStore.get of the same chunks (owner's page cache, verified
  on both ends);
- repair: an empty in-process node joins the ring and runs one RepairPass,
  pulling every chunk it now replicates from the servers (unthrottled);
- baseline: the same chunks put into 3 local AsyncChunkStores in this
  process with no RPC: what the disk allows for 3 fsynced copies, since
  all servers share this machine's disk.
``--no-fsync`` turns fsync off in the servers (and the baseline) to show the
ceiling of the RPC and replication path itself.

Usage: python benchmarks/store_bench.py [--servers 3] [--total-mib 128]
       [--concurrency 8] [--no-fsync] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import trio

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import rpc  # noqa: E402
from rpc.pool import Pool  # noqa: E402
from server.ring.ringmath import Ring  # noqa: E402
from server.store import AsyncChunkStore, chunk_id_of  # noqa: E402
from server.store.repair import RepairPass  # noqa: E402
from server.store.replication import ReplicatedStore  # noqa: E402
from server.store.service import StoreService  # noqa: E402

MIB = 1 << 20


async def serve(data_dir: str, fsync: bool) -> None:
    """Server process body: print the port, serve until killed."""
    astore = await AsyncChunkStore.open(data_dir, chunk_bytes_max=8 * MIB, fsync_enabled=fsync)
    service = StoreService(astore)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(rpc.serve_tcp, service.server, 0)
        print("READY", listeners[0].socket.getsockname()[1], flush=True)


def start_servers(root: str, count: int, fsync: bool) -> tuple[list[subprocess.Popen], list[str]]:
    procs, addrs = [], []
    for i in range(count):
        extra = [] if fsync else ["--no-fsync"]
        proc = subprocess.Popen([sys.executable, __file__, "--serve", os.path.join(root, f"s{i}"), *extra],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise SystemExit("a server did not start")
        procs.append(proc)
        addrs.append(f"127.0.0.1:{line[1]}")
    return procs, addrs


def make_chunks(size: int, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(count):
        data = os.urandom(size)
        out.append((chunk_id_of(data), data))
    return out


async def run_all(chunks, concurrency: int, fn) -> float:
    limiter = trio.CapacityLimiter(concurrency)
    started = time.perf_counter()

    async def one(cid, data):
        async with limiter:
            await fn(cid, data)

    async with trio.open_nursery() as nursery:
        for cid, data in chunks:
            nursery.start_soon(one, cid, data)
    return time.perf_counter() - started


def mbps(total_bytes: int, seconds: float) -> str:
    return f"{total_bytes / 1e6 / seconds:8.1f} MB/s"


async def bench_size(root, addrs, size, args, nursery) -> None:
    count = max(4, args.total_mib * MIB // size)
    chunks = make_chunks(size, count)
    total = size * count
    pool = Pool(nursery)
    ring = Ring(addrs, virtual_ids=64)
    rs = ReplicatedStore(pool, ring, lambda n: n, R=3, timeout_s=60)
    put_s = await run_all(chunks, args.concurrency, rs.put)

    async def get(cid, data):
        assert await rs.get(cid) == data

    get_s = await run_all(chunks, args.concurrency, get)
    base_s = await local_baseline(root, size, chunks, args)
    label = f"{size // MIB} MiB x {count}"
    print(f"{label:14} put R=3 {mbps(total, put_s)}   get {mbps(total, get_s)}   "
          f"(baseline, 3 local stores, no RPC: put {mbps(total, base_s)})")

    joiner = await AsyncChunkStore.open(os.path.join(root, f"join{size}"), chunk_bytes_max=8 * MIB,
                                        fsync_enabled=not args.no_fsync)
    grown = Ring([*addrs, "joiner"], virtual_ids=64)
    repair = RepairPass(joiner, "joiner", grown, pool, lambda n: n, R=3, bytes_per_s=1e12,
                        timeout_s=60, copies_in_flight_max=args.concurrency)
    started = time.perf_counter()
    report = await repair.run()
    repair_s = time.perf_counter() - started
    print(f"{'':14} repair: joiner pulled {report.chunks_pulled} chunks (of every size so far), "
          f"{report.bytes_copied / 1e6:.0f} MB in {repair_s:.2f}s = {mbps(report.bytes_copied, repair_s)}"
          f" ({report.summaries_compared} summaries compared)")
    joiner.close()
    pool.close()


async def local_baseline(root, size, chunks, args) -> float:
    stores = [await AsyncChunkStore.open(os.path.join(root, f"local{size}-{i}"), chunk_bytes_max=8 * MIB,
                                         fsync_enabled=not args.no_fsync) for i in range(3)]

    async def put3(cid, data):
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(store.put, cid, data)

    seconds = await run_all(chunks, args.concurrency, put3)
    for store in stores:
        store.close()
    return seconds


async def client(root, addrs, args) -> None:
    async with trio.open_nursery() as nursery:
        for size in (1 * MIB, 4 * MIB):
            await bench_size(root, addrs, size, args, nursery)
        nursery.cancel_scope.cancel()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--servers", type=int, default=3)
    parser.add_argument("--total-mib", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--dir", default=None, help="where the stores live (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.serve:
        try:
            trio.run(serve, args.serve, not args.no_fsync)
        except KeyboardInterrupt:
            pass
        return 0
    root = tempfile.mkdtemp(prefix="chordfs-store-bench-", dir=args.dir)
    procs = []
    try:
        procs, addrs = start_servers(root, args.servers, not args.no_fsync)
        print(f"{args.servers} server processes on 127.0.0.1, fsync {'off' if args.no_fsync else 'on'}, R=3, "
              f"{args.concurrency} operations in flight, {os.cpu_count()} CPUs")
        trio.run(client, root, addrs, args)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
