"""Durable storage: exact recovery, torn tails, corruption, atomicity."""

import os

import pytest

from server.raft.messages import (Entry, EntryKind, HardState, Membership, Snapshot, SnapshotFile,
                                  SnapshotMeta)
from server.raft.storage import CorruptLog, LogStorage, encode_entry


def loaded(snapshot):
    """A snapshot with its data as bytes: storage hands back a file."""
    if snapshot is None or not isinstance(snapshot.data, SnapshotFile):
        return snapshot
    with open(snapshot.data.path, "rb") as f:
        return Snapshot(snapshot.meta, f.read())


def entries(lo, hi, term=1):
    return [Entry(i, term, EntryKind.COMMAND, b"x%d" % i * (i % 7)) for i in range(lo, hi + 1)]


def segs(d):
    return sorted(n for n in os.listdir(d) if n.endswith(".seg"))


def test_restart_recovers_exactly(tmp_path):
    s = LogStorage(str(tmp_path), segment_bytes_max=200)
    s.append(entries(1, 30))
    s.set_hard_state(HardState(3, 2, 17))
    s.close()
    assert len(segs(tmp_path)) > 1  # rolled over
    r = LogStorage(str(tmp_path), segment_bytes_max=200)
    assert r.entries() == entries(1, 30)
    assert r.hard_state == HardState(3, 2, 17)
    r.append(entries(31, 35))
    r.close()
    assert LogStorage(str(tmp_path)).entries() == entries(1, 35)


def test_hard_state_without_vote_round_trips(tmp_path):
    s = LogStorage(str(tmp_path))
    s.set_hard_state(HardState(5, None, 0))
    assert LogStorage(str(tmp_path)).hard_state == HardState(5, None, 0)


def test_truncate_suffix_on_conflict_across_segments(tmp_path):
    s = LogStorage(str(tmp_path), segment_bytes_max=100)
    s.append(entries(1, 20))
    s.append(entries(8, 12, term=2))  # conflict from index 8
    assert s.entries() == entries(1, 7) + entries(8, 12, term=2)
    s.close()
    assert LogStorage(str(tmp_path)).entries() == entries(1, 7) + entries(8, 12, term=2)


def test_group_commit_one_sync(tmp_path):
    s = LogStorage(str(tmp_path))
    for e in entries(1, 10):
        s.append([e], sync=False)
    s.sync()
    s.close()
    assert LogStorage(str(tmp_path)).entries() == entries(1, 10)


@pytest.mark.parametrize("cut", [1, 5, 20, 28])
def test_torn_tail_is_truncated(tmp_path, cut):
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 5))
    s.close()
    path = tmp_path / segs(tmp_path)[-1]
    size = path.stat().st_size
    last = len(encode_entry(entries(1, 5)[-1]))
    with open(path, "r+b") as f:
        f.truncate(size - last + min(cut, last - 1))
    r = LogStorage(str(tmp_path))
    assert r.entries() == entries(1, 4)
    r.append(entries(5, 6))
    r.close()
    assert LogStorage(str(tmp_path)).entries() == entries(1, 6)


def test_bad_checksum_on_last_record_is_a_torn_tail(tmp_path):
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 5))
    s.close()
    path = tmp_path / segs(tmp_path)[-1]
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    assert LogStorage(str(tmp_path)).entries() == entries(1, 4)


def test_corruption_in_the_middle_is_refused(tmp_path):
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 5))
    s.close()
    path = tmp_path / segs(tmp_path)[-1]
    blob = bytearray(path.read_bytes())
    off = len(encode_entry(entries(1, 1)[0]))  # record 2 starts here
    blob[off + 22] ^= 0xFF  # inside record 2's header/data
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptLog, match=rf"{segs(tmp_path)[-1]}.*offset {off}"):
        LogStorage(str(tmp_path))


def test_corruption_in_an_older_segment_is_refused(tmp_path):
    s = LogStorage(str(tmp_path), segment_bytes_max=60)
    s.append(entries(1, 10))
    s.close()
    first = tmp_path / segs(tmp_path)[0]
    blob = bytearray(first.read_bytes())
    blob[-1] ^= 0xFF  # last record of a non-last segment
    first.write_bytes(bytes(blob))
    with pytest.raises(CorruptLog, match="offset"):
        LogStorage(str(tmp_path))


