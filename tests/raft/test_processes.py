"""Three Raft processes on 127.0.0.1 with fsync on: SIGKILL the leader while
a client keeps proposing.  A new leader must appear within about a second of
the election timeout, and no acknowledged proposal may be lost: after the
killed node restarts, every node has applied every acknowledged command at
the index it was acknowledged with."""

import signal
import subprocess
import sys

import pytest
import trio

import rpc
from server.raft.wire import raft_capnp
from tests.netutil import free_ports

pytestmark = pytest.mark.integration
TICK_MS, ELECTION_TICKS = 20, 10  # election timeout 200-400 ms


class Cluster:
    def __init__(self, tmp_path, n=3, tick_ms=TICK_MS, election_ticks=ELECTION_TICKS):
        self.tick_ms, self.election_ticks = tick_ms, election_ticks
        self.ids = list(range(1, n + 1))
        self.addrs = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, free_ports(n))}
        self.tmp = tmp_path
        self.procs = {}

    def start(self, node_id):
        argv = [sys.executable, "-m", "server.raft.standalone", "--id", str(node_id),
                "--listen", self.addrs[node_id], "--data-dir", str(self.tmp / f"n{node_id}"),
                "--apply-log", str(self.tmp / f"applied{node_id}"),
                "--tick-ms", str(self.tick_ms), "--election-ticks", str(self.election_ticks)]
        for i, addr in self.addrs.items():
            argv += ["--peer", f"{i}={addr}"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "READY"
        self.procs[node_id] = proc

    def kill9(self, node_id):
        self.procs[node_id].send_signal(signal.SIGKILL)
        self.procs[node_id].wait()

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def applied(self, node_id) -> dict[int, str]:
        out = {}
        with open(self.tmp / f"applied{node_id}") as f:
            for line in f:
                index, data = line.split()
                assert out.setdefault(int(index), data) == data, "same index, two commands"
        return out


async def _status(addr):
    async with rpc.connect(addr, connect_timeout_s=0.5) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=0.5)
        return await cap.status(timeout_s=0.5)


async def _leader(cluster, candidates):
    for node_id in candidates:
        try:
            st = await _status(cluster.addrs[node_id])
        except rpc.RpcError:
            continue
        if st.role == "leader":
            return node_id
    return None


async def _client(cluster, acked, stop):
    """Proposes c0, c1, ... through any live node; records acknowledged ones."""
    i = 0
    while not stop.is_set():
        for node_id in cluster.ids:
            if cluster.procs[node_id].poll() is not None:
                continue
            command = f"c{i}".encode()
            try:
                async with rpc.connect(cluster.addrs[node_id], connect_timeout_s=0.5) as conn:
                    cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=1)
                    while not stop.is_set():
                        reply = await cap.propose(command=command, forwarded=False, timeout_s=3)
                        if reply.notLeader:
                            break
                        acked.append((reply.index, command.hex()))
                        i += 1
                        command = f"c{i}".encode()
            except rpc.RpcError:
                continue  # unacknowledged: it may or may not have committed
        await trio.sleep(0.01)


async def test_kill9_leader_while_proposing(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        for node_id in cluster.ids:
            cluster.start(node_id)
        with trio.fail_after(10):
            while (leader := await _leader(cluster, cluster.ids)) is None:
                await trio.sleep(0.05)
        acked, stop = [], trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_client, cluster, acked, stop)
            with trio.fail_after(10):
                while len(acked) < 50:
                    await trio.sleep(0.01)
            before = len(acked)
            cluster.kill9(leader)
            killed_at = trio.current_time()
            live = [i for i in cluster.ids if i != leader]
            with trio.fail_after(10):
                while (new_leader := await _leader(cluster, live)) is None:
                    await trio.sleep(0.01)
            elected_s = trio.current_time() - killed_at
            with trio.fail_after(10):
                while len(acked) < before + 50:
                    await trio.sleep(0.01)
            stop.set()
        print(f"new leader {new_leader} after {elected_s:.3f}s; {len(acked)} proposals acked")
        election_timeout_max_s = 2 * ELECTION_TICKS * TICK_MS / 1000
        assert elected_s < election_timeout_max_s + 1.0
        cluster.start(leader)  # the killed node recovers from its log
        last = max(index for index, _ in acked)
        with trio.fail_after(15):
            while not all(max(cluster.applied(i), default=0) >= last for i in cluster.ids):
                await trio.sleep(0.05)
        logs = {i: cluster.applied(i) for i in cluster.ids}
        for index, command in acked:
            for node_id, log in logs.items():
                assert log.get(index) == command, (node_id, index, command)
    finally:
        cluster.stop_all()
