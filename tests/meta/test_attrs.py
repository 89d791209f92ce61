"""setattr, xattrs, commit_write, manifests, chunk refcounts and gc."""

import errno
import stat

import pytest

from server.meta import types as t
from server.meta.chunks import chunk_refs

from .helpers import T0_NS, Driver

ROOT = t.ROOT_INO
CB = t.CHUNK_BYTES_DEFAULT


def cid(c: str) -> bytes:
    return c.encode() * 16


@pytest.fixture
def d():
    return Driver()


def test_setattr_times_now_omit_and_explicit_ns(d):
    f = d.create(ROOT, b"f")
    before = d.attr(f)
    r = d.do(t.SetAttr, ino=f, now_ns=T0_NS + 10**9, atime=t.Utime.NOW, mtime=t.Utime.OMIT)
    assert r.attr.atime_ns == T0_NS + 10**9 and r.attr.mtime_ns == before.mtime_ns
    assert r.attr.ctime_ns == T0_NS + 10**9
    r = d.do(t.SetAttr, ino=f, atime=-1_500_000_001, mtime=123_456_789_012_345_678)
    assert (r.attr.atime_ns, r.attr.mtime_ns) == (-1_500_000_001, 123_456_789_012_345_678)


def test_chmod_keeps_type_and_chown(d):
    dd = d.mkdir(ROOT, b"d")
    r = d.do(t.SetAttr, ino=dd, mode=stat.S_IFREG | 0o4711, uid=5, gid=6)
    assert r.attr.mode == stat.S_IFDIR | 0o4711 and (r.attr.uid, r.attr.gid) == (5, 6)


def test_truncate_rules(d):
    f = d.create(ROOT, b"f")
    dd = d.mkdir(ROOT, b"d")
    fifo = d.do(t.Mknod, parent=ROOT, name=b"p", mode=stat.S_IFIFO | 0o644, rdev=0).attr.ino
    assert d.do(t.SetAttr, ino=dd, size=0).err == errno.EISDIR
    assert d.do(t.SetAttr, ino=fifo, size=0).err == errno.EINVAL
    assert d.apply_decoded(t.SetAttr(ino=f, now_ns=d.tick(), size=-1)).err == errno.EINVAL
    with pytest.raises(ValueError):
        d.do(t.SetAttr, ino=f, size=-1)
    assert d.do(t.SetAttr, ino=999, mode=0o644).err == errno.ENOENT
    now = d.tick()
    r = d.do(t.SetAttr, ino=f, size=10 * CB, now_ns=now)
    assert r.attr.size == 10 * CB and r.attr.mtime_ns == now
    assert d.store.statfs().bytes == 10 * CB


def test_truncate_drops_and_shortens_chunks(d):
    f = d.create(ROOT, b"f")
    refs = [t.ChunkRef(0, cid("a"), CB), t.ChunkRef(1, cid("b"), CB), t.ChunkRef(2, cid("c"), 100)]
    d.do(t.CommitWrite, ino=f, size=2 * CB + 100, chunks=refs)
    assert d.store.statfs().chunks == 3
    d.do(t.SetAttr, ino=f, size=CB + 7)
    m = d.store.manifest(f)
    assert m.chunks == [t.ChunkRef(0, cid("a"), CB), t.ChunkRef(1, cid("b"), 7)]
    assert m.size == CB + 7 and chunk_refs(d.store.conn, cid("c")) == 0
    assert d.store.gc_candidates(d.now_ns, 0) == [cid("c")]
    d.do(t.SetAttr, ino=f, size=3 * CB)
    assert d.store.manifest(f).chunks[1].length == 7
    d.do(t.SetAttr, ino=f, size=0)
    assert d.store.manifest(f).chunks == [] and d.store.statfs().chunks == 0


def test_commit_write_refcounts_dedup_and_replacement(d):
    f, g = d.create(ROOT, b"f"), d.create(ROOT, b"g")
    d.do(t.CommitWrite, ino=f, size=CB + 10,
         chunks=[t.ChunkRef(0, cid("x"), CB), t.ChunkRef(1, cid("x"), 10)])
    d.do(t.CommitWrite, ino=g, size=10, chunks=[t.ChunkRef(0, cid("x"), 10)])
    assert chunk_refs(d.store.conn, cid("x")) == 3 and d.store.statfs().chunks == 1
    d.do(t.CommitWrite, ino=f, size=10, chunks=[t.ChunkRef(0, cid("x"), 10)])
    assert chunk_refs(d.store.conn, cid("x")) == 3
    r = d.do(t.CommitWrite, ino=f, size=CB + 5, chunks=[t.ChunkRef(1, cid("y"), 5)])
    assert r.attr.size == CB + 10, "commit_write never shrinks"
    assert chunk_refs(d.store.conn, cid("x")) == 2
    assert d.store.statfs().bytes == CB + 20
    d.do(t.Unlink, parent=ROOT, name=b"g")
    d.do(t.Unlink, parent=ROOT, name=b"f")
    assert d.store.statfs().chunks == 0 and d.store.statfs().bytes == 0
    assert sorted(d.store.gc_candidates(d.now_ns, 0)) == [cid("x"), cid("y")]


