"""Real mounts: each test gets a LocalBackend mounted by a ``python -m
fusefs.mount --foreground`` subprocess, and the fixture always unmounts it
(fusermount3 -u, then SIGTERM, then SIGKILL) and checks nothing is left."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

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

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_mount(data: pathlib.Path, mnt: pathlib.Path, log: pathlib.Path,
                options: str = "") -> Mount:
    mnt.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fusefs.mount", "--local", str(data), str(mnt),
           "--foreground"]
    if options:
        cmd += ["-o", options]
    out = open(log, "ab")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    mount = Mount(mnt, data, proc, log)
    deadline = time.monotonic() + MOUNT_DEADLINE_S
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
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
    if in_mount_table(mount.path):
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)],
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
    if in_mount_table(mount.path):  # the process died with the mount up
        subprocess.run(["fusermount3", "-u", "-z", str(mount.path)])
    assert not in_mount_table(mount.path)


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
