"""The ChunkStore RPC service and its client stub over in-memory connections:
every method, status mapping, piecewise writes and the service's bounds."""

from __future__ import annotations

import contextlib
import gc
import os

import pytest
import trio

import rpc
from server.store import AsyncChunkStore, ChunkStore, KeyRange, chunk_id_of, reconcile
from server.store.service import RemoteStore, RemoteStoreError, ServiceLimits, StoreService, store_capnp

from .conftest import FakeDisk, make_chunk





@contextlib.asynccontextmanager
async def served(tmp_path, limits=ServiceLimits(), name="node", service_options=None, **options):
    options.setdefault("fsync_enabled", False)
    astore = await AsyncChunkStore.open(tmp_path / name, **options)
    service = StoreService(astore, limits, **(service_options or {}))
    try:
        async with rpc.memory_pair(bootstrap_b=service.server()) as (a, _b):
            cap = await a.bootstrap(store_capnp.ChunkStore)
            yield RemoteStore(cap, name, timeout_s=5), service
    finally:
        astore.close()


def tmp_files(service) -> list[str]:
    return os.listdir(os.path.join(service.astore.store.data_dir, "tmp"))


async def test_put_get_has_delete_stats(tmp_path):
    async with served(tmp_path) as (remote, service):
        cid, data = make_chunk(1, 5000)
        other, _ = make_chunk(2)
        assert await remote.has_many([cid, other]) == [False, False]
        assert await remote.put(cid, data) is True
        assert await remote.put(cid, data) is False  # dedup, still a success
        assert await remote.has_many([cid, other]) == [True, False]
        assert await remote.get(cid) == data
        assert await remote.verify(cid) == 5000
        stats = await remote.stats()
        assert stats["chunkCount"] == 1 and stats["usedBytes"] == 5000
        assert stats["pieceBytesMax"] == service.limits.piece_bytes_max
        assert await remote.delete(cid) is True
        assert await remote.delete(cid) is False
        assert service.bytes_buffered == 0


async def test_errors_come_back_as_statuses(tmp_path):
    async with served(tmp_path, chunk_bytes_max=10_000) as (remote, _):
        cid, data = make_chunk(3)
        with pytest.raises(RemoteStoreError) as info:
            await remote.get(cid)
        assert info.value.status == "notFound" and info.value.errno == 2
        with pytest.raises(RemoteStoreError, match="hashMismatch"):
            await remote.put(cid, data + b"x")
        big = os.urandom(20_000)
        with pytest.raises(RemoteStoreError, match="tooLarge"):
            await remote.put(chunk_id_of(big), big)
        reply = await remote.cap.get(id=b"short", offset=0, length=0, timeout_s=5)
        assert reply.status == "badRequest"
        reply = await remote.cap.listIds(start=0, end=0, afterId=b"", max=0, timeout_s=5)
        assert reply.status == "badRequest"
        assert not await remote.has(cid)


async def test_no_space_is_refused_without_storing(tmp_path):
    disk = FakeDisk(free_bytes=1 << 20)
    async with served(tmp_path, statvfs=disk, disk_reserve_bytes=1 << 20) as (remote, service):
        cid, data = make_chunk(4, 8192)
        with pytest.raises(RemoteStoreError) as info:
            await remote.put(cid, data)
        assert info.value.status == "noSpace" and info.value.errno == 28
        assert not await remote.has(cid) and tmp_files(service) == []


async def test_corrupt_copy_is_reported_and_quarantined(tmp_path):
    async with served(tmp_path) as (remote, service):
        cid, data = make_chunk(5, 4096)
        await remote.put(cid, data)
        path = service.astore.store.chunk_path(cid)
        with open(path, "r+b") as f:
            f.write(b"\xff" * 16)
        with pytest.raises(RemoteStoreError, match="corrupt"):
            await remote.get(cid)
        assert not await remote.has(cid)  # moved out, so a good copy can land
        assert await remote.put(cid, data) is True
        assert await remote.get(cid) == data


async def test_piecewise_put_and_ranged_get(tmp_path):
    async with served(tmp_path) as (remote, service):
        data = os.urandom(100_000)
        cid = chunk_id_of(data)
        pieces = RemoteStore(remote.cap, "node", piece_bytes=7000, whole_bytes_max=1000)
        assert await pieces.put(cid, data) is True
        assert await pieces.put(cid, data) is False  # putBegin says present
        reply = await remote.cap.get(id=cid, offset=99_000, length=5000, timeout_s=5)
        assert reply.status == "ok" and reply.sizeBytes == 100_000 and reply.data == data[99_000:]
        assert await pieces._get_pieces(cid, 100_000, 5) == data
        assert tmp_files(service) == [] and service.writes_open == 0


