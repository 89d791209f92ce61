"""Directory read leases in the state machine (server/meta/leases.py): shared
grants beside each other and never beside a writer, every change a reader
could answer stale from refused with LEASED while another holder's read
lease covers it, nothing else refused, release and expiry, and a seeded run
checking that no applied change ever alters what a live read lease covers
(entries of the directory, its attributes, and the attributes, xattrs and
content of every node named in it)."""

from __future__ import annotations

import errno
import os
import random

import pytest

from server.meta import types as t
from server.meta.schema import ROOT_INO

from .test_leases import DURATION, SEC, acquire, advance, batch, create, fresh

A, B, C = 11, 22, 33
LEASED = t.LEASED


def read_lease(d, holder: int, dir_ino: int, epoch: int):
    return d.do(t.AcquireLease, holder=holder, dir=dir_ino, epoch=epoch,
                duration_ns=DURATION, shared=True)


def inline(d, ino: int, data: bytes) -> t.CommitWrite:
    return t.CommitWrite(ino=ino, size=len(data), now_ns=d.tick(),
                         slices=[t.Slice(0, len(data), data=data)])


def test_readers_share_a_directory_and_keep_writers_out():
    d = fresh()
    dir_ino = d.mkdir(ROOT_INO, b"d")
    assert read_lease(d, A, dir_ino, 1).err == 0
    assert read_lease(d, B, dir_ino, 2).err == 0
    assert acquire(d, C, dir_ino, 3).err == errno.EBUSY      # a writer waits for readers
    assert acquire(d, A, dir_ino, 4).err == errno.EBUSY      # B still reads
    d.do(t.ReleaseLease, holder=B, dir=dir_ino, epoch=2)
    assert acquire(d, A, dir_ino, 5).err == 0                 # A's read lease becomes a write lease
    assert read_lease(d, C, dir_ino, 6).err == errno.EBUSY    # no reader beside a writer
    assert read_lease(d, A, dir_ino, 7).err == 0              # the writer asking to read: no change
    assert acquire(d, C, dir_ino, 8).err == errno.EBUSY


def test_every_change_a_reader_could_answer_stale_is_refused():
    d = fresh()
    dir_ino = d.mkdir(ROOT_INO, b"d")
    other = d.mkdir(ROOT_INO, b"e")
    f = d.create(dir_ino, b"f")
    sub = d.mkdir(dir_ino, b"sub")
    assert d.do(t.Link, ino=f, new_parent=other, new_name=b"hard").err == 0
    assert read_lease(d, A, dir_ino, 1).err == 0
    refused = [
        create(d, dir_ino, b"new"),
        t.SetAttr(ino=f, now_ns=d.tick(), mode=0o600),
        t.SetAttr(ino=dir_ino, now_ns=d.tick(), mode=0o700),
        t.SetXattr(ino=f, name=b"user.x", value=b"1", flags=0, now_ns=d.tick()),
        inline(d, f, b"hello"),
        # f's link count changes: D names f, so D's readers are recalled.
        t.Link(ino=f, new_parent=other, new_name=b"hard2", now_ns=d.tick()),
        t.Unlink(parent=other, name=b"hard", now_ns=d.tick()),
        t.Rename(parent=other, name=b"hard", new_parent=other, new_name=b"h3", flags=0,
                 now_ns=d.tick()),
        t.Rename(parent=dir_ino, name=b"f", new_parent=other, new_name=b"g", flags=0,
                 now_ns=d.tick()),
        t.Rmdir(parent=dir_ino, name=b"sub", now_ns=d.tick()),
        t.Clone(src=f, parent=dir_ino, name=b"c", mode=0o644, uid=0, gid=0, now_ns=d.tick()),
    ]
    for cmd in refused:
        before = d.store.getattr(f), d.names(dir_ino), d.names(other)
        assert d.apply(cmd).err == LEASED, cmd
        assert (d.store.getattr(f), d.names(dir_ino), d.names(other)) == before
    # Elsewhere nothing waits: a file named only in E, a new name in E, and
    # a read-only clone out of D.
    g = d.create(other, b"only-here")
    assert d.do(t.SetAttr, ino=g, mode=0o600).err == 0
    assert d.apply(inline(d, g, b"x")).err == 0
    assert d.do(t.Clone, src=f, parent=other, name=b"copy", mode=0o644, uid=0, gid=0).err == 0
    assert sub  # named in D: its rmdir was refused above
    # The holder's own batch is not kept out by its own read lease...
    reply = batch(d, A, 1, [t.SetAttr(ino=f, now_ns=d.tick(), mode=0o640)])
    assert reply.err == 0
    # ...but another reader's lease keeps out A's batch too.
    assert read_lease(d, B, dir_ino, 2).err == 0
    assert batch(d, A, 2, [t.SetAttr(ino=f, now_ns=d.tick(), mode=0o600)]).err == LEASED


def test_release_and_expiry_let_changes_through():
    d = fresh()
    dir_ino = d.mkdir(ROOT_INO, b"d")
    f = d.create(dir_ino, b"f")
    assert read_lease(d, A, dir_ino, 1).err == 0
    assert d.do(t.SetAttr, ino=f, mode=0o600).err == LEASED
    d.do(t.ReleaseLease, holder=A, dir=dir_ino, epoch=1)
    assert d.do(t.SetAttr, ino=f, mode=0o600).err == 0
    assert read_lease(d, B, dir_ino, 2).err == 0
    advance(d, DURATION - SEC)
    assert d.do(t.SetAttr, ino=f, mode=0o640).err == LEASED
    advance(d, 2 * SEC)  # B's lease ran out in log time
    assert d.do(t.SetAttr, ino=f, mode=0o640).err == 0
    # An expired reader's row does not come back with its next grant elsewhere.
    other = d.mkdir(ROOT_INO, b"e")
    assert read_lease(d, B, other, 3).err == 0
    assert d.do(t.SetAttr, ino=f, mode=0o644).err == 0


