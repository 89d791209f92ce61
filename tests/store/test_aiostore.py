"""Trio face of the store: thread offload, async streams, cancellation."""

from __future__ import annotations

import os
from contextlib import aclosing

import pytest
import trio

from server.store import AsyncChunkStore, ChunkTooLarge, CorruptChunk, HashMismatch, chunk_id_of

from .conftest import make_chunk


@pytest.fixture
async def astore(tmp_path, disk):
    astore = await AsyncChunkStore.open(tmp_path / "node", statvfs=disk, threads_max=4)
    yield astore
    astore.close()


async def test_async_put_get_has_delete(astore):
    cid, data = make_chunk(1, 3000)
    assert (await astore.put(cid, data)).written
    assert await astore.has(cid)
    assert await astore.get(cid) == data
    assert await astore.size_of(cid) == 3000
    assert await astore.verify(cid) == 3000
    assert (await astore.stats()).chunk_count == 1
    assert await astore.list_ids() == [cid]
    assert await astore.delete(cid)
    assert not await astore.has(cid)


async def test_put_stream_from_an_async_source(astore):
    cid, data = make_chunk(2, 100_000)

    async def frames():
        for i in range(0, len(data), 7000):
            await trio.sleep(0)
            yield data[i:i + 7000]

    assert (await astore.put_stream(cid, frames())).written
    async with aclosing(astore.get_stream(cid, piece_bytes=16384)) as pieces:
        got = [p async for p in pieces]
    assert b"".join(got) == data and max(map(len, got)) == 16384


async def test_twenty_mib_chunk_streams_in_bounded_pieces(tmp_path):
    astore = await AsyncChunkStore.open(tmp_path / "big", chunk_bytes_max=32 << 20)
    data = bytes(range(256)) * (20 * 4096)
    cid = chunk_id_of(data)
    assert (await astore.put_stream(cid, (data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)))).written
    total = 0
    async with astore.open_reader(cid, piece_bytes=1 << 20) as reader:
        assert reader.size_bytes == len(data)
        while not reader.done:
            piece = await reader.read_piece()
            assert len(piece) <= 1 << 20
            assert piece == data[total:total + len(piece)]
            total += len(piece)
    assert total == len(data)
    with pytest.raises(ChunkTooLarge):
        await astore.put_stream(cid, [data, b"x" * (13 << 20)])
    astore.close()


async def test_cancelled_stream_put_leaves_no_temp_file(astore):
    cid, data = make_chunk(3, 50_000)
    tmp_dir = os.path.join(astore.store.data_dir, "tmp")

    with trio.CancelScope() as scope:

        async def stalls():
            yield data[:1000]
            assert os.listdir(tmp_dir) != []  # the partial write exists meanwhile
            scope.cancel()  # as if the sending peer's call were cancelled
            await trio.sleep_forever()

        await astore.put_stream(cid, stalls())
    assert scope.cancelled_caught
    assert os.listdir(tmp_dir) == []
    assert not await astore.has(cid)


async def test_async_errors_are_the_store_errors(astore):
    cid, data = make_chunk(4)
    with pytest.raises(HashMismatch):
        await astore.put(cid, data + b"!")
    await astore.put(cid, data)
    with open(astore.store.chunk_path(cid), "r+b") as f:
        f.write(b"\x00\x00")
    with pytest.raises(CorruptChunk):
        await astore.get(cid)


async def test_concurrent_puts_of_the_same_chunk_store_it_once(astore):
    cid, data = make_chunk(5, 200_000)
    results = []

    async def one():
        results.append((await astore.put_stream(cid, [data[:100_000], data[100_000:]])).written)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    assert sorted(results) == [False] * 7 + [True]
    assert (astore.store.chunk_count, astore.store.used_bytes) == (1, 200_000)
