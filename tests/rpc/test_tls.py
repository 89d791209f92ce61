"""rpc/tls.py's TlsStream over a loopback socket pair: byte-exact in both
directions at once (as a Connection's reader and writer use it), a clean
close, a cut connection, a refused certificate, and interop with
trio.SSLStream on the other end."""

import random

import pytest
import trio

from rpc.tls import TlsStream
from server import pki
from tests import tls


def _contexts(other_ca_dir=None):
    ca = tls.ca_cert()
    sc, sk = tls._issue("node", "tls-test-server")
    if other_ca_dir is None:
        cc, ck = tls._issue("client", "tls-test-client")
        client = pki.client_context(ca, cc, ck)
    else:
        pki.init_ca(other_ca_dir)
        cc, ck = pki.issue(other_ca_dir, other_ca_dir, client="stranger")
        client = pki.client_context(ca, cc, ck)  # trusts our CA, presents another's cert
    return pki.server_context(ca, sc, sk), client


async def _pair(server_ctx, client_ctx, client_kind=TlsStream):
    a, b = trio.socket.socketpair()
    server = TlsStream(trio.SocketStream(a), server_ctx, server_side=True)
    if client_kind is TlsStream:
        client = TlsStream(trio.SocketStream(b), client_ctx, server_side=False, server_hostname="x")
    else:
        client = trio.SSLStream(trio.SocketStream(b), client_ctx, server_hostname="x")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.do_handshake)
            nursery.start_soon(client.do_handshake)
    return server, client


async def _read_exactly(stream, n: int) -> bytes:
    """receive_some and (TlsStream) receive_into, mixed at random."""
    got = bytearray()
    while len(got) < n:
        size = random.choice([1, 100, 65536, 300_000])
        if hasattr(stream, "receive_into") and random.random() < 0.5:
            buf = bytearray(min(size, n - len(got)))
            count = await stream.receive_into(memoryview(buf))
            piece = bytes(buf[:count])
        else:
            piece = await stream.receive_some(size)
        assert piece, "closed early"
        got += piece
    return bytes(got)


@pytest.mark.parametrize("client_kind", [TlsStream, trio.SSLStream])
@pytest.mark.parametrize("seed", range(3))
async def test_bytes_arrive_exactly_in_both_directions_at_once(seed, client_kind):
    rng = random.Random(seed)
    server, client = await _pair(*_contexts(), client_kind=client_kind)
    assert pki.identity_of_cert(server.getpeercert()).name == "tls-test-client"
    blobs = [rng.randbytes(rng.choice([1, 17, 16384, 16385, 1 << 20, 3 << 20]))
             for _ in range(8)]
    total = sum(map(len, blobs))

    async def send(stream):
        for blob in blobs:
            await stream.send_all(blob)
    received = {}

    async def receive(name, stream):
        received[name] = await _read_exactly(stream, total)
    with trio.fail_after(60):  # a deadlock of the two ends fails, never hangs
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, client)
            nursery.start_soon(send, server)
            nursery.start_soon(receive, "server", server)
            nursery.start_soon(receive, "client", client)
    assert received["server"] == received["client"] == b"".join(blobs)
    await client.aclose()
    assert await server.receive_some(100) == b""
    await server.aclose()


async def test_both_ends_sending_far_more_than_the_socket_buffers_never_deadlock():
    """Each end's writer blocks until the other end reads: a reader that
    ever waits on its own writer (to flush TLS bytes) deadlocks the pair."""
    server, client = await _pair(*_contexts())
    blob, rounds = b"d" * (1 << 20), 16  # well past both sockets' buffers
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for stream in (server, client):
                async def pump(s=stream):
                    for _ in range(rounds):
                        await s.send_all(blob)
                nursery.start_soon(pump)
            for stream in (server, client):
                nursery.start_soon(_read_exactly, stream, rounds * len(blob))


async def test_a_cut_connection_ends_the_stream():
    server, client = await _pair(*_contexts())
    await client.send_all(b"x" * 1000)
    await client.transport.aclose()  # no close_notify
    with trio.fail_after(5):
        assert await _read_exactly(server, 1000) == b"x" * 1000
    with trio.fail_after(5):
        try:
            assert await server.receive_some(10) == b""
        except trio.BrokenResourceError:
            pass


async def test_a_certificate_of_another_ca_is_refused(tmp_path):
    server_ctx, client_ctx = _contexts(str(tmp_path / "other"))
    a, b = trio.socket.socketpair()
    server = TlsStream(trio.SocketStream(a), server_ctx, server_side=True)
    client = TlsStream(trio.SocketStream(b), client_ctx, server_side=False, server_hostname="x")
    outcome = {}

    async def handshake(name, stream):
        try:
            await stream.do_handshake()
            await stream.send_all(b"hello")
            outcome[name] = await stream.receive_some(10)
        except trio.BrokenResourceError as e:
            outcome[name] = e
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake, "server", server)
            nursery.start_soon(handshake, "client", client)
    assert isinstance(outcome["server"], trio.BrokenResourceError)
    assert outcome["client"] in (b"",) or isinstance(outcome["client"], trio.BrokenResourceError)
