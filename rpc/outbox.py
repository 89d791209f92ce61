"""The bounded queue of frames waiting for a connection's writer.

A memory channel costs a task switch per frame; this queue lets senders
append without yielding while there is room, and wakes the single writer,
which takes every queued frame (up to a byte budget) for one ``send_all``.
Bound: at most ``frames_max`` frames; a sender beyond it waits for room."""

import collections

import trio

from .framing import frame_size


class Outbox:
    def __init__(self, frames_max: int):
        self._frames = collections.deque()
        self._frames_max = frames_max
        self._writer = trio.lowlevel.ParkingLot()
        self._space = trio.lowlevel.ParkingLot()
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put_nowait(self, frame) -> bool:
        """Queue ``frame``; False if full.  Raises ClosedResourceError once closed."""
        if self.closed:
            raise trio.ClosedResourceError("outbox closed")
        if len(self._frames) >= self._frames_max:
            return False
        self._frames.append(frame)
        if self._writer:
            self._writer.unpark()
        return True

    async def put(self, frame) -> None:
        while not self.put_nowait(frame):
            await self._space.park()

    async def take(self, bytes_max: int) -> list:
        """Wait for frames and return as many as fit in ``bytes_max`` (at
        least one); an empty list means closed and drained.  A frame is bytes
        or a list of buffers (header and segments of a large message)."""
        frames = self._frames
        while not frames:
            if self.closed:
                return []
            await self._writer.park()
        batch = [frames.popleft()]
        size = frame_size(batch[0])
        while frames and size < bytes_max:
            frame = frames.popleft()
            batch.append(frame)
            size += frame_size(frame)
        if self._space:
            self._space.unpark_all()
        return batch

    def close(self) -> None:
        """No more frames are accepted; the writer drains what is queued."""
        self.closed = True
        self._writer.unpark_all()
        self._space.unpark_all()
