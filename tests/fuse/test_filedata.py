"""FileData (write buffer, read path, commit) and the errno mapping, without
a kernel: LocalBackend in a temp dir, tiny chunks, and a bytearray as the
reference model. Sequences of writes, truncates, flushes, reopens and reads
must always read back what the model holds."""

from __future__ import annotations

import errno
import os
import random

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusefs import filedata
from fusefs.backend import LocalBackend, Unavailable
from fusefs.filedata import ChunkCache, ChunkReader
from fusefs.errors import OP_DEADLINE_S, fuse_op
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


class _Yielding:
    """Commits take a few scheduler turns, so a commit started behind the
    writer is still on its way while the next steps run."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def submit(self, cmd):
        for _ in range(3):
            await trio.sleep(0)
        return await self.inner.submit(cmd)


async def _run_ops(tmp_dir, steps, yielding=False):
    backend = await LocalBackend.open(tmp_dir, chunk_bytes=CHUNK, fsync_chunks=False)
    if yielding:
        backend = _Yielding(backend)
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


def _random_steps(rng: random.Random, count: int) -> list[tuple]:
    steps: list[tuple] = []
    for _ in range(count):
        k = rng.random()
        if k < 0.7:
            steps.append(("write", rng.randrange(6 * CHUNK), rng.randrange(1, 3 * CHUNK),
                          rng.randrange(99)))
        elif k < 0.8:
            steps.append(("read", rng.randrange(7 * CHUNK), rng.randrange(3 * CHUNK)))
        elif k < 0.9:
            steps.append(("flush",))
        else:
            steps.append(("truncate", rng.randrange(7 * CHUNK)))
    return steps


BEHIND_SEEDS = int(os.environ.get("FILEDATA_SEEDS", "120"))


def test_filedata_matches_model_with_commits_behind_the_writer(tmp_path, monkeypatch):
    """Every second stored slice starts a background commit (no file lock)
    that overlaps the writes, truncates, reads and flushes after it; uploads
    settling during a commit must be committed by a later one."""
    monkeypatch.setattr(filedata, "PENDING_SLICES_MAX", 2)
    monkeypatch.setattr(filedata, "DIRTY_BYTES_MAX", CHUNK // 2)
    for seed in range(BEHIND_SEEDS):
        steps = _random_steps(random.Random(seed), 20)
        try:
            trio.run(_run_ops, str(tmp_path / f"s{seed}"), steps, True)
        except Exception as exc:  # noqa: BLE001 - an ExceptionGroup from the nursery too
            raise AssertionError(f"seed {seed} (FILEDATA_SEEDS): {steps}") from exc


class _Counting:
    """A backend wrapper that counts stored bytes and can fail or hand out
    stale stamps on demand."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.put_bytes = 0
        self.puts = 0
        self.fail_puts = 0
        self.stale_stamps = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def put_chunks(self, chunks, after_index=0):
        if self.fail_puts:
            self.fail_puts -= 1
            raise Unavailable("store refused")
        self.puts += 1
        self.put_bytes += sum(len(d) for _, d in chunks)
        stamp = await self.inner.put_chunks(chunks, after_index)
        if self.stale_stamps:
            self.stale_stamps -= 1
            return 0
        return stamp


async def _setup(tmp_path, nursery):
    backend = _Counting(await LocalBackend.open(str(tmp_path), chunk_bytes=CHUNK,
                                                fsync_chunks=False))
    ino = (await backend.submit(Create(1, b"f", 0o644, 0, 0, 1))).attr.ino
    reader = ChunkReader(backend, ChunkCache(1 << 20))

    async def opened():
        data = FileData(ino, backend, reader, nursery)
        await data.load()
        return data
    return backend, ino, opened


