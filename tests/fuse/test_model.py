"""Random POSIX operations on a chordfs mount and on a local directory side
by side: every result and every errno must match, and so must the whole tree
(types, modes, sizes, link counts, contents, symlink targets) after each step.

The mount uses 64 KiB chunks so writes, truncates and reads cross chunk
boundaries and the inline/chunked switch with small data. The same model
runs, with fewer examples, on a mount of a real 3-node cluster."""

from __future__ import annotations

import os
import random
import stat

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, rule,
                                 run_state_machine_as_test)

pytestmark = pytest.mark.integration

PATHS = ["a", "b", "d", "d/a", "d/e"]
paths = st.sampled_from(PATHS)
SIZE_MAX = 200_000
CLUSTER_EXAMPLES = 25  # every metadata change is a Raft commit: ~30x slower


def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except OSError as exc:
        return ("err", exc.errno)


def write_at(path, off, data):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        return os.pwrite(fd, data, off)
    finally:
        os.close(fd)


def read_all(path):
    with open(path, "rb") as f:
        return f.read()


def read_after_unlink(path, data):
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.unlink(path)
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, len(data) + 10)
    finally:
        os.close(fd)


def snapshot(root):
    """Everything the model compares, keyed by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            rel = os.path.relpath(full, root)
            entry = [stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_nlink]
            if stat.S_ISREG(st_.st_mode):
                entry += [st_.st_size, read_all(full)]
            elif stat.S_ISLNK(st_.st_mode):
                entry += [os.readlink(full)]
            if not stat.S_ISLNK(st_.st_mode):
                entry += [sorted((n, os.getxattr(full, n)) for n in os.listxattr(full))]
            out[rel] = entry
    return out


class PosixMachine(RuleBasedStateMachine):
    def __init__(self, mnt, local):
        super().__init__()
        self.roots = (str(mnt), str(local))

    def both(self, fn, *rel_paths, extra=()):
        results = []
        for root in self.roots:
            args = [os.path.join(root, p) for p in rel_paths] + list(extra)
            results.append(outcome(fn, *args))
        assert results[0] == results[1], (fn.__name__, rel_paths, results)

    @rule(path=paths, off=st.integers(0, SIZE_MAX), size=st.integers(0, 140_000),
          seed=st.integers(0, 1000))
    def write(self, path, off, size, seed):
        data = random.Random(seed).randbytes(size)
        self.both(write_at, path, extra=(off, data))

    @rule(path=paths)
    def read(self, path):
        self.both(read_all, path)

    @rule(path=paths, size=st.integers(0, SIZE_MAX))
    def truncate(self, path, size):
        self.both(os.truncate, path, extra=(size,))

    @rule(path=paths)
    def mkdir(self, path):
        self.both(os.mkdir, path)

    @rule(path=paths)
    def rmdir(self, path):
        self.both(os.rmdir, path)

    @rule(path=paths)
    def unlink(self, path):
        self.both(os.unlink, path)

    @rule(src=paths, dst=paths)
    def rename(self, src, dst):
        self.both(os.rename, src, dst)

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        self.both(os.link, src, dst)

    @rule(link_target=st.sampled_from(["a", "../b", "nowhere"]), path=paths)
    def symlink(self, link_target, path):
        results = [outcome(os.symlink, link_target, os.path.join(r, path))
                   for r in self.roots]
        assert results[0] == results[1], results

    @rule(path=paths, mode=st.sampled_from([0o600, 0o755, 0o640, 0o4755]))
    def chmod(self, path, mode):
        self.both(os.chmod, path, extra=(mode,))

    @rule(path=paths, size=st.integers(0, 100_000), seed=st.integers(0, 100))
    def unlinked_while_open(self, path, size, seed):
        self.both(read_after_unlink, path, extra=(random.Random(seed).randbytes(size),))

    @rule(path=paths, name=st.sampled_from(["user.a", "user.b"]),
          value=st.binary(max_size=40),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, path, name, value, flags):
        self.both(os.setxattr, path, extra=(name, value, flags))

    @rule(path=paths, name=st.sampled_from(["user.a", "user.b"]))
    def removexattr(self, path, name):
        self.both(os.removexattr, path, extra=(name,))

    @rule(path=paths, name=st.sampled_from(["user.a", "user.b"]))
    def getxattr(self, path, name):
        self.both(os.getxattr, path, extra=(name,))

    @rule(path=paths, mtime_ns=st.integers(0, 2**40).map(lambda s: s * 1000 + 7))
    def utime(self, path, mtime_ns):
        self.both(os.utime, path, extra=(None,))
        times = (mtime_ns - 5, mtime_ns)
        results = [outcome(lambda p: (os.utime(p, ns=times), os.stat(p).st_mtime_ns)[1],
                           os.path.join(r, path)) for r in self.roots]
        assert results[0] == results[1], results

    @invariant()
    def trees_match(self):
        assert snapshot(self.roots[0]) == snapshot(self.roots[1])


def run_model(root, tmp_path, max_examples, step_count):
    runs = iter(range(10_000))

    def factory():
        n = next(runs)
        mnt = root / f"run{n}"
        local = tmp_path / "local" / f"run{n}"
        os.makedirs(mnt)
        os.makedirs(local)
        return PosixMachine(mnt, local)

    run_state_machine_as_test(factory, settings=settings(
        derandomize=True, max_examples=max_examples, stateful_step_count=step_count,
        deadline=None, suppress_health_check=list(HealthCheck)))


def test_posix_model(small_chunk_mount, tmp_path):
    run_model(small_chunk_mount.path, tmp_path, 80, 30)


def test_posix_model_cluster(cluster_mount, tmp_path):
    """The same model on a mount of a real 3-node cluster (4 MiB chunks, every
    metadata change a Raft commit): fewer examples to fit the time budget."""
    run_model(cluster_mount.path, tmp_path, CLUSTER_EXAMPLES, 20)

