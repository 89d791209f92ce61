"""The cluster backend against a 3-node cluster on 127.0.0.1 (one trio
process, real TCP): namespace and data through Raft and replicated chunks,
errnos, a leader killed mid-way, a lost quorum answering Unavailable within
the deadline, lost replies retried and resolved, the ring view following
the reported members; then real mounts: of a cluster run in a subprocess
(32 MiB in, out through a fresh mount, ls/mv/rm), and of three node
processes whose leader is killed with SIGKILL between two copies."""

from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys
import time
import types

import pytest
import trio

import rpc
from fusefs.backend import ChunkMissing, Unavailable, chunk_id_of
from fusefs.cluster import ClusterConfig, open_cluster, placed_members
from fusefs.clustermeta import MetaClient
from fusefs.mount import helper_main, mount_main
from server.meta import codec
from server.meta.types import (RENAME_EXCHANGE, Attr, CommitWrite, Create,
                               EntryReply, Mkdir, Rename, Rmdir, SetXattr, Slice, Symlink, Unlink)
from server.raft.wire import raft_capnp

from tests.netutil import free_ports

from .cluster_nodes import run_cluster
from .conftest import ROOT, fuse_usable, in_mount_table

integration = pytest.mark.integration

ROOT_INO = 1
CHUNK = 64 << 10


def _cfg(names, **kw) -> ClusterConfig:
    base = dict(call_deadline_s=10.0, attempt_timeout_s=2.0, connect_timeout_s=0.5,
                backoff_max_s=0.2, chunk_timeout_s=2.0, chunk_deadline_s=10.0)
    base.update(kw)
    return ClusterConfig(tuple(names), **base)


async def _write_file(backend, parent: int, name: bytes, content: bytes, now: int) -> int:
    """create + chunks + CommitWrite, as FileData does on close."""
    created = await backend.submit(Create(parent, name, 0o644, 0, 0, now))
    assert created.err == 0, created
    slices, chunks = [], []
    for off in range(0, len(content), CHUNK):
        data = content[off:off + CHUNK]
        chunks.append((chunk_id_of(data), data))
        slices.append(Slice(off, len(data), chunk_id_of(data), 0, len(data), fresh=True))
    assert await backend.has_chunks([cid for cid, _ in chunks]) == [False] * len(chunks)
    observed = await backend.put_chunks(chunks) or 0
    done = await backend.submit(CommitWrite(created.attr.ino, len(content), now + 1,
                                            slices=slices, observed=observed))
    assert done.err == 0 and done.attr.size == len(content), done
    return created.attr.ino


async def _read_file(backend, ino: int) -> bytes:
    page = await backend.manifest(ino)
    assert page.err == 0 and page.done
    out = bytearray(page.size)
    for s in page.slices:
        block = await backend.get_chunk(s.block_id)
        out[s.off:s.off + s.length] = block[s.block_off:s.block_off + s.length]
    return bytes(out)


@integration
async def test_namespace_data_and_errnos(tmp_path):
    async with run_cluster(tmp_path, free_ports(3), CHUNK) as cluster, \
            open_cluster(_cfg(cluster.names)) as backend:
        docs = await backend.submit(Mkdir(ROOT_INO, b"docs", 0o755, 0, 0, 10))
        assert docs.err == 0
        assert (await backend.submit(Mkdir(ROOT_INO, b"docs", 0o755, 0, 0, 11))).err == errno.EEXIST
        content = os.urandom(3 * CHUNK + 123)
        ino = await _write_file(backend, docs.attr.ino, b"a.bin", content, 20)
        assert await _read_file(backend, ino) == content
        assert (await backend.lookup(docs.attr.ino, b"a.bin")).attr.size == len(content)
        assert (await backend.getattr(ino)).attr.ino == ino

        link = await backend.submit(Symlink(ROOT_INO, b"ln", b"docs/a.bin", 0, 0, 30))
        assert (await backend.readlink(link.attr.ino)).value == b"docs/a.bin"
        assert (await backend.submit(SetXattr(ino, b"user.k", b"v", 0, 31))).err == 0
        assert (await backend.getxattr(ino, b"user.k")).value == b"v"
        assert (await backend.listxattr(ino)).names == [b"user.k"]

        moved = await backend.submit(Rename(docs.attr.ino, b"a.bin", ROOT_INO, b"b.bin", 0, 40))
        assert moved.err == 0
        page = await backend.readdir(ROOT_INO, plus=True)
        assert sorted(e.name for e in page.entries) == [b"b.bin", b"docs", b"ln"]
        assert (await backend.lookup(docs.attr.ino, b"a.bin")).err == errno.ENOENT
        assert (await backend.submit(Unlink(ROOT_INO, b"nope", 41))).err == errno.ENOENT
        assert (await backend.submit(Rmdir(ROOT_INO, b"b.bin", 42))).err == errno.ENOTDIR
        assert (await backend.submit(Unlink(ROOT_INO, b"b.bin", 43))).err == 0
        assert (await backend.submit(Rmdir(ROOT_INO, b"docs", 44))).err == 0

        st = await backend.statfs()
        assert st.inodes >= 2 and st.total_bytes > 0 and 0 < st.free_bytes <= st.total_bytes
        with pytest.raises(ChunkMissing):
            await backend.get_chunk(chunk_id_of(b"never stored"))
        await backend.sync()


