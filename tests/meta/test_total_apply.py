"""Apply is total (issue 10, part 4): a committed command that is hostile or
hits a handler bug becomes the same error result on every replica, changes
nothing, and the replicas keep applying. Before, ``Unlink(parent=2**63)``
made SQLite raise OverflowError out of apply: the Raft driver died, and after
every restart it died again on the same entry, on every node."""

import dataclasses
import errno
import logging
import sqlite3
import stat
import tempfile
from types import SimpleNamespace

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from server.meta import apply, codec, namespace
from server.meta import types as t
from server.meta.raftsm import MetaStateMachine
from server.meta.store import InitParams, MetaStore
from server.meta.validate import check
from server.raft.messages import EntryKind
from server.raft.server import RaftServer
from tests.meta.helpers import T0_NS, check_layout
from tests.raft.helpers import Net

B63 = 2**63
U64 = 2**64 - 1
NOW = T0_NS + 1000


def _machine(scratch: str) -> MetaStateMachine:
    return MetaStateMachine(MetaStore(":memory:", InitParams(now_ns=T0_NS)), scratch)


def _dump(sm: MetaStateMachine) -> list[str]:
    """The whole database as sorted SQL: equal lists, equal states."""
    return sorted(sm.store.conn.iterdump())


def _content(sm: MetaStateMachine) -> list[str]:
    """Like _dump, without the applied index (which every entry advances)."""
    sm.store.conn.execute("SAVEPOINT peek")
    try:
        sm.store.conn.execute("UPDATE state SET applied_index = 0")
        return _dump(sm)
    finally:
        sm.store.conn.execute("ROLLBACK TO peek")
        sm.store.conn.execute("RELEASE peek")


def _apply(sm: MetaStateMachine, index: int, cmd) -> t.Result:
    return codec.decode_result(sm.apply(index, codec.encode_command(cmd)))


BLOCKS = [b"%d" % i * 16 for i in range(1, 4)]

SETUP = [  # inos 2 (dir d), 3 (file f: a block and inline bytes), 4 (symlink s), 5 (file g)
    t.Mkdir(1, b"d", 0o755, 0, 0, NOW),
    t.Create(1, b"f", 0o644, 0, 0, NOW),
    t.Symlink(1, b"s", b"f", 0, 0, NOW),
    t.Create(2, b"g", 0o600, 1, 1, NOW),
    t.CommitWrite(3, 10, NOW, [t.Slice(0, 6, BLOCKS[0], 2, 8, fresh=True),
                               t.Slice(6, 4, data=b"tail")]),
    t.SetXattr(3, b"user.a", b"1", 0, NOW),
    t.CommitWrite(5, 8, NOW, [t.Slice(0, 8, BLOCKS[1], 0, 8, fresh=True)]),
    t.SetAttr(5, NOW, size=0),  # BLOCKS[1] dies at index 8
    t.Tick(NOW),
]
DYING_MARK = 8


def _setup_digests() -> list[bytes]:
    """What a compactor would read of f, so some generated Compacts match."""
    store = MetaStore(":memory:", InitParams(now_ns=T0_NS))
    for i, cmd in enumerate(SETUP, start=1):
        assert store.apply_command(i, cmd).err == 0, cmd
    assert store.block_state(BLOCKS[1]) == ("dying", DYING_MARK)
    return [store.range_digest(3, off, length) for off, length in ((0, 10), (0, 6), (2, 3))]


DIGESTS = _setup_digests()

