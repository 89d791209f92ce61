"""A minimal state machine for Raft's own tests, benchmarks and demo
process: it records every command and answers with its index, so a checker
can compare what each node applied, in which order."""

import json
import threading

from .messages import SnapshotFile


class RecordingStateMachine:
    def __init__(self, sink=None):
        self._lock = threading.Lock()  # apply runs in a worker thread
        self._sink = sink  # called with (index, data) for each new entry
        self.applied: list[tuple[int, bytes]] = []
        self._applied_index = 0

    def applied_index(self) -> int:
        return self._applied_index

    def apply(self, index: int, data: bytes) -> bytes:
        with self._lock:
            if index <= self._applied_index:
                return b""  # re-delivered after a restart: already applied
            self.applied.append((index, data))
            self._applied_index = index
            if self._sink is not None:
                self._sink(index, data)
        return index.to_bytes(8, "big")

    def snapshot(self) -> bytes:
        return self.snapshot_image()[1]

    def snapshot_image(self) -> tuple[int, bytes]:
        """(applied index, image) of one moment, safe beside apply."""
        with self._lock:
            return self._applied_index, json.dumps(
                [[i, d.hex()] for i, d in self.applied]).encode()

    def restore(self, index: int, data) -> None:
        if isinstance(data, SnapshotFile):  # what storage hands back after a restart
            with open(data.path, "rb") as f:
                data = f.read()
        with self._lock:
            self.applied = [(i, bytes.fromhex(d)) for i, d in json.loads(data or b"[]")]
            self._applied_index = index
