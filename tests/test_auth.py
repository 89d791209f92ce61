"""Issue 13 on a real node process with mutual TLS: no certificate, another
CA's certificate, a client certificate calling node-only methods, a
read-only client proposing a change, a node certificate speaking for another
node, and a flood of connections from one address.  After each refusal the
node still serves a proper client."""

from __future__ import annotations

import os
import socket

import pytest
import trio

import rpc
from server import access, pki
from server.diag import diag
from server.meta import codec
from server.meta.types import Mkdir
from server.raft.messages import Heartbeat
from server.raft.wire import fill_batch, raft_capnp
from server.store.service import store_capnp
from tests import tls
from tests.fuse.realcluster import start_cluster


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    cluster = start_cluster(tmp_path_factory.mktemp("auth"), n=1)
    try:
        yield cluster.addrs[0]
    finally:
        cluster.stop()


def _client(read_only=False, name="auth-client"):
    cert, key = tls._issue("client", name, read_only)
    return pki.client_context(tls.ca_cert(), cert, key)


async def _ping(addr, context, timeout_s=5.0) -> str:
    with trio.fail_after(timeout_s):
        async with rpc.connect(addr, connect_timeout_s=timeout_s, ssl_context=context) as conn:
            cap = await conn.bootstrap(diag.Diag, timeout_s=timeout_s)
            return (await cap.ping(timeout_s=timeout_s)).nodeName


async def _still_serves(addr):
    assert await _ping(addr, _client()) == addr


async def test_a_plain_tcp_client_gets_nothing(node):
    with pytest.raises((rpc.RpcError, trio.TooSlowError)):
        await _ping(node, None, timeout_s=3)
    await _still_serves(node)


async def test_tls_without_a_certificate_or_from_another_ca_is_refused(node, tmp_path):
    import ssl
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(tls.ca_cert())
    with pytest.raises((rpc.RpcError, trio.TooSlowError)):
        await _ping(node, bare, timeout_s=3)
    pki.init_ca(str(tmp_path / "other"))
    cert, key = pki.issue(str(tmp_path / "other"), str(tmp_path / "other"), client="intruder")
    foreign = pki.client_context(str(tmp_path / "other" / "ca.crt"), cert, key)
    with pytest.raises((rpc.RpcError, trio.TooSlowError, OSError)):
        await _ping(node, foreign, timeout_s=3)
    await _still_serves(node)


def _denied(exc: BaseException) -> bool:
    return isinstance(exc, rpc.RemoteError) and exc.remote_type == "PermissionDenied"


async def test_a_client_certificate_cannot_call_raft_or_delete_chunks(node):
    with trio.fail_after(10):
        async with rpc.connect(node, ssl_context=_client()) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft, timeout_s=5)

            def fill(p):
                fill_batch(p, [Heartbeat(7, 1, 99, 0, 0)])
                p.clusterId, p.fromAddr = "", "127.0.0.1:1"
            with pytest.raises(rpc.Failed) as step:
                await raft.call("step", fill=fill, timeout_s=5)
            assert _denied(step.value), step.value
            with pytest.raises(rpc.Failed) as change:
                await raft.changeMember(op="remove", nodeId=1, force=True, timeout_s=5)
            assert _denied(change.value)
            store = await conn.bootstrap(store_capnp.ChunkStore, timeout_s=5)
            with pytest.raises(rpc.Failed) as delete:
                await store.delete(id=bytes(16), mark=0, timeout_s=5)
            assert _denied(delete.value)
            with pytest.raises(rpc.Failed) as listing:
                await store.listIds(start=0, end=0, afterId=b"", max=10, timeout_s=5)
            assert _denied(listing.value)
            # The same connection goes on serving what a client may call.
            status = await raft.status(timeout_s=5)
            assert status.role == "leader"
    await _still_serves(node)