def snap(index, term, data=b"state"):
    return Snapshot(SnapshotMeta(index, term, Membership(frozenset({1, 2, 3}))), data)


def test_snapshot_compacts_prefix_and_recovers(tmp_path):
    s = LogStorage(str(tmp_path), segment_bytes_max=80)
    s.append(entries(1, 30))
    before = len(segs(tmp_path))
    s.save_snapshot(snap(20, 1))
    assert len(segs(tmp_path)) < before
    assert s.entries() == entries(21, 30)
    s.close()
    r = LogStorage(str(tmp_path), segment_bytes_max=80)
    assert loaded(r.snapshot) == snap(20, 1)
    assert r.entries() == entries(21, 30)
    assert r.first_index() == 21


def test_snapshot_not_matching_log_replaces_it(tmp_path):
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 10))
    s.save_snapshot(snap(50, 4))
    assert s.entries() == [] and segs(tmp_path) == []
    s.append(entries(51, 52, term=4))
    s.close()
    r = LogStorage(str(tmp_path))
    assert r.entries() == entries(51, 52, term=4) and r.snapshot.meta.index == 50


def test_snapshot_write_is_atomic(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(5, 1, b"old"))
    # A crash mid-write leaves only a temp file: the old snapshot stands.
    (tmp_path / "snapshot.tmp").write_bytes(b"half a snapshot")
    r = LogStorage(str(tmp_path))
    assert loaded(r.snapshot) == snap(5, 1, b"old")
    assert not (tmp_path / "snapshot.tmp").exists()


def test_corrupt_snapshot_is_refused(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(5, 1))
    p = tmp_path / "snapshot"
    blob = bytearray(p.read_bytes())
    blob[30] ^= 1
    p.write_bytes(bytes(blob))
    with pytest.raises(CorruptLog, match="snapshot"):
        LogStorage(str(tmp_path))


def test_save_a_whole_ready(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save(HardState(2, 1, 3), entries(1, 4, term=2), None)
    s.save(None, entries(5, 5, term=2), snap(3, 2))
    s.close()
    r = LogStorage(str(tmp_path))
    assert r.hard_state == HardState(2, 1, 3)
    assert r.entries() == entries(4, 5, term=2)


def test_damaged_length_in_the_middle_is_not_taken_for_a_torn_tail(tmp_path):
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 5))
    s.close()
    path = tmp_path / segs(tmp_path)[-1]
    blob = bytearray(path.read_bytes())
    off = len(encode_entry(entries(1, 1)[0]))
    blob[off] = 0x7F  # record 2 now claims a length far past the end
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptLog, match=f"offset {off}"):
        LogStorage(str(tmp_path))


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_model_across_reopens(tmp_path, seed):
    """Random appends (with conflicting suffixes), snapshots and hard states
    against the simulation's in-memory Disk model, reopening often."""
    import random

    from .simulation import Disk

    rng = random.Random(seed)
    model, store = Disk(), LogStorage(str(tmp_path), segment_bytes_max=rng.choice([64, 300, 1 << 20]))
    term = 1
    for _ in range(60):
        op = rng.random()
        first = (model.snapshot.meta.index + 1) if model.snapshot else 1
        last = model.entries[-1].index if model.entries else first - 1
        if op < 0.6:
            start = rng.randint(first, last + 1)
            term += rng.random() < 0.3
            new = entries(start, start + rng.randint(0, 6), term=term)
            model.save(None, new, None)
            store.save(None, new, None)
        elif op < 0.7 and last >= first:
            at = rng.randint(first, last)
            t = next(e.term for e in model.entries if e.index == at)
            s = snap(at, t, b"s%d" % at)
            model.compact(s)
            store.save_snapshot(s)
        elif op < 0.8:
            s = snap(last + rng.randint(1, 5), term, b"leader")
            model.save(None, [], s)
            store.save(None, [], s)
        else:
            hs = HardState(term, rng.choice([None, 1, 2]), rng.randint(0, 5))
            model.save(hs, [], None)
            store.save(hs, [], None)
        if rng.random() < 0.3:
            store.close()
            store = LogStorage(str(tmp_path), segment_bytes_max=store.segment_bytes_max)
        assert store.entries() == model.entries
        assert loaded(store.snapshot) == model.snapshot and store.hard_state == model.hard_state
    store.close()


