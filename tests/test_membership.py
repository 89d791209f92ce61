"""Identity and membership with real `chordfs node` processes: a voter that
lost its disk cannot come back as itself and no acknowledged write is lost;
a dead voter is removed by the live majority and replaced while a mount
keeps working; another cluster's node is refused and the node keeps
serving; placement settings that differ between nodes and a mount follow
the committed configuration."""

from __future__ import annotations

import json

import os
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
import trio

import rpc
from server.meta import codec
from server.meta.types import Mkdir
from server.raft.wire import raft_capnp
from server.ring.ringmath import Ring
from server.store.keyrange import ring_key
from tests import tls
from tests.fuse.conftest import fuse_usable, start_mount, stop_mount
from tests.netutil import free_ports

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[1]


PLAIN: set[str] = set()  # addresses of nodes started with --insecure


def _context(addr: str):
    return None if addr in PLAIN else tls.client_context(node=True)


class Nodes:
    def __init__(self, tmp: pathlib.Path, n: int, secure: bool = True):
        self.tmp, self.addrs = tmp, [f"127.0.0.1:{p}" for p in free_ports(n)]
        self.secure = secure
        if not secure:
            PLAIN.update(self.addrs)
        self.procs: dict[int, subprocess.Popen] = {}

    def argv(self, i: int, *extra: str, seeds: list[str] | None = None) -> list[str]:
        seeds = self.addrs if seeds is None else seeds
        return [sys.executable, "-m", "server.cli", "node", "--listen-port",
                self.addrs[i].rpartition(":")[2], "--data-dir", str(self.tmp / f"n{i}"),
                "--seeds", ",".join(seeds), "--log-level", "info", "--ring-tick-ms", "25",
                *(tls.node_flags(self.addrs[i]) if self.secure else ["--insecure"]), *extra]

    def start(self, i: int, *extra: str, seeds: list[str] | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"n{i}.log", "ab")
        self.procs[i] = subprocess.Popen(self.argv(i, *extra, seeds=seeds), cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.procs[i]

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait()

    def wipe(self, i: int) -> None:
        shutil.rmtree(self.tmp / f"n{i}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    def log(self, i: int) -> str:
        return (self.tmp / f"n{i}.log").read_text(errors="replace")


async def status(addr: str):
    with trio.fail_after(3):
        async with rpc.connect(addr, connect_timeout_s=1, ssl_context=_context(addr)) as conn:
            cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=2)
            return await cap.status(timeout_s=2)


async def wait_for(predicate, timeout_s: float, what: str):
    with trio.fail_after(timeout_s):
        while True:
            try:
                got = await predicate()
            except (rpc.RpcError, trio.TooSlowError, OSError):
                got = None
            if got:
                return got
            await trio.sleep(0.1)


async def leader_with(addrs: list[str], voters: int):
    """The leader's status once it leads ``voters`` voters, all live."""
    async def check():
        for addr in addrs:
            try:
                st = await status(addr)
            except (rpc.RpcError, trio.TooSlowError, OSError):
                continue
            if st.role == "leader" and sum(m.voter and m.live for m in st.members) == voters \
                    and len(st.voters) == voters:
                return st, addr
        return None
    return await wait_for(check, 60, f"a leader of {voters} live voters")


async def mkdir(addr: str, name: bytes) -> None:
    """One acknowledged metadata write (through any node: it forwards)."""
    async with rpc.connect(addr, connect_timeout_s=1, ssl_context=_context(addr)) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=2)
        reply = await cap.propose(command=codec.encode_command(Mkdir(1, name, 0o755, 0, 0, 1)),
                                  forwarded=False, timeout_s=10)
    assert not reply.notLeader and codec.decode_result(reply.result).err == 0


def members(addr: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", "members", addr, *args,
                           *(["--insecure"] if addr in PLAIN else tls.cli_flags(node=True))],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.xdist_group("heavy")
