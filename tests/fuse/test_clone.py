"""``chordfs clone SRC DST`` on real mounts: a 10 MiB file is cloned without
storing its bytes again (the chunk directories do not grow), the copies read
the same and later writes to either stay apart; trees keep their shape
(nested directories, symlinks, small inline files, hard links, modes, user
xattrs); the new name is visible at once despite a cached negative lookup;
buffered writes of an open source are in the clone; the control attribute is
virtual; other users need the usual permissions; the command's errors are
one sentence and exit 1. One run on the 3-node cluster."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from fusefs.clone import clone_main
from fusefs.mount import drop_cache_main
from fusefs.ops import CLONE_XATTR

from .conftest import ROOT, check_log, fuse_usable, start_mount, stop_mount

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")]

BIG_BYTES = 10 << 20
VISIBLE_DEADLINE_S = 2.0


def cli(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "server.cli", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def stored_bytes(*dirs: pathlib.Path) -> int:
    total = 0
    for top in dirs:
        for dirpath, _, names in os.walk(top):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:  # deleted meanwhile (GC)
                    pass
    return total


def check_big_clone(root: pathlib.Path, mountpoint: pathlib.Path,
                    chunk_dirs: list[pathlib.Path]) -> None:
    payload = os.urandom(BIG_BYTES)
    src, dst = root / "big", root / "big.clone"
    src.write_bytes(payload)
    os.chmod(src, 0o640)
    before = stored_bytes(*chunk_dirs)
    done = cli("clone", str(src), str(dst))
    assert done.returncode == 0 and done.stdout == done.stderr == "", done
    grown = stored_bytes(*chunk_dirs) - before
    assert grown < BIG_BYTES // 10, f"the clone stored {grown} bytes"
    st = dst.stat()
    assert (st.st_size, stat.S_IMODE(st.st_mode), st.st_uid) == (BIG_BYTES, 0o640, os.getuid())
    assert st.st_ino != src.stat().st_ino
    assert dst.read_bytes() == payload

    # Copy on write: each keeps its own bytes, the other's are untouched.
    with open(dst, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"C" * 4096)
        f.seek(0, os.SEEK_END)
        f.write(b"tail of the clone")
    with open(src, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"S" * 8192)
    want_dst = payload[:5 << 20] + b"C" * 4096 + payload[(5 << 20) + 4096:] + b"tail of the clone"
    want_src = payload[:5 << 20] + b"S" * 8192 + payload[(5 << 20) + 8192:]
    assert drop_cache_main(str(mountpoint)) == 0  # read back from the backend
    assert dst.read_bytes() == want_dst
    assert src.read_bytes() == want_src
    # The clone's blocks outlive the source.
    src.unlink()
    assert drop_cache_main(str(mountpoint)) == 0
    assert dst.read_bytes() == want_dst


def test_big_file_clone_stores_no_block(fuse_mount):
    check_big_clone(fuse_mount.path, fuse_mount.path, [fuse_mount.data / "chunks"])


def test_big_file_clone_on_the_cluster(cluster_mount, real_cluster):
    chunk_dirs = [real_cluster.base / f"n{i}" / "chunks" for i in range(len(real_cluster.addrs))]
    check_big_clone(cluster_mount.path, cluster_mount.root, chunk_dirs)
    tree = cluster_mount.path / "t"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "small").write_bytes(b"inline")
    os.symlink("sub/small", tree / "link")
    done = cli("clone", "-v", str(tree), str(cluster_mount.path / "t2"))
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"cloned {tree} to {cluster_mount.path / 't2'}: 1 file ")
    assert (cluster_mount.path / "t2" / "link").read_bytes() == b"inline"


def make_tree(top: pathlib.Path) -> None:
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "empty-dir").mkdir()
    (top / "top.txt").write_bytes(b"top level\n")
    (top / "a" / "small").write_bytes(b"x" * 1000)
    (top / "a" / "b" / "c" / "deep").write_bytes(os.urandom(300_000))
    (top / "a" / "b" / "empty").write_bytes(b"")
    os.link(top / "a" / "small", top / "a" / "b" / "small-hardlink")
    os.symlink("../top.txt", top / "a" / "rel-link")
    os.symlink("/nonexistent/target", top / "a" / "b" / "dangling")
    os.symlink("b", top / "a" / "dir-link")
    os.mkfifo(top / "a" / "fifo", 0o600)
    os.setxattr(top / "a" / "small", "user.colour", b"blue")
    os.setxattr(top / "a" / "b", "user.note", b"dir attr")
    os.chmod(top / "a" / "small", 0o444)  # xattrs copied onto a read-only clone
    os.chmod(top / "a" / "b" / "c" / "deep", 0o600)
    os.chmod(top / "a" / "b" / "c", 0o555)  # a read-only directory is filled all the same
    os.chmod(top / "a", 0o750)


def snapshot(top: pathlib.Path) -> dict:
    """Shape, modes, contents, link targets and user xattrs, by relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = pathlib.Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
                continue
            xattrs = {n: os.getxattr(path, n) for n in sorted(os.listxattr(path))}
            body = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_nlink
                        if stat.S_ISREG(st.st_mode) else None, body, xattrs)
    return out


