"""Data maintenance across real node processes on 127.0.0.1: five `chordfs
node` processes hold 200 chunks written with R=3; after a kill -9 every
chunk stays readable and repair brings every chunk back to 3 live copies;
a chunk corrupted on disk is found by scrub and restored from a replica; a
sixth node that joins receives the chunks it now replicates."""

import os
import signal
import subprocess
import sys

import pytest
import trio

import rpc
from fusefs.cluster import ClusterConfig, open_cluster
from rpc.pool import Pool
from server.meta.types import ROOT_INO, CommitWrite, Create, Slice
from server.ring.messages import Status
from server.ring.ringmath import Ring
from server.store.keyrange import chunk_id_of, ring_key
from server.store.replication import ReplicatedStore
from server.store.service import RemoteStore, store_capnp
from tests.netutil import free_ports
from tests.ring.test_processes import members_of

from .conftest import chunk_bytes

NODES = 5
CHUNKS = 200
R = 3
RING_TICK_MS = 25
SCRUB_INTERVAL_S = 2.0
# Detection at this tick is ~2.5 s + gossip; then debounce (1 s) and one pass.
REREPLICATED_S_MAX = 30.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Cluster:
    def __init__(self, tmp_path, ports):
        self.tmp = tmp_path
        self.addrs = [f"127.0.0.1:{p}" for p in ports]
        self.procs: dict[int, subprocess.Popen] = {}

    def data_dir(self, i: int):
        return self.tmp / f"n{i}"

    def start(self, i: int) -> None:
        port = self.addrs[i].rpartition(":")[2]
        log = open(self.tmp / f"node{i}.log", "a")
        argv = [sys.executable, "-m", "server.cli", "node", "--listen-port", port,
                "--data-dir", str(self.data_dir(i)), "--seeds", ",".join(self.addrs[:3]),
                "--ring-tick-ms", str(RING_TICK_MS), "--scrub-interval-s", str(SCRUB_INTERVAL_S),
                "--disk-reserve-bytes", "0", "--insecure"] + (["--init"] if i == 0 else [])
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
            print(f"--- {path.name} (last 25 lines)\n" + "\n".join(lines[-25:]))


def chunk_file(data_dir, chunk_id: bytes):
    name = chunk_id.hex()
    return data_dir / "chunks" / "chunks" / name[0:2] / name[2:4] / name


async def wait_until(predicate, timeout_s: float, poll_s: float = 0.1) -> float:
    """Await ``predicate()`` until true; seconds it took (real clock)."""
    start = trio.current_time()
    with trio.fail_after(timeout_s):
        while not await predicate():
            await trio.sleep(poll_s)
    return trio.current_time() - start


async def all_see(addrs, check) -> bool:
    tables = [await members_of(a) for a in addrs]
    return all(t is not None and check(t) for t in tables)


async def copies_missing(pool, ring: Ring, ids: list[bytes]) -> int:
    """How many (chunk, replica) pairs of ``ring``'s placement lack a copy."""
    want: dict[str, list[bytes]] = {}
    for cid in ids:
        for name in ring.replicas(ring_key(cid), R):
            want.setdefault(name, []).append(cid)
    missing = 0
    for name, cids in want.items():
        try:
            with trio.fail_after(5):
                cap = await pool.bootstrap(name, store_capnp.ChunkStore, timeout_s=5)
                present = await RemoteStore(cap, name, timeout_s=5).has_many(cids)
        except (rpc.RpcError, trio.TooSlowError):
            present = [False] * len(cids)
        missing += present.count(False)
    return missing


async def copies_extra(pool, ring: Ring, members: list[str], ids: list[bytes]) -> int:
    """How many copies live nodes hold outside ``ring``'s placement."""
    extra = 0
    for name in members:
        try:
            with trio.fail_after(5):
                cap = await pool.bootstrap(name, store_capnp.ChunkStore, timeout_s=5)
                present = await RemoteStore(cap, name, timeout_s=5).has_many(ids)
        except (rpc.RpcError, trio.TooSlowError):
            continue
        extra += sum(1 for cid, yes in zip(ids, present)
                     if yes and name not in ring.replicas(ring_key(cid), R))
    return extra


@pytest.mark.xdist_group("heavy")
@pytest.mark.integration
async def test_node_maintenance_rereplicates_scrubs_and_moves_data(tmp_path):
    ports = free_ports(NODES + 1)
    cluster = Cluster(tmp_path, ports)
    addrs, extra = cluster.addrs[:NODES], cluster.addrs[NODES]
    try:
        async with trio.open_nursery() as nursery:
            pool = Pool(nursery, connect_timeout_s=1.0, backoff_max_s=0.5)
            await _scenario(cluster, pool, addrs, extra)
            pool.close()
            nursery.cancel_scope.cancel()
    except BaseException:
        cluster.dump_logs()
        raise
    finally:
        cluster.kill_all()


