"""Metadata served by a 3-node Raft group over real TCP on 127.0.0.1: writes
are proposals to any node, linearizable reads from any node see them."""

import errno

import pytest
import trio

import rpc
from rpc.pool import Pool
from server.diag import DiagServer
from server.meta import codec
from server.meta.service import MetadataGroup, MetadataServer, meta_capnp
from server.meta.store import InitParams
from server.meta.types import DirPage, EntryReply, Mkdir, Symlink, BytesReply
from server.raft.config import RaftConfig
from server.raft.messages import Role
from server.raft.server import RaftServer
from server.raft.wire import raft_capnp
from tests.netutil import free_ports

pytestmark = pytest.mark.integration


class Server(DiagServer, RaftServer, MetadataServer):
    def __init__(self, md, pool):
        DiagServer.__init__(self, "meta")
        self.metadata = md
        self.raft_service, self.raft_pool, self.raft_addr_of = md.group.service, pool, md.group.addr_of


async def test_writes_through_any_node_reads_linearizable_everywhere(tmp_path):
    ports = free_ports(3)
    names = [f"127.0.0.1:{p}" for p in ports]
    groups = []
    async with trio.open_nursery() as nursery:
        for name, port in zip(names, ports):
            pool = Pool(nursery, connect_timeout_s=0.5, backoff_max_s=0.2)
            md = MetadataGroup(name, names, str(tmp_path / str(port)), pool, tick_s=0.02,
                               cfg=RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2),
                               init=InitParams(now_ns=0), bootstrap=name == names[0])
            await nursery.start(md.run)
            await nursery.start(lambda task_status, md=md, pool=pool: rpc.serve_tcp(
                lambda: Server(md, pool), port, task_status=task_status))
            groups.append(md)
        with trio.fail_after(10):
            while not (any(g.group.service.core.role == Role.LEADER for g in groups)
                       and all(g.group.service.core.leader for g in groups)
                       and all(len(g.group.service.core.log.membership().voters) == 3
                               for g in groups)):
                await trio.sleep(0.01)
        follower = next(n for n, g in zip(names, groups) if g.group.service.core.role != Role.LEADER)
        async with rpc.connect(follower) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft)
            meta = raft.cast(meta_capnp.Metadata)

            async def submit(cmd):
                reply = await raft.propose(command=codec.encode_command(cmd), forwarded=False,
                                           timeout_s=5)
                assert not reply.notLeader
                return codec.decode_result(reply.result)

            async def query(cls, fill):
                reply = await meta.call("query", fill=lambda p: fill(p.init("query")), timeout_s=5)
                assert not reply.notLeader
                return codec.decode(cls, reply.reply)

            def lookup(q, name):
                q.linearizable = True
                g = q.init("lookup")
                g.parent, g.name = 1, name

            assert (await submit(Mkdir(1, b"docs", 0o755, 0, 0, 10))).err == 0
            assert (await submit(Mkdir(1, b"docs", 0o755, 0, 0, 11))).err == errno.EEXIST
            assert (await submit(Symlink(1, b"link", b"docs", 0, 0, 12))).err == 0
            entry = await query(EntryReply, lambda q: lookup(q, b"docs"))
            assert entry.err == 0 and entry.attr.mode & 0o170000 == 0o040000

            def readlink(q):
                q.linearizable = True
                q.init("readlink").linkIno = link_ino
            link_ino = (await query(EntryReply, lambda q: lookup(q, b"link"))).attr.ino
            assert (await query(BytesReply, readlink)).value == b"docs"

            def readdir(q):
                q.linearizable = True
                q.init("readdir").dirIno = 1
            page = await query(DirPage, readdir)
            assert sorted(e.name for e in page.entries) == [b"docs", b"link"]
        nursery.cancel_scope.cancel()