@integration
async def test_leader_killed_midway(tmp_path):
    async with run_cluster(tmp_path, free_ports(3), CHUNK) as cluster, \
            open_cluster(_cfg(cluster.names)) as backend:
        content = os.urandom(2 * CHUNK)
        first = await _write_file(backend, ROOT_INO, b"before", content, 10)
        leader = cluster.leader()
        assert backend.meta.leader == leader.name
        await cluster.stop(leader)
        started = trio.current_time()
        second = await _write_file(backend, ROOT_INO, b"after", content[::-1], 20)
        took = trio.current_time() - started
        assert backend.meta.leader != leader.name
        assert await _read_file(backend, first) == content
        assert await _read_file(backend, second) == content[::-1]
        page = await backend.readdir(ROOT_INO)
        assert sorted(e.name for e in page.entries) == [b"after", b"before"]
        print(f"first write after leader kill took {took:.2f}s, retries={backend.meta.retries}")


@integration
async def test_quorum_lost_is_unavailable_within_deadline(tmp_path):
    async with run_cluster(tmp_path, free_ports(3), CHUNK) as cluster, \
            open_cluster(_cfg(cluster.names, call_deadline_s=2.0, attempt_timeout_s=0.5)) as backend:
        assert (await backend.submit(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 1))).err == 0
        stored, fresh = os.urandom(100), os.urandom(100)
        await backend.put_chunks([(chunk_id_of(stored), stored)])
        for node in list(cluster.live())[:2]:
            await cluster.stop(node)
        # Data: one copy left is still readable; a new chunk cannot get W=2.
        assert await backend.get_chunk(chunk_id_of(stored)) == stored
        with pytest.raises(Unavailable):
            await backend.put_chunks([(chunk_id_of(fresh), fresh)])
        for call in (lambda: backend.submit(Mkdir(ROOT_INO, b"e", 0o755, 0, 0, 2)),
                     lambda: backend.lookup(ROOT_INO, b"d")):
            started = trio.current_time()
            with pytest.raises(Unavailable):
                await call()
            assert trio.current_time() - started < 2.0 + 1.0


class _LoseReplies:
    """Wraps the backend's pool: the next ``n`` proposals reach the cluster
    and commit, but their replies are lost (as when the connection drops
    just after the leader applied)."""

    def __init__(self, pool, n: int):
        self.pool, self.n = pool, n

    async def bootstrap(self, addr, iface, *, timeout_s=None):
        cap = await self.pool.bootstrap(addr, iface, timeout_s=timeout_s)
        return _LossyCap(cap, self) if iface.schema.node.displayName.endswith("Raft") else cap


class _LossyCap:
    def __init__(self, cap, owner):
        self.cap, self.owner = cap, owner

    async def propose(self, **kw):
        reply = await self.cap.propose(**kw)
        if self.owner.n > 0 and not reply.notLeader:
            self.owner.n -= 1
            raise rpc.ConnectionLost("reply lost (test)")
        return reply