# Each of these raised OverflowError out of apply before (SQLite int64).
POISON = [
    t.Unlink(parent=B63, name=b"f", now_ns=NOW),
    t.Rmdir(parent=U64, name=b"d", now_ns=NOW),
    t.Create(B63, b"x", 0o644, 0, 0, NOW),
    t.Link(ino=B63, new_parent=1, new_name=b"l", now_ns=NOW),
    t.Rename(1, b"f", B63, b"g", 0, NOW),
    t.SetAttr(3, NOW, size=B63),
    t.Mknod(1, b"dev", stat.S_IFCHR | 0o600, U64, 0, 0, NOW),
    t.CommitWrite(3, U64, NOW),
    t.SetXattr(B63, b"user.a", b"v", 0, NOW),
    t.RemoveXattr(U64, b"user.a", NOW),
    t.ReleaseOrphan(B63, NOW),
    t.CommitWrite(3, 10, NOW, [t.Slice(B63, 1, data=b"x")]),
    t.CommitWrite(3, 10, NOW, [t.Slice(0, B63, BLOCKS[0], 0, B63)]),
    t.CommitWrite(3, 10, NOW, [t.Slice(0, 1, BLOCKS[0], B63, U64)]),
    t.CommitWrite(3, 10, NOW, [t.Slice(0, 1, BLOCKS[0], 0, 1)], observed=U64),
    t.Compact(3, B63, 1, DIGESTS[0], []),
    t.Compact(3, 0, U64, DIGESTS[0], []),
    t.Compact(3, 0, 10, DIGESTS[0], [t.Slice(0, 1, BLOCKS[2], 0, 1)], observed=B63),
    t.ForgetChunks([BLOCKS[1]], [B63]),
    t.ForgetChunks([BLOCKS[1]], [DYING_MARK, DYING_MARK]),
]


def test_poison_commands_are_refused_and_later_commands_apply(tmp_path):
    sm = _machine(str(tmp_path))
    for i, cmd in enumerate(SETUP, start=1):
        assert _apply(sm, i, cmd).err == 0
    before, index = _content(sm), len(SETUP)
    for cmd in POISON:
        index += 1
        result = _apply(sm, index, cmd)
        assert result.err in (errno.EINVAL, errno.EFBIG), (cmd, result)
        assert type(result) is type(codec.decode_result(sm.validate(codec.encode_command(cmd))))
        assert sm.applied_index() == index and _content(sm) == before
    assert sm.store.apply_faults == 0
    removed = _apply(sm, index + 1, t.Unlink(1, b"f", NOW))
    assert (removed.err, removed.ino, removed.nlink) == (0, 3, 0)
    assert [p.ino for p in removed.parents] == [1]  # the directory's attributes come back
    assert sm.store.lookup(1, b"f").err == errno.ENOENT


def test_a_handler_bug_is_eio_on_every_replica_and_rolled_back(tmp_path, monkeypatch, caplog):
    def buggy_mkdir(conn, index, cmd):
        namespace.mkdir(conn, cmd)  # writes, then fails: all of it must go
        raise AssertionError("bug after the write")

    monkeypatch.setitem(apply._HANDLERS, t.Mkdir, buggy_mkdir)
    replicas = [_machine(str(tmp_path / str(i))) for i in range(2)]
    mkdir = codec.encode_command(t.Mkdir(1, b"new", 0o755, 0, 0, NOW))
    create = codec.encode_command(t.Create(1, b"after", 0o644, 0, 0, NOW))
    caplog.set_level(logging.WARNING, logger="chordfs.meta")
    results = [sm.apply_batch([(1, mkdir), (2, create)]) for sm in replicas]
    assert results[0] == results[1]
    assert codec.decode_result(results[0][0]) == t.EntryReply(errno.EIO)
    assert codec.decode_result(results[0][1]).err == 0
    for sm in replicas:
        assert sm.applied_index() == 2 and sm.store.apply_faults == 1
        assert sm.store.lookup(1, b"new").err == errno.ENOENT
        assert sm.store.statfs().next_ino == 3  # the bug's inode number was rolled back too
    assert _dump(replicas[0]) == _dump(replicas[1])
    faults = [r.getMessage() for r in caplog.records if "meta.apply_fault" in r.getMessage()]
    assert len(faults) == 2 and "index=1 command=Mkdir" in faults[0]
    assert "AssertionError" in faults[0]


def test_only_deterministic_exceptions_become_results():
    """An exception another replica would not see (this node's disk or
    memory) must stop the batch instead: recording it would diverge."""
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13  # SQLITE_FULL
    ioerr = sqlite3.OperationalError("disk I/O error")
    ioerr.sqlite_errorcode = 10 | (3 << 8)  # SQLITE_IOERR_WRITE
    bad_sql = sqlite3.OperationalError("no such column: x")
    bad_sql.sqlite_errorcode = 1  # SQLITE_ERROR: the same on every replica
    for exc in (full, ioerr, MemoryError(), OSError(errno.EIO, "eio"), KeyboardInterrupt()):
        assert apply.is_local_failure(exc), exc
    for exc in (bad_sql, OverflowError("int64"), AssertionError(), sqlite3.IntegrityError()):
        assert not apply.is_local_failure(exc), exc


