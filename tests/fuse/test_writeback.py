"""The ``writeback`` mount option: parsed, off by default (it breaks
close-to-open between mounts, see ``fusefs.mount.WRITEBACK_DEFAULT``), and a
mount with it on still commits everything at close."""

from __future__ import annotations

import os

import pytest

from fusefs.mount import parse_options

from .conftest import check_log, fuse_usable, start_mount, stop_mount


def test_option_parsing():
    assert parse_options("")["writeback"] is False
    assert parse_options("writeback")["writeback"] is True
    assert parse_options("writeback,nowriteback")["writeback"] is False


@pytest.mark.integration
@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")
def test_writeback_mount_commits_at_close(tmp_path):
    data, mnt = tmp_path / "data", tmp_path / "mnt"
    payload = os.urandom(3 << 20)
    mount = start_mount(data, mnt, tmp_path / "wb.log", "writeback,chunk_kib=256")
    try:
        assert "writeback=True" in mount.log_text()
        (mnt / "seq").write_bytes(payload)
        with open(mnt / "seq", "r+b") as f:
            for off in (0, 5000, 1 << 20, (3 << 20) - 4096):
                f.seek(off)
                f.write(b"w" * 4096)
        fd = os.open(mnt / "kept", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"k" * 70_000)
        os.fsync(fd)
        os.close(fd)
        os.truncate(mnt / "kept", 1000)
    finally:
        stop_mount(mount)
    check_log(mount)
    expected = bytearray(payload)
    for off in (0, 5000, 1 << 20, (3 << 20) - 4096):
        expected[off:off + 4096] = b"w" * 4096
    mount = start_mount(data, mnt, tmp_path / "plain.log", "nowriteback,chunk_kib=256")
    try:
        assert (mnt / "seq").read_bytes() == expected
        assert (mnt / "kept").read_bytes() == b"k" * 1000
    finally:
        stop_mount(mount)
    check_log(mount)