@integration
async def test_lost_replies_are_retried_and_answered_once(tmp_path):
    """Replies lost after the commit: the retry, in the same client session,
    answers what the first attempt did (a create is not EEXIST, an unlink
    not ENOENT, an exchange does not swap back)."""
    async with run_cluster(tmp_path, free_ports(3), CHUNK) as cluster, \
            open_cluster(_cfg(cluster.names)) as backend:
        meta = backend.meta
        meta.pool = _LoseReplies(meta.pool, 0)
        assert (await backend.submit(Mkdir(ROOT_INO, b"warm", 0o755, 0, 0, 99))).err == 0
        meta.pool.n = 1
        made = await backend.submit(Create(ROOT_INO, b"f", 0o644, 0, 0, 100))
        assert made.err == 0 and meta.pool.n == 0
        assert (await backend.lookup(ROOT_INO, b"f")).attr.ino == made.attr.ino
        meta.pool.n = 1
        assert (await backend.submit(Unlink(ROOT_INO, b"f", 101))).err == 0
        assert (await backend.lookup(ROOT_INO, b"f")).err == errno.ENOENT
        x = await backend.submit(Mkdir(ROOT_INO, b"x", 0o755, 0, 0, 104))
        y = await backend.submit(Mkdir(ROOT_INO, b"y", 0o755, 0, 0, 104))
        meta.pool.n = 1
        assert (await backend.submit(Rename(ROOT_INO, b"x", ROOT_INO, b"y",
                                            RENAME_EXCHANGE, 105))).err == 0
        assert (await backend.lookup(ROOT_INO, b"x")).attr.ino == y.attr.ino
        assert (await backend.lookup(ROOT_INO, b"y")).attr.ino == x.attr.ino
        assert meta.retries >= 3 and meta.sessions_opened == 1


@integration
async def test_ring_view_follows_reported_members(tmp_path):
    async with run_cluster(tmp_path, free_ports(4), CHUNK) as cluster, \
            open_cluster(_cfg(cluster.names[:3], ring_refresh_s=0.05)) as backend:
        # Mounted with three of the four nodes; the members table names all.
        assert backend.ring.names == frozenset(cluster.names)
        gone = cluster.names[0]
        cluster.ring_table[gone] = "dead"
        with trio.fail_after(5):
            while gone in backend.ring.names:
                await trio.sleep(0.02)
        data = os.urandom(1000)
        await backend.put_chunks([(chunk_id_of(data), data)])
        assert gone not in backend.chunks.replicas(chunk_id_of(data))
        assert await backend.get_chunk(chunk_id_of(data)) == data


def test_ring_view_keeps_mount_nodes_a_young_member_list_does_not_know():
    """Right after start, the leader's ring may know only itself: taking its
    list as it is put every chunk of a file on that one node (seen in e2e)."""
    mount_nodes = ("a:1", "b:1", "c:1")
    assert placed_members([("a:1", "alive")], mount_nodes) == ["a:1", "b:1", "c:1"]
    reported = [("a:1", "alive"), ("b:1", "dead"), ("c:1", "suspect"), ("d:1", "alive"),
                ("e:1", "left")]
    assert placed_members(reported, mount_nodes) == ["a:1", "c:1", "d:1"]


def test_mount_cli_takes_cluster_addresses(tmp_path, capsys):
    assert helper_main(["127.0.0.1:7071,127.0.0.1:7072", str(tmp_path), "-f"]) == 0
    assert helper_main(["n1,n2", str(tmp_path), "-f"]) == 2
    assert "not host:port" in capsys.readouterr().err
    assert mount_main(["n1:7070,n1:7070", str(tmp_path)]) == 2
    assert "twice" in capsys.readouterr().err
    assert mount_main(["n1:7070", str(tmp_path), "extra"]) == 2
    err = capsys.readouterr().err
    assert "HOST:PORT" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------ leader following
# MetaClient against scripted nodes, on trio's autojump clock.

class _Script:
    """A pool whose nodes answer proposals as scripted: ``leader`` commits,
    others answer notLeader with ``hints[addr]``; addresses in ``down``
    cannot be reached; ``busy`` counts Overloaded answers still to give."""

    def __init__(self, leader, hints=None, down=(), busy=0):
        self.leader, self.hints, self.down, self.busy = leader, hints or {}, set(down), busy
        self.calls: list[str] = []

    async def bootstrap(self, addr, iface, *, timeout_s=None):
        if addr in self.down:
            raise rpc.ConnectionLost(f"cannot connect to {addr}")
        return _ScriptedCap(self, addr)


