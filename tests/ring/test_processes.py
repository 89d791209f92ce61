"""The ring across real node processes on 127.0.0.1: five `chordfs node`
processes find each other through seeds, agree that a kill -9'd one is dead
within the failure detector's configured time, take it back when it restarts
under the same name, and hear a SIGTERM'd one leave. Also `chordfs status`."""

import os
import signal
import subprocess
import sys

import pytest
import trio

import rpc
from server.cli import main
from server.ring.config import RingConfig
from server.ring.messages import Status
from server.ring.wire import ring_capnp, updates_from
from tests.netutil import free_ports

NODES = 5
RING_TICK_MS = 25  # half the default tick: every ring timing halves
RING = RingConfig()
PING_PERIOD_S = RING.ping_period_ticks * RING_TICK_MS / 1000
# Probe within about a period, suspect at its end, then the suspicion timeout.
DETECTION_S = (RING.ping_period_ticks + RING.suspicion_timeout_ticks) * RING_TICK_MS / 1000
# Gossip of the verdict to the last node, plus scheduling noise of 5 processes.
DETECTION_SLACK_S = 4 * PING_PERIOD_S + 2.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_status_of_unreachable_node_fails_plainly(capsys):
    assert main(["status", "127.0.0.1:1", "--timeout-s", "1", "--insecure"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("chordfs: no node of 127.0.0.1:1 answered") and "\n" not in err
    assert main(["status", "127.0.0.1:1", "--ring", "--timeout-s", "1", "--insecure"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("chordfs: 127.0.0.1:1 did not answer") and "\n" not in err



class Cluster:
    def __init__(self, tmp_path, ports):
        self.tmp = tmp_path
        self.addrs = [f"127.0.0.1:{p}" for p in ports]
        self.procs: dict[int, subprocess.Popen] = {}
        self.starts: dict[int, int] = {}

    def start(self, i: int) -> None:
        port = self.addrs[i].rpartition(":")[2]
        self.starts[i] = self.starts.get(i, 0) + 1
        log = open(self.tmp / f"node{i}.{self.starts[i]}.log", "w")
        argv = [sys.executable, "-m", "server.cli", "node", "--listen-port", port,
                "--data-dir", str(self.tmp / f"n{i}"), "--seeds", ",".join(self.addrs[:3]),
                "--ring-tick-ms", str(RING_TICK_MS), "--insecure"] + (["--init"] if i == 0 else [])
        self.procs[i] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    def dump_logs(self) -> None:
        for path in sorted(self.tmp.glob("node*.log")):
            lines = path.read_text(errors="replace").splitlines()
            print(f"--- {path.name} (last 15 lines)\n" + "\n".join(lines[-15:]))


async def members_of(addr: str) -> dict[str, tuple[Status, int]] | None:
    """The node's member table, or None if it did not answer within 1 s."""
    with trio.move_on_after(1.0):
        try:
            async with rpc.connect(addr, connect_timeout_s=1.0) as conn:
                cap = await conn.bootstrap(ring_capnp.RingPeer, timeout_s=1.0)
                reply = await cap.members(timeout_s=1.0)
                return {u.name: (u.status, u.incarnation) for u in updates_from(reply.members)}
        except rpc.RpcError:
            return None
    return None


async def tables(addrs) -> dict[str, dict | None]:
    results = {}

    async def one(addr):
        results[addr] = await members_of(addr)

    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(one, addr)
    return results


async def wait_for(addrs, predicate, timeout_s: float) -> float:
    """Poll every node's table until predicate(table) holds on all; returns
    the seconds it took. Real clock: these are real processes."""
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while True:
            got = await tables(addrs)
            if all(t is not None and predicate(t) for t in got.values()):
                return trio.current_time() - start
            await trio.sleep(0.05)


def statuses(table, names):
    return {n: table.get(n, (None, 0))[0] for n in names}


@pytest.mark.xdist_group("heavy")
@pytest.mark.integration
async def test_five_processes_detect_a_crash_and_take_the_node_back(tmp_path):
    cluster = Cluster(tmp_path, free_ports(NODES))
    addrs = cluster.addrs
    all_alive = dict.fromkeys(addrs, Status.ALIVE)
    try:
        for i in range(NODES):
            cluster.start(i)
        took = await wait_for(addrs, lambda t: statuses(t, addrs) == all_alive, 30)
        print(f"\n5 nodes all alive on all after {took:.2f} s")

        status = subprocess.run([sys.executable, "-m", "server.cli", "status", addrs[3], "--ring",
                                 "--insecure"], capture_output=True, text=True, timeout=20, cwd=ROOT)
        assert status.returncode == 0, status.stderr
        lines = status.stdout.splitlines()
        assert lines[0].startswith(f"INSECURE: {addrs[3]} serves plain TCP")  # loud, first
        assert sorted(lines[1:]) == sorted(f"{a} alive 0" for a in addrs)

        victim, rest = addrs[0], addrs[1:]  # the first seed, which founded the ring
        cluster.procs[0].send_signal(signal.SIGKILL)
        cluster.procs[0].wait(timeout=10)
        took = await wait_for(rest, lambda t: t[victim][0] == Status.DEAD, 30)
        print(f"kill -9 detected by all 4 in {took:.2f} s "
              f"(configured {DETECTION_S:.2f} s + slack {DETECTION_SLACK_S:.2f} s)")
        assert took <= DETECTION_S + DETECTION_SLACK_S

        cluster.start(0)
        took = await wait_for(addrs, lambda t: statuses(t, addrs) == all_alive
                              and t[victim][1] > 0, 30)
        print(f"restarted node alive again on all 5 in {took:.2f} s")

        leaver = cluster.procs[4]
        leaver.send_signal(signal.SIGTERM)
        took = await wait_for(addrs[:4], lambda t: t[addrs[4]][0] == Status.LEFT, 10)
        print(f"SIGTERM'd node seen LEFT by all 4 in {took:.2f} s")
        assert leaver.wait(timeout=15) == 0
    except BaseException:
        cluster.dump_logs()
        raise
    finally:
        cluster.kill_all()
