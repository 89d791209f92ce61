"""POSIX ACL rules of the state machine (server/meta/acl.py): what the
kernel leaves to a FUSE_POSIX_ACL filesystem, applied identically on every
replica."""

from __future__ import annotations

import errno

import pytest

from server.meta import acl
from server.meta import types as t

from .helpers import Driver

ROOT = t.ROOT_INO
U, G, M, O, UO, GO = acl.USER, acl.GROUP, acl.MASK, acl.OTHER, acl.USER_OBJ, acl.GROUP_OBJ


@pytest.fixture
def d():
    return Driver()


def _set(d, ino, name, entries):
    return d.do(t.SetXattr, ino=ino, name=name, value=acl.encode(entries), flags=0).err


def _get(d, ino, name):
    reply = d.store.getxattr(ino, name)
    return None if reply.err == errno.ENODATA else acl.decode(reply.value)


def test_decode_accepts_only_what_a_kernel_would():
    good = [(UO, 7, 0), (U, 5, 1000), (GO, 5, 0), (G, 1, 50), (M, 7, 0), (O, 0, 0)]
    assert acl.decode(acl.encode(good)) == [(tag, p, i if tag in (U, G) else 0xFFFFFFFF)
                                            for tag, p, i in good]
    assert acl.decode(acl.encode([])) == []
    for bad in ([(UO, 7, 0), (GO, 5, 0)],                       # no other
                [(UO, 7, 0), (U, 5, 1), (GO, 5, 0), (O, 0, 0)],  # named entry, no mask
                [(UO, 7, 0), (GO, 5, 0), (UO, 7, 0), (O, 0, 0)],  # twice, out of order
                [(UO, 7, 0), (U, 5, 9), (U, 5, 3), (GO, 5, 0), (M, 7, 0), (O, 0, 0)],
                [(UO, 8, 0), (GO, 5, 0), (O, 0, 0)]):           # perm beyond rwx
        assert acl.decode(acl.encode(bad)) == errno.EINVAL, bad
    assert acl.decode(b"\x01\x00\x00\x00") == errno.EINVAL  # version 1
    assert acl.decode(acl.encode([(UO, 7, 0)])[:-1]) == errno.EINVAL


def test_an_access_acl_sets_the_mode_and_chmod_rewrites_it(d):
    f = d.create(ROOT, b"f", 0o600)
    assert _set(d, f, acl.ACCESS, [(UO, 6, 0), (U, 4, 1000), (GO, 0, 0), (M, 4, 0), (O, 0, 0)]) == 0
    assert d.attr(f).mode & 0o7777 == 0o640
    assert d.do(t.SetAttr, ino=f, mode=0o705).err == 0
    assert [(tag, perm) for tag, perm, _ in _get(d, f, acl.ACCESS)] == [
        (UO, 7), (U, 4), (GO, 0), (M, 0), (O, 5)]
    # A minimal ACL is a mode: stored as the mode alone.
    assert _set(d, f, acl.ACCESS, [(UO, 6, 0), (GO, 4, 0), (O, 4, 0)]) == 0
    assert d.attr(f).mode & 0o7777 == 0o644 and _get(d, f, acl.ACCESS) is None
    bad = d.do(t.SetXattr, ino=f, name=acl.ACCESS, value=b"\x02\x00\x00\x00\x01", flags=0)
    assert bad.err == errno.EINVAL and d.attr(f).mode & 0o7777 == 0o644


def test_default_acls_belong_to_directories_and_are_inherited(d):
    f = d.create(ROOT, b"f")
    assert _set(d, f, acl.DEFAULT, [(UO, 7, 0), (GO, 5, 0), (O, 0, 0)]) == errno.EACCES
    shared = d.mkdir(ROOT, b"shared", 0o770)
    default = [(UO, 7, 0), (U, 7, 1000), (GO, 5, 0), (M, 7, 0), (O, 0, 0)]
    assert _set(d, shared, acl.DEFAULT, default) == 0
    made = d.do(t.Create, parent=shared, name=b"file", mode=0o664, umask=0o077)
    assert made.err == 0
    # The umask does not apply; the default ACL masked by 0o664 does.
    assert made.attr.mode & 0o7777 == 0o660
    assert [(tag, perm) for tag, perm, _ in _get(d, made.attr.ino, acl.ACCESS)] == [
        (UO, 6), (U, 7), (GO, 5), (M, 6), (O, 0)]
    assert _get(d, made.attr.ino, acl.DEFAULT) is None
    sub = d.do(t.Mkdir, parent=shared, name=b"sub", mode=0o755, umask=0o077)
    assert sub.attr.mode & 0o7777 == 0o750
    assert _get(d, sub.attr.ino, acl.DEFAULT) == _get(d, shared, acl.DEFAULT)
    node = d.do(t.Mknod, parent=shared, name=b"fifo", mode=0o10644, rdev=0, umask=0o077)
    assert node.attr.mode & 0o7777 == 0o640
    # Without a default ACL the umask applies; removing it is an empty ACL.
    assert d.do(t.Create, parent=ROOT, name=b"plain", mode=0o666, umask=0o027).attr.mode \
        & 0o7777 == 0o640
    assert d.do(t.SetXattr, ino=shared, name=acl.DEFAULT, value=acl.encode([]), flags=0).err == 0
    assert _get(d, shared, acl.DEFAULT) is None
    assert d.do(t.Create, parent=shared, name=b"later", mode=0o666, umask=0o022).attr.mode \
        & 0o7777 == 0o644


def test_readdirplus_tells_which_entries_have_extended_attributes(d):
    """`ls -l` asks every file for its ACL: entries say whether there is
    any extended attribute, so a mount answers the rest without a query."""
    plain = d.create(ROOT, b"plain")
    tagged = d.create(ROOT, b"tagged")
    assert d.do(t.SetXattr, ino=tagged, name=b"user.k", value=b"v", flags=0).err == 0
    with_acl = d.create(ROOT, b"with-acl", 0o600)
    assert _set(d, with_acl, acl.ACCESS, [(UO, 6, 0), (U, 4, 1000), (GO, 0, 0), (M, 4, 0),
                                          (O, 0, 0)]) == 0
    page = d.store.readdir(ROOT, plus=True)
    assert {e.name: e.xattrs for e in page.entries} == {
        b"plain": False, b"tagged": True, b"with-acl": True}
    assert {e.ino for e in page.entries} == {plain, tagged, with_acl}
