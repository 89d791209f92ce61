"""Snapshots in parts: cut and joined again byte-exact through the wire
structs; a part that does not continue the snapshot being joined, or a
snapshot over the size bound, is refused and leaves nothing half-joined."""

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
def test_parts_join_to_the_same_message(size):
    whole = _snapshot_message(bytes(i % 251 for i in range(size)))
    parts = cut(whole, part_bytes=1000)
    assert len(parts) == max(1, -(-size // 1000))
    joiner, out = Joiner(), None
    for i, part in enumerate(parts):
        got = _over_the_wire(part)
        assert type(got) is SnapshotPart and got.total == size
        out = joiner.add(got)
        assert (out is None) == (i < len(parts) - 1)
    assert out == whole


def test_a_whole_snapshot_still_decodes_as_one_message():
    whole = _snapshot_message(b"x" * 10)
    assert _over_the_wire(whole) == whole


def test_a_gap_or_a_foreign_part_is_refused_and_drops_the_partial_snapshot():
    a = cut(_snapshot_message(b"a" * 3000), part_bytes=1000)
    b = cut(_snapshot_message(b"b" * 3000, index=41), part_bytes=1000)
    joiner = Joiner()
    assert joiner.add(a[0]) is None
    with pytest.raises(ProtocolError):
        joiner.add(a[2])  # gap
    with pytest.raises(ProtocolError):
        joiner.add(a[1])  # the partial snapshot is gone
    assert joiner.add(a[0]) is None
    with pytest.raises(ProtocolError):
        joiner.add(b[1])  # another snapshot's part
    # A sender starting over (offset 0) replaces whatever was being joined.
    assert joiner.add(a[0]) is None and joiner.add(b[0]) is None
    assert joiner.add(b[1]) is None
    assert joiner.add(b[2]).snapshot.data == b"b" * 3000


def test_a_snapshot_over_the_bound_is_refused():
    parts = cut(_snapshot_message(b"z" * 5000), part_bytes=1000)
    with pytest.raises(ProtocolError):
        Joiner(bytes_max=4999).add(parts[0])


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

    async def step(cap, messages):
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
    joined = [joiner.add(c[0]) for c in calls[2:6]]
    assert joined[-1] == snap and reports == [("snapshot", True)]