class _ScriptedCap:
    def __init__(self, script, addr):
        self.script, self.addr = script, addr

    async def propose(self, command, forwarded, timeout_s):
        script = self.script
        script.calls.append(self.addr)
        assert forwarded, "proposals go to the chosen node only"
        if self.addr != script.leader:
            hint = script.hints.get(self.addr)
            return types.SimpleNamespace(notLeader=True, leaderHint=0, leaderAddr=hint or "")
        if script.busy:
            script.busy -= 1
            raise rpc.Overloaded("proposal not committed: busy")
        attr = Attr(ino=2, mode=0o40755, uid=0, gid=0, size=0, nlink=2, rdev=0,
                    atime_ns=1, mtime_ns=1, ctime_ns=1)
        return types.SimpleNamespace(notLeader=False, leaderHint=0, index=7,
                                     result=codec.encode_result(EntryReply(0, attr)))


NODES = ("10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
MKDIR = Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 1)


def _client(script, deadline_s=15.0):
    meta = MetaClient(script, NODES, deadline_s=deadline_s, attempt_timeout_s=5.0,
                      backoff_initial_s=0.05, backoff_max_s=1.0)
    # The scripted nodes answer any proposal alike: skip the session's
    # opening call so the calls counted are the commands'.
    meta._session_open = True
    return meta


async def test_hints_lead_to_the_leader_and_it_is_remembered(autojump_clock):
    a, b, c = NODES
    script = _Script(leader=c, hints={a: c, b: c})
    meta = _client(script)
    assert (await meta.submit(MKDIR)).err == 0
    assert (await meta.submit(MKDIR)).err == 0
    assert script.calls == [a, c, c] and meta.leader == c


async def test_no_leader_anywhere_is_unavailable_at_the_deadline(autojump_clock):
    meta = _client(_Script(leader=None), deadline_s=3.0)
    started = trio.current_time()
    with pytest.raises(Unavailable, match="did not answer within 3s"):
        await meta.submit(MKDIR)
    assert 3.0 <= trio.current_time() - started < 3.1


async def test_a_hint_naming_a_dead_node_is_not_followed(autojump_clock):
    a, b, c = NODES
    script = _Script(leader=c, hints={b: a}, down={a})
    meta = _client(script)
    assert (await meta.submit(MKDIR)).err == 0
    assert script.calls == [b, c]  # a failed to connect; b's stale hint skipped


async def test_a_busy_leader_is_retried_after_a_pause(autojump_clock):
    a, b, c = NODES
    script = _Script(leader=a, busy=2)
    meta = _client(script)
    started = trio.current_time()
    assert (await meta.submit(MKDIR)).err == 0
    assert script.calls == [a, a, a] and meta.retries == 2
    assert trio.current_time() - started == pytest.approx(0.05 + 0.1)


# ------------------------------------------------------------ real mount

