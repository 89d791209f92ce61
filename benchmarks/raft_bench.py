"""Committed Raft proposals per second on a 3-node cluster on 127.0.0.1,
fsync on (three `server.raft.standalone` processes), with 1 and 64
proposals in flight, and p50/p99 commit latency (propose call to applied
result, seen by the client).  Baseline in the same run: the same client
against a single-node group (no replication), so the cost of the quorum
round trip shows.

    python benchmarks/raft_bench.py [--seconds 5]
"""

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

import rpc  # noqa: E402
from server.raft.wire import raft_capnp  # noqa: E402
from tests.raft.test_processes import Cluster  # noqa: E402


async def _leader_addr(cluster) -> str:
    with trio.fail_after(15):
        while True:
            for node_id, addr in cluster.addrs.items():
                try:
                    async with rpc.connect(addr, connect_timeout_s=0.5) as conn:
                        st = await (await conn.bootstrap(raft_capnp.Raft)).status(timeout_s=0.5)
                        if st.role == "leader":
                            return addr
                except rpc.RpcError:
                    pass
            await trio.sleep(0.05)


async def _measure(addr: str, in_flight: int, seconds: float) -> dict:
    latencies = []
    async with rpc.connect(addr) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft)
        payload = b"x" * 100
        deadline = trio.current_time() + seconds

        async def proposer():
            while trio.current_time() < deadline:
                t0 = time.perf_counter()
                reply = await cap.propose(command=payload, forwarded=False, timeout_s=10)
                if reply.notLeader:
                    raise SystemExit("leadership moved during the measurement; rerun on a quieter machine")
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight):
                nursery.start_soon(proposer)
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return {"per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    rows = []
    for nodes in (3, 1):
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="raftbench-"))
        # 100 ms ticks, 1-2 s election timeout: a busy 2-core machine must not
        # trigger elections in the middle of a measurement.
        cluster = Cluster(tmp, n=nodes, tick_ms=100, election_ticks=10)
        try:
            for node_id in cluster.ids:
                cluster.start(node_id)
            addr = trio.run(_leader_addr, cluster)
            for in_flight in (1, 64):
                rows.append((nodes, in_flight, trio.run(_measure, addr, in_flight, args.seconds)))
        finally:
            cluster.stop_all()
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'nodes':>5} {'in flight':>9} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for nodes, in_flight, r in rows:
        print(f"{nodes:5d} {in_flight:9d} {r['per_s']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    base = {k: r for n, k, r in rows if n == 1}
    for n, k, r in rows:
        if n == 3:
            print(f"3-node / 1-node commits/s at {k} in flight: {r['per_s'] / base[k]['per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