# ---------------------------------------------------------- the propose path


class _Service:
    def __init__(self, sm):
        self.sm, self.proposed = sm, []

    async def propose(self, data, *, timeout_s):
        self.proposed.append(data)
        return 7, 2, b"applied"


class _Server(RaftServer):
    def __init__(self, service):
        self.raft_service = service


async def test_propose_answers_a_refused_command_without_proposing(tmp_path):
    service = _Service(_machine(str(tmp_path)))
    server = _Server(service)
    for data, want in [
        (codec.encode_command(POISON[0]), t.RemoveReply(errno.EINVAL)),
        (codec.encode_command(t.Create(1, b"x" * 256, 0, 0, 0, NOW)), t.EntryReply(errno.ENAMETOOLONG)),
        (b"\x00\x01 not capnp", t.Status(errno.EINVAL)),
    ]:
        results = SimpleNamespace()
        await server.propose(SimpleNamespace(command=data, forwarded=False), results)
        assert (results.index, results.term) == (0, 0)
        assert codec.decode_result(results.result) == want
    assert service.proposed == []
    good = codec.encode_command(t.Create(1, b"x", 0o644, 0, 0, NOW))
    results = SimpleNamespace()
    await server.propose(SimpleNamespace(command=good, forwarded=False), results)
    assert service.proposed == [good] and (results.index, results.term) == (7, 2)


# ---------------------------------------------- hostile commands through Raft

def mostly(sane, hostile):
    """Three values in ten hostile: a command with every field hostile is
    refused at the first one, and the handlers behind it never run."""
    return st.integers(0, 9).flatmap(lambda n: hostile if n < 3 else sane)


ints = mostly(st.integers(0, 12) | st.sampled_from(
    [0o644, 0o755, stat.S_IFREG | 0o644, stat.S_IFIFO | 0o600, stat.S_IFCHR | 0o600,
     stat.S_IFDIR | 0o755, 4 << 20, NOW]),
    st.sampled_from([-1, 2**31, 2**32 - 1, 2**32, 2**53, B63 - 1, B63, U64, 2**64, -B63,
                     -B63 - 1, 0o170777]) | st.integers(-(2**70), 2**70))
inos = mostly(st.integers(1, 6), st.sampled_from([0, -1, B63 - 1, B63, U64, 2**64]))
blobs = mostly(st.binary(max_size=16), st.sampled_from(
    [0, 255, 256, 4095, 4096, 65536, 65537]).map(lambda n: b"v" * n))
names = mostly(st.sampled_from([b"f", b"d", b"g", b"s", b"n", b"user.a", b"user.b"]),
               st.sampled_from([b"", b".", b"..", b"a/b", b"a\0b", b"x" * 255, b"x" * 256,
                                b"\xff\xfe"]) | st.binary(max_size=8))
times = st.sampled_from([t.Utime.OMIT, t.Utime.NOW]) | ints
# Slices a writer could send (small offsets, the setup's blocks: live,
# dying, unknown; overlapping each other) and hostile ones.
sane_slice = st.one_of(
    st.builds(lambda off, data: t.Slice(off, len(data), data=data),
              st.integers(0, 12), st.binary(min_size=1, max_size=6)),
    st.builds(lambda off, length, block, block_off, fresh: t.Slice(
        off, length, block, block_off, block_off + length + 2, fresh=fresh),
        st.integers(0, 12), st.integers(1, 6), st.sampled_from(BLOCKS), st.integers(0, 2),
        st.booleans()))
hostile_slice = st.builds(t.Slice, off=ints, length=ints, block_id=mostly(
    st.sampled_from(BLOCKS), blobs | names), block_off=ints, block_size=ints, data=blobs,
    fresh=st.booleans())
# One list in ten is over the limit (decoding 8193 slices is slow).
slice_lists = st.integers(0, 9).flatmap(
    lambda n: st.just([t.Slice(0, 1, data=b"x")] * (t.COMMIT_SLICES_MAX + 1)) if n == 0
    else st.lists(mostly(sane_slice, hostile_slice), max_size=3))
