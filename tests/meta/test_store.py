"""Persistence, re-delivery, determinism, snapshots, paging and the codec."""

import errno
import random
import stat

import pytest

from server.meta import codec
from server.meta import types as t
from server.meta.store import InitParams, MetaStore, SnapshotError

from .helpers import T0_NS, Driver, check_layout

ROOT = t.ROOT_INO


def random_log(seed: int, steps: int) -> Driver:
    """A seeded workload touching every command; returns its driver (whose
    ``log`` holds the encoded entries)."""
    rng = random.Random(seed)
    d = Driver()
    names = [b"n%d" % i for i in range(12)]
    dirs, files = [ROOT], []
    for _ in range(steps):
        op = rng.randrange(13)
        parent, name = rng.choice(dirs), rng.choice(names)
        if op == 0:
            r = d.do(t.Mkdir, parent=parent, name=name, mode=0o755)
            if r.err == 0:
                dirs.append(r.attr.ino)
        elif op in (1, 2):
            r = d.do(t.Create, parent=parent, name=name, mode=0o644)
            if r.err == 0:
                files.append(r.attr.ino)
        elif op == 3:
            d.do(t.Rename, parent=parent, name=name, new_parent=rng.choice(dirs),
                 new_name=rng.choice(names), flags=rng.choice([0, 1, 2]))
        elif op == 4:
            d.do(t.Unlink, parent=parent, name=name)
        elif op == 5:
            d.do(t.Rmdir, parent=parent, name=name)
        elif op == 6 and files:
            ino, off = rng.choice(files), rng.randrange(3 << 20)
            block = bytes([rng.randrange(8)]) * 16
            slices = [t.Slice(off, 100, block, rng.randrange(100), 200, fresh=rng.random() < 0.7),
                      t.Slice(rng.randrange(1 << 20), 3, data=name[:3].ljust(3, b"-"))]
            d.do(t.CommitWrite, ino=ino, size=rng.randrange(1, 3 << 22), slices=slices,
                 observed=d.index)
        elif op == 7 and files:
            d.do(t.SetAttr, ino=rng.choice(files), size=rng.randrange(1 << 22), mode=0o600)
        elif op == 8 and files:
            d.do(t.SetXattr, ino=rng.choice(files), name=b"user.k", value=name, flags=0)
        elif op == 9 and files:
            d.do(t.Link, ino=rng.choice(files), new_parent=parent, new_name=name)
        elif op == 10:
            d.do(t.Tick, now_ns=d.now_ns + rng.randrange(20 * 10**9))
        elif op == 11:
            dying = d.store.gc_candidates(limit=rng.randrange(1, 4))
            d.do(t.ForgetChunks, chunk_ids=[i for i, _ in dying], marks=[m for _, m in dying])
        elif op == 12 and files:
            ino = rng.choice(files)
            off, length = rng.randrange(1 << 20), rng.randrange(1, 1 << 20)
            expect = d.store.range_digest(ino, off, length)
            block = bytes([8 + rng.randrange(8)]) * 16
            end = min(off + length, d.store.getattr(ino).attr.size if d.store.getattr(ino).attr else 0)
            slices = [t.Slice(off, end - off, block, 0, end - off, fresh=True)] if end > off else []
            d.do(t.Compact, ino=ino, off=off, length=length, expect=expect, slices=slices,
                 observed=d.index)
    return d


def replay(store: MetaStore, log) -> None:
    for index, data in log:
        store.apply(index, data)


def test_restart_resumes_at_applied_index_and_ignores_redelivery(tmp_path):
    path = str(tmp_path / "meta.db")
    d = Driver(path=path)
    d.mkdir(ROOT, b"a")
    d.create(ROOT, b"f")
    d.store.close()
    store = MetaStore(path)
    assert store.applied_index == 2
    again = codec.encode_command(t.Create(ROOT, b"g", 0o644, 0, 0, T0_NS))
    assert store.apply(2, again) == t.AlreadyApplied(2, 2)
    assert store.lookup(ROOT, b"g").err == errno.ENOENT
    assert store.apply(5, again).err == 0, "gaps (non-metadata entries) are fine"
    assert store.applied_index == 5 and store.checkpoint() == 5
    store.close()


def test_missing_database_needs_init(tmp_path):
    with pytest.raises(FileNotFoundError):
        MetaStore(str(tmp_path / "none.db"))


