"""A driver that feeds commands to a MetaStore the way Raft would: through
the Cap'n Proto codec, with increasing indexes and proposer-stamped times."""

from __future__ import annotations

import dataclasses

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
