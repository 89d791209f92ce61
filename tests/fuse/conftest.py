"""Real mounts: each test gets a LocalBackend mounted by a ``python -m
fusefs.mount --foreground`` subprocess, and the fixture always unmounts it
(fusermount3 -u, then SIGTERM, then SIGKILL) and checks nothing is left.

Cluster mounts: one real 3-node cluster of ``chordfs node`` processes per
session (``real_cluster``); ``cluster_mount`` gives each test its own mount
process of it and a fresh directory inside, so tests never see each other's
files. ``any_mount`` / ``any_small_chunk_mount`` run a test on both."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from tests import tls

from .realcluster import Cluster, start_cluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
MOUNT_DEADLINE_S = 15.0
STOP_DEADLINE_S = 15.0


def fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


@dataclasses.dataclass
class Mount:
    path: pathlib.Path
    data: pathlib.Path
    proc: subprocess.Popen
    log: pathlib.Path
    root: pathlib.Path | None = None  # the mountpoint, when path is a directory inside

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_mount(data: pathlib.Path | str, mnt: pathlib.Path, log: pathlib.Path,
                options: str = "") -> Mount:
    """Mounts a local data directory, or a cluster when ``data`` is a str of
    HOST:PORT[,HOST:PORT...]."""
    mnt.mkdir(parents=True, exist_ok=True)
    source = [data] if isinstance(data, str) else ["--local", str(data)]
    cmd = [sys.executable, "-m", "fusefs.mount", *source, str(mnt), "--foreground"]
    if isinstance(data, str) and "insecure" not in options.split(",") and "tls_" not in options:
        options = ",".join(filter(None, [options, tls.mount_options()]))
    if options:
        cmd += ["-o", options]
    out = open(log, "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return wait_mounted(Mount(mnt, data, proc, log))


def wait_mounted(mount: Mount) -> Mount:
    """Until ``mount.path`` is a mountpoint; stops the mount process and
    fails with its log if it exits or takes MOUNT_DEADLINE_S."""
    deadline = time.monotonic() + MOUNT_DEADLINE_S
    while not os.path.ismount(mount.path):
        if mount.proc.poll() is not None or time.monotonic() > deadline:
            stop_mount(mount)
            raise AssertionError(f"mount did not appear:\n{mount.log_text()}")
        time.sleep(0.02)
    return mount


def in_mount_table(path: pathlib.Path) -> bool:
    """Unlike os.path.ismount, also true for a mount whose process died
    (stat then fails with ENOTCONN)."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def stop_mount(mount: Mount) -> None:
    mnt = mount.root or mount.path
    if in_mount_table(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        mount.proc.wait(STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        mount.proc.terminate()
        try:
            mount.proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            mount.proc.kill()
            mount.proc.wait()
    if in_mount_table(mnt):  # the process died with the mount up
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    assert not in_mount_table(mnt)


def check_log(mount: Mount) -> None:
    text = mount.log_text()
    assert "handler_bug" not in text and "Traceback" not in text, text


@pytest.fixture
def fuse_mount(tmp_path):
    """A fresh chordfs mount; yields ``Mount``; fails the test if the mount
    process logged a handler bug."""
    if not fuse_usable():
        pytest.skip("needs /dev/fuse and fusermount3")
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "mount.log")
    try:
        yield mount
    finally:
        stop_mount(mount)
    text = mount.log_text()
    assert "handler_bug" not in text and "Traceback" not in text, text


@pytest.fixture
def small_chunk_mount(tmp_path):
    """A mount whose chunks are 64 KiB, so multi-chunk paths run on small files."""
    if not fuse_usable():
        pytest.skip("needs /dev/fuse and fusermount3")
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "mount.log",
                        "chunk_kib=64")
    try:
        yield mount
    finally:
        stop_mount(mount)
    text = mount.log_text()
    assert "handler_bug" not in text and "Traceback" not in text, text


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory):
    """Three ``chordfs node`` processes on 127.0.0.1 for the whole session."""
    if not fuse_usable():
        pytest.skip("needs /dev/fuse and fusermount3")
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


def mount_cluster(cluster: Cluster, tmp_path: pathlib.Path, name: str = "cmnt") -> Mount:
    """A fresh mount process of ``cluster`` at tmp_path/name whose ``path`` is
    a new, empty directory inside it (named after tmp_path, unique per test)."""
    mount = start_mount(cluster.spec, tmp_path / name, tmp_path / f"{name}.log")
    sub = mount.path / tmp_path.name
    try:
        sub.mkdir()
    except BaseException:
        stop_mount(mount)
        raise
    return dataclasses.replace(mount, path=sub, root=mount.path)


@pytest.fixture
def cluster_mount(real_cluster, tmp_path):
    """A mount of the session's cluster; yields ``Mount`` with ``path`` a fresh
    directory; fails the test if the mount process logged a handler bug."""
    mount = mount_cluster(real_cluster, tmp_path)
    try:
        yield mount
    finally:
        stop_mount(mount)
    check_log(mount)


@pytest.fixture(params=["local", "cluster"])
def any_mount(request):
    """The test runs on a local-backend mount and on a cluster mount."""
    return request.getfixturevalue("fuse_mount" if request.param == "local"
                                   else "cluster_mount")


@pytest.fixture(params=["local", "cluster"])
def any_small_chunk_mount(request):
    """64 KiB chunks on the local backend; the cluster keeps its own chunk
    size (a cluster setting), so there the same test covers fewer chunks."""
    return request.getfixturevalue("small_chunk_mount" if request.param == "local"
                                   else "cluster_mount")