def test_failures_change_nothing_not_even_the_index(tmp_path, monkeypatch):
    d = Driver(path=str(tmp_path / "m.db"))
    d.mkdir(ROOT, b"a")
    with pytest.raises(ValueError):
        d.store.apply(2, b"\x00\x01 not capnp")
    assert d.store.applied_index == 1
    good = codec.encode_command(t.Mkdir(ROOT, b"b", 0o755, 0, 0, T0_NS))

    def disk_gone(conn, index, cmd):
        raise OSError(errno.EIO, "disk gone")  # local to this node: not a result
    from server.meta import apply
    monkeypatch.setitem(apply._HANDLERS, t.Rmdir, disk_gone)
    with pytest.raises(OSError):
        apply.apply_batch(d.store.conn, [(2, codec.decode_command(good)),
                                         (3, t.Rmdir(ROOT, b"a", T0_NS))])
    monkeypatch.undo()
    assert d.store.applied_index == 1 and d.store.lookup(ROOT, b"b").err == errno.ENOENT
    results = d.store.apply_batch([(2, good), (3, good)])
    assert [r.err for r in results] == [0, errno.EEXIST] and d.store.applied_index == 3


def test_error_results_still_advance_the_index():
    d = Driver()
    assert d.do(t.Rmdir, parent=ROOT, name=b"nope").err == errno.ENOENT
    assert d.store.applied_index == 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_log_gives_byte_identical_snapshots(tmp_path, seed):
    source = random_log(seed, 400)
    a = MetaStore(str(tmp_path / "a.db"), InitParams(now_ns=T0_NS))
    b = MetaStore(":memory:", InitParams(now_ns=T0_NS))
    replay(a, source.log)
    for i in range(0, len(source.log), 37):
        b.apply_batch(source.log[i:i + 37])
    paths = [str(tmp_path / f"{n}.snap") for n in "abs"]
    for store, path in zip((a, b, source.store), paths):
        assert store.snapshot_to(path) == len(source.log)
    blobs = [open(p, "rb").read() for p in paths]
    assert blobs[0] == blobs[1] == blobs[2]
    assert source.store.statfs().inodes > 5
    check_layout(source.store)


def test_random_log_reaches_every_block_state():
    """The workload above exercises the whole block lifecycle."""
    source = random_log(3, 600)
    store, states = MetaStore(":memory:", InitParams(now_ns=T0_NS)), set()
    for index, data in source.log:
        assert store.apply(index, data).err in (0, errno.ENOENT, errno.EEXIST, errno.ENOTDIR,
                                                errno.EISDIR, errno.ENOTEMPTY, errno.EINVAL,
                                                errno.EAGAIN, errno.ESTALE, errno.EPERM)
        states |= {store.block_state(bytes([i]) * 16)[0] for i in range(16)}
    assert states == {"live", "dying", "gone", "unknown"}
    assert store.apply_faults == 0
    check_layout(store)


def test_restore_then_continue_matches_straight_replay(tmp_path):
    source = random_log(7, 300)
    half = len(source.log) // 2
    first = MetaStore(str(tmp_path / "first.db"), InitParams(now_ns=T0_NS))
    replay(first, source.log[:half])
    snap = str(tmp_path / "half.snap")
    assert first.snapshot_to(snap) == half
    with pytest.raises(FileExistsError):
        first.snapshot_to(snap)
    other = MetaStore(str(tmp_path / "other.db"), InitParams(now_ns=T0_NS))
    other.apply(1, source.log[0][1])
    assert other.restore_from(snap) == half
    replay(other, source.log[half:])
    other.close()
    other = MetaStore(str(tmp_path / "other.db"))
    assert other.applied_index == len(source.log)
    other.snapshot_to(str(tmp_path / "o.snap"))
    source.store.snapshot_to(str(tmp_path / "s.snap"))
    assert (tmp_path / "o.snap").read_bytes() == (tmp_path / "s.snap").read_bytes()


def test_restore_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a database" * 100)
    store = MetaStore(":memory:", InitParams(now_ns=T0_NS))
    with pytest.raises(SnapshotError):
        store.restore_from(str(bad))
    assert store.getattr(ROOT).err == 0


def test_readdir_pages_are_stable_under_concurrent_changes():
    d = Driver()
    names = [b"f%05d" % i for i in range(3000)]
    for name in names:
        d.create(ROOT, name)
    seen, cursor, pages = [], b"", 0
    while True:
        page = d.store.readdir(ROOT, cursor, limit=100_000)
        assert len(page.entries) <= t.READDIR_PAGE_MAX
        seen += [e.name for e in page.entries]
        cursor, pages = page.cursor, pages + 1
        d.create(ROOT, b"new%d" % pages)
        d.do(t.Unlink, parent=ROOT, name=b"new%d" % pages)
        if page.done:
            break
    assert seen == names and pages == 3
    assert d.store.readdir(d.create(ROOT, b"zz")).err == errno.ENOTDIR