async def _scenario(cluster, pool, addrs, extra):
    for i in range(NODES):
        cluster.start(i)
    alive = lambda names: lambda t: all(t.get(n, (None,))[0] == Status.ALIVE for n in names)  # noqa: E731
    took = await wait_until(lambda: all_see(addrs, alive(addrs)), 30)
    print(f"\n{NODES} nodes alive on all after {took:.2f} s")

    ring = Ring(addrs)  # the nodes' own view: every member, 256 virtual ids
    store = ReplicatedStore(pool, ring, lambda name: name, R=R, timeout_s=5)
    chunks = {chunk_id_of(d): d for d in (chunk_bytes(7000 + i, 4096 + i) for i in range(CHUNKS))}
    ids = list(chunks)
    stamps = []
    for cid, data in chunks.items():
        result = await store.put(cid, data)
        assert len(result.acked) == R
        stamps.append(result.stamp)
    assert await copies_missing(pool, ring, ids) == 0
    # A file names every chunk: uncommitted uploads are garbage the nodes'
    # sweepers reclaim once their stamp is an upload window old.
    await _commit_as_a_file(addrs, chunks, min(stamps))

    victim, rest = addrs[4], addrs[:4]
    held = sum(victim in ring.replicas(ring_key(c), R) for c in ids)
    cluster.procs[4].send_signal(signal.SIGKILL)
    cluster.procs[4].wait(timeout=10)
    killed_s = trio.current_time()
    for cid, data in chunks.items():  # the clients' stale view still names the victim
        assert await store.get(cid) == data
    print(f"all {CHUNKS} chunks read back after kill -9 in {trio.current_time() - killed_s:.2f} s "
          f"({store.stats.get_fallbacks} fallbacks)")

    await wait_until(lambda: all_see(rest, lambda t: t[victim][0] == Status.DEAD), 30)
    detected_s = trio.current_time()
    live_ring = Ring(rest)
    missing = await copies_missing(pool, live_ring, ids)
    await wait_until(lambda: _none_missing(pool, live_ring, ids), REREPLICATED_S_MAX, 0.25)
    done_s = trio.current_time()
    print(f"victim held {held} chunks; detected dead by all after {detected_s - killed_s:.2f} s; "
          f"{missing} missing copies re-replicated {done_s - detected_s:.2f} s after detection "
          f"({done_s - killed_s:.2f} s after the kill)")

    await _corrupt_and_wait_for_scrub(cluster, chunks, live_ring)
    await _join_and_wait_for_data(cluster, pool, rest, extra, ids, alive)


async def _commit_as_a_file(addrs, chunks, observed) -> None:
    # One chunk per 4 MiB region: a layout the compactor leaves alone, so
    # the chunks this test counts stay the file's blocks.
    slices = [Slice(i << 22, len(data), cid, 0, len(data), fresh=True)
              for i, (cid, data) in enumerate(chunks.items())]
    async with open_cluster(ClusterConfig(tuple(addrs), ring_refresh_s=0)) as backend:
        created = await backend.submit(Create(ROOT_INO, b"chunks", 0o644, 0, 0, 1))
        assert created.err == 0, created
        done = await backend.submit(CommitWrite(created.attr.ino, 0, 2, slices, observed))
        assert done.err == 0, done


async def _none_missing(pool, ring, ids) -> bool:
    return await copies_missing(pool, ring, ids) == 0


async def _corrupt_and_wait_for_scrub(cluster, chunks, ring):
    node = 1
    cid = next(c for c in chunks if cluster.addrs[node] in ring.replicas(ring_key(c), R))
    path = chunk_file(cluster.data_dir(node), cid)
    bad = bytearray(path.read_bytes())
    bad[100] ^= 0xFF
    path.write_bytes(bytes(bad))
    corrupted_s = trio.current_time()

    async def restored() -> bool:
        try:
            return chunk_id_of(path.read_bytes()) == cid
        except FileNotFoundError:
            return False
    await wait_until(restored, 4 * SCRUB_INTERVAL_S + 10)
    quarantined = list((cluster.data_dir(node) / "chunks" / "quarantine").iterdir())
    assert any(cid.hex() in p.name for p in quarantined), quarantined
    log = (cluster.tmp / f"node{node}.log").read_text()
    assert f"scrub.restore node={cluster.addrs[node]} chunk={cid.hex()} ok=True" in log
    print(f"corrupt chunk quarantined and restored by scrub in "
          f"{trio.current_time() - corrupted_s:.2f} s (interval {SCRUB_INTERVAL_S} s)")


async def _join_and_wait_for_data(cluster, pool, rest, extra, ids, alive):
    cluster.start(NODES)
    members = rest + [extra]
    await wait_until(lambda: all_see(members, alive(members)), 30)
    joined_s = trio.current_time()
    ring = Ring(members)
    gained = [c for c in ids if extra in ring.replicas(ring_key(c), R)]
    assert gained
    await wait_until(lambda: _none_missing(pool, ring, ids), REREPLICATED_S_MAX, 0.25)
    print(f"joined node received its {len(gained)} chunks "
          f"{trio.current_time() - joined_s:.2f} s after all saw it alive")
    # The former holders drop what they no longer replicate, once every new
    # holder confirms: nothing is missing, and nothing extra stays behind.
    async def settled() -> bool:
        return (await copies_extra(pool, ring, members, ids) == 0
                and await copies_missing(pool, ring, ids) == 0)
    await wait_until(settled, REREPLICATED_S_MAX, 0.5)
    print(f"old copies dropped {trio.current_time() - joined_s:.2f} s after the join")