def test_a_wiped_voter_cannot_vote_as_itself_and_no_write_is_lost(tmp_path):
    """The issue's reproduction: B's disk is replaced while C is down, then
    A (the leader) dies.  Before: B and C elected a leader lacking the
    writes acknowledged while C was away.  Now B is refused, C alone elects
    nobody, and once A returns every acknowledged write is there; after the
    operator removes B's old id, B rejoins as a new member."""
    nodes = Nodes(tmp_path, 3)
    a, b, c = nodes.addrs

    async def scenario():
        # Only a leader refuses a join, and A steps down (check-quorum) one
        # to two election timeouts after B dies with C down: a longer one on
        # A leaves a slow machine time to start the wiped B and hear "no".
        nodes.start(0, "--init", "--election-timeout-ms", "4000")
        st, _ = await leader_with([a], 1)
        nodes.start(1)
        nodes.start(2)
        st, leader = await leader_with(nodes.addrs, 3)
        assert leader == a  # the founder leads until something happens to it
        old_b = next(m.id for m in st.members if m.name == b)
        nodes.kill(2)                                  # C is down
        acked = [f"while-c-away-{i}".encode() for i in range(5)]
        for name in acked:
            await mkdir(a, name)                       # acknowledged by A and B
        nodes.kill(1)
        nodes.wipe(1)                                  # B's disk is replaced
        refused = subprocess.run(nodes.argv(1), capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert refused.returncode == 1, refused.stderr[-2000:]
        sentence = refused.stderr.strip().splitlines()[-1]
        assert f"is the address of member {old_b:x}" in sentence and "members" in sentence
        nodes.kill(0)                                  # A, the leader, dies
        nodes.start(2)                                 # C comes back alone
        await trio.sleep(3)                            # many election timeouts
        st_c = await wait_for(lambda: status(c), 10, "C to answer")
        assert st_c.role != "leader" and not st_c.leader, "C alone must not lead"
        nodes.start(0)                                 # A returns: A and C are a quorum
        st, leader = await wait_for(lambda: _leader_of([a, c]), 30, "a leader of A and C")
        for addr in (a, c):
            async def applied(addr=addr):
                return (await status(addr)).applied >= st.commit
            await wait_for(applied, 20, f"{addr} to apply")
        for name in acked:                             # nothing acknowledged was lost
            with pytest.raises(AssertionError):
                await mkdir(leader, name)              # EEXIST: the directory is there
        removed = members(a, "remove", f"{old_b:x}")
        assert removed.returncode == 0, removed.stderr
        nodes.start(1)                                 # B, empty, joins as a new member
        st, _ = await leader_with([a, c], 3)
        new_b = next(m.id for m in st.members if m.name == b)
        assert new_b != old_b

    try:
        trio.run(scenario)
    finally:
        nodes.stop()


async def _leader_of(addrs):
    for addr in addrs:
        try:
            st = await status(addr)
        except (rpc.RpcError, trio.TooSlowError, OSError):
            continue
        if st.role == "leader":
            return st, addr
    return None


@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")
def test_a_dead_voter_is_removed_and_replaced_while_a_mount_keeps_writing(tmp_path):
    nodes = Nodes(tmp_path, 4)
    addrs = nodes.addrs
    mount = None

    async def cluster_up():
        nodes.start(0, "--init")
        await leader_with(addrs[:1], 1)
        nodes.start(1, seeds=addrs[:3])
        nodes.start(2, seeds=addrs[:3])
        return await leader_with(addrs[:3], 3)

    try:
        (st, leader) = trio.run(cluster_up)
        mount = start_mount(",".join(addrs[:3]), tmp_path / "mnt", tmp_path / "mount.log")
        written = []

        def write(i: int) -> None:
            path = mount.path / f"f{i}"
            path.write_bytes(os.urandom(4096) + bytes([i]))
            written.append((path, path.read_bytes()))

        write(0)
        victim = next(i for i in (1, 2) if addrs[i] != leader)
        victim_id = next(m.id for m in st.members if m.name == addrs[victim])
        nodes.kill(victim)                             # gone for good
        write(1)
        survivor = next(i for i in (0, 1, 2) if i != victim and addrs[i] != leader)
        # With the victim already dead, removing the other live follower
        # would leave 1 live voter of 2: refused.
        unsafe = members(leader, "remove", addrs[survivor])
        assert unsafe.returncode == 1 and "fewer than the quorum" in unsafe.stderr, unsafe.stderr
        write(2)
        removed = members(leader, "remove", addrs[victim])
        assert removed.returncode == 0, removed.stderr
        write(3)
        nodes.start(3, seeds=addrs[:3])                # the replacement joins and is promoted
        trio.run(leader_with, [leader], 3)
        write(4)
        listing = members(addrs[3]).stdout
        assert f"{victim_id:016x}" not in listing and addrs[3] in listing, listing
        assert listing.count(" voter ") == 3 and listing.count(" live ") == 3, listing
        as_json = json.loads(members(addrs[3], "list", "--json").stdout)
        assert sorted(m["name"] for m in as_json["members"]) == sorted(
            a for i, a in enumerate(addrs) if i != victim)
        assert all(m["role"] == "voter" and m["live"] for m in as_json["members"])
        assert as_json["leader"] == leader
        for path, data in written:
            assert path.read_bytes() == data
    finally:
        if mount is not None:
            stop_mount(mount)
        nodes.stop()
    assert "Traceback" not in (tmp_path / "mount.log").read_text(errors="replace")


def test_another_clusters_node_and_traffic_are_refused(tmp_path):
    """Two one-node clusters: X's node may not join Y, a Raft batch stamped
    with X's cluster id is refused by Y, and Y keeps serving.  Plain TCP:
    under TLS each cluster has its own CA and the handshake already refuses
    the other's nodes (tests/test_auth.py); this is the check beneath it."""
    nodes = Nodes(tmp_path, 2, secure=False)
    x, y = nodes.addrs

    async def scenario():
        nodes.start(0, "--init", seeds=[])
        nodes.start(1, "--init", seeds=[])
        st_x, _ = await leader_with([x], 1)
        st_y, _ = await leader_with([y], 1)
        assert st_x.clusterId != st_y.clusterId
        async with rpc.connect(y, connect_timeout_s=1, ssl_context=_context(y)) as conn:
            cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=2)
            reply = await cap.addLearner(name=x, nodeId=st_x.id, clusterId=st_x.clusterId,
                                         timeout_s=2)
            assert not reply.added and f"belongs to cluster {st_x.clusterId}" in reply.refused

            def fill(p):
                msgs = p.init("messages", 1)
                setattr(msgs[0], "from", st_x.id)
                msgs[0].to, msgs[0].term = st_y.id, 99
                msgs[0].init("heartbeat").heartbeatCommit = 0
                p.clusterId, p.fromAddr = st_x.clusterId, x
            with pytest.raises(rpc.Failed, match="cluster"):
                await cap.call("step", fill=fill, timeout_s=2)
        after = await status(y)
        assert after.role == "leader" and after.term == st_y.term  # the forged term did nothing

    try:
        trio.run(scenario)
    finally:
        nodes.stop()
    assert "raft.step_refused" in nodes.log(1) and "raft.join_refused" in nodes.log(1)


