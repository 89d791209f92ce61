"""XattrCache: answers by name and by list, expiry, own changes, bounds."""

from fusefs.xattrcache import ABSENT, UNKNOWN, VALUE_BYTES_MAX, XattrCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_values_and_absence_are_kept_until_the_ttl():
    clock = Clock()
    cache = XattrCache(1.0, clock=clock)
    assert cache.get(5, b"user.a") is UNKNOWN
    cache.put(5, b"user.a", b"v", 0)
    cache.put(5, b"security.capability", None, 0)
    assert cache.get(5, b"user.a") == b"v"
    assert cache.get(5, b"security.capability") is ABSENT
    assert cache.get(5, b"user.b") is UNKNOWN  # never asked, never listed
    assert cache.get(6, b"user.a") is UNKNOWN
    clock.now += 0.99
    assert cache.get(5, b"user.a") == b"v"
    clock.now += 0.02
    assert cache.get(5, b"user.a") is UNKNOWN
    assert cache.get(5, b"security.capability") is UNKNOWN


def test_a_list_makes_every_other_name_absent_and_overrides_older_answers():
    cache = XattrCache(1.0, clock=Clock())
    cache.put(1, b"user.gone", b"old", 0)
    cache.put(1, b"user.new", None, 0)
    cache.put_names(1, [b"user.new", b"user.kept"], 0)
    assert cache.get(1, b"user.other") is ABSENT
    assert cache.get(1, b"user.gone") is ABSENT
    assert cache.get(1, b"user.new") is UNKNOWN  # listed: must be fetched
    assert cache.get(1, b"user.kept") is UNKNOWN


def test_own_change_drops_the_inode_and_ttl_zero_caches_nothing():
    cache = XattrCache(1.0, clock=Clock())
    cache.put(1, b"user.a", b"v", 0)
    cache.drop(1)
    assert cache.get(1, b"user.a") is UNKNOWN
    off = XattrCache(0.0, clock=Clock())
    off.put(1, b"user.a", b"v", 0)
    off.put_names(1, [], 0)
    assert off.get(1, b"user.a") is UNKNOWN


def test_bounded_in_inodes_and_value_size():
    cache = XattrCache(10.0, inodes_max=3, clock=Clock())
    for ino in range(5):
        cache.put(ino, b"user.a", None, 0)
    assert [cache.get(i, b"user.a") for i in range(5)] == [UNKNOWN, UNKNOWN, ABSENT, ABSENT, ABSENT]
    cache.put(9, b"user.big", b"x" * (VALUE_BYTES_MAX + 1), 0)
    assert cache.get(9, b"user.big") is UNKNOWN


def test_an_answer_asked_for_before_an_own_change_is_not_cached():
    cache = XattrCache(1.0, clock=Clock())
    epoch = cache.epoch          # a getxattr leaves for the leader...
    cache.drop(1)                # ...our setxattr commits meanwhile...
    cache.put(1, b"user.a", b"old", epoch)  # ...the old answer arrives
    assert cache.get(1, b"user.a") is UNKNOWN
    cache.put_names(1, [], epoch)
    assert cache.get(1, b"user.b") is UNKNOWN
    cache.put(1, b"user.a", b"new", cache.epoch)
    assert cache.get(1, b"user.a") == b"new"
