"""Helpers shared by the tests that start real servers on 127.0.0.1.

Ports come from below the kernel's ephemeral range. A port the kernel
picked with bind(0) is an ephemeral port: released again, it is free for
the kernel to hand out as the *source* port of any outgoing connection, and
a test cluster makes thousands of those. A node started half a minute later
on such a port (a joining node, a restarted one) then fails to bind; CI
once lost a run to exactly that. Ports outside the range are never picked
as source ports, so once free they stay free unless another test takes
them, which the per-process record below prevents."""

from __future__ import annotations

import os
import random
import socket

_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_LOW = 10_000          # well above the services of a test machine
_handed_out: set[int] = set()
# Ports need not be reproducible; distinct per process so two pytest runs
# (a clean-clone run beside a developer's) rarely try the same ones.
_rng = random.Random(os.getpid() ^ int.from_bytes(os.urandom(4), "little"))


def _candidates() -> range:
    try:
        with open(_RANGE_FILE) as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32_768
    span = range(_LOW, max(_LOW + 1_000, ephemeral_low))
    # pytest-xdist workers (gw0, gw1, ...) take disjoint slices, so two
    # workers never pick the same port between its check and its bind.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if worker.startswith("gw") and worker[2:].isdigit() and count > 1:
        width = len(span) // count
        start = span.start + int(worker[2:]) * width
        return range(start, start + width)
    return span


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports on 127.0.0.1 that are free now, outside the
    ephemeral range, and not handed out before by this process."""
    span = _candidates()
    ports: list[int] = []
    for _ in range(50 * n + 100):
        if len(ports) == n:
            break
        port = _rng.choice(span)
        if port in _handed_out or not _bindable(port):
            continue
        _handed_out.add(port)
        ports.append(port)
    if len(ports) < n:
        raise RuntimeError(f"found only {len(ports)} of {n} free ports in {span}")
    return ports
