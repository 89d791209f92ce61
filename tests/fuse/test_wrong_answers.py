"""Answers that used to be wrong through a real mount (issue 12):

- ``open(O_CREAT)`` without ``O_EXCL`` of a name this mount had cached as
  absent, after another mount created it (``echo x >> out.log`` on host A
  right after host B created the log), answered EEXIST: it must open the
  existing file;
- ``truncate -s 9223372036854775807`` next to any data turned the
  namespace's byte counter into a float, and from then on statfs (``df``)
  failed with EIO for good: the size that cannot be counted is EFBIG."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from .conftest import fuse_usable
from .test_real_cluster import two_mounts

pytestmark = [pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")]


def test_create_without_excl_opens_what_another_mount_created(real_cluster, tmp_path):
    with two_mounts(real_cluster, tmp_path) as (a, b, seen):
        log_a = a.path / "out.log"
        # A learns the name is absent; its kernel keeps that for the entry timeout.
        assert not log_a.exists()
        with open(seen / "out.log", "ab") as f:
            f.write(b"from b\n")
        with open(log_a, "ab") as f:  # O_CREAT | O_APPEND, no O_EXCL
            f.write(b"from a\n")
        assert log_a.read_bytes() == b"from b\nfrom a\n"
        assert (seen / "out.log").read_bytes() == b"from b\nfrom a\n"
        # O_EXCL still refuses, and a directory is not opened for writing.
        assert not (a.path / "d").exists()
        os.mkdir(seen / "d")
        assert not (a.path / "excl").exists()
        (seen / "excl").write_bytes(b"")
        with pytest.raises(FileExistsError):
            os.open(a.path / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with pytest.raises(OSError) as e:
            os.open(a.path / "d", os.O_CREAT | os.O_WRONLY, 0o644)
        assert e.value.errno in (errno.EISDIR, errno.EEXIST)
        # O_TRUNC on the existing file truncates it.
        assert not (a.path / "t").exists()
        (seen / "t").write_bytes(b"old contents")
        fd = os.open(a.path / "t", os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o644)
        os.write(fd, b"new")
        os.close(fd)
        assert (seen / "t").read_bytes() == b"new"


def test_a_size_the_namespace_cannot_count_is_efbig(any_mount):
    root = any_mount.path
    (root / "data").write_bytes(b"x" * 4096)
    huge = root / "huge"
    huge.write_bytes(b"")
    run = subprocess.run(["truncate", "-s", str(2**63 - 1), str(huge)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "too large" in run.stderr.lower(), run.stderr
    assert huge.stat().st_size == 0
    with pytest.raises(OSError) as e:
        os.truncate(huge, 2**63 - 1)
    assert e.value.errno == errno.EFBIG
    os.truncate(huge, 2**40)  # sparse and countable: fine
    assert huge.stat().st_size == 2**40
    st = os.statvfs(root)  # df keeps working
    assert st.f_blocks >= 0
    df = subprocess.run(["df", str(root)], capture_output=True, text=True)
    assert df.returncode == 0, df.stderr