@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")
def test_placement_follows_the_committed_settings_not_each_nodes_own(tmp_path):
    """The founder has 16 virtual ids and 2 copies; the other nodes' own
    configs say 256 and 3, and so does the mount's default.  Every chunk
    written through the mount lands on exactly the 2 nodes the committed
    map names, and repair finds nothing to move."""
    nodes = Nodes(tmp_path, 3)
    mount = None
    try:
        async def up():
            nodes.start(0, "--init", "--virtual-ids-per-node", "16", "--replication-factor", "2",
                        "--write-quorum-min", "2")
            await leader_with(nodes.addrs[:1], 1)
            nodes.start(1)
            nodes.start(2)
            return await leader_with(nodes.addrs, 3)
        trio.run(up)
        mount = start_mount(",".join(nodes.addrs), tmp_path / "mnt", tmp_path / "mount.log")
        data = os.urandom(3 * (4 << 20) + 12345)  # several chunks
        (mount.path / "big").write_bytes(data)
        assert (mount.path / "big").read_bytes() == data
        ring = Ring(nodes.addrs, 16)
        time.sleep(2)  # a repair pass runs on every node meanwhile
        held: dict[str, set[str]] = {}
        for i, addr in enumerate(nodes.addrs):
            for dirpath, _, files in os.walk(tmp_path / f"n{i}" / "chunks" / "chunks"):
                for name in files:
                    if len(name) == 32 and all(ch in "0123456789abcdef" for ch in name):
                        held.setdefault(name, set()).add(addr)
        assert len(held) >= 4, held
        for name, where in held.items():
            want = set(ring.replicas(ring_key(bytes.fromhex(name)), 2))
            assert where == want, (name, where, want)
        assert "cluster.setting_overridden" in nodes.log(1)
        assert "cluster.map" in (tmp_path / "mount.log").read_text(errors="replace")
    finally:
        if mount is not None:
            stop_mount(mount)
        nodes.stop()
