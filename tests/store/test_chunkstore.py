"""Blocking chunk store: put/get/has/delete, verification both ways,
quarantine, crash leftovers, accounting, space limits."""

from __future__ import annotations

import os

import pytest

from server.store import (
    BadChunkId,
    ChunkStore,
    ChunkNotFound,
    ChunkTooLarge,
    CorruptChunk,
    HashMismatch,
    NoSpace,
    StoreLocked,
    chunk_id_of,
)

from .conftest import make_chunk


def corrupt_on_disk(store, chunk_id: bytes, offset: int = 0) -> None:
    path = store.chunk_path(chunk_id)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_put_get_has_delete(store):
    cid, data = make_chunk(1)
    assert not store.has(cid)
    assert store.put(cid, data).written is True
    assert store.has(cid)
    assert store.get(cid) == data
    assert store.size_of(cid) == len(data)
    assert store.delete(cid) is True
    assert not store.has(cid)
    assert store.delete(cid) is False
    with pytest.raises(ChunkNotFound):
        store.get(cid)


def test_file_layout_is_fanned_out_by_id_prefix(store, tmp_path):
    cid, data = make_chunk(2)
    store.put(cid, data)
    name = cid.hex()
    assert os.path.isfile(tmp_path / "node" / "chunks" / name[:2] / name[2:4] / name)


def test_put_is_deduplicated_and_accounted_once(store):
    cid, data = make_chunk(3, 5000)
    assert store.put(cid, data).written is True
    assert store.put(cid, data).written is False
    assert (store.chunk_count, store.used_bytes) == (1, 5000)


def test_empty_chunk_round_trips(store):
    cid = chunk_id_of(b"")
    assert store.put(cid, b"").written
    assert store.get(cid) == b""
    assert list(store.get_stream(cid)) == []


def test_put_refuses_data_that_does_not_match_its_id(store):
    cid, _ = make_chunk(4)
    _, other = make_chunk(5)
    with pytest.raises(HashMismatch) as info:
        store.put(cid, other)
    assert info.value.actual == chunk_id_of(other)
    assert not store.has(cid)
    assert store.chunk_count == 0
    assert os.listdir(store.data_dir + "/tmp") == []


@pytest.mark.parametrize("bad", [b"short", b"x" * 17, "00" * 16])
def test_bad_ids_are_typed_errors(store, bad):
    with pytest.raises(BadChunkId):
        store.has(bad)


def test_corrupt_chunk_is_detected_on_get_and_quarantined(store, tmp_path):
    cid, data = make_chunk(6, 4096)
    store.put(cid, data)
    corrupt_on_disk(store, cid, 100)
    with pytest.raises(CorruptChunk) as info:
        store.get(cid)
    assert info.value.chunk_id == cid
    quarantined = info.value.quarantined_path
    assert quarantined and os.path.dirname(quarantined) == str(tmp_path / "node" / "quarantine")
    assert not store.has(cid)
    assert (store.chunk_count, store.used_bytes, store.quarantined_count) == (0, 0, 1)
    # The good copy can be put back (what repair will do).
    assert store.put(cid, data).written is True
    assert store.get(cid) == data


def test_quarantine_is_bounded(open_store):
    store = open_store(quarantine_files_max=2)
    chunks = [make_chunk(seed) for seed in range(100, 104)]
    for cid, data in chunks:
        store.put(cid, data)
        corrupt_on_disk(store, cid)
    paths = []
    for cid, _ in chunks:
        with pytest.raises(CorruptChunk) as info:
            store.get(cid)
        paths.append(info.value.quarantined_path)
    assert [p is not None for p in paths] == [True, True, False, False]
    assert "no longer stored" in str(info.value)
    assert len(os.listdir(store.data_dir + "/quarantine")) == 2
    assert (store.chunk_count, store.used_bytes, store.quarantined_count) == (0, 0, 2)
    assert open_store().quarantined_count == 2


def test_truncated_chunk_is_corrupt(store):
    cid, data = make_chunk(7, 4096)
    store.put(cid, data)
    os.truncate(store.chunk_path(cid), 10)
    with pytest.raises(CorruptChunk):
        store.verify(cid)
    assert not store.has(cid)


def test_quarantine_spares_a_good_copy_that_replaced_the_bad_one(store):
    cid, data = make_chunk(8, 8192)
    store.put(cid, data)
    corrupt_on_disk(store, cid, 5000)
    with store.open_reader(cid, piece_bytes=4096) as reader:
        reader.read_piece()
        # Repair swaps in a good copy while the bad one is still being read.
        store.delete(cid)
        store.put(cid, data)
        with pytest.raises(CorruptChunk) as info:
            reader.read_piece()
    assert info.value.quarantined_path is None
    assert store.get(cid) == data


