"""Snapshots in parts: cut and joined again byte-exact through the wire
structs; a part that does not continue the snapshot being joined, or a
snapshot over the size bound, is refused and leaves nothing half-joined."""

import os

import pytest

from server.raft.messages import (InstallSnapshot, Membership, ProtocolError, Snapshot,
                                  SnapshotMeta)
from server.raft.snapparts import Joiner, cut
from server.raft.wire import SnapshotPart, fill_message, message_from, raft_capnp


def _snapshot_message(data: bytes, index=40, frm=1) -> InstallSnapshot:
    meta = SnapshotMeta(index, 3, Membership(frozenset({1, 2, 3})))
    return InstallSnapshot(frm, 2, 5, Snapshot(meta, data))


def _over_the_wire(m):
    b = raft_capnp.RaftMessage.new_message()
    fill_message(b, m)
    with raft_capnp.RaftMessage.from_bytes(b.to_bytes()) as r:
        return message_from(r)


@pytest.mark.parametrize("size", [1, 999, 1000, 1001, 4567])
async def test_parts_join_to_the_same_message(size):
    whole = _snapshot_message(bytes(i % 251 for i in range(size)))
    parts = cut(whole, part_bytes=1000)
    assert len(parts) == max(1, -(-size // 1000))
    joiner, out = Joiner(), None
    for i, part in enumerate(parts):
        got = _over_the_wire(part)
        assert type(got) is SnapshotPart and got.total == size
        out = await joiner.add(got)
        assert (out is None) == (i < len(parts) - 1)
    assert out == whole


def test_a_whole_snapshot_still_decodes_as_one_message():
    whole = _snapshot_message(b"x" * 10)
    assert _over_the_wire(whole) == whole


async def test_a_gap_or_a_foreign_part_is_refused_and_drops_the_partial_snapshot():
    a = cut(_snapshot_message(b"a" * 3000), part_bytes=1000)
    b = cut(_snapshot_message(b"b" * 3000, index=41), part_bytes=1000)
    joiner = Joiner()
    assert await joiner.add(a[0]) is None
    with pytest.raises(ProtocolError):
        await joiner.add(a[2])  # gap
    with pytest.raises(ProtocolError):
        await joiner.add(a[1])  # the partial snapshot is gone
    assert await joiner.add(a[0]) is None
    with pytest.raises(ProtocolError):
        await joiner.add(b[1])  # another snapshot's part
    # A sender starting over (offset 0) replaces whatever was being joined.
    assert await joiner.add(a[0]) is None and await joiner.add(b[0]) is None
    assert await joiner.add(b[1]) is None
    assert (await joiner.add(b[2])).snapshot.data == b"b" * 3000


async def test_a_snapshot_over_the_bound_is_refused():
    parts = cut(_snapshot_message(b"z" * 5000), part_bytes=1000)
    with pytest.raises(ProtocolError):
        await Joiner(bytes_max=4999).add(parts[0])


def test_a_part_claiming_bytes_past_its_total_is_a_protocol_error():
    part = cut(_snapshot_message(b"q" * 100), part_bytes=1000)[0]
    bad = SnapshotPart(part.message, offset=50, total=100)
    with pytest.raises(ProtocolError):
        _over_the_wire(bad)


async def test_transport_bounds_batches_in_bytes_and_sends_big_snapshots_in_parts(nursery):
    import trio.testing

    from server.raft.messages import AppendEntries, Entry, EntryKind
    from server.raft.transport import RaftTransport

    class Pool:
        async def bootstrap(self, addr, interface, *, timeout_s=None):
            return object()

    calls, reports = [], []
    transport = RaftTransport(Pool(), {2: "peer:1"}, self_id=1, batch_bytes_max=1 << 20,
                              part_bytes=1 << 20,
                              on_report=lambda kind, node, ok: reports.append((kind, ok)))

    async def step(cap, messages, exchange=False):
        assert exchange == (type(messages[0]) is SnapshotPart)
        calls.append(list(messages))
    transport._step = step
    await nursery.start(transport.run)
    entry = Entry(1, 1, EntryKind.COMMAND, b"e" * (600 << 10))
    appends = [AppendEntries(1, 2, 1, i, 1, (entry,), 0) for i in range(4)]
    snap = _snapshot_message(b"s" * (3 * (1 << 20) + 5), frm=1)
    transport.send(appends[:2] + [snap] + appends[2:])
    await trio.testing.wait_all_tasks_blocked()
    kinds = [[type(m).__name__ for m in c] for c in calls]
    assert kinds == [["AppendEntries"], ["AppendEntries"]] + [["SnapshotPart"]] * 4 + [
        ["AppendEntries"], ["AppendEntries"]], kinds
    joiner = Joiner()
    joined = [await joiner.add(c[0]) for c in calls[2:6]]
    assert joined[-1] == snap and reports == [("snapshot", True)]


async def test_a_file_snapshot_goes_part_by_part_and_is_joined_into_a_file(tmp_path):
    """Neither side holds the whole snapshot: the sender reads one part at a
    time, the joiner writes each to disk and hands over a fsynced file."""
    from server.raft.messages import SnapshotFile
    from server.raft.snapparts import parts

    blob = bytes(i % 253 for i in range(4567))
    src = tmp_path / "src.data"
    src.write_bytes(blob)
    whole = _snapshot_message(b"")
    whole = InstallSnapshot(whole.frm, whole.to, whole.term,
                            Snapshot(whole.snapshot.meta, SnapshotFile(str(src), len(blob))))
    sent = [p async for p in parts(whole, part_bytes=1000)]
    assert [len(p.message.snapshot.data) for p in sent] == [1000] * 4 + [567]
    (tmp_path / "in").mkdir()
    joiner, out = Joiner(str(tmp_path / "in")), None
    for part in sent:
        out = await joiner.add(_over_the_wire(part))
    got = out.snapshot.data
    assert isinstance(got, SnapshotFile) and got.size == len(blob)
    assert open(got.path, "rb").read() == blob
    assert os.listdir(tmp_path / "in") == [os.path.basename(got.path)]


async def test_a_closed_or_refused_joiner_leaves_no_partial_file(tmp_path):
    parts_ = cut(_snapshot_message(b"p" * 3000), part_bytes=1000)
    joiner = Joiner(str(tmp_path))
    assert await joiner.add(parts_[0]) is None
    assert len(os.listdir(tmp_path)) == 1
    joiner.close()  # the connection ended
    assert os.listdir(tmp_path) == []
    assert await joiner.add(parts_[0]) is None
    with pytest.raises(ProtocolError):
        await joiner.add(parts_[2])
    assert os.listdir(tmp_path) == []


async def test_a_snapshot_the_disk_cannot_hold_is_refused_at_its_first_part(tmp_path):
    import shutil

    free = shutil.disk_usage(tmp_path).free
    part = SnapshotPart(_snapshot_message(b"x").__class__(
        1, 2, 5, Snapshot(SnapshotMeta(40, 3, Membership(frozenset({1}))), b"x")), 0, free)
    with pytest.raises(ProtocolError, match="does not fit"):
        await Joiner(str(tmp_path)).add(part)
    assert os.listdir(tmp_path) == []