def test_tree_clone(fuse_mount):
    src, dst = fuse_mount.path / "src", fuse_mount.path / "dst"
    src.mkdir()
    make_tree(src)
    os.chmod(src, 0o705)
    before = stored_bytes(fuse_mount.data / "chunks")
    done = cli("clone", "-v", str(src), str(dst))
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout == (
        f"cloned {src} to {dst}: 4 files (301010 bytes shared, none copied), "
        f"5 directories, 3 symlinks, 1 hard link, 1 special file\n")
    assert stored_bytes(fuse_mount.data / "chunks") - before < 100_000
    assert snapshot(dst) == snapshot(src)
    assert stat.S_IMODE(dst.stat().st_mode) == 0o705
    assert (dst / "a" / "small").stat().st_ino == (dst / "a" / "b" / "small-hardlink").stat().st_ino
    assert (dst / "a" / "small").stat().st_ino != (src / "a" / "small").stat().st_ino
    assert (dst / "a" / "rel-link").read_bytes() == b"top level\n"
    # Writes to a cloned small (inline) file stay apart too.
    (dst / "top.txt").write_bytes(b"changed")
    assert (src / "top.txt").read_bytes() == b"top level\n"


def test_clone_of_an_open_file_has_its_buffered_writes(fuse_mount):
    src = fuse_mount.path / "open"
    with open(src, "wb", buffering=0) as f:  # unbuffered here: buffered in the mount only
        f.write(b"a" * 200_000)
        assert clone_main(str(src), str(fuse_mount.path / "copy")) == 0
        f.write(b"b" * 10)
    assert (fuse_mount.path / "copy").read_bytes() == b"a" * 200_000
    assert src.read_bytes() == b"a" * 200_000 + b"b" * 10


def test_new_name_visible_despite_a_cached_negative_lookup(tmp_path):
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "mount.log",
                        "entry_timeout=60")
    try:
        src, dst = mount.path / "f", mount.path / "g"
        src.write_bytes(b"hello")
        assert not dst.exists()  # the kernel caches this for 60 s
        assert clone_main(str(src), str(dst)) == 0
        deadline = time.monotonic() + VISIBLE_DEADLINE_S
        while not dst.exists():
            assert time.monotonic() < deadline, "the clone stayed hidden by a negative dentry"
            time.sleep(0.01)
        assert dst.read_bytes() == b"hello"
    finally:
        stop_mount(mount)
    check_log(mount)


def test_control_attribute_is_virtual(fuse_mount):
    root, name = fuse_mount.path, CLONE_XATTR.decode()
    (root / "f").write_bytes(b"x")
    ino = (root / "f").stat().st_ino
    os.setxattr(root, name, b"%d/g" % ino)
    assert (root / "g").read_bytes() == b"x"
    assert name not in os.listxattr(root)
    for path in (root, root / "g"):
        with pytest.raises(OSError) as info:
            os.getxattr(path, name)
        assert info.value.errno == errno.ENODATA
    cases = [(root, b"g", errno.EINVAL), (root, b"x/h", errno.EINVAL),
             (root, b"%d/g" % ino, errno.EEXIST), (root, b"99999/h", errno.ENOENT),
             (root / "f", b"%d/h" % ino, errno.ENOTDIR),
             (root, b"%d/h" % root.stat().st_ino, errno.EISDIR)]
    for path, value, want in cases:
        with pytest.raises(OSError) as info:
            os.setxattr(path, name, value)
        assert info.value.errno == want, (path, value)
    assert os.listxattr(root / "g") == []