def test_leftover_temp_files_are_removed_at_open(open_store, tmp_path):
    store = open_store()
    cid, data = make_chunk(9)
    store.put(cid, data)
    # A crash mid-write leaves a partial temp file behind.
    torn = tmp_path / "node" / "tmp" / f"{cid.hex()}.123.0"
    torn.write_bytes(data[:100])
    reopened = open_store()
    assert os.listdir(tmp_path / "node" / "tmp") == []
    assert reopened.get(cid) == data


def test_a_directory_has_one_store_at_a_time(store):
    with pytest.raises(StoreLocked, match="in use by another chunk store"):
        ChunkStore(store.data_dir)
    store.close()
    with ChunkStore(store.data_dir) as again:
        assert again.chunk_count == 0


def test_accounting_is_rebuilt_by_the_open_scan(open_store):
    store = open_store()
    sizes = [100, 2000, 30000]
    ids = []
    for seed, size in enumerate(sizes):
        cid, data = make_chunk(seed, size)
        store.put(cid, data)
        ids.append(cid)
    store.delete(ids[0])
    reopened = open_store()
    assert (reopened.chunk_count, reopened.used_bytes) == (2, sum(sizes[1:]))
    assert sorted(reopened.iter_ids()) == sorted(ids[1:])


def test_put_that_would_cross_the_reserve_raises_nospace(open_store, disk):
    store = open_store(disk_reserve_bytes=1 << 20)
    disk.free_bytes = (1 << 20) + 4096
    small_id, small = make_chunk(10, 4000)
    assert store.put(small_id, small).written
    big_id, big = make_chunk(11, 8192)
    with pytest.raises(NoSpace) as info:
        store.put(big_id, big)
    assert info.value.errno == 28  # ENOSPC
    assert "ENOSPC" in str(info.value)
    assert not store.has(big_id)
    assert os.listdir(store.data_dir + "/tmp") == []
    assert store.stats().free_bytes == disk.free_bytes


def test_streaming_put_checks_space_per_piece(open_store, disk):
    store = open_store(disk_reserve_bytes=0)
    disk.free_bytes = 3 * 4096
    cid, data = make_chunk(12, 5 * 4096)
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    with pytest.raises(NoSpace):
        store.put_stream(cid, pieces)
    assert not store.has(cid)
    assert os.listdir(store.data_dir + "/tmp") == []


def test_chunk_size_limit(open_store):
    store = open_store(chunk_bytes_max=4096)
    cid, data = make_chunk(13, 4097)
    with pytest.raises(ChunkTooLarge):
        store.put(cid, data)
    with pytest.raises(ChunkTooLarge):
        store.put_stream(cid, [data[:4000], data[4000:]])
    assert os.listdir(store.data_dir + "/tmp") == []


def test_streaming_put_and_get_of_a_20_mib_chunk(open_store):
    store = open_store(chunk_bytes_max=32 << 20)
    data = bytes(range(256)) * (20 * 4096)
    assert len(data) == 20 << 20
    cid = chunk_id_of(data)
    pieces = (data[i:i + 300_000] for i in range(0, len(data), 300_000))
    assert store.put_stream(cid, pieces).written is True
    got = list(store.get_stream(cid, piece_bytes=1 << 20))
    assert all(len(p) <= 1 << 20 for p in got)
    assert len(got) == 20
    assert b"".join(got) == data
    # get() keeps memory bounded: chunks above chunk_bytes_max need streams.
    small = open_store(chunk_bytes_max=4 << 20)
    with pytest.raises(ChunkTooLarge):
        small.get(cid)


def test_streaming_put_with_wrong_id_stores_nothing(store):
    cid, _ = make_chunk(14, 10_000)
    _, other = make_chunk(15, 10_000)
    with pytest.raises(HashMismatch):
        store.put_stream(cid, [other[:5000], other[5000:]])
    assert not store.has(cid)
    assert os.listdir(store.data_dir + "/tmp") == []


def test_stream_withholds_the_last_piece_of_a_corrupt_chunk(store):
    cid, data = make_chunk(16, 10_000)
    store.put(cid, data)
    corrupt_on_disk(store, cid, 9_999)
    received = []
    with pytest.raises(CorruptChunk):
        for piece in store.get_stream(cid, piece_bytes=4096):
            received.append(piece)
    assert b"".join(received) == data[:8192]
    assert not store.has(cid)


def test_abandoned_writer_leaves_nothing(store):
    cid, data = make_chunk(17)
    with store.open_writer(cid) as writer:
        writer.write(data[:10])
    assert writer.finished
    assert not store.has(cid)
    assert os.listdir(store.data_dir + "/tmp") == []


def test_stats(store, disk):
    cid, data = make_chunk(18, 777)
    store.put(cid, data)
    stats = store.stats()
    assert (stats.chunk_count, stats.used_bytes, stats.quarantined_count) == (1, 777, 0)
    assert stats.free_bytes == disk.free_bytes