marks = mostly(st.sampled_from([0, 1, DYING_MARK, DYING_MARK + 1]), ints)
FIELDS = {
    "parent": inos, "ino": inos, "new_parent": inos, "src": inos, "name": names,
    "new_name": names, "target": mostly(names, blobs), "value": blobs,
    "keep_orphan": st.booleans(), "atime": times, "mtime": times, "slices": slice_lists,
    "observed": mostly(st.integers(0, 12), ints),
    "expect": mostly(st.sampled_from(DIGESTS), blobs),
    "chunk_ids": st.lists(mostly(st.sampled_from(BLOCKS), names | blobs), max_size=3),
    "marks": st.lists(marks, max_size=3),
}


def _command(cls):
    optional = {"mode", "uid", "gid", "size"} if cls is t.SetAttr else set()
    return st.builds(cls, **{
        f.name: (st.none() | ints) if f.name in optional else FIELDS.get(f.name, ints)
        for f in dataclasses.fields(cls)})


commands = st.one_of([_command(cls) for cls in t.COMMANDS])


def _encodable(cmd) -> bytes | None:
    try:
        return codec.encode_command(cmd)
    except ValueError:  # what a proposer hears for 2**64 or -1 as well
        return None


def _replicate(datas: list[bytes], scratch: str) -> list[MetaStateMachine]:
    """Commit ``datas`` through three Raft cores and apply each node's
    committed entries to its own state machine, in differently sized
    batches (1, 3, all): batching must not change a result or the state."""
    net = Net(3)
    leader = net.elect(1)
    for data in datas:
        leader.propose(data)
        net.pump()
    net.tick(nodes=[1])  # followers learn the last commit at the leader's next tick
    replicas, results = [], []
    for node, batch_size in zip(sorted(net.nodes), (1, 3, len(datas) + 1)):
        sm = _machine(f"{scratch}/{node}")
        entries = [(e.index, e.data) for e in net.applied[node] if e.kind == EntryKind.COMMAND]
        assert len(entries) == len(datas)
        out = []
        for i in range(0, len(entries), batch_size):
            out.extend(sm.apply_batch(entries[i:i + batch_size]))
        replicas.append(sm)
        results.append(out)
    assert results[0] == results[1] == results[2]
    for data, result in zip(datas, results[0]):
        refused = replicas[0].validate(data)
        assert refused is None or refused == result  # propose-time and apply agree
    return replicas


@settings(max_examples=30, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(commands | st.binary(max_size=24), min_size=1, max_size=8))
def test_hostile_commands_through_raft_keep_replicas_identical(cmds):
    datas = [codec.encode_command(c) for c in SETUP]
    for cmd in cmds:
        if isinstance(cmd, bytes):
            datas.append(cmd)  # a proposer that sends garbage
            continue
        data = _encodable(cmd)
        if data is None:
            # The wire cannot carry it; the proposer-side check is stricter.
            assert check(cmd) != 0, cmd
        else:
            datas.append(data)
    with tempfile.TemporaryDirectory() as scratch:
        replicas = _replicate(datas, scratch)
        assert _dump(replicas[0]) == _dump(replicas[1]) == _dump(replicas[2])
        assert replicas[0].snapshot() == replicas[1].snapshot() == replicas[2].snapshot()
        # A fault is a handler bug the static check missed: make it visible.
        assert [sm.store.apply_faults for sm in replicas] == [0, 0, 0]
        check_layout(replicas[0].store)


@settings(max_examples=100, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(commands)
def test_any_decoded_command_applies_without_raising(cmd):
    """Values the wire cannot carry too (apply_command takes dataclasses):
    a refused command changes nothing but the applied index."""
    with tempfile.TemporaryDirectory() as scratch:
        sm = _machine(scratch)
        for i, setup in enumerate(SETUP, start=1):
            sm.store.apply_command(i, setup)
        before = _content(sm)
        result = sm.store.apply_command(len(SETUP) + 1, cmd)
        assert sm.applied_index() == len(SETUP) + 1 and sm.store.apply_faults == 0
        if check(cmd):
            assert result.err == check(cmd) and _content(sm) == before
        check_layout(sm.store)
