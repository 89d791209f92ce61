"""Cap'n Proto standard stream framing, decoded incrementally with limits.

A frame is: uint32 (segment count - 1), uint32 size in words of each segment,
zero padding to a multiple of 8 bytes, then the segments.  All little-endian.
The decoder never buffers more than one frame beyond the limit check: a
header announcing an oversized or over-segmented frame is refused before its
body is read, so a hostile peer cannot make us allocate."""

import struct

from .errors import ProtocolError
from .limits import Limits

_U32 = struct.Struct("<I")
BIG_FRAME_BYTES = 64 * 1024
SPARE_BUFFERS = 3


def frame_segments(segments: list[bytes]) -> bytes:
    """Frame already-built segments into one buffer."""
    return b"".join(frame_parts(segments))


def frame_parts(segments: list[bytes]) -> list[bytes]:
    """Header followed by the segments, as separate buffers."""
    count = len(segments)
    header = struct.pack(f"<{count + 1}I", count - 1, *(len(s) // 8 for s in segments))
    if len(header) % 8:
        header += b"\0" * 4
    return [header, *segments]


def encode(message) -> bytes | list[bytes]:
    """Frame a pycapnp message builder.  A large message stays a list of
    buffers so nothing copies its payload again before the socket does;
    ``to_bytes`` is avoided because it re-allocates the whole frame."""
    segments = message.to_segments()
    if len(segments) == 1 and len(segments[0]) < BIG_FRAME_BYTES:
        return frame_segments(segments)
    return frame_parts(segments)


def frame_size(frame) -> int:
    return len(frame) if isinstance(frame, (bytes, bytearray)) else sum(map(len, frame))


class FrameDecoder:
    """Feed bytes in, take complete frames out as lists of segment buffers.

    Small frames are cut out of a shared buffer (one copy each).  A frame
    larger than BIG_FRAME_BYTES gets a buffer of its exact size as soon as its
    header is known, incoming bytes are copied straight into it, and its
    segments are memoryviews of that buffer: a 1 MiB payload is never
    re-copied or re-grown on the way in.

    Invariant: ``self._buf[self._pos:]`` holds unconsumed bytes that follow
    the big frame in progress (if any); every frame returned had a header
    within ``limits``."""

    def __init__(self, limits: Limits):
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0
        self._big: memoryview | None = None
        self._big_fill = 0
        # Recent big buffers, reused once free. Several: the message cut from
        # the last one is often still alive when the next big frame starts
        # (its caller has not run yet), and a fresh zeroed 4 MiB buffer cost
        # 16% of a mount's CPU during a cold read.
        self._spares: list[bytearray] = []
        self._big_layout: tuple[int, tuple[int, ...]] = (0, ())

    def feed(self, data: bytes) -> None:
        big = self._big
        if big is not None and self._big_fill < len(big):
            take = min(len(data), len(big) - self._big_fill)
            big[self._big_fill:self._big_fill + take] = data[:take] if take < len(data) else data
            self._big_fill += take
            data = data[take:]
            if not data:
                return
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def pending_bytes(self) -> int:
        return len(self._buf) - self._pos

    def wanted_bytes(self) -> int:
        """How many more bytes complete the big frame in progress (0 if none)."""
        return len(self._big) - self._big_fill if self._big is not None else 0

    def next_frame(self) -> list | None:
        """Return the next complete frame's segments, or None if incomplete.
        Raises ProtocolError for a header beyond the limits."""
        if self._big is not None:
            if self._big_fill < len(self._big):
                return None
            return self._finish_big()
        avail = self.pending_bytes
        if avail < 8:
            return None
        header = self._parse_header(avail)
        if header is None:
            return None
        header_len, sizes, total = header
        if avail < total:
            if total > BIG_FRAME_BYTES:
                self._start_big(header_len, sizes, total, avail)
            return None
        segments = []
        start = self._pos + header_len
        with memoryview(self._buf) as view:
            for size in sizes:
                end = start + 8 * size
                segments.append(bytes(view[start:end]))
                start = end
        self._pos += total
        if self._pos > 1 << 20 and self._pos * 2 > len(self._buf):
            # Compact so a long-lived connection's buffer does not grow forever.
            del self._buf[: self._pos]
            self._pos = 0
        return segments

    def _parse_header(self, avail: int):
        buf, pos = self._buf, self._pos
        count = _U32.unpack_from(buf, pos)[0] + 1
        if count > self._limits.segments_max:
            raise ProtocolError(f"frame has {count} segments, limit is {self._limits.segments_max}")
        header_len = (4 * (count + 1) + 7) & ~7
        if avail < header_len:
            return None
        sizes = struct.unpack_from(f"<{count}I", buf, pos + 4)
        total = header_len + 8 * sum(sizes)
        if total > self._limits.frame_bytes_max:
            raise ProtocolError(
                f"frame of {total} bytes exceeds limit of {self._limits.frame_bytes_max}")
        if sizes[0] == 0:
            raise ProtocolError("frame has an empty first segment")
        return header_len, sizes, total

    def _big_buffer(self, total: int) -> memoryview:
        """A buffer of ``total`` bytes: a recent one that no reader still
        holds a view of, if one fits (a fresh 1 MiB allocation costs page
        faults that dominate large transfers)."""
        for spare in self._spares:
            if total <= len(spare) <= 4 * total:
                try:
                    spare.append(0)  # resizing fails while any memoryview exists
                    spare.pop()
                    return memoryview(spare)[:total]
                except BufferError:
                    continue
        spare = bytearray(total)
        self._spares.insert(0, spare)
        del self._spares[SPARE_BUFFERS:]
        return memoryview(spare)

    def big_target(self) -> memoryview | None:
        """Where the big frame in progress wants its next bytes (a reader
        may receive straight into it, then call ``big_filled``), or None."""
        big = self._big
        if big is None or self._big_fill >= len(big):
            return None
        return big[self._big_fill:]

    def big_filled(self, count: int) -> None:
        assert self._big is not None and 0 < count <= len(self._big) - self._big_fill
        self._big_fill += count

    def _start_big(self, header_len: int, sizes, total: int, avail: int) -> None:
        big = self._big_buffer(total)
        big[:avail] = memoryview(self._buf)[self._pos:]
        self._big, self._big_fill = big, avail
        self._big_layout = (header_len, sizes)
        self._buf.clear()
        self._pos = 0

    def _finish_big(self) -> list:
        header_len, sizes = self._big_layout
        view = self._big
        segments, start = [], header_len
        for size in sizes:
            segments.append(view[start:start + 8 * size])
            start += 8 * size
        self._big = None
        self._big_fill = 0
        return segments
