"""A real local chordfs cluster for mount tests and benchmarks: N ``chordfs
node`` processes (``python -m server.cli node``) on 127.0.0.1 with their own
data directories, ready once every node answers a ping and a Raft leader is
known; nodes can be killed one by one with SIGKILL (the leader first, if
asked). ``stop`` kills every process it started, by PID, and waits for it."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

import trio

import rpc
from server.raft.wire import raft_capnp
from server.ring.wire import ring_capnp, updates_from
from tests import tls
from tests.netutil import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[2]
READY_DEADLINE_S = 30.0



async def _raft_status(addr: str, timeout_s: float, secure: bool):
    with trio.fail_after(timeout_s):
        async with rpc.connect(addr, connect_timeout_s=timeout_s,
                               ssl_context=tls.client_context() if secure else None) as conn:
            cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=timeout_s)
            return await cap.status(timeout_s=timeout_s)


async def _ring_members(addr: str, timeout_s: float, secure: bool):
    with trio.fail_after(timeout_s):
        async with rpc.connect(addr, connect_timeout_s=timeout_s,
                               ssl_context=tls.client_context() if secure else None) as conn:
            cap = await conn.bootstrap(ring_capnp.RingPeer, timeout_s=timeout_s)
            reply = await cap.members(timeout_s=timeout_s)
            return updates_from(reply.members)


def ring_alive(addr: str, timeout_s: float = 1.0, secure: bool = True) -> set[str] | None:
    """Names of the members one node's ring view holds alive (``chordfs status``)."""
    try:
        members = trio.run(_ring_members, addr, timeout_s, secure)
    except (rpc.RpcError, trio.TooSlowError, OSError):
        return None
    return {u.name for u in members if u.status.name.lower() == "alive"}


def raft_status(addr: str, timeout_s: float = 1.0, secure: bool = True):
    """(id, leader, role, voters) of one node, or None if it does not answer."""
    try:
        st = trio.run(_raft_status, addr, timeout_s, secure)
    except (rpc.RpcError, trio.TooSlowError, OSError):
        return None
    return st.id, st.leader, str(st.role), len(st.voters)


@dataclasses.dataclass
class Cluster:
    base: pathlib.Path
    addrs: list[str]
    procs: list[subprocess.Popen]
    secure: bool = True  # mutual TLS (tests/tls.py); False: --insecure nodes

    @property
    def spec(self) -> str:
        return ",".join(self.addrs)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is None]

    def leader_index(self, voters: int = 0) -> int | None:
        """Index of the node whose Raft status says it leads (over at least
        ``voters`` voters), if one does."""
        for i in self.alive():
            st = raft_status(self.addrs[i], secure=self.secure)
            if st is not None and st[2].lower() == "leader" and st[3] >= voters:
                return i
        return None

    def wait_leader(self, timeout_s: float = READY_DEADLINE_S, voters: int = 0) -> int:
        """A leader; with ``voters``, once that many were promoted (the
        first node founds the cluster, the others join as learners)."""
        deadline = time.monotonic() + timeout_s
        while (index := self.leader_index(voters)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no Raft leader within {timeout_s} s:\n{self.logs()}")
            time.sleep(0.1)
        return index

    def wait_ring(self, timeout_s: float = READY_DEADLINE_S) -> None:
        """Until every live node's ring view holds every live node alive: a
        client mounting earlier may see a ring of one node (see the report of
        the FUSE task) and place every chunk on that node alone."""
        want = {self.addrs[i] for i in self.alive()}
        deadline = time.monotonic() + timeout_s
        while any(ring_alive(self.addrs[i], secure=self.secure) != want for i in self.alive()):
            if time.monotonic() > deadline:
                raise AssertionError(f"ring did not converge within {timeout_s} s:\n{self.logs()}")
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        self.procs[index].send_signal(signal.SIGKILL)
        self.procs[index].wait()

    def logs(self) -> str:
        return "\n".join(f"--- node {i}\n" + (self.base / f"n{i}.log").read_text(errors="replace")[-3000:]
                         for i in range(len(self.addrs)))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()


def start_cluster(base: pathlib.Path, n: int = 3,
                  node_env: dict[int, dict[str, str]] | None = None,
                  log_level: str = "warning", secure: bool = True,
                  node_args: dict[int, list[str]] | None = None) -> Cluster:
    """``node_env``: extra environment variables of node i (fault hooks);
    ``secure=False``: plain-TCP nodes (the TLS-cost benchmarks);
    ``node_args``: extra ``chordfs node`` flags of node i."""
    base.mkdir(parents=True, exist_ok=True)
    addrs = [f"127.0.0.1:{p}" for p in free_ports(n)]
    cluster = Cluster(base, addrs, [], secure)
    try:
        for i, addr in enumerate(addrs):
            with open(base / f"n{i}.log", "wb") as err:
                cluster.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "server.cli", "node", "--listen-port",
                     addr.split(":")[1], "--data-dir", str(base / f"n{i}"),
                     "--seeds", cluster.spec, "--log-level", log_level]
                    + (tls.node_flags(addr) if secure else ["--insecure"])
                    + (node_args or {}).get(i, [])
                    + (["--init"] if i == 0 else []),
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                    env={**os.environ, **(node_env or {}).get(i, {})}))
        cluster.wait_leader(voters=n if n % 2 else n - 1)
        cluster.wait_ring()
    except BaseException:
        cluster.stop()
        raise
    return cluster
