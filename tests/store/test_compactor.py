"""The compactor against a real metadata state machine and an in-memory
block store: fragmented regions become one block each with the same
content, old blocks die, and a writer that changes a region meanwhile wins."""

from __future__ import annotations

import random
import types

import pytest
import trio

from server.meta import codec
from server.meta import types as t
from server.meta.store import InitParams, MetaStore
from server.raft.messages import Role
from server.store.compactor import Compactor, CompactorLimits
from server.store.keyrange import chunk_id_of

CB = 64 * 1024


class _Blocks:
    """put/get like ReplicatedStore, in memory."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, bytes] = {}

    async def put(self, block_id, data, after_index=0):
        assert chunk_id_of(data) == block_id
        self.blocks[block_id] = bytes(data)
        return types.SimpleNamespace(stamp=after_index)

    async def get(self, block_id):
        return self.blocks[block_id]


class _Meta:
    """What the compactor uses of MetadataGroup: a reader and a leader's
    propose that applies at the next index."""

    def __init__(self) -> None:
        self.store = MetaStore(":memory:", InitParams(now_ns=1, chunk_bytes=CB))
        self.reader = self.store
        self.index = 0
        self.before_apply = None
        service = types.SimpleNamespace(core=types.SimpleNamespace(role=Role.LEADER),
                                        propose=self.propose)
        self.group = types.SimpleNamespace(service=service)

    async def propose(self, data: bytes, *, timeout_s: float):
        if self.before_apply is not None:
            hook, self.before_apply = self.before_apply, None
            hook()
        return self.index, 1, codec.encode_result(self.do(codec.decode_command(data)))

    def do(self, cmd):
        self.index += 1
        return self.store.apply_command(self.index, cmd)


def _content(meta: _Meta, blocks: _Blocks, ino: int) -> bytes:
    page = meta.store.manifest(ino)
    out = bytearray(page.size)
    for s in page.slices:
        data = blocks.blocks[s.block_id][s.block_off:s.block_off + s.length] if s.block_id else s.data
        out[s.off:s.off + s.length] = data
    return bytes(out)


def _fragment(meta: _Meta, blocks: _Blocks, seed: int, size: int = 3 * CB) -> tuple[int, bytearray]:
    rng = random.Random(seed)
    ino = meta.do(t.Create(1, b"f", 0o644, 0, 0, 1)).attr.ino
    model = bytearray(rng.randbytes(size))
    block = bytes(model)
    bid = chunk_id_of(block)
    blocks.blocks[bid] = block
    assert meta.do(t.CommitWrite(ino, size, 2, [t.Slice(0, size, bid, 0, size, fresh=True)],
                                 meta.index)).err == 0
    for _ in range(40):
        # Scattered writes, some packed into shared blocks, some inline.
        pieces = [(rng.randrange(size - 500), rng.randbytes(rng.randrange(1, 500)))
                  for _ in range(5)]
        if rng.random() < 0.5:
            slices = [t.Slice(off, len(data), data=data) for off, data in pieces]
        else:
            packed = b"".join(data for _, data in pieces)
            pid = chunk_id_of(packed)
            blocks.blocks[pid] = packed
            slices, pos = [], 0
            for off, data in pieces:
                slices.append(t.Slice(off, len(data), pid, pos, len(packed), fresh=True))
                pos += len(data)
        assert meta.do(t.CommitWrite(ino, 0, 3, slices, meta.index)).err == 0
        for off, data in pieces:
            model[off:off + len(data)] = data
    return ino, model


@pytest.mark.parametrize("seed", range(5))
async def test_fragmented_file_is_rewritten_with_the_same_content(seed, autojump_clock):
    meta, blocks = _Meta(), _Blocks()
    ino, model = _fragment(meta, blocks, seed)
    assert _content(meta, blocks, ino) == bytes(model)
    assert meta.reader.fragmented_files() == [ino]
    compactor = Compactor("n1", meta, blocks, limits=CompactorLimits(settle_s=1.0))
    assert await compactor.run_once()          # first look: regions settle
    assert compactor.stats.regions_rewritten == 0
    for _ in range(6):
        await trio.sleep(1.5)
        if not await compactor.run_once():
            break
    assert 3 <= compactor.stats.regions_rewritten <= 6
    page = meta.store.manifest(ino)
    assert len(page.slices) == 3 and all(s.block_id for s in page.slices)
    assert _content(meta, blocks, ino) == bytes(model)
    assert meta.reader.fragmented_files() == []
    # Every block but the three new ones lost its last reference.
    live = meta.store.conn.execute("SELECT count(*) FROM block WHERE refs > 0").fetchone()[0]
    assert live == 3 and len(meta.reader.gc_candidates()) >= 2


async def _settled(seed: int):
    """A one-region fragmented file and a compactor that has seen it settle:
    its next pass rewrites the region."""
    meta, blocks = _Meta(), _Blocks()
    ino, model = _fragment(meta, blocks, seed, size=CB)
    compactor = Compactor("n1", meta, blocks, limits=CompactorLimits(settle_s=1.0))
    await compactor.run_once()
    await trio.sleep(1.5)
    return meta, blocks, ino, model, compactor


async def test_a_writer_changing_the_region_wins(autojump_clock):
    meta, blocks, ino, model, compactor = await _settled(7)
    meta.before_apply = lambda: meta.do(t.CommitWrite(ino, 0, 9, [t.Slice(10, 3, data=b"new")], 0))
    await compactor.run_once()
    assert compactor.stats.regions_raced == 1 and compactor.stats.regions_rewritten == 0
    model[10:13] = b"new"
    assert _content(meta, blocks, ino) == bytes(model)


async def test_a_sparse_block_gets_its_extents_rewritten(autojump_clock):
    """A 3-region file in one block whose first two regions were overwritten
    whole: the block is mostly dead weight, so its last region is rewritten
    and the big block dies."""
    meta, blocks = _Meta(), _Blocks()
    size = 3 * CB
    ino = meta.do(t.Create(1, b"f", 0o644, 0, 0, 1)).attr.ino
    big = random.Random(1).randbytes(size)
    bid = chunk_id_of(big)
    blocks.blocks[bid] = big
    meta.do(t.CommitWrite(ino, size, 2, [t.Slice(0, size, bid, 0, size, fresh=True)], 0))
    new = random.Random(2).randbytes(2 * CB)
    nid = chunk_id_of(new)
    blocks.blocks[nid] = new
    meta.do(t.CommitWrite(ino, 0, 3, [t.Slice(0, 2 * CB, nid, 0, 2 * CB, fresh=True)], 0))
    assert meta.reader.sparse_blocks() == [(ino, 2 * CB)]
    compactor = Compactor("n1", meta, blocks, limits=CompactorLimits(settle_s=1.0))
    await compactor.run_once()
    await trio.sleep(1.5)
    await compactor.run_once()
    assert meta.reader.block_state(bid)[0] == "dying"
    assert _content(meta, blocks, ino) == new + big[2 * CB:]


async def test_a_sparse_region_in_one_block_is_left_alone(autojump_clock):
    """Many extents of one block separated by holes: a rewrite could only
    produce the same layout, so the compactor must not loop on it."""
    meta, blocks = _Meta(), _Blocks()
    ino = meta.do(t.Create(1, b"f", 0o644, 0, 0, 1)).attr.ino
    packed = random.Random(3).randbytes(40 * 100)
    pid = chunk_id_of(packed)
    blocks.blocks[pid] = packed
    slices = [t.Slice(i * 1000, 100, pid, i * 100, len(packed), fresh=True) for i in range(40)]
    assert meta.do(t.CommitWrite(ino, 0, 2, slices, 0)).err == 0
    assert meta.reader.fragmented_files() == [ino]
    compactor = Compactor("n1", meta, blocks, limits=CompactorLimits(settle_s=1.0))
    for _ in range(3):
        await compactor.run_once()
        await trio.sleep(1.5)
    assert compactor.stats.regions_rewritten == 0


async def test_a_region_overwritten_while_its_blocks_are_read_is_left_quietly(autojump_clock):
    """The writer overwrites the whole region and its old blocks are
    collected while the compactor fetches them: the pass gives the region up
    (stale), it does not fail; a block still referenced and gone is loud."""
    from server.store.replication import ChunkUnavailable

    meta, blocks, ino, _, compactor = await _settled(11)

    async def get_after_overwrite(block_id):
        if block_id in blocks.blocks:  # the first fetch: the writer gets there first
            assert meta.do(t.CommitWrite(ino, 0, 9, [t.Slice(0, CB, data=b"z" * CB)], 0)).err == 0
            blocks.blocks.clear()     # ... and GC collects what it no longer references
        raise ChunkUnavailable(block_id, {"n1": "notFound"}, True)

    blocks.get = get_after_overwrite
    await compactor.run_once()
    assert compactor.stats.stale == 1 and compactor.stats.regions_rewritten == 0
    assert _content(meta, blocks, ino) == b"z" * CB

    # Unchanged region, block gone everywhere: that is not a race.
    _, blocks2, _, _, compactor2 = await _settled(12)

    async def gone(block_id):
        raise ChunkUnavailable(block_id, {"n1": "notFound"}, True)

    blocks2.get = gone
    with pytest.raises(ChunkUnavailable):
        await compactor2.run_once()