async def test_a_read_only_client_cannot_create(node):
    mkdir = codec.encode_command(Mkdir(1, b"ro-was-here", 0o755, 0, 0, 1))
    with trio.fail_after(10):
        async with rpc.connect(node, ssl_context=_client(read_only=True, name="viewer")) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft, timeout_s=5)
            with pytest.raises(rpc.Failed) as refused:
                await raft.propose(command=mkdir, forwarded=False, timeout_s=5)
            assert _denied(refused.value)
            store = await conn.bootstrap(store_capnp.ChunkStore, timeout_s=5)
            with pytest.raises(rpc.Failed) as put:
                await store.put(id=bytes(16), data=b"x", afterIndex=0, timeout_s=5)
            assert _denied(put.value)
        # A writing client may not propose what only nodes propose, even
        # inside a lease batch: the clock, GC's forgetting, compaction.
        from server.meta.types import ForgetChunks, LeaseBatch, Tick
        async with rpc.connect(node, ssl_context=_client()) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft, timeout_s=5)
            tick = codec.encode_command(Tick(1 << 62))
            for command in (tick, codec.encode_command(ForgetChunks([bytes(16)], [1])),
                            codec.encode_command(LeaseBatch(holder=1, seq=1, ops=[tick],
                                                            inos=[0]))):
                with pytest.raises(rpc.Failed) as node_only:
                    await raft.propose(command=command, forwarded=False, timeout_s=5)
                assert _denied(node_only.value), node_only.value
        # A writing client may: the refusal was the role, not the command.
        async with rpc.connect(node, ssl_context=_client()) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft, timeout_s=5)
            reply = await raft.propose(command=mkdir, forwarded=False, timeout_s=5)
            assert codec.decode_result(reply.result).err == 0


async def test_a_node_certificate_cannot_speak_for_another_node(node):
    with trio.fail_after(10):
        async with rpc.connect(node, ssl_context=tls.client_context(node=True)) as conn:
            raft = await conn.bootstrap(raft_capnp.Raft, timeout_s=5)
            status = await raft.status(timeout_s=5)

            # The right cluster (founded under its CA's id): only the sender is wrong.
            assert status.clusterId == pki.identity_of_pem(tls.ca_cert()).cluster_id

            def fill(p):  # "I am the leader, at a higher term": would depose it
                fill_batch(p, [Heartbeat(status.id, status.id, status.term + 5, 0, 0)])
                p.clusterId, p.fromAddr = status.clusterId, ""
            with pytest.raises(rpc.Failed) as forged:
                await raft.call("step", fill=fill, timeout_s=5)
            assert f"node test-admin sent Raft messages as node {status.id:x}" in str(forged.value)
            after = await raft.status(timeout_s=5)
            assert after.term == status.term and after.role == "leader"


async def test_a_flood_from_one_address_leaves_other_peers_served(node):
    """More connections than connections_per_address_max from 127.0.0.1 are
    closed at once; a client from 127.0.0.2 still gets answers."""
    host, port = node.rsplit(":", 1)
    flood = []
    try:
        for _ in range(80):  # the default bound is 32
            s = socket.create_connection((host, int(port)), timeout=5)
            flood.append(s)
        await trio.sleep(0.5)
        closed = 0
        for s in flood:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        assert closed >= 80 - 32, closed

        async def from_other_address():
            sock = trio.socket.socket()
            await sock.bind(("127.0.0.2", 0))
            await sock.connect((host, int(port)))
            stream = trio.SSLStream(trio.SocketStream(sock), _client(), server_hostname=host)
            async with rpc.open_connection(stream, peer=node) as conn:
                cap = await conn.bootstrap(diag.Diag, timeout_s=5)
                return (await cap.ping(timeout_s=5)).nodeName
        with trio.fail_after(10):
            assert await from_other_address() == node
    finally:
        for s in flood:
            s.close()
    await trio.sleep(0.2)
    await _still_serves(node)


def test_the_policy_closes_what_it_does_not_name():
    client = pki.PeerIdentity("0" * 32, "client", "c")
    viewer = pki.PeerIdentity("0" * 32, "client", "v", read_only=True)
    peer_node = pki.PeerIdentity("0" * 32, "node", "127.0.0.1:1")
    raft = access._IFACES["Raft"]
    assert access.refusal(client, raft, "propose") is None
    assert access.refusal(viewer, raft, "propose") is not None
    assert access.refusal(client, raft, "step") is not None
    assert access.refusal(client, raft, "someMethodAddedLater") is not None
    assert access.refusal(peer_node, raft, "step") is None
    assert access.refusal(None, raft, "step") is None  # an insecure node refuses nothing


def test_a_read_only_certificate_mounts_read_only(node, tmp_path):
    from tests.fuse.conftest import fuse_usable, start_mount, stop_mount
    if not fuse_usable():
        pytest.skip("no FUSE here")
    import errno
    mount = start_mount(node, tmp_path / "ro", tmp_path / "ro.log",
                        options=tls.mount_options("viewer-mount", read_only=True))
    try:
        assert os.path.isdir(mount.path)
        os.listdir(mount.path)
        with pytest.raises(OSError) as e:
            (mount.path / "nope").write_bytes(b"x")
        assert e.value.errno == errno.EROFS
    finally:
        stop_mount(mount)


