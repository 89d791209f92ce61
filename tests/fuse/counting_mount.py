"""A LocalBackend mount that counts its backend's chunk reads, for tests that
must tell a read served by the mount's caches from one that reached the
backend: ``python -m tests.fuse.counting_mount COUNT_FILE MOUNT_ARGS...``.
After every ``get_chunk`` the total so far is written to COUNT_FILE."""

from __future__ import annotations

import os
import sys

from fusefs.backend import LocalBackend
from fusefs.mount import mount_main


def count_chunk_reads(count_file: str) -> None:
    original = LocalBackend.get_chunk
    calls = 0

    async def get_chunk(self, chunk_id: bytes) -> bytes:
        nonlocal calls
        data = await original(self, chunk_id)
        calls += 1
        tmp = count_file + ".tmp"
        with open(tmp, "w") as out:
            out.write(str(calls))
        os.replace(tmp, count_file)
        return data

    LocalBackend.get_chunk = get_chunk


def chunk_reads(count_file) -> int:
    try:
        with open(count_file) as counted:
            return int(counted.read())
    except FileNotFoundError:
        return 0


if __name__ == "__main__":
    count_chunk_reads(sys.argv[1])
    sys.exit(mount_main(sys.argv[2:]))
