"""setattr, xattrs, commit_write, manifests, block refcounts and death marks."""

import dataclasses
import errno
import stat

import pytest

from server.meta import types as t
from .helpers import T0_NS, Driver, bid, check_layout, fake_block, read_file

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


def blk(off: int, length: int, n: int, block_off: int = 0, size: int = CB,
        fresh: bool = True) -> t.Slice:
    return t.Slice(off, length, bid(n), block_off, size, fresh=fresh)


def inl(off: int, data: bytes) -> t.Slice:
    return t.Slice(off, len(data), data=data)


def write(d: Driver, ino: int, *slices: t.Slice, size: int | None = None):
    """A writer's commit: its fresh blocks stamped at the current index."""
    end = max((s.off + s.length for s in slices), default=0)
    r = d.do(t.CommitWrite, ino=ino, size=end if size is None else size,
             slices=list(slices), observed=d.index)
    assert r.err == 0, r
    return r


def extents(d: Driver, ino: int) -> list[t.Slice]:
    m = d.store.manifest(ino)
    assert m.done
    return m.slices


def test_truncate_cuts_and_shortens_extents(d):
    f = d.create(ROOT, b"f")
    write(d, f, blk(0, CB, 1), blk(CB, CB, 2), blk(2 * CB, 100, 3, size=100))
    assert d.store.statfs().chunks == 3
    r = d.do(t.SetAttr, ino=f, size=CB + 7)
    cut_at = d.index
    assert extents(d, f) == [blk(0, CB, 1, fresh=False), blk(CB, 7, 2, fresh=False)]
    assert r.attr.size == CB + 7 and d.store.block_refs(bid(3)) == 0
    assert d.store.block_state(bid(3)) == ("dying", cut_at)
    assert d.store.gc_candidates() == [(bid(3), cut_at)]
    assert d.store.statfs().chunks == 2
    d.do(t.SetAttr, ino=f, size=3 * CB)
    assert extents(d, f)[1].length == 7, "extending adds a hole, not bytes"
    assert read_file(d.store, f)[CB + 7:] == bytes(2 * CB - 7)
    d.do(t.SetAttr, ino=f, size=CB // 2)
    assert extents(d, f) == [blk(0, CB // 2, 1, fresh=False)]
    d.do(t.SetAttr, ino=f, size=0)
    assert extents(d, f) == [] and d.store.statfs().chunks == 0
    assert [m for _, m in d.store.gc_candidates()] == sorted(m for _, m in d.store.gc_candidates())
    check_layout(d.store)


def test_commit_write_refcounts_dedup_and_replacement(d):
    f, g = d.create(ROOT, b"f"), d.create(ROOT, b"g")
    write(d, f, blk(0, 10, 1, size=10), blk(CB, 10, 1, size=10))
    write(d, g, blk(0, 10, 1, size=10, fresh=False))
    assert d.store.block_refs(bid(1)) == 3 and d.store.statfs().chunks == 1
    write(d, f, blk(0, 10, 1, size=10, fresh=False))
    assert d.store.block_refs(bid(1)) == 3, "the same bytes again replace themselves"
    r = write(d, f, blk(CB, 5, 2, size=5), size=CB + 5)
    assert r.attr.size == CB + 10, "commit_write never shrinks"
    assert d.store.block_refs(bid(1)) == 3, "the rest of the replaced extent stays"
    assert extents(d, f)[1:] == [blk(CB, 5, 2, size=5, fresh=False),
                                 blk(CB + 5, 5, 1, 5, size=10, fresh=False)]
    write(d, f, blk(CB + 5, 5, 2, size=5, fresh=False))
    assert d.store.block_refs(bid(1)) == 2
    assert d.store.conn.execute("SELECT live FROM block WHERE block_id = ?",
                                (bid(1),)).fetchone() == (20,)
    assert d.store.statfs().bytes == CB + 20
    check_layout(d.store)
    d.do(t.Unlink, parent=ROOT, name=b"g")
    d.do(t.Unlink, parent=ROOT, name=b"f")
    assert d.store.statfs().chunks == 0 and d.store.statfs().bytes == 0
    assert sorted(i for i, _ in d.store.gc_candidates()) == [bid(1), bid(2)]
    check_layout(d.store)


def test_commit_write_validation(d):
    f = d.create(ROOT, b"f")
    dd = d.mkdir(ROOT, b"d")
    assert d.do(t.CommitWrite, ino=dd, size=1).err == errno.EISDIR
    assert d.do(t.CommitWrite, ino=999, size=1).err == errno.ENOENT
    bad = [[blk(0, 0, 1)], [blk(0, 2, 1, size=1)], [blk(0, 1, 1, block_off=1, size=1)],
           [t.Slice(0, 1, b"short", 0, 1)], [t.Slice(0, 2, data=b"x")],
           [t.Slice(0, 1, bid(1), 0, 1, data=b"x")]]
    for slices in bad:
        assert d.do(t.CommitWrite, ino=f, size=1, slices=slices).err == errno.EINVAL, slices
    big = [inl(0, b"x" * t.COMMIT_INLINE_BYTES_MAX), inl(0, b"y")]
    assert d.do(t.CommitWrite, ino=f, size=1, slices=big).err == errno.E2BIG
    assert d.apply_decoded(t.CommitWrite(f, 1, d.tick(), big)).err == errno.E2BIG
    assert d.attr(f).size == 0 and extents(d, f) == []


def test_inline_data_round_trip_and_mixed_with_blocks(d):
    f = d.create(ROOT, b"f")
    r = write(d, f, inl(0, b"hello"))
    assert r.attr.size == 5 and extents(d, f) == [inl(0, b"hello")]
    d.do(t.SetAttr, ino=f, size=2)
    assert extents(d, f) == [inl(0, b"he")]
    write(d, f, inl(1, b"EY"), inl(10, b"tail"))
    assert read_file(d.store, f) == b"hEY" + bytes(7) + b"tail"
    write(d, f, blk(2, 10, 1, block_off=5))
    assert extents(d, f) == [inl(0, b"h"), inl(1, b"E"), blk(2, 10, 1, 5, fresh=False),
                             inl(12, b"il")], "extents are cut, never merged"
    assert read_file(d.store, f) == b"hE" + fake_block(bid(1), CB)[5:15] + b"il"
    assert d.store.conn.execute("SELECT nextents, inline_bytes FROM inode WHERE ino = ?",
                                (f,)).fetchone() == (4, 4)
    r = d.do(t.CommitWrite, ino=f, size=0)
    assert r.err == 0 and r.attr.size == 14, "an empty commit changes nothing but times"
    check_layout(d.store)


def test_manifest_pages_by_offset(d):
    f = d.create(ROOT, b"f")
    slices = [blk(i * CB, CB, i) for i in range(0, 50, 2)]  # with holes
    write(d, f, *slices, size=50 * CB)
    got, start, pages = [], 0, 0
    while True:
        page = d.store.manifest(f, start, limit=7)
        got += page.slices
        start, pages = page.next_off, pages + 1
        if page.done:
            break
    assert got == [dataclasses.replace(s, fresh=False) for s in slices] and pages == 4
    assert d.store.manifest(f, 3 * CB).slices[0].off == 4 * CB, "pages start at an extent"
    assert d.store.manifest(f, 60 * CB) == t.ManifestPage(0, 50 * CB, CB, [], 60 * CB, True,
                                                          d.attr(f))  # attributes too
    assert d.store.manifest(ROOT).err == errno.EISDIR
    assert d.store.manifest(999).err == errno.ENOENT


def test_manifests_answer_the_first_page_of_a_prefix_of_the_files_asked(d, monkeypatch):
    from server.meta import queries
    files = [d.create(ROOT, b"f%d" % i) for i in range(5)]
    for i, f in enumerate(files):
        write(d, f, inl(0, b"%d" % i * 100))
    pages = d.store.manifests([files[2], 999, ROOT, files[0]]).pages
    assert pages[0] == d.store.manifest(files[2]) and pages[3] == d.store.manifest(files[0])
    assert [p.err for p in pages] == [0, errno.ENOENT, errno.EISDIR, 0]  # in the order asked
    # Inline bytes past the bound end the prefix (at least one page comes).
    monkeypatch.setattr(queries, "MANIFEST_INLINE_BYTES_MAX", 250)
    assert len(d.store.manifests(files).pages) == 3
    monkeypatch.setattr(queries, "MANIFEST_INLINE_BYTES_MAX", 10)
    assert len(d.store.manifests(files).pages) == 1
    monkeypatch.setattr(queries, "MANIFESTS_MAX", 2)
    monkeypatch.setattr(queries, "MANIFEST_INLINE_BYTES_MAX", 1 << 20)
    assert len(d.store.manifests(files).pages) == 2
    # The wire form round-trips.
    from server.meta import codec
    reply = d.store.manifests(files[:2])
    assert codec.decode(t.ManifestPages, codec.encode(reply)) == reply


def test_death_marks_revival_and_forget(d):
    f = d.create(ROOT, b"f")
    write(d, f, blk(0, 1, 1, size=1))
    d.do(t.SetAttr, ino=f, size=0)
    mark = d.index
    assert d.store.gc_candidates() == [(bid(1), mark)]
    write(d, f, blk(0, 1, 1, size=1))  # fresh, stamped after the mark: revives
    assert d.store.gc_candidates() == [] and d.store.block_state(bid(1)) == ("live", 0)
    assert d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark]).err == 0
    assert d.store.block_state(bid(1)) == ("live", 0), "forgetting a live block does nothing"
    d.do(t.SetAttr, ino=f, size=0)
    mark2 = d.index
    assert d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark]).err == 0
    assert d.store.gc_candidates() == [(bid(1), mark2)], "an old mark forgets nothing"
    assert d.do(t.ForgetChunks, chunk_ids=[bid(1)], marks=[mark2]).err == 0
    assert d.store.gc_candidates() == [] and d.store.block_state(bid(1)) == ("gone", mark2)
    check_layout(d.store)


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


