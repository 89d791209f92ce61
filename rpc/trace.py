"""Timeline marks for latency breakdowns (``benchmarks/create_breakdown.py``).

Off unless ``CHORDFS_TRACE_DIR`` names a directory when the process starts:
then every ``mark(event)`` appends ``<wall ns> <pid> <event>`` to
``<dir>/trace.<pid>``. Wall-clock nanoseconds, so the marks of the mount and
of every node on one machine merge into one timeline. Each mark is written
at once (line buffering: a few microseconds), because benchmarks end their
nodes with SIGKILL and a buffer would lose the marks. When off, a mark costs
one global lookup and a branch; no event string is built by callers that
test ``ENABLED`` first."""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("CHORDFS_TRACE_DIR", "")
ENABLED = bool(_DIR)
_out = None


def mark(event: str) -> None:
    global _out
    if not ENABLED:
        return
    if _out is None:
        _out = open(os.path.join(_DIR, f"trace.{os.getpid()}"), "a", buffering=1)
    _out.write(f"{time.time_ns()} {os.getpid()} {event}\n")
