"""Namespace rules the comparison with a real directory cannot see: times,
limits, orphans, umask, setgid inheritance, devices, rename corner cases."""

import errno
import stat

import pytest

from server.meta import types as t

from .helpers import T0_NS, Driver, check_layout

ROOT = t.ROOT_INO


@pytest.fixture
def d():
    return Driver()


def test_fresh_root(d):
    a = d.attr(ROOT)
    assert a.mode == stat.S_IFDIR | 0o755 and a.nlink == 2
    assert a.atime_ns == a.mtime_ns == a.ctime_ns == T0_NS
    assert d.store.statfs().inodes == 1 and d.store.readdir(ROOT).entries == []


def test_mode_is_stored_verbatim_umask_is_the_kernels(d):
    """The kernel already applied the umask; masking again would turn a
    requested 0777 into 0755 (the double-umask bug)."""
    assert d.attr(d.mkdir(ROOT, b"d", 0o777)).mode == stat.S_IFDIR | 0o777
    assert d.attr(d.create(ROOT, b"f", 0o666)).mode == stat.S_IFREG | 0o666


def test_create_sets_all_times_and_parent_mtime_ctime_in_ns(d):
    before = d.attr(ROOT)
    r = d.do(t.Create, parent=ROOT, name=b"f", mode=0o644, now_ns=T0_NS + 7)
    a = r.attr
    assert a.atime_ns == a.mtime_ns == a.ctime_ns == T0_NS + 7
    root = d.attr(ROOT)
    assert root.mtime_ns == root.ctime_ns == T0_NS + 7 and root.atime_ns == before.atime_ns


@pytest.mark.parametrize("op", ["unlink", "rename", "link", "rmdir"])
def test_every_entry_change_touches_parent(d, op):
    sub = d.mkdir(ROOT, b"sub")
    f = d.create(sub, b"f")
    d.mkdir(sub, b"e")
    now = d.tick() + 5
    if op == "unlink":
        r = d.do(t.Unlink, parent=sub, name=b"f", now_ns=now)
    elif op == "rmdir":
        r = d.do(t.Rmdir, parent=sub, name=b"e", now_ns=now)
    elif op == "link":
        r = d.do(t.Link, ino=f, new_parent=sub, new_name=b"g", now_ns=now)
        assert d.attr(f).ctime_ns == now
    else:
        r = d.do(t.Rename, parent=sub, name=b"f", new_parent=ROOT, new_name=b"g",
                 flags=0, now_ns=now)
        assert d.attr(ROOT).mtime_ns == now and d.attr(f).ctime_ns == now
    assert r.err == 0
    s = d.attr(sub)
    assert s.mtime_ns == s.ctime_ns == now


def test_directory_nlink(d):
    a = d.mkdir(ROOT, b"a")
    d.mkdir(a, b"x")
    d.mkdir(a, b"y")
    d.create(a, b"f")
    assert d.attr(a).nlink == 4 and d.attr(ROOT).nlink == 3
    b = d.mkdir(ROOT, b"b")
    assert d.do(t.Rename, parent=a, name=b"x", new_parent=b, new_name=b"x", flags=0).err == 0
    assert (d.attr(a).nlink, d.attr(b).nlink) == (3, 3)
    assert d.do(t.Rmdir, parent=a, name=b"y").err == 0
    assert d.attr(a).nlink == 2


def test_hard_links_share_the_inode_and_count(d):
    f = d.create(ROOT, b"f")
    sub = d.mkdir(ROOT, b"s")
    assert d.do(t.Link, ino=f, new_parent=sub, new_name=b"g").attr.nlink == 2
    assert d.store.lookup(sub, b"g").attr.ino == f
    r = d.do(t.Unlink, parent=ROOT, name=b"f")
    assert (r.err, r.ino, r.nlink) == (0, f, 1)
    assert d.attr(f).nlink == 1
    d.do(t.Unlink, parent=sub, name=b"g")
    assert d.store.getattr(f).err == errno.ENOENT
    assert d.store.statfs().inodes == 2


@pytest.mark.parametrize("name, err", [
    (b"x" * 256, errno.ENAMETOOLONG), (b"", errno.EINVAL), (b".", errno.EINVAL),
    (b"..", errno.EINVAL), (b"a/b", errno.EINVAL), (b"a\0", errno.EINVAL),
])
def test_bad_names(d, name, err):
    assert d.do(t.Create, parent=ROOT, name=name, mode=0o644).err == err
    assert d.store.lookup(ROOT, name).err == err
    assert d.do(t.Create, parent=ROOT, name=b"y" * 255, mode=0o644).err == 0


