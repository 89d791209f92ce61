"""The service's guard on lease reads: the core counts ticks, so when the
process stalls (ticks not counted, or counted but not yet fed to the core)
the lease must expire rather than outlive what the followers granted.
Driven by trio's MockClock; the core is a recorder."""

import types

import trio

from server.raft.service import RaftService

TICK_S = 0.01


class _Core:
    def __init__(self, margin_ticks):
        self.cfg = types.SimpleNamespace(lease_margin_ticks=margin_ticks)
        self.expired = 0

    def expire_lease(self):
        self.expired += 1


class _SM:
    def applied_index(self):
        return 0


def _service(margin_ticks=3):
    core = _Core(margin_ticks)
    return RaftService(core, None, _SM(), None, tick_s=TICK_S), core


async def test_lag_within_the_margin_keeps_the_lease(autojump_clock):
    svc, core = _service()
    svc._next_tick_due = trio.current_time() + TICK_S
    await trio.sleep(TICK_S * 1.5)  # 1.5 ticks behind: within 3 - 1
    svc._check_stall()
    assert core.expired == 0


async def test_lag_beyond_the_margin_expires_the_lease(autojump_clock):
    svc, core = _service()
    svc._next_tick_due = trio.current_time() + TICK_S
    await trio.sleep(TICK_S * 2)
    svc._check_stall()
    assert core.expired == 1


async def test_ticks_counted_but_not_fed_count_as_lag(autojump_clock):
    svc, core = _service()
    svc._next_tick_due = trio.current_time() + TICK_S
    svc._ticks = 1  # the driver is busy persisting; the core has not seen it
    svc._check_stall()
    assert core.expired == 0
    svc._ticks = 2
    svc._check_stall()
    assert core.expired == 1


async def test_ticker_expires_the_lease_after_a_long_stall(autojump_clock):
    svc, core = _service()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(svc._ticker)
        await trio.sleep(TICK_S * 5.5)
        assert core.expired == 0 and svc._ticks == 5
        autojump_clock.jump(TICK_S * 50)  # the process was frozen
        await trio.sleep(TICK_S * 1.5)
        assert core.expired == 1
        assert svc._ticks <= 8, "no burst of ticks after the stall"
        nursery.cancel_scope.cancel()