def test_commit_write_validation(d):
    f = d.create(ROOT, b"f")
    dd = d.mkdir(ROOT, b"d")
    assert d.do(t.CommitWrite, ino=dd, size=1).err == errno.EISDIR
    assert d.do(t.CommitWrite, ino=999, size=1).err == errno.ENOENT
    bad = [[t.ChunkRef(0, cid("a"), 0)], [t.ChunkRef(0, cid("a"), CB + 1)],
           [t.ChunkRef(0, cid("a"), 1), t.ChunkRef(0, cid("b"), 1)], [t.ChunkRef(0, b"", 1)],
           [t.ChunkRef(0, cid("a"), 2)], [t.ChunkRef(1, cid("a"), 1)]]
    for chunks in bad:
        assert d.do(t.CommitWrite, ino=f, size=1, chunks=chunks).err == errno.EINVAL
    assert d.do(t.CommitWrite, ino=f, size=1, inline=b"x" * (t.INLINE_BYTES_MAX + 1)).err == errno.EINVAL


def test_inline_data_round_trip_and_switch_to_chunks(d):
    f = d.create(ROOT, b"f")
    r = d.do(t.CommitWrite, ino=f, size=999, inline=b"hello")
    assert r.attr.size == 5 and d.store.manifest(f).inline == b"hello"
    d.do(t.SetAttr, ino=f, size=2)
    assert d.store.manifest(f).inline == b"he"
    d.do(t.CommitWrite, ino=f, size=CB + 1, chunks=[t.ChunkRef(0, cid("a"), CB), t.ChunkRef(1, cid("b"), 1)])
    m = d.store.manifest(f)
    assert m.inline is None and len(m.chunks) == 2 and m.size == CB + 1
    d.do(t.CommitWrite, ino=f, size=0, inline=b"")
    assert d.store.manifest(f).chunks == [] and d.attr(f).size == 0


def test_manifest_pages(d):
    f = d.create(ROOT, b"f")
    refs = [t.ChunkRef(i, i.to_bytes(16, "big"), CB) for i in range(0, 50, 2)]  # with holes
    d.do(t.CommitWrite, ino=f, size=50 * CB, chunks=refs)
    got, start = [], 0
    while True:
        page = d.store.manifest(f, start, limit=7)
        got += page.chunks
        start = page.next_idx
        if page.done:
            break
    assert got == refs
    assert d.store.manifest(ROOT).err == errno.EISDIR


def test_gc_grace_rereference_and_forget(d):
    f = d.create(ROOT, b"f")
    d.do(t.CommitWrite, ino=f, size=1, chunks=[t.ChunkRef(0, cid("a"), 1)])
    zero_at = d.tick()
    d.do(t.SetAttr, ino=f, size=0, now_ns=zero_at)
    assert d.store.gc_candidates(zero_at + 99, grace_ns=100) == []
    assert d.store.gc_candidates(zero_at + 100, grace_ns=100) == [cid("a")]
    d.do(t.CommitWrite, ino=f, size=1, chunks=[t.ChunkRef(0, cid("a"), 1)])
    assert d.store.gc_candidates(zero_at + 10**12, grace_ns=0) == []
    d.do(t.SetAttr, ino=f, size=0)
    assert d.do(t.ForgetChunks, chunk_ids=[cid("a")]).err == 0
    assert d.store.gc_candidates(d.now_ns + 10**12, grace_ns=0) == []


def test_xattr_flags_and_limits(d):
    f = d.create(ROOT, b"f")
    assert d.do(t.SetXattr, ino=f, name=b"user.a", value=b"1", flags=t.XATTR_REPLACE).err == errno.ENODATA
    assert d.do(t.SetXattr, ino=f, name=b"user.a", value=b"1", flags=t.XATTR_CREATE).err == 0
    assert d.do(t.SetXattr, ino=f, name=b"user.a", value=b"2", flags=t.XATTR_CREATE).err == errno.EEXIST
    now = d.tick()
    assert d.do(t.SetXattr, ino=f, name=b"user.a", value=b"3", flags=t.XATTR_REPLACE, now_ns=now).err == 0
    assert d.attr(f).ctime_ns == now
    assert d.store.getxattr(f, b"user.a").value == b"3"
    assert d.do(t.SetXattr, ino=f, name=b"", value=b"", flags=0).err == errno.ERANGE
    assert d.do(t.SetXattr, ino=f, name=b"u" * 256, value=b"", flags=0).err == errno.ERANGE
    assert d.do(t.SetXattr, ino=f, name=b"user.b", value=b"v" * 65537, flags=0).err == errno.E2BIG
    assert d.do(t.SetXattr, ino=f, name=b"user.b", value=b"", flags=3).err == errno.EINVAL
    d.do(t.SetXattr, ino=f, name=b"user.0", value=b"", flags=0)
    assert d.store.listxattr(f).names == [b"user.0", b"user.a"]
    assert d.do(t.RemoveXattr, ino=f, name=b"user.a").err == 0
    assert d.do(t.RemoveXattr, ino=f, name=b"user.a").err == errno.ENODATA
    assert d.store.getxattr(f, b"user.a").err == errno.ENODATA
    assert d.store.getxattr(999, b"user.a").err == errno.ENOENT