def test_small_writes_go_inline_and_keep_holes(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            backend, ino, opened = await _setup(tmp_path, nursery)
            data = await opened()
            await data.write(0, b"small")
            await data.write(3 * CHUNK, b"far")
            await data.flush()
            page = await backend.manifest(ino)
            assert [(s.off, s.data) for s in page.slices] == [(0, b"small"), (3 * CHUNK, b"far")]
            assert backend.puts == 0
            fresh = await opened()
            assert await fresh.read(0, 3 * CHUNK + 3) == b"small" + bytes(3 * CHUNK - 5) + b"far"
            await backend.aclose()
    trio.run(main)


def test_a_write_costs_what_it_changes(tmp_path):
    """Writing into a big file stores the written bytes, not the region:
    small changes inline, many scattered ones packed into one block."""
    async def main():
        async with trio.open_nursery() as nursery:
            backend, ino, opened = await _setup(tmp_path, nursery)
            data = await opened()
            body = random.Random(1).randbytes(40 * CHUNK)
            await data.write(0, body)
            await data.flush()
            assert backend.put_bytes == len(body)
            model = bytearray(body)
            data = await opened()
            rng = random.Random(2)
            written = 0
            for _ in range(64):
                off, patch = rng.randrange(len(body) - 100), rng.randbytes(100)
                await data.write(off, patch)
                model[off:off + 100] = patch
                written += 100
            await data.flush()
            assert backend.put_bytes - len(body) <= written, "rewrote more than it wrote"
            fresh = await opened()
            assert await fresh.read(0, len(model)) == bytes(model)
            await backend.aclose()
    trio.run(main)


def test_a_stale_writer_keeps_another_mounts_append(tmp_path):
    """Mount A holds the file open, B appends and closes, A changes one
    byte and closes: both changes are there (close-to-open, per range)."""
    async def main():
        async with trio.open_nursery() as nursery:
            backend, ino, opened = await _setup(tmp_path, nursery)
            first = await opened()
            await first.write(0, b"x" * 10_000)
            await first.flush()
            a, b = await opened(), await opened()
            appended = random.Random(3).randbytes(300 * 1024)
            await b.write(10_000, appended)
            await b.flush()
            await a.write(5, b"!")
            await a.flush()
            fresh = await opened()
            want = b"xxxxx!" + b"x" * 9_994 + appended
            assert fresh.size == len(want)
            assert await fresh.read(0, len(want)) == want
            await backend.aclose()
    trio.run(main)


def test_failed_upload_keeps_data_and_reports_at_flush(tmp_path):
    async def main():
        async with trio.open_nursery() as nursery:
            backend, ino, opened = await _setup(tmp_path, nursery)
            data = await opened()
            body = random.Random(4).randbytes(3 * CHUNK)
            backend.fail_puts = 10
            await data.write(0, body)   # blocks start uploading and fail
            with pytest.raises(Unavailable):
                await data.flush()
            assert data.changed and await data.read(0, len(body)) == body
            backend.fail_puts = 0
            await data.flush()
            fresh = await opened()
            assert await fresh.read(0, len(body)) == body
            await backend.aclose()
    trio.run(main)


def test_stale_stamps_make_the_writer_store_again(tmp_path):
    """A block that died (truncated away) and is written again: a commit
    whose stamps do not prove the new copies survive GC is refused
    (ESTALE) and the writer stores the blocks again."""
    async def main():
        async with trio.open_nursery() as nursery:
            backend, ino, opened = await _setup(tmp_path, nursery)
            body = random.Random(5).randbytes(2 * CHUNK)
            data = await opened()
            await data.write(0, body)
            await data.flush()
            await data.setattr(SetAttr(ino, 2, size=0))   # its blocks are dying now
            assert backend.meta.gc_candidates()
            backend.stale_stamps = 1
            puts = backend.puts
            await data.write(0, body)
            await data.flush()
            assert backend.puts > puts + 2, "the refused commit's blocks were stored again"
            fresh = await opened()
            assert await fresh.read(0, len(body)) == body
            assert not backend.meta.gc_candidates()
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


async def test_a_handler_past_its_deadline_answers_eio_and_outer_cancels_pass(autojump_clock,
                                                                              caplog):
    @fuse_op
    async def stuck():
        await trio.sleep_forever()

    @fuse_op
    async def quick():
        return 7

    started = trio.current_time()
    with pytest.raises(pyfuse3.FUSEError) as info:
        await stuck()
    assert info.value.errno == errno.EIO
    assert trio.current_time() - started == pytest.approx(OP_DEADLINE_S)
    assert "op_deadline" in caplog.text
    assert await quick() == 7
    # A cancel from outside (unmount) is not turned into an errno.
    with trio.move_on_after(1) as outer:
        await stuck()
    assert outer.cancelled_caught