def test_sizes_the_namespace_cannot_count_get_efbig(d):
    """`truncate -s 9223372036854775807 f` next to any data used to turn
    the byte counter into a float (SQLite's REAL past int64), after which
    statfs failed for good. Now the growth that does not fit is EFBIG and
    changes nothing; shrinking still works, and the counter stays exact."""
    from server.meta import codec
    small = d.create(ROOT, b"small")
    assert d.do(t.SetAttr, ino=small, size=10).err == 0
    big = d.create(ROOT, b"big")
    before = d.attr(big)
    assert d.do(t.SetAttr, ino=big, size=2**63 - 1).err == errno.EFBIG
    assert d.attr(big) == before
    assert d.do(t.SetAttr, ino=big, size=2**63 - 11).err == 0  # exactly fits
    assert d.do(t.CommitWrite, ino=small, size=11, now_ns=d.tick(),
                slices=[t.Slice(10, 1, data=b"x")], observed=0).err == errno.EFBIG
    assert d.do(t.Clone, src=small, parent=ROOT, name=b"twin", mode=0o644, uid=0, gid=0,
                now_ns=d.tick()).err == errno.EFBIG
    assert d.store.lookup(ROOT, b"twin").err == errno.ENOENT
    stats = d.store.statfs()
    assert type(stats.bytes) is int and stats.bytes == 2**63 - 1
    assert codec.decode(t.StatFs, codec.encode(stats)) == stats
    assert d.do(t.SetAttr, ino=big, size=0).err == 0
    assert d.store.statfs().bytes == 10
    assert d.do(t.SetAttr, ino=small, size=2**63 - 1).err == 0  # alone it fits