def test_errors_on_missing_or_non_directory_parent(d):
    f = d.create(ROOT, b"f")
    assert d.do(t.Mkdir, parent=f, name=b"x", mode=0o755).err == errno.ENOTDIR
    assert d.do(t.Mkdir, parent=999, name=b"x", mode=0o755).err == errno.ENOENT
    assert d.store.lookup(f, b"x").err == errno.ENOTDIR


def test_mknod_types_and_devices(d):
    r = d.do(t.Mknod, parent=ROOT, name=b"null", mode=stat.S_IFCHR | 0o666, rdev=0x103)
    assert r.err == 0 and r.attr.rdev == 0x103 and stat.S_ISCHR(r.attr.mode)
    r = d.do(t.Mknod, parent=ROOT, name=b"fifo", mode=stat.S_IFIFO | 0o600, rdev=7)
    assert r.err == 0 and r.attr.rdev == 0
    r = d.do(t.Mknod, parent=ROOT, name=b"plain", mode=0o600, rdev=0)
    assert stat.S_ISREG(r.attr.mode)
    assert d.do(t.Mknod, parent=ROOT, name=b"d", mode=stat.S_IFDIR | 0o755, rdev=0).err == errno.EPERM
    assert d.do(t.Mknod, parent=ROOT, name=b"l", mode=stat.S_IFLNK | 0o777, rdev=0).err == errno.EINVAL
    kinds = {e.name: e.kind for e in d.store.readdir(ROOT).entries}
    assert kinds == {b"null": stat.S_IFCHR, b"fifo": stat.S_IFIFO, b"plain": stat.S_IFREG}


def test_symlink_limits_and_readlink(d):
    assert d.do(t.Symlink, parent=ROOT, name=b"e", target=b"").err == errno.ENOENT
    assert d.do(t.Symlink, parent=ROOT, name=b"l", target=b"x" * 4096).err == errno.ENAMETOOLONG
    r = d.do(t.Symlink, parent=ROOT, name=b"l", target=b"x" * 4095)
    assert r.attr.size == 4095 and r.attr.mode == stat.S_IFLNK | 0o777
    assert d.store.readlink(r.attr.ino).value == b"x" * 4095
    assert d.store.readlink(ROOT).err == errno.EINVAL


def test_setgid_directory_passes_group_and_bit(d):
    g = d.mkdir(ROOT, b"g", 0o2775)
    d.do(t.SetAttr, ino=g, gid=50)
    sub = d.do(t.Mkdir, parent=g, name=b"s", mode=0o755, gid=7).attr
    f = d.do(t.Create, parent=g, name=b"f", mode=0o644, gid=7).attr
    assert sub.gid == 50 and sub.mode & stat.S_ISGID
    assert f.gid == 50 and not f.mode & stat.S_ISGID


def test_link_limits(d):
    dd = d.mkdir(ROOT, b"d")
    assert d.do(t.Link, ino=dd, new_parent=ROOT, new_name=b"x").err == errno.EPERM
    assert d.do(t.Link, ino=dd, new_parent=ROOT, new_name=b"d").err == errno.EEXIST
    f = d.create(ROOT, b"f")
    d.store.conn.execute("UPDATE inode SET nlink = ? WHERE ino = ?", (t.LINK_MAX, f))
    assert d.do(t.Link, ino=f, new_parent=ROOT, new_name=b"g").err == errno.EMLINK
    d.store.conn.execute("UPDATE inode SET nlink = ? WHERE ino = ?", (t.LINK_MAX, dd))
    assert d.do(t.Mkdir, parent=dd, name=b"x", mode=0o755).err == errno.EMLINK


def test_orphan_survives_unlink_until_released(d):
    f = d.create(ROOT, b"f")
    block = t.Slice(0, 5, b"C" * 16, 0, 5, fresh=True)
    d.do(t.CommitWrite, ino=f, size=5, slices=[block], observed=d.index)
    r = d.do(t.Unlink, parent=ROOT, name=b"f", keep_orphan=True)
    assert (r.ino, r.nlink) == (f, 0)
    assert d.attr(f).nlink == 0 and d.store.orphans() == [f]
    assert d.store.manifest(f).slices == [t.Slice(0, 5, b"C" * 16, 0, 5)]
    assert d.do(t.Link, ino=f, new_parent=ROOT, new_name=b"back").err == errno.ENOENT
    assert d.do(t.CommitWrite, ino=f, size=9, slices=[t.Slice(7, 2, data=b"hi")]).err == 0
    assert d.store.gc_candidates() == []
    assert d.do(t.ReleaseOrphan, ino=f).err == 0
    assert d.store.getattr(f).err == errno.ENOENT and d.store.orphans() == []
    assert d.store.gc_candidates() == [(b"C" * 16, d.index)]
    assert d.store.statfs().bytes == 0
    check_layout(d.store)
    assert d.do(t.ReleaseOrphan, ino=f).err == errno.ENOENT


