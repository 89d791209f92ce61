"""``chordfs drop-cache MOUNTPOINT`` on real mounts: the next read of a file
reaches the backend (counted) and returns the same bytes; the control
attribute is never stored, listed or settable by others; the command's
errors are one sentence and a non-zero exit."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pytest

from fusefs.mount import drop_cache_main
from fusefs.ops import DROP_CACHE_XATTR

from .conftest import ROOT, Mount, check_log, fuse_usable, stop_mount, wait_mounted
from .counting_mount import chunk_reads

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")]

CHUNK_KIB = 256
CHUNKS = 5


@pytest.fixture
def counting_mount(tmp_path):
    """A LocalBackend mount with 256 KiB chunks whose get_chunk calls are
    counted in ``tmp_path/reads``."""
    mnt, log = tmp_path / "mnt", tmp_path / "mount.log"
    mnt.mkdir()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuse.counting_mount", str(tmp_path / "reads"),
             "--local", str(tmp_path / "data"), str(mnt), "--foreground",
             "-o", f"chunk_kib={CHUNK_KIB}"],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    mount = wait_mounted(Mount(mnt, tmp_path / "data", proc, log))
    try:
        yield mount
    finally:
        stop_mount(mount)
    check_log(mount)


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "server.cli", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_read_after_drop_cache_reaches_the_backend(counting_mount, tmp_path):
    reads = tmp_path / "reads"
    payload = os.urandom(CHUNKS * (CHUNK_KIB << 10) - 1000)
    path = counting_mount.path / "f"
    path.write_bytes(payload)
    assert path.read_bytes() == payload
    warm = chunk_reads(reads)
    assert path.read_bytes() == payload
    assert chunk_reads(reads) == warm, "a warm read went to the backend"

    done = cli("drop-cache", str(counting_mount.path))
    assert done.returncode == 0 and done.stdout == done.stderr == "", done
    assert path.read_bytes() == payload
    assert chunk_reads(reads) == warm + CHUNKS
    # Warm again until the next drop; a second drop works the same way.
    assert path.read_bytes() == payload
    assert chunk_reads(reads) == warm + CHUNKS
    assert drop_cache_main(str(counting_mount.path)) == 0
    with open(path, "rb") as f:
        f.seek(2 * (CHUNK_KIB << 10))
        assert f.read(100) == payload[2 * (CHUNK_KIB << 10):][:100]
    assert chunk_reads(reads) > warm + CHUNKS
    assert "caches_dropped" in counting_mount.log_text()


def test_drop_cache_keeps_unwritten_data_of_open_files(fuse_mount):
    path = fuse_mount.path / "open"
    with open(path, "wb") as f:
        f.write(b"a" * 300_000)
        assert drop_cache_main(str(fuse_mount.path)) == 0
        f.write(b"b" * 300_000)
    assert path.read_bytes() == b"a" * 300_000 + b"b" * 300_000


def test_control_attribute_is_virtual(fuse_mount):
    root, name = fuse_mount.path, DROP_CACHE_XATTR.decode()
    (root / "f").write_bytes(b"x")
    os.setxattr(root, name, b"1")
    assert name not in os.listxattr(root)
    for path in (root, root / "f"):
        with pytest.raises(OSError) as info:
            os.getxattr(path, name)
        assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(root / "f", name, b"1")
    assert info.value.errno == errno.EPERM
    assert os.listxattr(root / "f") == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to act as another user")
def test_other_users_may_not_drop(fuse_mount):
    done = cli("drop-cache", str(fuse_mount.path), user="65534")
    assert done.returncode == 1
    assert done.stderr == (f"chordfs: permission denied: only root or the user who mounted "
                           f"{fuse_mount.path} may drop its caches\n")


def test_cli_errors_are_one_sentence(tmp_path):
    cases = [
        (str(tmp_path), f"{tmp_path} is not a mount point"),
        (str(tmp_path / "missing"), f"{tmp_path / 'missing'} does not exist"),
    ]
    if os.path.ismount("/proc"):
        cases.append(("/proc", "/proc is not a chordfs mount (it is proc)"))
    for path, words in cases:
        done = cli("drop-cache", path)
        assert done.returncode == 1, done
        assert done.stderr == f"chordfs: {words}\n", done
    done = cli("drop-cache")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done


def test_cli_on_a_mount_whose_process_died(fuse_mount, capsys):
    fuse_mount.proc.kill()
    fuse_mount.proc.wait(10)
    assert drop_cache_main(str(fuse_mount.path)) == 1
    assert capsys.readouterr().err == (
        f"chordfs: the chordfs mount at {fuse_mount.path} is not connected "
        f"(its process ended)\n")
