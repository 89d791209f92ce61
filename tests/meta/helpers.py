"""A driver that feeds commands to a MetaStore the way Raft would: through
the Cap'n Proto codec, with increasing indexes and proposer-stamped times."""

from __future__ import annotations

import dataclasses
import functools
import random

from server.meta import codec
from server.meta import types as t
from server.meta.store import InitParams, MetaStore

T0_NS = 1_700_000_000_123_456_789
TICK_NS = 1_000_003  # odd, so every stamp has non-zero nanoseconds


class Driver:
    def __init__(self, store: MetaStore | None = None, path: str = ":memory:") -> None:
        self.store = store or MetaStore(path, InitParams(now_ns=T0_NS))
        self.index = self.store.applied_index
        self.now_ns = T0_NS
        self.log: list[tuple[int, bytes]] = []

    def tick(self) -> int:
        self.now_ns += TICK_NS
        return self.now_ns

    def do(self, cls: type, **kwargs):
        """Build ``cls`` with owner 0:0 for new inodes and a fresh now_ns unless given,
        encode it, apply it at the next index, and return the result."""
        names = {f.name for f in dataclasses.fields(cls)}
        if cls in (t.Create, t.Mkdir, t.Mknod, t.Symlink):
            kwargs.setdefault("uid", 0)
            kwargs.setdefault("gid", 0)
        if "now_ns" in names:
            kwargs.setdefault("now_ns", self.tick())
        return self.apply(cls(**kwargs))

    def apply_decoded(self, cmd):
        """For commands the wire cannot carry (the core must still refuse them)."""
        self.index += 1
        return self.store.apply_command(self.index, cmd)

    def apply(self, cmd):
        self.index += 1
        data = codec.encode_command(cmd)
        self.log.append((self.index, data))
        result = self.store.apply(self.index, data)
        assert codec.decode_result(codec.encode_result(result)) == result
        return result

    # Shorthands for the common cases in tests.
    def mkdir(self, parent: int, name: bytes, mode: int = 0o755) -> int:
        r = self.do(t.Mkdir, parent=parent, name=name, mode=mode)
        assert r.err == 0, r
        return r.attr.ino

    def create(self, parent: int, name: bytes, mode: int = 0o644) -> int:
        r = self.do(t.Create, parent=parent, name=name, mode=mode)
        assert r.err == 0, r
        return r.attr.ino

    def attr(self, ino: int) -> t.Attr:
        r = self.store.getattr(ino)
        assert r.err == 0, r
        return r.attr

    def names(self, ino: int) -> list[bytes]:
        page = self.store.readdir(ino)
        assert page.done
        return [e.name for e in page.entries]


# ---------------------------------------------------------------- file layout


def bid(n: int) -> bytes:
    """A 16-byte block id for test block ``n``."""
    return b"B" + n.to_bytes(15, "big")


def fake_block(block_id: bytes, size: int) -> bytes:
    """Deterministic stand-in contents of a block, keyed by its id."""
    return _fake_block(bytes(block_id), size)


@functools.lru_cache(maxsize=256)
def _fake_block(block_id: bytes, size: int) -> bytes:
    return random.Random(block_id).randbytes(size)


def read_file(store: MetaStore, ino: int, contents=None, page: int = 3) -> bytes:
    """The file's bytes assembled from its manifest (read in small pages):
    holes are zeros, block slices come from ``contents[id]`` when given,
    else from ``fake_block``."""
    out, start, size = bytearray(), 0, None
    while True:
        m = store.manifest(ino, start, limit=page)
        assert m.err == 0, m
        size = m.size
        for s in m.slices:
            assert s.off >= len(out), ("manifest slices overlap or go back", s)
            out.extend(bytes(s.off - len(out)))
            if s.block_id:
                body = contents[s.block_id] if contents else fake_block(s.block_id, s.block_size)
                assert len(body) == s.block_size
                out.extend(body[s.block_off:s.block_off + s.length])
            else:
                assert len(s.data) == s.length
                out.extend(s.data)
        assert m.next_off >= start
        start = m.next_off
        if m.done:
            break
    assert len(out) <= size, "no extent reaches past the file size"
    out.extend(bytes(size - len(out)))
    return bytes(out)


def check_layout(store: MetaStore) -> None:
    """schema.py's layout invariants over the whole database: extents never
    overlap and stay below the size; block.refs/live count the extents
    naming each block; inode.nextents/inline_bytes count each file's;
    state.chunks counts live blocks and state.bytes the regular files' sizes."""
    conn = store.conn
    sizes = dict(conn.execute("SELECT ino, size FROM inode"))
    refs: dict[bytes, list[int]] = {}
    per_file: dict[int, list[int]] = {}
    end_of: dict[int, int] = {}
    for ino, off, length, block_id, block_off, data in conn.execute(
            "SELECT ino, off, length, block_id, block_off, data FROM extent ORDER BY ino, off"):
        assert ino in sizes, ("extent of a missing inode", ino)
        assert length > 0 and off >= end_of.get(ino, 0), ("overlap", ino, off)
        end_of[ino] = off + length
        assert off + length <= sizes[ino], ("extent past the size", ino, off, length)
        counts = per_file.setdefault(ino, [0, 0])
        counts[0] += 1
        if block_id:
            assert data is None and block_off >= 0
            entry = refs.setdefault(bytes(block_id), [0, 0])
            entry[0] += 1
            entry[1] += length
        else:
            assert len(data) == length
            counts[1] += length
    live = 0
    for block_id, size, n, used, mark, gone_ns in conn.execute("SELECT * FROM block"):
        want = refs.pop(bytes(block_id), [0, 0])
        assert [n, used] == want, ("block counts", block_id, n, used, want)
        if n:
            live += 1
            assert mark is None and gone_ns is None and used <= size * n
        else:
            assert mark is not None, ("a dead block without a mark", block_id)
    assert not refs, ("extents naming blocks without a row", refs)
    for ino, nextents, inline in conn.execute("SELECT ino, nextents, inline_bytes FROM inode"):
        assert [nextents, inline] == per_file.get(ino, [0, 0]), ("file counts", ino)
    (total,) = conn.execute("SELECT coalesce(sum(size), 0) FROM inode WHERE mode & ? = ?",
                            (0o170000, 0o100000)).fetchone()
    stats = store.statfs()
    assert (stats.bytes, stats.chunks) == (total, live)
