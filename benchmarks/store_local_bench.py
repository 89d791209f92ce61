"""Local chunk store throughput: put/get MB/s for 1 MiB and 4 MiB chunks.

fsync is on (every put syncs the file and its directory), as in production.
Measured three ways per chunk size:
- sync put / get: one caller, the blocking core;
- async put / get: AsyncChunkStore with ``--concurrency`` trio tasks, which is
  how the node daemon will drive it (fsyncs overlap in worker threads).
Reads come from the page cache (the chunks were just written): they measure
the store's read + verify path, not the disk. The replicated benchmark, with
RPC and three replicas, is a separate script.

Usage: python benchmarks/store_local_bench.py [--dir DIR] [--total-mib N]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from server.store import AsyncChunkStore, ChunkStore, chunk_id_of  # noqa: E402

MIB = 1 << 20


def make_chunks(size_bytes: int, count: int) -> list[tuple[bytes, bytes]]:
    # Distinct random chunks: identical ones would be deduplicated.
    out = []
    for _ in range(count):
        data = os.urandom(size_bytes)
        out.append((chunk_id_of(data), data))
    return out


def rate(total_bytes: int, seconds: float) -> str:
    return f"{total_bytes / MIB / seconds:8.1f} MiB/s"


def bench_sync(root: str, chunks: list[tuple[bytes, bytes]]) -> tuple[float, float]:
    store = ChunkStore(os.path.join(root, "sync"), chunk_bytes_max=4 * MIB)
    started = time.perf_counter()
    for cid, data in chunks:
        store.put(cid, data)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    for cid, data in chunks:
        assert len(store.get(cid)) == len(data)
    get_s = time.perf_counter() - started
    store.close()
    return put_s, get_s


async def bench_async(root: str, chunks: list[tuple[bytes, bytes]], concurrency: int) -> tuple[float, float]:
    store = await AsyncChunkStore.open(
        os.path.join(root, "async"), chunk_bytes_max=4 * MIB, threads_max=concurrency
    )

    async def run_all(op) -> float:
        send, receive = trio.open_memory_channel(len(chunks))
        for item in chunks:
            send.send_nowait(item)
        send.close()

        async def worker() -> None:
            async for cid, data in receive:
                await op(cid, data)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        return time.perf_counter() - started

    async def put(cid: bytes, data: bytes) -> None:
        await store.put(cid, data)

    async def get(cid: bytes, data: bytes) -> None:
        assert len(await store.get(cid)) == len(data)

    put_s, get_s = await run_all(put), await run_all(get)
    store.close()
    return put_s, get_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory on the disk to measure (default: a temp dir)")
    parser.add_argument("--total-mib", type=int, default=256, help="bytes written per case")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="chordfs-store-bench-", dir=args.dir)
    try:
        print(f"chunk store, local disk, fsync on; {args.total_mib} MiB per case; dir {root}")
        for size in (1 * MIB, 4 * MIB):
            chunks = make_chunks(size, max(1, args.total_mib * MIB // size))
            total = size * len(chunks)
            put_s, get_s = bench_sync(root, chunks)
            print(f"{size // MIB} MiB chunks  sync  x1 : put {rate(total, put_s)}   get {rate(total, get_s)}")
            put_s, get_s = trio.run(bench_async, root, chunks, args.concurrency)
            print(f"{size // MIB} MiB chunks  async x{args.concurrency}: "
                  f"put {rate(total, put_s)}   get {rate(total, get_s)}")
            shutil.rmtree(root)
            os.mkdir(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
