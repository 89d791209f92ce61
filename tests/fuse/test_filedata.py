"""FileData (write buffer, read path, commit) and the errno mapping, without
a kernel: LocalBackend in a temp dir, tiny chunks, and a bytearray as the
reference model. Sequences of writes, truncates, flushes, reopens and reads
must always read back what the model holds."""

from __future__ import annotations

import errno
import random

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusefs.backend import LocalBackend, Unavailable
from fusefs.filedata import ChunkCache, ChunkReader
from fusefs.errors import fuse_op
from fusefs.filedata import FileData
from server.meta.types import Create, SetAttr

CHUNK = 4096

ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 6 * CHUNK), st.integers(1, 3 * CHUNK),
              st.integers(0, 99)),
    st.tuples(st.just("truncate"), st.integers(0, 7 * CHUNK)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("read"), st.integers(0, 7 * CHUNK), st.integers(0, 3 * CHUNK)),
), max_size=25)


async def _run_ops(tmp_dir, steps):
    backend = await LocalBackend.open(tmp_dir, chunk_bytes=CHUNK, fsync_chunks=False)
    try:
        reply = await backend.submit(Create(1, b"f", 0o644, 0, 0, 1))
        ino = reply.attr.ino
        reader = ChunkReader(backend, ChunkCache(1 << 20))
        model = bytearray()
        async with trio.open_nursery() as nursery:
            data = FileData(ino, backend, reader, nursery)
            await data.load()
            for step in steps:
                if step[0] == "write":
                    _, off, size, seed = step
                    buf = random.Random(seed).randbytes(size)
                    assert await data.write(off, buf) == size
                    if len(model) < off:
                        model.extend(bytes(off - len(model)))
                    model[off:off + size] = buf
                elif step[0] == "truncate":
                    await data.setattr(SetAttr(ino, 2, size=step[1]))
                    model = (model + bytes(max(0, step[1] - len(model))))[:step[1]]
                elif step[0] == "flush":
                    await data.flush()
                elif step[0] == "reopen":
                    await data.flush()
                    data = FileData(ino, backend, reader, nursery)
                    await data.load()
                else:
                    _, off, size = step
                    assert await data.read(off, size) == bytes(model[off:off + size])
                assert data.size == len(model)
            await data.flush()
            fresh = FileData(ino, backend, ChunkReader(backend, ChunkCache(0)), nursery)
            await fresh.load()
            assert await fresh.read(0, len(model) + 10) == bytes(model)
            assert (await backend.getattr(ino)).attr.size == len(model)
    finally:
        await backend.aclose()


@settings(derandomize=True, max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=ops)
def test_filedata_matches_model(tmp_path_factory, steps):
    trio.run(_run_ops, str(tmp_path_factory.mktemp("fd")), steps)


def test_inline_small_file_then_grow(tmp_path):
    async def main():
        backend = await LocalBackend.open(str(tmp_path), chunk_bytes=CHUNK,
                                          fsync_chunks=False)
        ino = (await backend.submit(Create(1, b"f", 0o644, 0, 0, 1))).attr.ino
        reader = ChunkReader(backend, ChunkCache(1 << 20))
        async with trio.open_nursery() as nursery:
            data = FileData(ino, backend, reader, nursery)
            await data.load()
            await data.write(0, b"small")
            await data.flush()
            page = await backend.manifest(ino)
            assert page.inline == b"small" and not page.chunks
            await data.write(3 * CHUNK, b"far")  # inline must fold into chunk 0
            await data.flush()
            page = await backend.manifest(ino)
            assert page.inline is None and [r.idx for r in page.chunks] == [0, 3]
            assert await data.read(0, 5) == b"small"
        await backend.aclose()
    trio.run(main)


class _Broken:
    @fuse_op
    async def unavailable(self):
        raise Unavailable("no quorum")

    @fuse_op
    async def bug(self):
        raise ValueError("oops")

    @fuse_op
    async def user_error(self):
        raise pyfuse3.FUSEError(errno.ENOENT)


@pytest.mark.parametrize("name, want", [
    ("unavailable", errno.EIO), ("bug", errno.EIO), ("user_error", errno.ENOENT)])
async def test_every_failure_becomes_one_errno(name, want, caplog):
    with pytest.raises(pyfuse3.FUSEError) as info:
        await getattr(_Broken(), name)()
    assert info.value.errno == want
    if name == "bug":
        assert "handler_bug" in caplog.text