def test_a_node_refuses_certificates_of_another_cluster_than_its_data(tmp_path):
    from server import identity
    from server.config import NodeConfig
    from server.node import tls_files
    name = "127.0.0.1:7999"
    flags = dict(zip(["tls_ca", "tls_cert", "tls_key"], tls.node_flags(name)[1::2]))
    cfg = NodeConfig(data_dir=str(tmp_path / "d"), listen_port=7999, **flags)
    assert tls_files(cfg).identity().name == name  # no identity yet: fine
    identity.init_cluster(cfg.data_dir, "ab" * 16)
    with pytest.raises(pki.PkiError, match="chordfs ca init --cluster-id " + "ab" * 16):
        tls_files(cfg)
    other = NodeConfig(data_dir=str(tmp_path / "e"), listen_port=7998, **flags)
    with pytest.raises(pki.PkiError, match="this node is 127.0.0.1:7998"):
        tls_files(other)


async def test_a_subdir_client_reaches_only_its_subtree(node):
    """/srv/www confines the client: it finds its root by the path, works
    inside, and every inode outside is refused, whatever it sends."""
    from fusefs.backend import Refused
    from fusefs.cluster import ClusterConfig, open_cluster
    from server.meta.types import Link, Mkdir, Rename

    full = ClusterConfig((node,), call_deadline_s=10, ssl_context=_client())
    cert, key = tls._issue("client", "web", subdir="/srv/www")
    confined = ClusterConfig((node,), call_deadline_s=10,
                             ssl_context=pki.client_context(tls.ca_cert(), cert, key))
    with trio.fail_after(60):
        async with open_cluster(full) as admin:
            ino = {}
            for parent, name in ((1, "srv"), ("srv", "www"), (1, "other")):
                reply = await admin.submit(Mkdir(ino.get(parent, 1), name.encode(), 0o755, 0, 0, 1))
                assert reply.err == 0, reply
                ino[name] = reply.attr.ino
            secret = await admin.submit(Mkdir(ino["other"], b"secret", 0o700, 0, 0, 1))
            ino["secret"] = secret.attr.ino
        async with open_cluster(confined, check=False) as web:
            srv = await web.lookup(1, b"srv")  # the way down is open
            www = await web.lookup(srv.attr.ino, b"www")
            assert www.attr.ino == ino["www"]
            made = await web.submit(Mkdir(ino["www"], b"inside", 0o755, 0, 0, 2))
            assert made.err == 0
            assert (await web.getattr(made.attr.ino)).attr.ino == made.attr.ino
            refused = [
                web.getattr(1), web.getattr(ino["other"]), web.readdir(ino["srv"]),
                web.lookup(ino["other"], b"secret"), web.getattr(ino["secret"]),
                web.submit(Mkdir(1, b"escape", 0o755, 0, 0, 3)),
                web.submit(Rename(ino["www"], b"inside", ino["other"], b"moved", 0, 4)),
                web.submit(Link(ino["secret"], ino["www"], b"alias", 5)),
            ]
            for call in refused:
                with pytest.raises(Refused):
                    await call


def test_a_subdir_mount_shows_the_subtree_as_its_root(node, tmp_path):
    from tests.fuse.conftest import fuse_usable, start_mount, stop_mount
    if not fuse_usable():
        pytest.skip("no FUSE here")
    whole = start_mount(node, tmp_path / "whole", tmp_path / "whole.log")
    try:
        (whole.path / "proj" / "team").mkdir(parents=True)
        (whole.path / "proj" / "team" / "notes").write_text("ours")
        (whole.path / "proj" / "private").write_text("not for the team")
        sub = start_mount(node, tmp_path / "sub", tmp_path / "sub.log",
                          options=tls.mount_options("team-mount", subdir="/proj/team"))
        try:
            assert sorted(os.listdir(sub.path)) == ["notes"]
            assert (sub.path / "notes").read_text() == "ours"
            (sub.path / "made-here").write_text("hello")
            # ".." of the mount's root is the host's directory, never /proj.
            assert os.path.realpath(sub.path / "..") == str(tmp_path)
            assert os.stat(sub.path).st_ino == 1 and not (sub.path / "private").exists()
        finally:
            stop_mount(sub)
        assert (whole.path / "proj" / "team" / "made-here").read_text() == "hello"
    finally:
        stop_mount(whole)
