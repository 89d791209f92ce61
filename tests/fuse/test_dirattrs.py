"""DirAttrs: a directory's attributes from our own change's reply, answered
for up to the attribute timeout, then asked again; drops; bounds."""

from fusefs.kernel import DirAttrs
from server.meta.types import Attr


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _dir(ino: int, mtime: int = 1) -> Attr:
    return Attr(ino, 0o40755, 0, 0, 0, 2, 0, mtime, mtime, mtime)


def test_kept_for_the_ttl_and_replaced_by_newer_replies():
    clock = Clock()
    cache = DirAttrs(1.0, clock=clock)
    assert cache.get(1) is None
    cache.put([_dir(1), _dir(7)])
    assert cache.get(1) == _dir(1) and cache.get(7) == _dir(7)
    clock.now += 0.5
    cache.put([_dir(1, mtime=2)])  # our next create there
    clock.now += 0.9
    assert cache.get(1) == _dir(1, mtime=2)  # the newer reply's own ttl
    assert cache.get(7) is None  # expired: the kernel's getattr asks the cluster
    clock.now += 0.2
    assert cache.get(1) is None


def test_drops_and_bounds():
    clock = Clock()
    cache = DirAttrs(1.0, entries_max=3, clock=clock)
    cache.put([_dir(i) for i in range(1, 6)])
    assert [cache.get(i) is not None for i in range(1, 6)] == [False, False, True, True, True]
    cache.drop(4)
    assert cache.get(4) is None and cache.get(5) is not None
    cache.drop()
    assert cache.get(5) is None
    off = DirAttrs(0.0, clock=clock)  # attr_timeout=0: nothing is kept
    off.put([_dir(1)])
    assert off.get(1) is None