def test_release_of_linked_inode_is_a_no_op(d):
    f = d.create(ROOT, b"f")
    assert d.do(t.ReleaseOrphan, ino=f).err == 0 and d.attr(f).nlink == 1


def test_rename_over_file_is_atomic_and_frees_target(d):
    old = d.create(ROOT, b"doc")
    d.do(t.CommitWrite, ino=old, size=3, slices=[t.Slice(0, 3, b"O" * 16, 0, 3, fresh=True)],
         observed=d.index)
    new = d.create(ROOT, b"doc.swp")
    r = d.do(t.Rename, parent=ROOT, name=b"doc.swp", new_parent=ROOT, new_name=b"doc", flags=0)
    assert (r.err, r.ino, r.nlink) == (0, old, 0)
    assert d.store.lookup(ROOT, b"doc").attr.ino == new
    assert d.names(ROOT) == [b"doc"]
    assert d.store.getattr(old).err == errno.ENOENT
    assert d.store.gc_candidates() == [(b"O" * 16, d.index)]
    check_layout(d.store)


def test_rename_over_file_can_keep_it_as_orphan(d):
    old = d.create(ROOT, b"a")
    d.create(ROOT, b"b")
    r = d.do(t.Rename, parent=ROOT, name=b"b", new_parent=ROOT, new_name=b"a", flags=0,
             keep_orphan=True)
    assert (r.ino, r.nlink) == (old, 0) and d.store.orphans() == [old]


def test_rename_directory_into_own_subtree_is_refused(d):
    a = d.mkdir(ROOT, b"a")
    b = d.mkdir(a, b"b")
    c = d.mkdir(b, b"c")
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=c, new_name=b"x", flags=0).err == errno.EINVAL
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=a, new_name=b"x", flags=0).err == errno.EINVAL
    assert d.do(t.Rename, parent=b, name=b"c", new_parent=ROOT, new_name=b"a", flags=0).err == errno.ENOTEMPTY
    assert d.do(t.Rename, parent=b, name=b"c", new_parent=ROOT, new_name=b"a",
                flags=t.RENAME_EXCHANGE).err == errno.EINVAL
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"a", flags=0).err == 0


def test_rename_exchange_directory_and_file_across_parents(d):
    p1, p2 = d.mkdir(ROOT, b"p1"), d.mkdir(ROOT, b"p2")
    sub = d.mkdir(p1, b"x")
    f = d.create(p2, b"y")
    r = d.do(t.Rename, parent=p1, name=b"x", new_parent=p2, new_name=b"y",
             flags=t.RENAME_EXCHANGE)
    assert r.err == 0
    assert d.store.lookup(p1, b"x").attr.ino == f
    assert d.store.lookup(p2, b"y").attr.ino == sub
    assert (d.attr(p1).nlink, d.attr(p2).nlink) == (2, 3)
    assert d.store.readdir(sub).parent == p2
    kinds = {e.name: e.kind for e in d.store.readdir(p1).entries}
    assert kinds == {b"x": stat.S_IFREG}


def test_rename_flags_validation(d):
    d.create(ROOT, b"a")
    d.create(ROOT, b"b")
    both = t.RENAME_EXCHANGE | t.RENAME_NOREPLACE
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b", flags=both).err == errno.EINVAL
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b", flags=8).err == errno.EINVAL
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b",
                flags=t.RENAME_NOREPLACE).err == errno.EEXIST
    assert d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"c",
                flags=t.RENAME_EXCHANGE).err == errno.ENOENT


def test_rename_directory_over_empty_directory(d):
    a, b = d.mkdir(ROOT, b"a"), d.mkdir(ROOT, b"b")
    d.mkdir(a, b"inner")
    r = d.do(t.Rename, parent=ROOT, name=b"a", new_parent=ROOT, new_name=b"b", flags=0)
    assert (r.err, r.ino) == (0, b)
    assert d.store.getattr(b).err == errno.ENOENT
    assert d.attr(ROOT).nlink == 3 and d.names(ROOT) == [b"b"]
    assert d.store.statfs().inodes == 3