def data_files(d):
    return sorted(n for n in os.listdir(d) if n.startswith("snap-"))


def test_snapshot_data_lives_in_one_file_which_the_next_snapshot_replaces(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(5, 1, b"a" * 5000))
    first = data_files(tmp_path)
    assert len(first) == 1 and os.path.getsize(tmp_path / first[0]) == 5000
    assert os.path.getsize(tmp_path / "snapshot") < 200  # the header only
    s.save_snapshot(snap(9, 1, b"b" * 10))
    assert len(data_files(tmp_path)) == 1 and data_files(tmp_path) != first
    s.close()
    r = LogStorage(str(tmp_path))
    assert isinstance(r.snapshot.data, SnapshotFile) and loaded(r.snapshot) == snap(9, 1, b"b" * 10)


def test_a_file_made_in_the_directory_is_adopted_in_place(tmp_path):
    """An image (or a joined transfer) is never copied or read into memory
    to be saved: the header names the very file."""
    s = LogStorage(str(tmp_path))
    s.append(entries(1, 10))
    path = tmp_path / "snap-00000000000000000007-abcd.data"
    path.write_bytes(b"image" * 1000)
    image = Snapshot(snap(7, 1).meta, SnapshotFile(str(path), 5000))
    assert s.save_own_snapshot(image)
    assert data_files(tmp_path) == [path.name] and s.entries() == entries(8, 10)
    s.close()
    r = LogStorage(str(tmp_path))
    assert r.snapshot.data == SnapshotFile(str(path), 5000)


def test_an_own_image_overtaken_by_a_newer_snapshot_is_deleted(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(20, 2, b"leader's"))
    path = tmp_path / "snap-00000000000000000007-beef.data"
    path.write_bytes(b"mine")
    assert not s.save_own_snapshot(Snapshot(snap(7, 1).meta, SnapshotFile(str(path), 4)))
    assert not path.exists() and len(data_files(tmp_path)) == 1
    other = tmp_path / "snap-00000000000000000030-cafe.data"
    other.write_bytes(b"a transfer the core did not take")
    s.discard(Snapshot(snap(30, 2).meta, SnapshotFile(str(other), 32)))
    assert not other.exists()
    s.discard(s.snapshot)  # never the one the header names
    assert loaded(s.snapshot) == snap(20, 2, b"leader's")


def test_open_sweeps_data_files_no_header_names(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(5, 1))
    kept = data_files(tmp_path)
    (tmp_path / "snap-00000000000000000009-0001.data").write_bytes(b"crash before the header")
    (tmp_path / "snap-00000000000000000009-0002.data.part").write_bytes(b"half a transfer")
    s.close()
    r = LogStorage(str(tmp_path))
    assert data_files(tmp_path) == kept and loaded(r.snapshot) == snap(5, 1)


def test_damaged_or_missing_snapshot_data_is_refused(tmp_path):
    s = LogStorage(str(tmp_path))
    s.save_snapshot(snap(5, 1, b"0123456789"))
    s.close()
    data = tmp_path / data_files(tmp_path)[0]
    data.write_bytes(b"0123456788")
    with pytest.raises(CorruptLog, match="does not match"):
        LogStorage(str(tmp_path))
    data.unlink()
    with pytest.raises(CorruptLog, match="missing"):
        LogStorage(str(tmp_path))


def test_a_snapshot_of_the_first_format_is_read_and_moved_to_a_data_file(tmp_path):
    import struct

    import xxhash

    meta = snap(12, 3).meta
    mblob, data = meta.membership.encode(), b"old inline state"
    body = struct.pack(">8sQQII", b"CFRAFTSN", 12, 3, len(mblob), len(data)) + mblob + data
    (tmp_path / "snapshot").write_bytes(body + struct.pack(">Q", xxhash.xxh3_64_intdigest(body)))
    r = LogStorage(str(tmp_path))
    assert loaded(r.snapshot) == snap(12, 3, data) and len(data_files(tmp_path)) == 1
    r.close()
    assert loaded(LogStorage(str(tmp_path)).snapshot) == snap(12, 3, data)
