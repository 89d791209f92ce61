"""A mount's own metrics (-o metrics_port, -o metrics_file) on the shared
real cluster: every FUSE operation the test makes is timed under its name,
a failed lookup is counted with its errno, the block cache counts a miss
and then a hit, and the file holds the same figures after unmount."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.netutil import free_ports

from .conftest import ROOT, fuse_usable, start_mount, stop_mount

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and root")]


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_mount_metrics_move_with_the_work(real_cluster, tmp_path):
    port = free_ports(1)[0]
    path = tmp_path / "mount.prom"
    mount = start_mount(real_cluster.spec, tmp_path / "mm", tmp_path / "mm.log",
                        options=f"metrics_port={port},metrics_file={path}")
    try:
        f = mount.path / "m.bin"
        data = os.urandom(700_000)
        f.write_bytes(data)
        with pytest.raises(FileNotFoundError):
            (mount.path / "absent").stat()  # a negative entry: no error, just a lookup
        (mount.path / "d").mkdir()
        (mount.path / "d" / "x").write_bytes(b"x")
        with pytest.raises(OSError) as full:
            (mount.path / "d").rmdir()
        assert full.value.errno == errno.ENOTEMPTY
        subprocess.run([sys.executable, "-m", "server.cli", "drop-cache", str(mount.path)],
                       cwd=ROOT, check=True, timeout=60)
        assert f.read_bytes() == data  # cold: the block cache misses and fetches
        with open(f, "rb") as handle:   # the kernel's pages go, ours stay: a hit
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read_bytes() == data
        m = _scrape(port)
        for op in ("lookup", "create", "write", "read", "flush", "release", "getattr"):
            assert m.get(f'chordfs_mount_op_seconds_count{{op="{op}"}}', 0) > 0, op
        errors = {k: v for k, v in m.items() if k.startswith("chordfs_mount_op_errors_total")}
        assert errors.get(f'chordfs_mount_op_errors_total{{errno="{errno.errorcode[errno.ENOTEMPTY]}",'
                          f'op="rmdir"}}', 0) >= 1, errors
        assert m['chordfs_mount_cache_misses_total{cache="blocks"}'] >= 1
        assert m['chordfs_mount_cache_hits_total{cache="blocks"}'] >= 1
        assert m['chordfs_mount_block_cache_bytes{kind="used"}'] >= len(data)
    finally:
        stop_mount(mount)
    text = path.read_text()
    assert 'chordfs_mount_op_seconds_count{op="write"}' in text
    assert "chordfs_mount_cache_hits_total" in text
