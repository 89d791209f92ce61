"""Trio face of the chunk store: every disk call runs in a worker thread.

Disk calls block (fsync of a 4 MiB chunk takes milliseconds), so each
ChunkStore call goes through ``trio.to_thread.run_sync`` under a
CapacityLimiter that bounds the worker threads; a second limiter bounds the
number of open piecewise reads and writes (each holds a file descriptor and a
space reservation). Threads are not cancellable mid-call: a cancelled caller
waits for the current call to finish, so the store never sees half a call.

Streams: ``put_stream`` accepts sync or async iterables of pieces (e.g. frames
from an RPC stream); ``open_reader``/``get_stream`` hand pieces out with the
same verify-before-last-piece rule as the blocking core.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import trio

from .chunkstore import PIECE_BYTES_DEFAULT, ChunkStore, DeleteOutcome, PutResult, StoreStats
from .keyrange import KeyRange
from .streams import ChunkReader
from .summary import RangeSummary

T = TypeVar("T")

THREADS_MAX_DEFAULT = 8
STREAMS_MAX_DEFAULT = 64
# Aborting a write is an unlink: if even that cannot finish in this time the
# disk is hung and the temp file is left for the next open to remove.
CLEANUP_DEADLINE_S = 10.0


class AsyncChunkStore:
    """Async wrapper around one ChunkStore."""

    def __init__(
        self,
        store: ChunkStore,
        *,
        threads_max: int = THREADS_MAX_DEFAULT,
        streams_max: int = STREAMS_MAX_DEFAULT,
    ) -> None:
        self.store = store
        self.thread_limiter = trio.CapacityLimiter(threads_max)
        self.stream_limiter = trio.CapacityLimiter(streams_max)

    @classmethod
    async def open(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        threads_max: int = THREADS_MAX_DEFAULT,
        streams_max: int = STREAMS_MAX_DEFAULT,
        **store_options: Any,
    ) -> AsyncChunkStore:
        """Open (scan, clean up) the store in a thread; ``store_options`` go to
        ChunkStore."""
        opener = functools.partial(ChunkStore, data_dir, **store_options)
        store = await trio.to_thread.run_sync(opener)
        return cls(store, threads_max=threads_max, streams_max=streams_max)

    def close(self) -> None:
        """Release the directory lock; call when no store call is running."""
        self.store.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.thread_limiter)

    async def _run_shielded(self, fn: Callable[[], object]) -> None:
        with trio.move_on_after(CLEANUP_DEADLINE_S, shield=True):
            await self._run(fn)

    # ---- whole chunks ------------------------------------------------------

    async def put(self, chunk_id: bytes, data: bytes | bytearray | memoryview,
                  stamp: int = 0) -> PutResult:
        return await self._run(self.store.put, chunk_id, data, stamp)

    async def get(self, chunk_id: bytes) -> bytes:
        return await self._run(self.store.get, chunk_id)

    async def has(self, chunk_id: bytes) -> bool:
        return await self._run(self.store.has, chunk_id)

    async def size_of(self, chunk_id: bytes) -> int:
        return await self._run(self.store.size_of, chunk_id)

    async def delete(self, chunk_id: bytes) -> bool:
        return await self._run(self.store.delete, chunk_id)

    async def delete_below(self, chunk_id: bytes, mark: int) -> DeleteOutcome:
        return await self._run(self.store.delete_below, chunk_id, mark)

    async def stamp_of(self, chunk_id: bytes) -> int | None:
        return await self._run(self.store.stamp_of, chunk_id)

    async def stamps_of(self, chunk_ids: list[bytes]) -> list[int | None]:
        return await self._run(self.store.stamps_of, chunk_ids)

    async def raise_stamp(self, chunk_id: bytes, stamp: int) -> int | None:
        return await self._run(self.store.raise_stamp, chunk_id, stamp)

    async def verify(self, chunk_id: bytes) -> int:
        return await self._run(self.store.verify, chunk_id)

    async def stats(self) -> StoreStats:
        return await self._run(self.store.stats)

    # ---- streams -----------------------------------------------------------

    async def put_stream(
        self, chunk_id: bytes, pieces: AsyncIterable[bytes] | Iterable[bytes], stamp: int = 0
    ) -> PutResult:
        """Write a chunk that arrives in pieces; verified before it is
        published. On error or cancellation the partial write is removed."""
        async with self.stream_limiter:
            writer = await self._run(self.store.open_writer, chunk_id, stamp)
            try:
                if isinstance(pieces, AsyncIterable):
                    async for piece in pieces:
                        await self._run(writer.write, piece)
                else:
                    for piece in pieces:
                        await self._run(writer.write, piece)
                return await self._run(writer.commit)
            finally:
                if not writer.finished:
                    await self._run_shielded(writer.abort)

    @contextlib.asynccontextmanager
    async def open_reader(
        self, chunk_id: bytes, piece_bytes: int = PIECE_BYTES_DEFAULT
    ) -> AsyncIterator[AsyncChunkReader]:
        async with self.stream_limiter:
            reader = await self._run(self.store.open_reader, chunk_id, piece_bytes)
            try:
                yield AsyncChunkReader(self, reader)
            finally:
                reader.close()

    async def get_stream(
        self, chunk_id: bytes, piece_bytes: int = PIECE_BYTES_DEFAULT
    ) -> AsyncIterator[bytes]:
        """Async generator of pieces; wrap it in ``contextlib.aclosing`` when
        the consumer may stop early, so the file is closed promptly."""
        async with self.open_reader(chunk_id, piece_bytes) as reader:
            while not reader.done:
                piece = await reader.read_piece()
                if piece:
                    yield piece

    # ---- enumeration and anti-entropy ---------------------------------------

    async def list_ids(
        self, key_range: KeyRange | None = None, after_id: bytes | None = None,
        ids_max: int = 1024,
    ) -> list[bytes]:
        return await self._run(self.store.list_ids, key_range, after_id, ids_max)

    async def range_summaries(self, key_range: KeyRange, parts: int = 1) -> list[RangeSummary]:
        return await self._run(self.store.range_summaries, key_range, parts)


class AsyncChunkReader:
    """Pieces of one chunk, read in worker threads."""

    def __init__(self, owner: AsyncChunkStore, reader: ChunkReader) -> None:
        self._owner = owner
        self._reader = reader

    @property
    def size_bytes(self) -> int:
        return self._reader.size_bytes

    @property
    def done(self) -> bool:
        return self._reader.done

    async def read_piece(self) -> bytes:
        return await self._owner._run(self._reader.read_piece)
