"""`make run`'s demo (`chordfs demo`, what the Makefile runs) as its text
invites: kill -9 a node and the mount keeps reading and writing while the
demo restarts that node after 2 s, as systemd's Restart=on-failure would;
SIGTERM (a closed terminal, `kill`) then stops everything it started and
unmounts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.fuse.conftest import fuse_usable, in_mount_table
from tests.netutil import _bindable, free_ports

pytestmark = [pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and root")]


def _three_ports() -> int:
    for _ in range(100):
        base = free_ports(1)[0]
        if _bindable(base + 1) and _bindable(base + 2):
            return base
    raise AssertionError("no three consecutive free ports")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_restarts_a_killed_node_and_the_mount_keeps_working(tmp_path):
    base_port = _three_ports()
    demo = subprocess.Popen([sys.executable, "-m", "server.cli", "demo", "--dir", "state",
                             "--base-port", str(base_port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mnt, pidfile = tmp_path / "mnt", tmp_path / "state" / "pids"
    seen = []
    try:
        deadline = time.monotonic() + 90
        while not any(line.startswith("stop:") for line in seen):
            line = demo.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(seen)
            seen.append(line)
        assert "restarts it after 2 s" in "".join(seen)
        files = {f"f{i}": os.urandom(50_000 * (i + 1)) for i in range(6)}
        for name, data in files.items():
            (mnt / name).write_bytes(data)
        pids = [int(p) for p in pidfile.read_text().split()]
        victim = pids[1]
        os.kill(victim, signal.SIGKILL)
        killed_s = time.monotonic()
        # Meanwhile: reads of what was written, and a new file.
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data
        (mnt / "during").write_bytes(b"written with a node down\n")
        line = demo.stdout.readline()
        assert "node 2" in line and "exited" in line and "restarting it in 2 s" in line, line
        line = demo.stdout.readline()
        assert "node 2" in line and "restarted, pid" in line, line
        assert time.monotonic() - killed_s >= 1.5
        new_pid = int(line.rsplit("pid", 1)[1])
        assert new_pid != victim and _alive(new_pid)
        assert new_pid in [int(p) for p in pidfile.read_text().split()]
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data
        assert (mnt / "during").read_bytes() == b"written with a node down\n"
    finally:
        demo.send_signal(signal.SIGTERM)
        try:
            rest = demo.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            demo.kill()
            rest = demo.communicate()[0]
        recorded = [int(p) for p in pidfile.read_text().split()] if pidfile.exists() else []
        for pid in recorded:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if in_mount_table(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert demo.returncode == 0, rest
    assert "stopping the demo cluster" in rest and "stopped 3 demo nodes" in rest, rest
    assert not in_mount_table(mnt) and not pidfile.exists()