def test_put_syncs_file_before_publishing_and_directory_after(store, monkeypatch):
    cid, data = make_chunk(19, 3000)
    events = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.fspath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    store.put(cid, data)
    final = store.chunk_path(cid)
    kinds = [(kind, path.split("/")[-2] if kind == "fsync" else path) for kind, path in events]
    assert ("rename", final) in kinds
    at = kinds.index(("rename", final))
    assert ("fsync", "tmp") in kinds[:at]  # the data, under its temp name
    assert events[-1] == ("fsync", os.path.dirname(final))  # the new entry


def test_writers_in_flight_share_the_free_space(open_store, disk):
    store = open_store(disk_reserve_bytes=4096)
    disk.free_bytes = 3 * 4096
    first_id, first = make_chunk(20, 6000)
    second_id, second = make_chunk(21, 6000)
    with store.open_writer(first_id) as a, store.open_writer(second_id) as b:
        a.write(first)
        # The fake disk never shrinks, but 6000 bytes are promised to a.
        with pytest.raises(NoSpace):
            b.write(second)
        assert b.finished
        assert a.commit()
    assert store.has(first_id) and not store.has(second_id)


def test_resume_point_must_lie_in_the_range(store):
    from server.store import KeyRange
    cid, data = make_chunk(22)
    store.put(cid, data)
    key = int.from_bytes(cid[:8], "big")
    outside = KeyRange((key + 1) % (1 << 64), (key + 100) % (1 << 64))
    with pytest.raises(ValueError, match="outside range"):
        store.list_ids(outside, after_id=cid)
    assert store.list_ids(KeyRange.full(key), after_id=cid) == []
    assert store.list_ids(KeyRange.full(key)) == [cid]


# ---- stamps ----------------------------------------------------------------------


def test_stamps_only_go_up_and_survive_reopen(open_store):
    store = open_store()
    cid, data = make_chunk(200)
    assert store.stamp_of(cid) is None
    assert store.put(cid, data, 5) == (True, 5)
    assert store.put(cid, data, 3) == (False, 5)      # a lower ask never lowers it
    assert store.put(cid, data, 9) == (False, 9)      # dedup raises it
    assert store.raise_stamp(cid, 7) == 9
    assert store.raise_stamp(make_chunk(201)[0], 7) is None
    assert os.stat(store.chunk_path(cid)).st_mtime_ns == 9
    store = open_store()
    assert store.stamp_of(cid) == 9
    assert store.put_stream(cid, [data[:10], data[10:]], 4) == (False, 9)


def test_piecewise_writer_stamps_before_publishing(store):
    cid, data = make_chunk(202, 5000)
    with store.open_writer(cid, 41) as writer:
        writer.write(data[:2000])
        writer.write(data[2000:])
        assert writer.commit() == (True, 41)
    assert store.stamp_of(cid) == 41
    # A second writer of a present chunk raises the copy instead of replacing it.
    with store.open_writer(cid, 50) as writer:
        writer.write(data)
        assert writer.commit() == (False, 50)
    assert store.stamp_of(cid) == 50 and store.chunk_count == 1


def test_delete_below_keeps_a_copy_stamped_at_or_above_the_mark(store):
    cid, data = make_chunk(203)
    store.put(cid, data, 10)
    assert store.delete_below(cid, 10) == "kept"
    assert store.delete_below(cid, 5) == "kept"
    assert store.has(cid) and store.chunk_count == 1
    assert store.delete_below(cid, 11) == "deleted"
    assert store.delete_below(cid, 11) == "absent"
    assert (store.chunk_count, store.used_bytes) == (0, 0)
    store.put(cid, data, 10**12)
    assert store.delete_below(cid, 0) == "deleted"   # mark 0: whatever the stamp
    with pytest.raises(ValueError):
        store.delete_below(cid, -1)


def test_delete_below_is_atomic_against_a_put_of_the_same_id(open_store):
    """A put that returns stamp >= mark always leaves a copy behind, however
    it interleaves with delete_below(mark): either the delete came first (and
    the put wrote a new copy) or the put raised the stamp first (and the
    delete kept it)."""
    import threading

    store = open_store(fsync_enabled=False)
    cid, data = make_chunk(204, 3000)
    outcomes = set()
    for _ in range(300):
        store.put(cid, data, 5)
        barrier = threading.Barrier(2)
        got: dict[str, object] = {}

        def put():
            barrier.wait()
            got["put"] = store.put(cid, data, 10)

        def delete():
            barrier.wait()
            got["delete"] = store.delete_below(cid, 10)

        threads = [threading.Thread(target=put), threading.Thread(target=delete)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.stamp_of(cid) == 10, got
        assert got["put"] == ((True, 10) if got["delete"] == "deleted" else (False, 10)), got
        outcomes.add(got["delete"])
        assert store.delete_below(cid, 11) == "deleted"
    assert store.chunk_count == 0 and os.listdir(store.data_dir + "/tmp") == []
    assert outcomes <= {"deleted", "kept"}
