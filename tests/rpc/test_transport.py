"""TLS and the reconnecting pool over real TCP on 127.0.0.1."""

import ssl

import pytest
import trio
import trustme

import rpc
from rpc.pool import Pool
from server.diag import DiagServer, diag

pytestmark = pytest.mark.integration


async def test_tls_wraps_the_same_protocol():
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: rpc.serve_tcp(lambda: DiagServer("tls"), 0, ssl_context=server_ctx,
                                              task_status=task_status))
        addr = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with rpc.connect(addr, ssl_context=client_ctx) as conn:
            cap = await conn.bootstrap(diag.Diag)
            assert (await cap.ping()).nodeName == "tls"
            payload = b"secret" * 200_000
            assert (await cap.echo(data=payload)).data == payload
        # A client that does not trust the CA is refused, and the server lives on.
        with pytest.raises(rpc.ConnectionLost):
            async with rpc.connect(addr, ssl_context=ssl.create_default_context()):
                pass
        # A plaintext client gets nowhere but does not hurt the server either.
        with pytest.raises((rpc.ConnectionLost, rpc.CallTimeout)):
            async with rpc.connect(addr) as conn:
                await conn.bootstrap(diag.Diag, timeout_s=1)
        async with rpc.connect(addr, ssl_context=client_ctx) as conn:
            assert (await (await conn.bootstrap(diag.Diag)).ping()).nodeName == "tls"
        nursery.cancel_scope.cancel()


async def test_pool_reconnects_after_server_restart_and_backs_off():
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def serve(port, task_status=trio.TASK_STATUS_IGNORED):
            with scope:
                await rpc.serve_tcp(lambda: DiagServer("one"), port, task_status=task_status)

        listeners = await nursery.start(serve, 0)
        port = listeners[0].socket.getsockname()[1]
        addr = f"127.0.0.1:{port}"
        pool = Pool(nursery, backoff_initial_s=0.2, backoff_max_s=1.0)
        cap = await pool.bootstrap(addr, diag.Diag)
        assert (await cap.ping()).nodeName == "one"
        assert await pool.bootstrap(addr, diag.Diag) is cap  # cached

        scope.cancel()  # the listener goes away...
        (await pool.get(addr)).close("simulated crash")  # ...and so does the connection
        await trio.sleep(0.05)
        with pytest.raises(rpc.ConnectionLost):
            await pool.get(addr)  # dial refused
        with pytest.raises(rpc.ConnectionLost, match="retrying"):
            await pool.get(addr)  # in backoff: fails fast without dialing

        scope = trio.CancelScope()
        await nursery.start(serve, port)
        with trio.fail_after(5):
            while True:
                try:
                    cap = await pool.bootstrap(addr, diag.Diag)
                    break
                except rpc.ConnectionLost:
                    await trio.sleep(0.1)
        assert (await cap.ping()).nodeName == "one"
        pool.close()
        nursery.cancel_scope.cancel()


async def test_connect_to_closed_port_is_a_typed_error():
    with pytest.raises(rpc.ConnectionLost, match="cannot connect"):
        async with rpc.connect("127.0.0.1:1"):
            pass


def test_split_addr():
    assert rpc.split_addr("127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert rpc.split_addr("[::1]:80") == ("::1", 80)
    for bad in ("nohost", "h:0", "h:99999", ":80", "h:x"):
        with pytest.raises(ValueError):
            rpc.split_addr(bad)


async def test_dialed_and_accepted_sockets_detect_dead_peers():
    """Both ends set TCP_USER_TIMEOUT and keepalive (rpc/transport.py): a
    connection that lost packets in a partition is aborted in seconds
    instead of waiting out doubling retransmission timers (tests/chaos)."""
    import socket

    from rpc.transport import TCP_USER_TIMEOUT_MS, open_tcp_stream, tune_socket

    accepted = []

    async def handler(stream):
        tune_socket(stream)
        accepted.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        dialed = await open_tcp_stream(f"127.0.0.1:{port}")
        while not accepted:
            await trio.sleep(0.01)
        for stream in (dialed, accepted[0]):
            sock = stream.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == \
                TCP_USER_TIMEOUT_MS
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        await dialed.aclose()
        nursery.cancel_scope.cancel()