@pytest.fixture
def shared_mount(tmp_path):
    """A mount other users can reach (pytest's tmp_path is 0700), with a
    world-writable directory ``shared`` in it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another user")
    outer = pathlib.Path(tempfile.mkdtemp(prefix="chordfs-clone-"))
    os.chmod(outer, 0o755)
    mount = start_mount(tmp_path / "data", outer / "mnt", tmp_path / "mount.log")
    try:
        os.chmod(mount.path, 0o755)
        (mount.path / "shared").mkdir(mode=0o777)
        os.chmod(mount.path / "shared", 0o777)
        yield mount
    finally:
        stop_mount(mount)
        shutil.rmtree(outer, ignore_errors=True)
    check_log(mount)


def test_other_users_need_permissions(shared_mount):
    root, shared = shared_mount.path, shared_mount.path / "shared"
    (root / "secret").write_bytes(b"root only")
    os.chmod(root / "secret", 0o600)
    (root / "public").write_bytes(b"everyone")
    os.chmod(root / "public", 0o4755)
    nobody = "65534"

    done = cli("clone", str(root / "public"), str(shared / "mine"), user=nobody)
    assert done.returncode == 0, done
    st = (shared / "mine").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (65534, 0o755)  # no setuid for others
    assert (shared / "mine").read_bytes() == b"everyone"

    done = cli("clone", str(root / "secret"), str(shared / "stolen"), user=nobody)
    assert (done.returncode, done.stderr) == (
        1, f"chordfs: permission denied: cannot read {root / 'secret'}\n")
    done = cli("clone", str(root / "public"), str(root / "here"), user=nobody)
    assert (done.returncode, done.stderr) == (
        1, f"chordfs: permission denied: cannot clone {root / 'public'} to {root / 'here'}\n")
    # Naming a readable file by its inode number is not enough: the caller
    # must have opened it (reached it through the directories above it).
    hidden = root / "private"
    hidden.mkdir(mode=0o700)
    (hidden / "f").write_bytes(b"behind a closed directory")
    os.chmod(hidden / "f", 0o644)
    script = (f"import os; os.setxattr({str(shared)!r}, {CLONE_XATTR.decode()!r}, "
              f"b'%d/peek' % {(hidden / 'f').stat().st_ino})")
    done = subprocess.run(["setpriv", f"--reuid={nobody}", f"--regid={nobody}",
                           "--clear-groups", sys.executable, "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Permission denied" in done.stderr, done
    assert not (shared / "peek").exists()


def test_cli_errors_are_one_sentence(fuse_mount, tmp_path):
    root = fuse_mount.path
    (root / "f").write_bytes(b"x")
    (root / "d").mkdir()
    (root / "d" / "inner").write_bytes(b"y")
    (tmp_path / "local").write_bytes(b"z")
    cases = [
        ((root / "f", root / "d"), f"{root / 'd'} already exists"),
        ((root / "d", root / "f"), f"{root / 'f'} already exists"),
        ((root / "missing", root / "new"), f"{root / 'missing'} does not exist"),
        ((tmp_path / "local", tmp_path / "new"),
         f"{tmp_path / 'local'} is not on a chordfs mount (it is on "
         f"{_fstype(tmp_path)})"),
        ((root / "f", tmp_path / "new"),
         f"cannot clone across filesystems: {tmp_path / 'new'} is not on the same "
         f"chordfs mount as {root / 'f'}"),
        ((root / "f", root / "nodir" / "new"),
         f"cannot create {root / 'nodir' / 'new'}: {root / 'nodir'} does not exist"),
        ((root / "d", root / "d" / "sub"), f"cannot clone the directory {root / 'd'} into itself"),
    ]
    for (src, dst), words in cases:
        done = cli("clone", str(src), str(dst))
        assert (done.returncode, done.stdout, done.stderr) == (1, "", f"chordfs: {words}\n"), done
    assert not (tmp_path / "new").exists() and not (root / "d" / "sub").exists()
    assert (root / "d").is_dir() and (root / "f").read_bytes() == b"x"
    done = cli("clone", str(root / "f"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done


def _fstype(path: pathlib.Path) -> str:
    from fusefs.clone import _fstype_of
    return _fstype_of(path.stat().st_dev)
