"""InstallSnapshot in parts: a metadata snapshot grows with the namespace
(~126 MiB per million inodes) and must still reach a lagging or new
follower through RPC frames of a few MiB.

The sending transport cuts a large snapshot into ``SnapshotPart``s and
sends them in order, one per ``step`` call, on its one connection to the
peer; a failed call fails the whole transfer (the core sends the snapshot
again later, from the start).  The receiving server keeps one ``Joiner``
per connection, which hands the core a whole ``InstallSnapshot`` once the
last part arrived.  A part that does not continue the snapshot being
joined is refused (the sender learns it, the partial snapshot is dropped):
the core never sees a partial or spliced snapshot."""

from __future__ import annotations

import dataclasses

from .messages import InstallSnapshot, ProtocolError
from .wire import SnapshotPart

PART_BYTES = 1 << 20
SNAPSHOT_BYTES_MAX = 4 << 30  # ~30 M inodes; a larger one needs streaming to disk


def cut(message: InstallSnapshot, part_bytes: int = PART_BYTES) -> list[SnapshotPart]:
    data = message.snapshot.data
    total = len(data)
    parts = []
    for offset in range(0, max(total, 1), part_bytes):
        piece = dataclasses.replace(message.snapshot, data=data[offset:offset + part_bytes])
        parts.append(SnapshotPart(dataclasses.replace(message, snapshot=piece), offset, total))
    return parts


class Joiner:
    """The snapshot being received on one connection."""

    def __init__(self, bytes_max: int = SNAPSHOT_BYTES_MAX) -> None:
        self.bytes_max = bytes_max
        self._key: tuple | None = None
        self._buf: bytearray | None = None

    def add(self, part: SnapshotPart) -> InstallSnapshot | None:
        """Take the next part; the whole message after the last one.
        Raises ProtocolError for a part that does not fit."""
        m, meta = part.message, part.message.snapshot.meta
        if part.total > self.bytes_max:
            raise ProtocolError(f"snapshot of {part.total} bytes exceeds {self.bytes_max}")
        key = (m.frm, m.to, m.term, meta.index, meta.term, part.total)
        if part.offset == 0:
            self._key, self._buf = key, bytearray()
        elif key != self._key or part.offset != len(self._buf):
            expected = len(self._buf) if self._buf is not None else 0
            self._key = self._buf = None
            raise ProtocolError(f"snapshot part at {part.offset} does not continue the snapshot "
                                f"being received (expected offset {expected})")
        self._buf += m.snapshot.data
        if len(self._buf) < part.total:
            return None
        data, self._key, self._buf = bytes(self._buf), None, None
        return dataclasses.replace(m, snapshot=dataclasses.replace(m.snapshot, data=data))