def _wait(pred, deadline_s: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + deadline_s
    while not pred():
        assert proc is None or proc.poll() is None, f"{what}: process exited"
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s}s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _start_mount(addrs: str, mnt: pathlib.Path, log) -> subprocess.Popen:
    proc = subprocess.Popen(
        # tests.fuse.cluster_nodes serves plain TCP (in-process test nodes).
        [sys.executable, "-m", "fusefs.mount", addrs, str(mnt), "--foreground", "-o", "insecure"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: os.path.ismount(mnt), 30, "mount", proc)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _unmount(mnt: pathlib.Path, proc: subprocess.Popen | None) -> None:
    if in_mount_table(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    if proc is not None:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            _stop(proc)
    assert not in_mount_table(mnt)


@integration
@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")
def test_real_mount_of_a_cluster(tmp_path):
    """cp a 32 MiB file in through one mount and out through a fresh one
    (so the bytes come from the cluster's chunk stores, not a page cache),
    then ls -l, mv, rm."""
    ports = free_ports(3)
    addrs = ",".join(f"127.0.0.1:{p}" for p in ports)
    log = open(tmp_path / "cluster.log", "wb")
    nodes = subprocess.Popen(
        [sys.executable, "-m", "tests.fuse.cluster_nodes", str(tmp_path / "nodes"),
         ",".join(map(str, ports))], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = None
    try:
        _wait(lambda: b"ready" in (tmp_path / "cluster.log").read_bytes(), 30, "cluster", nodes)
        src = tmp_path / "big.src"
        src.write_bytes(os.urandom(32 << 20))
        mount = _start_mount(addrs, mnt, log)
        took = _timed(["cp", str(src), str(mnt / "big")])
        print(f"32 MiB cp in: {took:.2f}s ({32 / took:.0f} MiB/s)")
        _unmount(mnt, mount)
        mount = _start_mount(addrs, mnt, log)
        _exercise_fresh_mount(tmp_path, mnt, src)
    finally:
        _unmount(mnt, mount)
        _stop(nodes)
        log.close()
    text = (tmp_path / "cluster.log").read_text(errors="replace")
    assert "handler_bug" not in text and "Traceback" not in text, text[-4000:]


def _timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    return time.monotonic() - started


def _exercise_fresh_mount(tmp_path: pathlib.Path, mnt: pathlib.Path, src: pathlib.Path) -> None:
    back = tmp_path / "big.back"
    took = _timed(["cp", str(mnt / "big"), str(back)])
    print(f"32 MiB cp out (cold mount): {took:.2f}s ({32 / took:.0f} MiB/s)")
    assert back.read_bytes() == src.read_bytes()
    (mnt / "dir").mkdir()
    subprocess.run(["mv", str(mnt / "big"), str(mnt / "dir" / "moved")], check=True)
    listing = subprocess.run(["ls", "-l", str(mnt / "dir")], check=True,
                             capture_output=True, text=True).stdout
    assert "moved" in listing and str(32 << 20) in listing, listing
    subprocess.run(["rm", str(mnt / "dir" / "moved")], check=True)
    subprocess.run(["rmdir", str(mnt / "dir")], check=True)
    assert os.listdir(mnt) == []


def _leader_name(names: list[str]) -> str:
    """The leader as the surviving nodes see it (Raft.status names it)."""

    async def ask() -> str | None:
        for name in names:
            with trio.move_on_after(2):
                try:
                    async with rpc.connect(name) as conn:
                        raft = await conn.bootstrap(raft_capnp.Raft)
                        status = await raft.status(timeout_s=2)
                except rpc.RpcError:
                    continue
                if status.leaderAddr in names:
                    return status.leaderAddr
        return None

    leader = trio.run(ask)
    assert leader is not None, "no node knows a leader"
    return leader


@integration
@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse and fusermount3")
def test_real_mount_survives_kill_9_of_the_leader(tmp_path):
    """Three node processes; the leader is killed with SIGKILL after a first
    file was copied in; a second copy through the same mount then succeeds
    (new election, 2 of 3 chunk replicas), and a fresh mount reads both."""
    ports = free_ports(3)
    names = [f"127.0.0.1:{p}" for p in ports]
    logs = [tmp_path / f"node{i}.log" for i in range(3)]
    procs: dict[str, subprocess.Popen] = {}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount = None
    mount_log = open(tmp_path / "mount.log", "wb")
    try:
        for i, name in enumerate(names):
            with open(logs[i], "wb") as out:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "tests.fuse.cluster_nodes", str(tmp_path / "nodes"),
                     ",".join(map(str, ports)), str(i)],
                    cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        for i, name in enumerate(names):
            _wait(lambda i=i: b"ready" in logs[i].read_bytes(), 30, f"node {i}", procs[name])
        first, second = tmp_path / "first", tmp_path / "second"
        first.write_bytes(os.urandom(16 << 20))
        second.write_bytes(os.urandom(8 << 20))
        mount = _start_mount(",".join(names), mnt, mount_log)
        subprocess.run(["cp", str(first), str(mnt / "first")], check=True)
        leader = _leader_name(names)
        procs[leader].kill()
        procs[leader].wait()
        took = _timed(["cp", str(second), str(mnt / "second")])
        print(f"8 MiB cp right after kill -9 of the leader: {took:.2f}s")
        _unmount(mnt, mount)
        mount = _start_mount(",".join(names), mnt, mount_log)
        for src in (first, second):
            assert (mnt / src.name).read_bytes() == src.read_bytes()
        listing = subprocess.run(["ls", "-l", str(mnt)], check=True, capture_output=True,
                                 text=True).stdout
        assert str(16 << 20) in listing and str(8 << 20) in listing, listing
    finally:
        _unmount(mnt, mount)
        for proc in procs.values():
            _stop(proc)
        mount_log.close()
    text = (tmp_path / "mount.log").read_text(errors="replace")
    assert "handler_bug" not in text and "Traceback" not in text, text[-4000:]
