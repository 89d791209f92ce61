"""A chordfs cluster whose nodes run in their own network namespaces
(netns.py): ``chordfs node`` processes with TLS certificates of the test
CA, one data directory each, killed with SIGKILL, paused with SIGSTOP,
restarted on the same data."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

from tests import tls
from tests.fuse.realcluster import raft_status, ring_alive

from .netns import Net

ROOT = pathlib.Path(__file__).resolve().parents[2]
PORT = 7070


class NsCluster:
    def __init__(self, base: pathlib.Path, net: Net) -> None:
        self.base, self.net = base, net
        self.addrs = [f"{net.ip(i)}:{PORT}" for i in range(net.n)]
        self.procs: list[subprocess.Popen | None] = [None] * net.n
        self.paused: set[int] = set()
        self.wiped = False

    @property
    def spec(self) -> str:
        return ",".join(self.addrs)

    def start(self, i: int, init: bool | None = None) -> None:
        """Node i on its data directory; node 0 founds the cluster the first
        time (``init``), a wiped node must not found another."""
        argv = [sys.executable, "-m", "server.cli", "node", "--listen-host", self.net.ip(i),
                "--listen-port", str(PORT), "--data-dir", str(self.base / f"n{i}"),
                "--seeds", self.spec, "--log-level", "info", *tls.node_flags(self.addrs[i])]
        if (i == 0 and not self.wiped) if init is None else init:
            argv.append("--init")
        with open(self.base / f"n{i}.log", "ab") as log:
            self.procs[i] = subprocess.Popen(self.net.exec_argv(i, argv), cwd=ROOT,
                                             stdout=subprocess.DEVNULL, stderr=log)

    def start_all(self, timeout_s: float = 60.0) -> None:
        for i in range(self.net.n):
            self.start(i)
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """A leader over every voter, and every ring view whole."""
        deadline = time.monotonic() + timeout_s
        voters = self.net.n if self.net.n % 2 else self.net.n - 1
        while True:
            leader = self.leader()
            if leader is not None and raft_status(self.addrs[leader])[3] >= voters and all(
                    ring_alive(a) == set(self.addrs) for a in self.addrs):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster not healthy in {timeout_s} s:\n{self.logs()}")
            time.sleep(0.2)

    def leader(self) -> int | None:
        for i, addr in enumerate(self.addrs):
            if self.procs[i] is None or self.procs[i].poll() is not None or i in self.paused:
                continue
            st = raft_status(addr, timeout_s=0.5)
            if st is not None and st[2].lower() == "leader":
                return i
        return None

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            if i in self.paused:
                os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        self.paused.discard(i)

    def wipe(self, i: int) -> None:
        shutil.rmtree(self.base / f"n{i}", ignore_errors=True)
        self.wiped = True

    def remove_member(self, i: int) -> str:
        """``chordfs members remove`` of node i's old id, through the others."""
        others = ",".join(a for j, a in enumerate(self.addrs) if j != i)
        out = subprocess.run([sys.executable, "-m", "server.cli", "members", others, "remove",
                              self.addrs[i], *tls.cli_flags(node=True)],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"members remove {self.addrs[i]}: {out.stderr.strip()}")
        return out.stdout.strip()

    def pause(self, i: int) -> None:
        os.kill(self.procs[i].pid, signal.SIGSTOP)
        self.paused.add(i)

    def resume(self, i: int) -> None:
        if i in self.paused:
            os.kill(self.procs[i].pid, signal.SIGCONT)
            self.paused.discard(i)

    def stop(self) -> None:
        for i in range(self.net.n):
            self.kill(i)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- n{i}\n" + (self.base / f"n{i}.log").read_text(errors="replace")[-tail:]
                         for i in range(self.net.n) if (self.base / f"n{i}.log").exists())
