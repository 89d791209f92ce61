"""One file of up to 16 MiB on a chordfs mount and in a local directory,
driven by the same random pread, pwrite, ftruncate, mmap writes and reads,
fsync, and close/reopen through long-lived descriptors: every read and the
final bytes must match. On the 64 KiB-chunk local mount the ranges cross
many blocks, slices, inline extents and holes; on a real 3-node cluster the
same model runs with fewer steps (every commit is a Raft entry)."""

from __future__ import annotations

import mmap
import os
import random

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

pytestmark = pytest.mark.integration

SIZE_MAX = 16 << 20
offsets = st.one_of(st.integers(0, SIZE_MAX),
                    # near 64 KiB and 4 MiB boundaries, where slices and blocks meet
                    st.builds(lambda k, d: max(0, k * 65536 + d), st.integers(0, 256),
                              st.integers(-3, 3)))
lengths = st.one_of(st.integers(1, 9000), st.integers(1, 600_000))


class FileMachine(RuleBasedStateMachine):
    def __init__(self, mnt_dir: str, local_dir: str) -> None:
        super().__init__()
        self.paths = [os.path.join(mnt_dir, "f"), os.path.join(local_dir, "f")]
        self.fds = [os.open(p, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644) for p in self.paths]

    def teardown(self) -> None:
        for fd in self.fds:
            os.close(fd)

    def _size(self) -> int:
        return os.fstat(self.fds[1]).st_size

    @rule(off=offsets, size=lengths, seed=st.integers(0, 1000))
    def pwrite(self, off, size, seed):
        data = random.Random(seed).randbytes(size)
        assert [os.pwrite(fd, data, off) for fd in self.fds] == [size, size]

    @rule(off=offsets, size=lengths)
    def pread(self, off, size):
        mine, theirs = (os.pread(fd, size, off) for fd in self.fds)
        assert mine == theirs, (off, size, len(mine), len(theirs))

    @rule(size=offsets)
    def truncate(self, size):
        for fd in self.fds:
            os.ftruncate(fd, size)

    @rule(off=offsets, size=st.integers(1, 70_000), seed=st.integers(0, 1000))
    def mmap_write(self, off, size, seed):
        """Writes through a shared mapping of existing bytes, then msync."""
        length = self._size()
        if length == 0:
            return
        off = off % length
        size = min(size, length - off)
        data = random.Random(seed).randbytes(size)
        start = off - off % mmap.ALLOCATIONGRANULARITY
        for fd in self.fds:
            with mmap.mmap(fd, off + size - start, offset=start) as m:
                m[off - start:off - start + size] = data
                m.flush()

    @rule(off=offsets, size=st.integers(1, 70_000))
    def mmap_read(self, off, size):
        length = self._size()
        if length == 0:
            return
        off = off % length
        size = min(size, length - off)
        start = off - off % mmap.ALLOCATIONGRANULARITY
        seen = []
        for fd in self.fds:
            with mmap.mmap(fd, off + size - start, offset=start, access=mmap.ACCESS_READ) as m:
                seen.append(m[off - start:off - start + size])
        assert seen[0] == seen[1], (off, size)

    @rule()
    def fsync(self):
        for fd in self.fds:
            os.fsync(fd)

    @rule()
    def reopen(self):
        """Close (flush and commit) and open again: close-to-open reload."""
        for i, fd in enumerate(self.fds):
            os.close(fd)
            self.fds[i] = os.open(self.paths[i], os.O_RDWR)

    @invariant()
    def sizes_match(self):
        assert os.fstat(self.fds[0]).st_size == self._size()


def run_file_model(mnt, tmp_path, max_examples, step_count):
    runs = iter(range(10_000))

    def factory():
        n = next(runs)
        dirs = [str(mnt / f"run{n}"), str(tmp_path / "local" / f"run{n}")]
        for d in dirs:
            os.makedirs(d)
        return FileMachine(*dirs)

    run_state_machine_as_test(factory, settings=settings(
        derandomize=True, max_examples=max_examples, stateful_step_count=step_count,
        deadline=None, suppress_health_check=list(HealthCheck)))
    # The last run's file, read whole in a fresh open, matches too.
    last = next(runs) - 1
    with open(mnt / f"run{last}" / "f", "rb") as mine, \
            open(tmp_path / "local" / f"run{last}" / "f", "rb") as theirs:
        assert mine.read() == theirs.read()


def test_file_model(small_chunk_mount, tmp_path):
    run_file_model(small_chunk_mount.path, tmp_path, 25, 40)


def test_file_model_cluster(cluster_mount, tmp_path):
    run_file_model(cluster_mount.path, tmp_path, 6, 30)
