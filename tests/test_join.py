"""Nodes beyond the seeds join the metadata Raft group as learners and are
promoted to voters up to voters_max, with real `chordfs node` processes."""

import subprocess
import sys
import time

import pytest
import trio

import rpc
from server.raft.wire import raft_capnp
from tests.netutil import free_ports

pytestmark = pytest.mark.integration


async def _status(addr):
    async with rpc.connect(addr, connect_timeout_s=1) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=1)
        return await cap.status(timeout_s=1)


async def _propose(addr, command):
    async with rpc.connect(addr, connect_timeout_s=1) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=2)
        return await cap.propose(command=command, forwarded=False, timeout_s=5)


def test_joiners_become_learners_then_voters(tmp_path):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(5)]
    seeds = ",".join(addrs[:3])
    procs = []

    def start(i):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "server.cli", "node", "--listen-port", addrs[i].split(":")[1],
             "--data-dir", str(tmp_path / f"n{i}"), "--seeds", seeds, "--voters-max", "4",
             "--ring-tick-ms", "25", "--log-level", "warning", "--insecure"]
            + (["--init"] if i == 0 else []),
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"n{i}.log", "wb")))

    async def scenario():
        with trio.fail_after(60):
            while True:
                try:
                    st = await _status(addrs[0])
                    if st.leader:
                        break
                except rpc.RpcError:
                    pass
                await trio.sleep(0.1)
            leader = st.leaderAddr
            assert leader in addrs[:3]
            start(3)
            start(4)
            while True:
                st = await _status(leader)
                voters = {m.name for m in st.members if m.voter}
                members = {m.name for m in st.members}
                if set(addrs) <= members and len(voters) == 4:
                    break
                await trio.sleep(0.2)
            assert len(st.learners) == 1  # voters_max=4: the fifth stays a learner
            # Both joiners apply what the group commits.
            reply = await _propose(leader, b"\xff not a metadata command")
            while True:
                applied = [(await _status(a)).applied for a in addrs[3:]]
                if all(a >= reply.index for a in applied):
                    break
                await trio.sleep(0.1)

    try:
        for i in range(3):
            start(i)
        started = time.monotonic()
        trio.run(scenario)
        print(f"joined, promoted and caught up in {time.monotonic() - started:.1f}s")
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
