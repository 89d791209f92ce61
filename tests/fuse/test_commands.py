"""Everyday tools on a real chordfs mount: cp, ls, mv, rm, ln, chmod, touch,
truncate, xattrs, tar, git, an editor's save, sparse files, overwrites, and
data surviving a remount. Tests taking ``any_mount`` run on a local-backend
mount and on a mount of a real 3-node cluster (tests/fuse/realcluster.py)."""

from __future__ import annotations

import errno
import os
import struct
import subprocess

import pytest

from .conftest import start_mount, stop_mount

pytestmark = pytest.mark.integration


def sh(cmd: str, cwd=None) -> str:
    done = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_cp_big_file_in_and_out(any_mount, tmp_path):
    """64 MiB on the local backend, 200 MiB on the cluster (several 4 MiB
    chunks, each written to three replicas)."""
    size = (200 << 20) if any_mount.root is not None else (64 << 20)
    src = tmp_path / "src.bin"
    with open(src, "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    sh(f"cp {src} {any_mount.path}/big.bin")
    sh(f"cmp {src} {any_mount.path}/big.bin")
    sh(f"cp {any_mount.path}/big.bin {tmp_path}/back.bin")
    sh(f"cmp {src} {tmp_path}/back.bin")
    assert os.stat(any_mount.path / "big.bin").st_size == size
    sh(f"ls -l {any_mount.path}")


def test_ls_mv_rm_ln_chmod_touch(any_mount):
    m = any_mount.path
    sh("mkdir -p a/b/c && echo hi > a/b/c/f && echo yo > top", cwd=m)
    listing = sh("ls -l a/b/c", cwd=m)
    assert "-rw-r--r-- 1" in listing and " 3 " in listing and " f\n" in listing
    sh("mv a/b/c/f a/g && mv top a/b/top2", cwd=m)
    assert sorted(os.listdir(m / "a")) == ["b", "g"]
    assert (m / "a/b/top2").read_text() == "yo\n"
    sh("ln a/g hard && ln -s a/g soft", cwd=m)
    assert os.stat(m / "hard").st_nlink == 2
    assert os.readlink(m / "soft") == "a/g"
    assert (m / "soft").read_text() == "hi\n"
    sh("chmod 640 hard && touch -d '2001-02-03 04:05:06' hard", cwd=m)
    st = os.stat(m / "a/g")
    assert st.st_mode & 0o7777 == 0o640
    assert st.st_mtime == pytest.approx(981173106, abs=1)
    assert os.stat(m / "a").st_nlink == 3
    sh("rm -r a", cwd=m)
    assert sorted(os.listdir(m)) == ["hard", "soft"]
    assert os.stat(m / "hard").st_nlink == 1
    with pytest.raises(FileNotFoundError):
        os.stat(m / "soft")


def test_truncate_and_xattrs(any_mount):
    m = any_mount.path
    (m / "f").write_bytes(b"0123456789")
    sh("truncate -s 4 f", cwd=m)
    assert (m / "f").read_bytes() == b"0123"
    sh("truncate -s 8 f", cwd=m)
    assert (m / "f").read_bytes() == b"0123\0\0\0\0"
    sh("setfattr -n user.color -v blue f && setfattr -n user.n -v 1 f", cwd=m)
    assert 'user.color="blue"' in sh("getfattr -d f", cwd=m)
    sh("setfattr -x user.color f", cwd=m)
    assert os.listxattr(m / "f") == ["user.n"]
    with pytest.raises(OSError) as info:
        os.removexattr(m / "f", "user.color")
    assert info.value.errno == errno.ENODATA
    acl = struct.pack("<I", 2) + b"".join(  # user::rw- user:nobody:r-- ...
        struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in (
            (1, 6, 2**32 - 1), (2, 4, 65534), (4, 4, 2**32 - 1), (0x10, 4, 2**32 - 1),
            (0x20, 4, 2**32 - 1)))
    os.setxattr(m / "f", "system.posix_acl_access", acl)  # enforced: test_acl.py
    assert os.getxattr(m / "f", "system.posix_acl_access") == acl
    with pytest.raises(OSError) as info:
        os.setxattr(m / "f", "system.other", b"x")
    assert info.value.errno == errno.EOPNOTSUPP  # no meaning here: never stored
    with pytest.raises(OSError) as info:
        os.getxattr(m / "f", "user.color")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(m / "f", "user.n", b"2", os.XATTR_CREATE)
    assert info.value.errno == errno.EEXIST


def test_tar_tree_in_and_out(any_mount, tmp_path):
    tree = tmp_path / "tree"
    for i in range(30):
        d = tree / f"d{i % 5}" / f"e{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(i * 3000))
    os.symlink("d0", tree / "link")
    os.chmod(tree / "d1", 0o700)
    sh(f"tar -C {tmp_path} -cf {tmp_path}/t.tar tree")
    sh(f"tar -C {any_mount.path} -xpf {tmp_path}/t.tar")
    sh(f"diff -r --no-dereference {tree} {any_mount.path}/tree")
    sh(f"tar -C {any_mount.path} -cf {tmp_path}/t2.tar tree")
    (tmp_path / "out").mkdir()
    sh(f"tar -C {tmp_path}/out -xpf {tmp_path}/t2.tar")
    sh(f"diff -r --no-dereference {tree} {tmp_path}/out/tree")
    assert os.stat(any_mount.path / "tree/d1").st_mode & 0o777 == 0o700


def test_git_init_add_commit(any_mount):
    m = any_mount.path / "repo"
    m.mkdir()
    for i in range(20):
        (m / f"file{i}.txt").write_text(f"line {i}\n" * (i + 1))
    git = "git -c user.name=t -c user.email=t@example.com -c init.defaultBranch=main"
    sh(f"{git} init -q && {git} add . && {git} commit -qm first", cwd=m)
    (m / "file3.txt").write_text("changed\n")
    sh(f"{git} commit -qam second", cwd=m)
    log = sh("git log --oneline", cwd=m)
    assert len(log.splitlines()) == 2
    sh("git fsck --no-progress", cwd=m)
    assert sh("git status --porcelain", cwd=m) == ""


def test_editor_save_fsync_rename(any_mount):
    m = any_mount.path
    (m / "doc.txt").write_text("old\n")
    reader = open(m / "doc.txt")
    fd = os.open(m / ".doc.txt.swp", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    os.write(fd, b"new contents\n")
    os.fsync(fd)
    os.close(fd)
    os.rename(m / ".doc.txt.swp", m / "doc.txt")
    assert (m / "doc.txt").read_text() == "new contents\n"
    assert reader.read() == "old\n"  # the replaced file lives on while open
    reader.close()
    assert os.listdir(m) == ["doc.txt"]


def test_sparse_file(any_mount):
    path = any_mount.path / "sparse"
    sh(f"truncate -s 100M {path}")
    with open(path, "r+b") as f:
        f.seek(50 << 20)
        f.write(b"middle")
        f.seek((100 << 20) - 3)
        f.write(b"end")
    assert os.stat(path).st_size == 100 << 20
    with open(path, "rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
        f.seek((50 << 20) - 2)
        assert f.read(10) == b"\0\0middle\0\0"
        f.seek((100 << 20) - 5)
        assert f.read() == b"\0\0end"


def test_overwrite_in_the_middle(any_small_chunk_mount):
    path = any_small_chunk_mount.path / "f"
    data = bytearray(os.urandom(1 << 20))
    path.write_bytes(data)
    with open(path, "r+b") as f:
        for off, size in ((100, 10), (65530, 20), (300000, 200000), ((1 << 20) - 5, 10)):
            patch = os.urandom(size)
            f.seek(off)
            f.write(patch)
            data[off:off + size] = patch
    assert path.read_bytes() == bytes(data)
    os.truncate(path, 70000)
    assert path.read_bytes() == bytes(data[:70000])


def test_unlinked_open_file_and_remount(tmp_path):
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        m = mount.path
        (m / "keep").write_bytes(b"k" * 200000)
        f = open(m / "gone", "w+b")
        f.write(b"still here")
        f.flush()
        os.unlink(m / "gone")
        f.seek(0)
        assert f.read() == b"still here"
        f.close()
        assert os.listdir(m) == ["keep"]
    finally:
        stop_mount(mount)
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        assert (mount.path / "keep").read_bytes() == b"k" * 200000
        st = os.statvfs(mount.path)
        assert st.f_namemax == 255
    finally:
        stop_mount(mount)


def test_big_directory_listing(any_mount):
    d = any_mount.path / "many"
    d.mkdir()
    count = 400 if any_mount.root is not None else 1500  # cluster: ~40 creates/s today
    names = {f"n{i:05d}" for i in range(count)}
    for name in names:
        (d / name).touch()
    assert set(os.listdir(d)) == names
    out = sh(f"ls -la {d}")
    assert len(out.splitlines()) == count + 3


def test_two_handles_see_each_others_writes(any_small_chunk_mount):
    path = any_small_chunk_mount.path / "shared"
    a = open(path, "w+b", buffering=0)
    b = open(path, "r+b", buffering=0)
    try:
        a.write(b"A" * 200_000)
        b.seek(100_000)
        assert b.read(5) == b"AAAAA"
        b.seek(150_000)
        b.write(b"B" * 10)
        a.seek(149_998)
        assert a.read(14) == b"AA" + b"B" * 10 + b"AA"
        a.close()
        b.seek(0)
        assert len(b.read()) == 200_000
    finally:
        a.close()
        b.close()
    data = path.read_bytes()
    assert data == b"A" * 150_000 + b"B" * 10 + b"A" * 49_990


def test_fsynced_data_survives_kill_9(tmp_path):
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        payload = os.urandom(5 << 20)
        fd = os.open(mount.path / "durable", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.fsync(fd)
        (mount.path / "small").write_bytes(b"closed before the crash")
        mount.proc.kill()
        mount.proc.wait(10)
        try:
            os.close(fd)
        except OSError:
            pass
    finally:
        stop_mount(mount)
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        assert (mount.path / "durable").read_bytes() == payload
        assert (mount.path / "small").read_bytes() == b"closed before the crash"
    finally:
        stop_mount(mount)