async def test_chunk_above_the_whole_read_limit_is_read_in_pieces(tmp_path):
    data = os.urandom(50_000)
    cid = chunk_id_of(data)
    with ChunkStore(tmp_path / "node", fsync_enabled=False) as store:
        store.put(cid, data)
    limits = ServiceLimits(piece_bytes_max=16_384)
    async with served(tmp_path, limits, chunk_bytes_max=20_000) as (remote, _):
        remote.piece_bytes = 16_384
        assert await remote.get(cid) == data


async def test_bad_piece_sequence_aborts_the_write(tmp_path):
    async with served(tmp_path) as (remote, service):
        data = os.urandom(30_000)
        cid = chunk_id_of(data)
        cap = remote.cap
        begun = await cap.putBegin(id=cid, sizeBytes=len(data), timeout_s=5)
        assert begun.status == "ok" and not begun.present
        wid = begun.writeId
        assert (await cap.putPiece(writeId=wid, offset=0, data=data[:10_000], timeout_s=5)).status == "ok"
        reply = await cap.putPiece(writeId=wid, offset=5, data=data[:10], timeout_s=5)
        assert reply.status == "badRequest" and "offset" in reply.message
        reply = await cap.putCommit(writeId=wid, timeout_s=5)
        assert reply.status == "badRequest"  # the handle is gone
        assert tmp_files(service) == [] and service.writes_open == 0
        begun = await cap.putBegin(id=cid, sizeBytes=len(data), timeout_s=5)
        await cap.putPiece(writeId=begun.writeId, offset=0, data=data[:100], timeout_s=5)
        reply = await cap.putCommit(writeId=begun.writeId, timeout_s=5)
        assert reply.status == "badRequest" and "commit after 100" in reply.message
        assert tmp_files(service) == []


async def test_limits_refuse_with_overloaded(tmp_path):
    limits = ServiceLimits(bytes_buffered_max=10_000, writes_open_per_conn_max=1)
    async with served(tmp_path, limits) as (remote, service):
        cid, data = make_chunk(6, 20_000)
        with pytest.raises(RemoteStoreError) as info:
            await remote.put(cid, data)
        assert info.value.status == "overloaded" and not await remote.has(cid)
        one, _ = make_chunk(7)
        two, _ = make_chunk(8)
        assert (await remote.cap.putBegin(id=one, sizeBytes=1000, timeout_s=5)).status == "ok"
        reply = await remote.cap.putBegin(id=two, sizeBytes=1000, timeout_s=5)
        assert reply.status == "overloaded"
        assert service.refused_overloaded == 2 and service.bytes_buffered == 0


async def test_idle_write_is_reaped(tmp_path, patient_clock):
    async with served(tmp_path, ServiceLimits(write_idle_s=30)) as (remote, service):
        one, data = make_chunk(9)
        two, _ = make_chunk(10)
        first = await remote.cap.putBegin(id=one, sizeBytes=len(data), timeout_s=5)
        await trio.sleep(31)
        assert (await remote.cap.putBegin(id=two, sizeBytes=10, timeout_s=5)).status == "ok"
        assert service.writes_open == 1 and len(tmp_files(service)) == 1
        reply = await remote.cap.putPiece(writeId=first.writeId, offset=0, data=data, timeout_s=5)
        assert reply.status == "badRequest"


async def test_open_writes_die_with_the_connection(tmp_path):
    astore = await AsyncChunkStore.open(tmp_path / "node", fsync_enabled=False)
    service = StoreService(astore)
    cid, data = make_chunk(11)
    async with rpc.memory_pair(bootstrap_b=service.server()) as (a, b):
        cap = await a.bootstrap(store_capnp.ChunkStore)
        await cap.putBegin(id=cid, sizeBytes=len(data), timeout_s=5)
        assert service.writes_open == 1
    del a, b, cap
    gc.collect()
    assert service.writes_open == 0 and tmp_files(service) == []
    astore.close()


async def test_summaries_and_ids_match_the_local_store(tmp_path):
    async with served(tmp_path, name="remote") as (remote, service):
        local = await AsyncChunkStore.open(tmp_path / "local", fsync_enabled=False)
        chunks = [make_chunk(100 + i, 200) for i in range(300)]
        for i, (cid, data) in enumerate(chunks):
            if i % 50 != 0:
                await local.put(cid, data)
            if i % 70 != 0:
                await remote.put(cid, data)
        whole = KeyRange(2**63, 2**63)
        assert await remote.range_summaries(whole, 8) == await service.astore.range_summaries(whole, 8)
        page = await remote.list_ids(whole, None, 10)
        assert page == await service.astore.list_ids(whole, None, 10)
        assert await remote.list_ids(whole, page[-1], 10) == await service.astore.list_ids(whole, page[-1], 10)
        diff = await reconcile(local, remote, whole, parts=4, leaf_ids_max=16)
        assert sorted(diff.missing_local) == sorted(c for i, (c, _) in enumerate(chunks) if i % 50 == 0 and i % 70)
        assert sorted(diff.missing_remote) == sorted(c for i, (c, _) in enumerate(chunks) if i % 70 == 0 and i % 50)
        local.close()


