"""POSIX ACLs through a real mount (issue 12): setfacl/getfacl work, the
kernel enforces what they set, chmod and the mode follow the ACL, default
ACLs are inherited by new files and directories (the umask then does not
apply), and without one the umask does."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from server.meta import acl

from .conftest import fuse_usable

pytestmark = [pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")]

ALICE, BOB = 4301, 4302


def _as_user(uid: int, directory, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` as ``uid`` in ``directory`` (entered as root first: the
    test's tmp path above the mount is root's alone)."""
    def enter():
        os.chdir(directory)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return subprocess.run(["python3", "-c", code], preexec_fn=enter,
                          capture_output=True, text=True)


def _can(uid: int, directory, name: str, mode: str) -> bool:
    run = _as_user(uid, directory, f"open({name!r}, {mode!r}).close()")
    if run.returncode == 0:
        return True
    assert "PermissionError" in run.stderr, run.stderr
    return False


def _getfacl(path) -> list[str]:
    out = subprocess.run(["getfacl", "-cp", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line]


def test_umask_applies_without_a_default_acl(any_mount):
    old = os.umask(0o027)
    try:
        fd = os.open(any_mount.path / "f", os.O_CREAT | os.O_WRONLY, 0o666)
        os.close(fd)
        os.mkdir(any_mount.path / "d", 0o777)
    finally:
        os.umask(old)
    assert (any_mount.path / "f").stat().st_mode & 0o7777 == 0o640
    assert (any_mount.path / "d").stat().st_mode & 0o7777 == 0o750


def test_access_acl_is_enforced_and_follows_chmod(any_mount):
    root = any_mount.path
    f = root / "f"
    f.write_bytes(b"secret")
    os.chmod(f, 0o600)
    subprocess.run(["setfacl", "-m", f"u:{ALICE}:r", str(f)], check=True)
    assert f.stat().st_mode & 0o777 == 0o640  # the mask shows as the group bits
    assert f"user:{ALICE}:r--" in _getfacl(f)
    assert _can(ALICE, root, "f", "rb") and not _can(ALICE, root, "f", "ab")
    assert not _can(BOB, root, "f", "rb")
    os.chmod(f, 0o600)  # the mask goes to ---: Alice's entry no longer counts
    assert not _can(ALICE, root, "f", "rb")
    assert "mask::---" in _getfacl(f)
    subprocess.run(["setfacl", "-b", str(f)], check=True)  # back to a plain mode
    with pytest.raises(OSError) as e:
        os.getxattr(f, acl.ACCESS)
    assert e.value.errno == errno.ENODATA
    assert f.stat().st_mode & 0o777 == 0o600


def test_a_minimal_acl_is_a_mode(any_mount):
    f = any_mount.path / "f"
    f.write_bytes(b"")
    minimal = acl.encode([(acl.USER_OBJ, 6, 0), (acl.GROUP_OBJ, 4, 0), (acl.OTHER, 1, 0)])
    os.setxattr(f, acl.ACCESS, minimal)
    assert f.stat().st_mode & 0o777 == 0o641
    with pytest.raises(OSError) as e:
        os.getxattr(f, acl.ACCESS)
    assert e.value.errno == errno.ENODATA
    # (The kernel parses the value first: a header alone removes the ACL, a
    # wrong version is EOPNOTSUPP; state-machine tests cover the rest.)
    for bad in (minimal[:-1], acl.encode([(acl.USER_OBJ, 6, 0), (acl.OTHER, 1, 0)])):
        with pytest.raises(OSError) as e:
            os.setxattr(f, acl.ACCESS, bad)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:  # a default ACL belongs to directories only
        os.setxattr(f, acl.DEFAULT, minimal)
    assert e.value.errno == errno.EACCES


def test_default_acl_is_inherited(any_mount):
    root = any_mount.path
    d = root / "shared"
    d.mkdir(mode=0o700)
    subprocess.run(["setfacl", "-m", f"u:{ALICE}:rwx", "-m", f"d:u:{ALICE}:rwx",
                    "-m", "d:g::r-x", "-m", "d:o::---", str(d)], check=True)
    # pyfuse3 does not ask the kernel for FUSE_DONT_MASK, so the kernel
    # still applies the umask before we see the mode (a local filesystem
    # ignores it under a default ACL); umask 0 shows inheritance alone.
    old = os.umask(0)
    try:
        (d / "file").write_bytes(b"made by root")
        os.mkdir(d / "sub", 0o775)
    finally:
        os.umask(old)
    # The file asked for 0o666: owner rw, Alice rwx masked to rw-, other none.
    assert (d / "file").stat().st_mode & 0o777 == 0o660
    facl = _getfacl(d / "file")
    assert f"user:{ALICE}:rwx\t#effective:rw-" in facl and "mask::rw-" in facl
    assert _can(ALICE, d, "file", "ab") and not _can(BOB, d, "file", "rb")
    # A new directory gets the default ACL as its own default too.
    assert any(line.startswith(f"default:user:{ALICE}:rwx") for line in _getfacl(d / "sub"))
    assert (d / "sub").stat().st_mode & 0o777 == 0o770
    made = _as_user(ALICE, d / "sub", "open('alice', 'w').write('hi')")
    assert made.returncode == 0, made.stderr
    assert (d / "sub" / "alice").stat().st_uid == ALICE
    old = os.umask(0o022)  # see above: the group class loses what the umask takes
    try:
        (d / "masked").write_bytes(b"")
    finally:
        os.umask(old)
    assert "mask::r--" in _getfacl(d / "masked")
