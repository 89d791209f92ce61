"""The trio Raft service over real TCP on 127.0.0.1, fsync on: three nodes
in one process, each with its own storage directory.  Waits poll for a
condition under a deadline (real sockets and disk threads: no mock clock)."""

import os

import pytest
import trio

import rpc
from rpc.pool import Pool
from server.diag import DiagServer
from server.raft.config import RaftConfig
from server.raft.group import open_group
from server.raft.kvsm import RecordingStateMachine
from server.raft.messages import Role
from server.raft.server import RaftServer
from server.raft.wire import raft_capnp
from tests.netutil import free_ports

pytestmark = pytest.mark.integration
CFG = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2)
TICK_S = 0.02


class NodeServer(DiagServer, RaftServer):
    def __init__(self, member):
        DiagServer.__init__(self, str(member.node_id))
        self.raft_service = member.group.service
        self.raft_pool = member.pool
        self.raft_addr_of = member.group.addr_of


class Member:
    def __init__(self, node_id, addrs, directory, make_sm=None, snapshot_entries=10_000,
                 frame_bytes_max=16 << 20):
        self.node_id, self.addrs, self.directory = node_id, addrs, directory
        self.frame_bytes_max = frame_bytes_max
        self.sm = make_sm(directory) if make_sm else RecordingStateMachine()
        self.snapshot_entries = snapshot_entries
        self.scope = None

    async def run(self, port, task_status=trio.TASK_STATUS_IGNORED):
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as nursery:
                self.pool = Pool(nursery, connect_timeout_s=0.5, backoff_max_s=0.2)
                self.group = open_group(self.node_id, self.addrs, self.directory + "/raft",
                                        self.sm, self.pool, cfg=CFG, tick_s=TICK_S,
                                        snapshot_entries=self.snapshot_entries,
                                        frame_bytes_max=self.frame_bytes_max)
                await nursery.start(self.group.transport.run)
                await nursery.start(lambda task_status: rpc.serve_tcp(
                    lambda: NodeServer(self), port, task_status=task_status))
                await nursery.start(self.group.service.run)
                task_status.started()
        self.group.storage.close()

    def kill(self):
        self.scope.cancel()


async def _wait_for(predicate, timeout_s, what):
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


def _leader(members):
    leaders = [m for m in members if m.scope and not m.scope.cancel_called
               and m.group.service.core.role == Role.LEADER]
    return leaders[0] if len(leaders) == 1 else None


async def _propose(addr, command, with_result=False):
    async with rpc.connect(addr) as conn:
        cap = await conn.bootstrap(raft_capnp.Raft)
        reply = await cap.propose(command=command, forwarded=False, timeout_s=5)
        assert not reply.notLeader, reply
        return (reply.index, reply.result) if with_result else reply.index


async def test_three_nodes_elect_commit_survive_leader_loss_and_recover(tmp_path):
    ports = free_ports(3)
    ids = [101, 202, 303]
    addrs = {i: f"127.0.0.1:{p}" for i, p in zip(ids, ports)}
    members = [Member(i, addrs, str(tmp_path / str(i))) for i in ids]
    async with trio.open_nursery() as nursery:
        for m, port in zip(members, ports):
            await nursery.start(m.run, port)
        await _wait_for(lambda: _leader(members), 10, "a leader")
        acked = []
        for i in range(20):  # any node takes proposals: followers forward
            target = addrs[ids[i % 3]]
            acked.append((await _propose(target, f"c{i}".encode()), f"c{i}".encode()))
        old = _leader(members)
        old.kill()
        live = [m for m in members if m is not old]
        start = trio.current_time()
        await _wait_for(lambda: _leader(live), 10, "a new leader")
        print(f"new leader after {trio.current_time() - start:.3f}s")
        for i in range(20, 30):
            acked.append((await _propose(addrs[_leader(live).node_id], f"c{i}".encode()),
                          f"c{i}".encode()))
        # Restart the old leader from its directory: it recovers and catches up.
        restarted = Member(old.node_id, addrs, old.directory)
        members[members.index(old)] = restarted
        await nursery.start(restarted.run, ports[ids.index(old.node_id)])
        last = acked[-1][0]
        await _wait_for(lambda: all(m.sm.applied_index() >= last for m in members), 10, "catch-up")
        logs = [dict(m.sm.applied) for m in members]
        for index, command in acked:
            assert all(log.get(index) == command for log in logs), (index, command)
        common = min(max(log) for log in logs)
        assert all({i: log[i] for i in log if i <= common} == {i: logs[0][i] for i in logs[0] if i <= common}
                   for log in logs)
        nursery.cancel_scope.cancel()


def _meta_sm(directory):
    import os

    from server.meta.raftsm import MetaStateMachine
    from server.meta.store import InitParams, MetaStore
    os.makedirs(directory, exist_ok=True)
    store = MetaStore(os.path.join(directory, "meta.db"), InitParams(now_ns=1))
    # Images as files in the Raft directory, as a node makes them: sent in
    # parts read from disk, joined into a file, restored from it.
    return MetaStateMachine(store, os.path.join(directory, "scratch"),
                            image_dir=os.path.join(directory, "raft"))


