"""Ways to get a stream under a Connection: TCP (optionally TLS, rpc/tls.py), and trio
memory streams for tests; plus serving and connecting helpers."""

import contextlib
import logging
import socket
import ssl

import trio

from .connection import Connection
from .errors import ConnectionLost
from .limits import Limits
from .tls import TlsStream
from .logfmt import kv

log = logging.getLogger("chordfs.rpc")


def split_addr(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); ValueError with a plain sentence."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


async def serve_tcp(bootstrap_factory, port: int, *, host: str = "127.0.0.1",
                    limits: Limits = Limits(), ssl_context: ssl.SSLContext | None = None,
                    handshake_timeout_s: float = 10.0, identify=None,
                    per_address_max: int | None = None, observe=None,
                    task_status=trio.TASK_STATUS_IGNORED):
    """Accept connections forever; each gets ``bootstrap_factory()`` as its
    bootstrap object, or ``bootstrap_factory(identify(stream))`` when
    ``identify`` is given (it sees the TLS stream after the handshake and
    raises ValueError to refuse the peer).  ``per_address_max``: open
    connections one remote address may hold; one more is closed at once, so
    a flood from one host cannot take the sockets and memory other peers
    need.  ``observe``: the Connections' per-call hook (metrics).
    ``task_status.started`` receives the listeners (so port 0
    callers can read the chosen port)."""
    open_by_host: dict[str, int] = {}
    refused_logged: set[str] = set()

    async def handle(stream):
        tune_socket(stream)
        peer = _peer_name(stream)
        host_ = peer.rpartition(":")[0]
        if per_address_max is not None and open_by_host.get(host_, 0) >= per_address_max:
            if host_ not in refused_logged:  # once per address, or the flood floods the log
                refused_logged.add(host_)
                log.warning(kv("rpc.connection_refused", peer=peer,
                               reason=f"{per_address_max} connections from {host_} already open"))
            await trio.aclose_forcefully(stream)
            return
        open_by_host[host_] = open_by_host.get(host_, 0) + 1
        try:
            await _serve_one(stream, peer)
        finally:
            open_by_host[host_] -= 1
            if not open_by_host[host_]:
                del open_by_host[host_]
                refused_logged.discard(host_)

    async def _serve_one(stream, peer):
        if ssl_context is not None:
            stream = TlsStream(stream, ssl_context, server_side=True)
            with trio.move_on_after(handshake_timeout_s) as scope:
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, ssl.SSLError) as e:
                    log.warning(kv("rpc.tls_handshake_failed", peer=peer, error=repr(e)))
                    return
            if scope.cancelled_caught:
                log.warning(kv("rpc.tls_handshake_timeout", peer=peer))
                await trio.aclose_forcefully(stream)
                return
        if identify is not None:
            try:
                who = identify(stream)
            except ValueError as e:
                log.warning(kv("rpc.peer_refused", peer=peer, reason=str(e)))
                await trio.aclose_forcefully(stream)
                return
            bootstrap = bootstrap_factory(who)
        else:
            bootstrap = bootstrap_factory()
        conn = Connection(stream, bootstrap=bootstrap, limits=limits, peer=peer, observe=observe)
        log.debug(kv("rpc.accepted", conn=conn.id, peer=peer))
        await conn.run()

    await trio.serve_tcp(handle, port, host=host, task_status=task_status)


# A connection whose sent data has gone unacknowledged this long is dead:
# the kernel aborts it, the Connection closes, the next call dials afresh.
# Without it, a connection that lost packets during a partition keeps
# backing off its retransmissions (RTO doubling) and stays silent for tens
# of seconds after the network is back (found by tests/chaos). A live peer's
# kernel acknowledges even when its process is stopped or its window is full.
TCP_USER_TIMEOUT_MS = 3000
# Idle connections to a peer that vanished are found by keepalive probes.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 3, 3


def tune_socket(stream) -> None:
    """Dead-peer detection on a TCP stream (the trio SocketStream under TLS)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    except (OSError, AttributeError):  # not Linux, or not TCP: defaults stand
        pass


def _peer_name(stream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except (AttributeError, OSError):
        return "?"


async def open_tcp_stream(addr: str, *, ssl_context: ssl.SSLContext | None = None,
                          server_hostname: str | None = None, connect_timeout_s: float = 5.0):
    host, port = split_addr(addr)
    try:
        with trio.fail_after(connect_timeout_s):
            stream = await trio.open_tcp_stream(host, port)
            tune_socket(stream)
            if ssl_context is not None:
                stream = TlsStream(stream, ssl_context, server_side=False,
                                   server_hostname=server_hostname or host)
                await stream.do_handshake()
            return stream
    except trio.TooSlowError:
        raise ConnectionLost(f"connecting to {addr} timed out after {connect_timeout_s}s") from None
    except (OSError, trio.BrokenResourceError, ssl.SSLError) as e:
        raise ConnectionLost(f"cannot connect to {addr}: {e}") from None


@contextlib.asynccontextmanager
async def open_connection(stream, *, bootstrap=None, limits: Limits = Limits(), peer: str = ""):
    """Run a Connection over ``stream`` for the duration of the block.
    Errors raised in the block come out as themselves, not wrapped in an
    ExceptionGroup by the nursery that runs the connection."""
    try:
        async with trio.open_nursery() as nursery:
            conn = Connection(stream, bootstrap=bootstrap, limits=limits, peer=peer)
            await nursery.start(conn.run)
            try:
                yield conn
            finally:
                conn.close("closed by owner")
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@contextlib.asynccontextmanager
async def connect(addr: str, *, bootstrap=None, limits: Limits = Limits(),
                  ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                  connect_timeout_s: float = 5.0):
    stream = await open_tcp_stream(addr, ssl_context=ssl_context, server_hostname=server_hostname,
                                   connect_timeout_s=connect_timeout_s)
    async with open_connection(stream, bootstrap=bootstrap, limits=limits, peer=addr) as conn:
        yield conn


@contextlib.asynccontextmanager
async def memory_pair(bootstrap_a=None, bootstrap_b=None, limits: Limits = Limits()):
    """Two connected Connections over in-memory streams: (a, b)."""
    # Imported here: trio.testing pulls in pytest, 0.2 s of every node,
    # mount and CLI start that never uses it.
    import trio.testing
    left, right = trio.testing.memory_stream_pair()
    async with open_connection(left, bootstrap=bootstrap_a, limits=limits, peer="mem-b") as a:
        async with open_connection(right, bootstrap=bootstrap_b, limits=limits, peer="mem-a") as b:
            yield a, b