# ---------------------------------------------------------------- seeded run


def _covered(d, dir_ino: int):
    """What a reader of ``dir_ino`` may answer from its cache."""
    store = d.store
    view = [store.getattr(dir_ino)]
    page = store.readdir(dir_ino, b"", 10_000, True)
    for e in page.entries:
        view.append((e.name, store.getattr(e.ino), store.listxattr(e.ino),
                     store.manifest(e.ino, 0) if e.kind == 1 else None))
    return view


SEEDS = int(os.environ.get("READ_LEASE_SEEDS", "40"))


@pytest.mark.parametrize("seed", range(SEEDS))
def test_no_applied_change_alters_what_a_live_read_lease_covers(seed):
    rng = random.Random(seed)
    d = fresh()
    dirs = [ROOT_INO, d.mkdir(ROOT_INO, b"a"), d.mkdir(ROOT_INO, b"b")]
    dirs.append(d.mkdir(dirs[1], b"c"))
    files = [d.create(rng.choice(dirs), b"f%d" % i) for i in range(4)]
    names = [b"f0", b"f1", b"f2", b"f3", b"x", b"y", b"a", b"b", b"c"]
    epoch = 0

    def random_command():
        kind = rng.randrange(10)
        p, q = rng.choice(dirs), rng.choice(dirs)
        n, m = rng.choice(names), rng.choice(names)
        ino = rng.choice(files + dirs[1:])
        if kind == 0:
            return create(d, p, n)
        if kind == 1:
            return t.Unlink(parent=p, name=n, now_ns=d.tick())
        if kind == 2:
            return t.Rename(parent=p, name=n, new_parent=q, new_name=m, flags=0, now_ns=d.tick())
        if kind == 3:
            return t.Link(ino=rng.choice(files), new_parent=q, new_name=m, now_ns=d.tick())
        if kind == 4:
            return t.SetAttr(ino=ino, now_ns=d.tick(), mode=rng.choice((0o600, 0o644)))
        if kind == 5:
            return inline(d, rng.choice(files), rng.randbytes(rng.randrange(1, 9)))
        if kind == 6:
            return t.SetXattr(ino=ino, name=b"user.k", value=rng.randbytes(2), flags=0,
                              now_ns=d.tick())
        if kind == 7:
            return t.Mkdir(parent=p, name=n, mode=0o755, uid=0, gid=0, now_ns=d.tick())
        if kind == 8:
            return t.Rmdir(parent=p, name=n, now_ns=d.tick())
        return t.Clone(src=rng.choice(files), parent=p, name=n, mode=0o644, uid=0, gid=0,
                       now_ns=d.tick())

    refused = applied = 0
    for step in range(150):
        roll = rng.random()
        if roll < 0.15:
            epoch += 1
            read_lease(d, rng.choice((A, B)), rng.choice(dirs), epoch)
            continue
        if roll < 0.22:
            for row in d.store.conn.execute("SELECT dir, holder, epoch FROM read_lease").fetchall():
                if rng.random() < 0.5:
                    d.do(t.ReleaseLease, holder=row[1], dir=row[0], epoch=row[2])
            continue
        if roll < 0.25:
            advance(d, rng.choice((SEC, DURATION)))
            continue
        live = [row[0] for row in d.store.conn.execute(
            "SELECT r.dir FROM read_lease r JOIN lease_holder h USING (holder) "
            "WHERE h.expires_ns > (SELECT log_ns FROM state)")]
        before = {dir_ino: _covered(d, dir_ino) for dir_ino in set(live)
                  if d.store.getattr(dir_ino).err == 0}
        cmd = random_command()
        result = d.apply(cmd)
        if result.err == LEASED:
            refused += 1
            continue
        applied += result.err == 0
        if result.err == 0 and isinstance(cmd, (t.Create, t.Mkdir, t.Clone)):
            (dirs if isinstance(cmd, t.Mkdir) else files).append(result.attr.ino)
        for dir_ino, view in before.items():
            assert _covered(d, dir_ino) == view, (
                f"seed {seed} step {step}: {cmd} changed what a reader of {dir_ino} caches")
    assert refused and applied, (refused, applied)


def test_a_version_3_database_is_upgraded_in_place(tmp_path):
    from server.meta import schema
    from server.meta.store import InitParams, MetaStore

    path = str(tmp_path / "meta.db")
    store = MetaStore(path, InitParams(now_ns=1))
    conn = store.conn
    conn.execute("DROP TABLE read_lease")
    conn.execute("DROP INDEX dentry_by_ino")
    for table in ("session_reply", "client_session"):  # version 5
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE state SET schema_version = 3 WHERE id = 0")
    conn.commit()
    store.close()
    store = MetaStore(path, InitParams(now_ns=2))
    assert schema.read_state(store.conn)["schema_version"] == schema.SCHEMA_VERSION == 5
    assert store.conn.execute("SELECT COUNT(*) FROM read_lease").fetchone()[0] == 0
    assert store.conn.execute("SELECT COUNT(*) FROM client_session").fetchone()[0] == 0
    store.close()
