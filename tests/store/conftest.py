"""Shared helpers for chunk store tests: deterministic chunk bytes and stores
with a fake statvfs so space limits are tested without filling a disk."""

from __future__ import annotations

import os
import random
import types

import pytest
import trio.testing

from server.store import ChunkStore, chunk_id_of

GIB = 1 << 30


def chunk_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def make_chunk(seed: int, size: int = 1000) -> tuple[bytes, bytes]:
    data = chunk_bytes(seed, size)
    return chunk_id_of(data), data


class FakeDisk:
    """A statvfs stand-in whose free space the test sets."""

    def __init__(self, free_bytes: int = 100 * GIB) -> None:
        self.free_bytes = free_bytes

    def __call__(self, path: str) -> types.SimpleNamespace:
        assert os.path.isdir(path)
        return types.SimpleNamespace(f_bavail=self.free_bytes // 4096, f_frsize=4096)


@pytest.fixture
def disk() -> FakeDisk:
    return FakeDisk()


@pytest.fixture
def open_store(tmp_path, disk):
    """Factory: (re)open a store on the same directory, closing the previous
    one as a restarted process would; fsync stays on because durability
    order is part of what is tested."""
    opened: list[ChunkStore] = []

    def opener(**options) -> ChunkStore:
        options.setdefault("statvfs", disk)
        for previous in opened:
            previous.close()
        opened.append(ChunkStore(tmp_path / "node", **options))
        return opened[-1]

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store) -> ChunkStore:
    return open_store()


@pytest.fixture
def patient_clock():
    """Virtual time that jumps only after 0.5 s of real idleness: stores
    work in threads, and a clock that jumps the moment every task waits
    would fire RPC deadlines while a thread is busy on the disk."""
    return trio.testing.MockClock(autojump_threshold=0.5)


@pytest.fixture
async def cluster(nursery, tmp_path):
    """A 5-node in-memory chunk store cluster (memcluster.py)."""
    from .memcluster import open_cluster

    c = await open_cluster(nursery, tmp_path)
    yield c
    c.close()