SAMPLES = [
    t.Create(1, b"n", 0o644, 1, 2, -5),
    t.Mkdir(1, b"\xff\x00", 0o755, 3, 4, 10**18),
    t.Mknod(1, b"c", stat.S_IFCHR | 0o600, 2**40, 0, 0, 1),
    t.Symlink(1, b"l", b"../t", 0, 0, 1),
    t.Link(2, 1, b"h", 1),
    t.Unlink(1, b"u", 1, keep_orphan=True),
    t.Rmdir(1, b"r", 1),
    t.Rename(1, b"a", 2, b"b", t.RENAME_EXCHANGE, 1, keep_orphan=True),
    t.SetAttr(5, 9, mode=0o7777, uid=2**32 - 1, gid=0, size=2**63, atime=t.Utime.NOW, mtime=-7),
    t.SetAttr(5, 9),
    t.SetXattr(5, b"user.x", b"\x00v", t.XATTR_CREATE, 3),
    t.RemoveXattr(5, b"user.x", 3),
    t.CommitWrite(5, 10, 3, [t.Slice(0, 10, b"c" * 16, 2, 12, fresh=True),
                             t.Slice(2**62, 1, data=b"\x00")], observed=2**63 - 1),
    t.CommitWrite(5, 3, 3),
    t.Compact(5, 4, 2**40, b"\x01" * 16, [t.Slice(4, 2, b"d" * 16, 0, 2, fresh=True)], 77),
    t.Tick(-(2**63)),
    t.ReleaseOrphan(5, 3),
    t.ForgetChunks([b"a" * 16, b"b" * 16], [1, 2**63 - 1]),
    t.Clone(5, 1, b"copy", 0o640, 7, 8, 3),
    t.AcquireLease(9, 2, 3, 10**10, 64),
    t.ReleaseLease(9, 2, 3),
    t.LeaseBatch(9, 4, [b"op1", b"op2"], [0, 77], [2], [3], 16),
    t.OpenSession(2**62),
    t.Sessioned(5, 7, 3, [b"op"]),
]


@pytest.mark.parametrize("cmd", SAMPLES, ids=lambda c: type(c).__name__)
def test_codec_round_trip_commands(cmd):
    assert codec.decode_command(codec.encode_command(cmd)) == cmd


def test_a_directory_page_goes_column_by_column_and_refuses_uneven_columns():
    attr = t.Attr(1, 2, 3, 4, 5, 6, 7, -8, 9, 10)
    plus = t.DirPage(0, [t.DirEntry(b"a%d" % i, i + 2, stat.S_IFREG, attr, i % 2 == 0)
                         for i in range(300)], b"a299", False, 1)
    assert codec.decode(t.DirPage, codec.encode(plus)) == plus
    message = codec.schema.DirPage.new_message()
    message.names, message.inos, message.kinds = [b"a", b"b"], [2], [stat.S_IFREG] * 2
    with pytest.raises(ValueError):
        codec.decode(t.DirPage, message.to_bytes_packed())
    message = codec.schema.DirPage.new_message()
    message.names, message.inos, message.kinds = [b"a", b"b"], [2, 3], [stat.S_IFREG] * 2
    message.attrs, message.times = [1] * 14, [0] * 5  # one time short
    message.hasXattrs, message.hasAttr = [False, False], [True, True]
    with pytest.raises(ValueError):
        codec.decode(t.DirPage, message.to_bytes_packed())


def test_codec_covers_every_command_and_query_type():
    assert {type(c) for c in SAMPLES} == set(t.COMMANDS)
    attr = t.Attr(1, 2, 3, 4, 5, 6, 7, -8, 9, 10)
    entries = [t.DirEntry(b"x", 2, stat.S_IFREG), t.DirEntry(b"y", 1, stat.S_IFDIR, attr)]
    for value in [t.DirPage(0, entries, b"y", False, 1),
                  t.BytesReply(0, b"v"), t.NamesReply(0, [b"a", b"b"]),
                  t.ManifestPage(0, 9, 4, [t.Slice(1, 2, b"c" * 16, 3, 5),
                                           t.Slice(5, 1, data=b"i")], 6, False),
                  t.StatFs(1, 2, 3, 4, 5), attr]:
        assert codec.decode(type(value), codec.encode(value)) == value
    for result in [t.Status(2), t.EntryReply(0, attr), t.EntryReply(17),
                   t.RemoveReply(0, 4, 1), t.AlreadyApplied(3, 9),
                   t.LeaseReply(0, 3, 100, 164, attr, 5),
                   t.BatchReply(0, [b"r1", b"r2"], 101, 164)]:
        assert codec.decode_result(codec.encode_result(result)) == result
    with pytest.raises(ValueError):
        codec.decode_command(codec.encode_result(t.Status(0))[:3])