async def test_metadata_replicates_and_a_lagging_node_catches_up_by_snapshot(tmp_path, caplog):
    """Raft applying the metadata state machine: every replica ends with a
    byte-identical database, including one that was down while the log was
    compacted and so must install a snapshot -- here sent in parts, as a
    large namespace's snapshot is (a 64 KiB frame budget, 16 KiB parts)."""
    import logging
    caplog.set_level(logging.INFO, logger="chordfs.raft")
    import errno

    from server.meta import codec
    from server.meta.types import Create, Mkdir

    ports = free_ports(3)
    ids = [11, 22, 33]
    addrs = {i: f"127.0.0.1:{p}" for i, p in zip(ids, ports)}
    members = [Member(i, addrs, str(tmp_path / str(i)), _meta_sm, snapshot_entries=20,
                      frame_bytes_max=64 << 10) for i in ids]
    async with trio.open_nursery() as nursery:
        for m, port in zip(members, ports):
            await nursery.start(m.run, port)
        await _wait_for(lambda: _leader(members), 10, "a leader")
        leader = _leader(members)
        laggard = next(m for m in members if m is not leader)
        laggard.kill()
        for i in range(60):
            cmd = Mkdir(1, f"d{i}".encode(), 0o755, 0, 0, 1000 + i)
            _, result = await _propose(addrs[leader.node_id], codec.encode_command(cmd), True)
            assert codec.decode_result(result).err == 0
        again = Create(1, b"d0", 0o644, 0, 0, 5000)
        _, result = await _propose(addrs[leader.node_id], codec.encode_command(again), True)
        assert codec.decode_result(result).err == errno.EEXIST
        _, result = await _propose(addrs[leader.node_id], b"not a command", True)
        assert codec.decode_result(result).err == errno.EINVAL
        # The log was compacted (on the leader, or on whoever leads now if an
        # election happened on a loaded machine).
        assert any(m.group.storage.snapshot is not None for m in members if m is not laggard)
        revived = Member(laggard.node_id, addrs, laggard.directory, _meta_sm, snapshot_entries=20,
                         frame_bytes_max=64 << 10)
        members[members.index(laggard)] = revived
        await nursery.start(revived.run, ports[ids.index(laggard.node_id)])
        target = max(m.sm.applied_index() for m in members if m is not laggard)
        # The drivers' own applied index: it moves only once a restore or an
        # apply has finished, while the database's can be read in the middle
        # of a snapshot's restore (and a VACUUM then finds it busy).
        await _wait_for(lambda: all(m.group.service.applied >= target for m in members), 15,
                        "catch-up")
        images = {m.node_id: m.sm.snapshot() for m in members}
        assert len(set(images.values())) == 1, "replicas differ"
        names = revived.sm.store.readdir(1).entries
        assert len(names) == 60
        sent = [r.getMessage() for r in caplog.records if "raft.snapshot_sent" in r.getMessage()]
        assert sent and all("parts=1 " not in s for s in sent), sent
        for m in members:  # one data file each at most: replaced ones are gone
            data = [n for n in os.listdir(m.directory + "/raft") if n.startswith("snap-")]
            snap = m.group.storage.snapshot
            assert data == ([os.path.basename(snap.data.path)] if snap else []), data
        nursery.cancel_scope.cancel()


async def test_compaction_never_stops_the_driver(tmp_path):
    """Taking the state machine's image and saving the snapshot run beside
    the driver: with the image held back, commits go on; once it is
    released, the snapshot is saved and the log it covers is gone."""
    import threading

    release = threading.Event()
    taking = threading.Event()

    class SlowImage(RecordingStateMachine):
        def snapshot_image(self):
            image = super().snapshot_image()
            taking.set()
            release.wait(30)  # a VACUUM INTO of millions of inodes
            return image

    addrs = {1: f"127.0.0.1:{free_ports(1)[0]}"}
    member = Member(1, addrs, str(tmp_path / "1"), lambda d: SlowImage(), snapshot_entries=20)
    async with trio.open_nursery() as nursery:
        await nursery.start(member.run, int(addrs[1].rsplit(":", 1)[1]))
        await _wait_for(lambda: _leader([member]) is member, 10, "a leader")
        service = member.group.service
        for i in range(25):
            await service.propose(b"a%d" % i, timeout_s=5)
        await _wait_for(taking.is_set, 10, "the image to be started")
        first = member.group.storage.first_index()
        for i in range(200):  # every one commits while the image is held
            await service.propose(b"b%d" % i, timeout_s=5)
        assert member.group.storage.snapshot is None and member.group.storage.first_index() == first
        release.set()
        await _wait_for(lambda: member.group.storage.snapshot is not None, 10, "the snapshot")
        snap = member.group.storage.snapshot.meta.index
        assert 20 <= snap <= service.applied  # a second round may have followed at once
        assert member.group.storage.first_index() == snap + 1
        assert [d for _, d in member.sm.applied][-1] == b"b199"
        member.kill()


async def test_followers_answer_appends_in_the_reply(tmp_path):
    """A follower's answer to the leader's appends rides back on the
    exchange call that brought them (after its fsync), not as a call of
    its own: the leader hears an answer per commit from its calls."""
    ports = free_ports(3)
    addrs = {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}
    members = [Member(i, addrs, str(tmp_path / str(i))) for i in addrs]
    async with trio.open_nursery() as nursery:
        for m, port in zip(members, ports):
            await nursery.start(m.run, port)
        await _wait_for(lambda: _leader(members) is not None, 10, "a leader")
        leader = _leader(members)
        before = leader.group.transport.answers_received
        for i in range(40):
            await _propose(addrs[leader.node_id], b"c%d" % i)
        assert leader.group.transport.answers_received - before >= 40
        await _wait_for(lambda: all(len(m.sm.applied) >= 40 for m in members), 10, "applies")
        assert all([d for _, d in m.sm.applied if d.startswith(b"c")] ==
                   [b"c%d" % i for i in range(40)] for m in members)
        for m in members:
            m.kill()