# ---- stamps, delete by mark, fault injection -----------------------------------


async def test_puts_reply_stamps_of_at_least_after_index_and_the_applied_index(tmp_path):
    applied = [7]
    options = dict(service_options={"applied_index": lambda: applied[0]})
    async with served(tmp_path, **options) as (remote, service):
        cid, data = make_chunk(300, 5000)
        assert await remote.put_stamped(cid, data, after_index=3) == (True, 7)
        assert await remote.put_stamped(cid, data, after_index=12) == (False, 12)
        applied[0] = 20
        assert await remote.put_stamped(cid, data) == (False, 20)
        assert service.astore.store.stamp_of(cid) == 20
        # Piecewise: putBegin of a present chunk raises it too.
        pieces = RemoteStore(remote.cap, "node", timeout_s=5, piece_bytes=1000, whole_bytes_max=1000)
        assert await pieces.put_stamped(cid, data, after_index=25) == (False, 25)
        other, other_data = make_chunk(301, 5000)
        assert await pieces.put_stamped(other, other_data, after_index=4) == (True, 20)


async def test_put_commit_stamps_with_the_applied_index_at_commit(tmp_path):
    applied = [5]
    options = dict(service_options={"applied_index": lambda: applied[0]})
    async with served(tmp_path, **options) as (remote, service):
        cid, data = make_chunk(302, 3000)
        begun = await remote.cap.putBegin(id=cid, sizeBytes=len(data), afterIndex=2, timeout_s=5)
        assert begun.status == "ok" and not begun.present
        await remote.cap.putPiece(writeId=begun.writeId, offset=0, data=data, timeout_s=5)
        applied[0] = 9  # the node applied more while the pieces came
        reply = await remote.cap.putCommit(writeId=begun.writeId, timeout_s=5)
        assert (reply.status, reply.stored, reply.stamp) == ("ok", True, 9)


async def test_delete_by_mark_keeps_newer_copies(tmp_path):
    async with served(tmp_path) as (remote, service):
        cid, data = make_chunk(303)
        await remote.put_stamped(cid, data, after_index=10)
        assert await remote.delete_below(cid, 10) == "kept"
        assert await remote.has(cid)
        assert await remote.delete_below(cid, 11) == "deleted"
        assert await remote.delete_below(cid, 11) == "absent"
        await remote.put_stamped(cid, data, after_index=10)
        assert await remote.delete(cid) is True    # mark 0: unconditional
        assert await remote.delete(cid) is False


async def test_remote_stamp_of_and_raise_stamp(tmp_path):
    options = dict(service_options={"applied_index": lambda: 4})
    async with served(tmp_path, **options) as (remote, service):
        cid, data = make_chunk(304)
        assert await remote.stamp_of(cid) is None
        assert service.writes_open == 0 and tmp_files(service) == []  # the probe write was dropped
        await service.astore.put(cid, data, 2)
        assert await remote.stamp_of(cid) == 4      # raised to that node's applied index
        assert await remote.raise_stamp(cid, 30) == 30
        assert service.astore.store.stamp_of(cid) == 30


async def test_fault_hook_refuses_every_nth_put(tmp_path, caplog):
    options = dict(service_options={"environ": {"CHORDFS_FAULT_OVERLOAD_EVERY": "3"}})
    with caplog.at_level("WARNING"):
        async with served(tmp_path, **options) as (remote, service):
            assert "TEST-ONLY FAULT INJECTION" in caplog.text
            statuses = []
            for seed in range(6):
                cid, data = make_chunk(310 + seed)
                try:
                    await remote.put(cid, data)
                    statuses.append("ok")
                except RemoteStoreError as e:
                    statuses.append(e.status)
            assert statuses == ["ok", "ok", "overloaded"] * 2
            cid, data = make_chunk(320)
            replies = [await remote.cap.putBegin(id=cid, sizeBytes=len(data), timeout_s=5)
                       for _ in range(3)]
            assert [str(r.status) for r in replies] == ["ok", "ok", "overloaded"]
            assert service.faults_injected == 3


async def test_no_fault_hook_without_the_variable(tmp_path):
    async with served(tmp_path, service_options={"environ": {}}) as (remote, service):
        for seed in range(6):
            cid, data = make_chunk(330 + seed)
            await remote.put(cid, data)
        assert service.overload_every == 0 and service.faults_injected == 0
