"""Deadlines of outstanding calls, served by one timer task.

A cancel scope per call costs more than the call's own envelope; a heap of
(deadline, item) entries and one task that sleeps until the earliest costs a
heap push per call.  Entries of calls that returned stay in the heap until
their time comes or a bulk prune drops them, so the heap stays within a
constant factor of the calls still waiting."""

import heapq
import itertools
import math

import trio


class Deadlines:
    def __init__(self, slack_entries: int = 1024):
        self._heap: list = []
        self._seq = itertools.count()
        self._target = math.inf
        self._lot = trio.lowlevel.ParkingLot()
        self._slack = slack_entries

    def add(self, deadline: float, key, item) -> None:
        heapq.heappush(self._heap, (deadline, next(self._seq), key, item))
        if deadline < self._target:
            self._lot.unpark()  # the timer sleeps too long: wake it to re-arm

    async def run(self, fire, is_waiting, waiting_count) -> None:
        """Forever: call ``fire(key, item)`` for each entry whose deadline has
        passed while ``is_waiting(item)``."""
        heap = self._heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                _, _, key, item = heapq.heappop(heap)
                if is_waiting(item):
                    fire(key, item)
            if len(heap) > 2 * waiting_count() + self._slack:
                heap[:] = [entry for entry in heap if is_waiting(entry[3])]
                heapq.heapify(heap)
            self._target = heap[0][0] if heap else math.inf
            with trio.move_on_at(self._target):
                await self._lot.park()
