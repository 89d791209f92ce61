"""Random and mutated frames: the server neither crashes nor hangs, closes
only the offending connection (with a logged reason), and keeps serving."""

import random

import pytest
import trio
import trio.testing

import rpc
from rpc.connection import Connection, Message
from rpc.framing import encode
from server.diag import DiagServer, diag

SEED = 20261123


def _valid_frames() -> list[bytes]:
    frames = []
    boot = Message.new_message()
    boot.init("bootstrap").questionId = 0
    frames.append(encode(boot))
    iface = rpc.Interface.of(diag.Diag)
    for name, fill in (("echo", lambda p: setattr(p, "data", b"fuzz" * 10)), ("ping", None),
                       ("sleep", lambda p: setattr(p, "ms", 5))):
        msg = Message.new_message()
        call = msg.init("call")
        call.questionId = len(frames)
        call.target.importedCap = 0
        call.interfaceId = iface.id
        call.methodId = iface.by_name[name].ordinal
        params = call.params.content.as_struct(iface.by_name[name].param_type)
        if fill:
            fill(params)
        frames.append(encode(msg))
    for kind in ("finish", "release", "abort", "return"):
        msg = Message.new_message()
        msg.init(kind)
        frames.append(encode(msg))
    return frames


def mutate(rng: random.Random, frames: list[bytes]) -> bytes:
    """One hostile input: random bytes, bit flips, truncation, splices, or a
    header announcing a huge or many-segment frame."""
    base = b"".join(rng.sample(frames, rng.randint(1, len(frames))))
    choice = rng.randrange(6)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 300))
    if choice == 1:
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 2:
        return base[: rng.randrange(1, len(base))]
    if choice == 3:
        cut = rng.randrange(len(base))
        return base[:cut] + rng.randbytes(rng.randint(1, 64)) + base[cut:]
    if choice == 4:
        return (0).to_bytes(4, "little") + rng.randint(1 << 20, (1 << 32) - 1).to_bytes(4, "little")
    return rng.randint(600, (1 << 32) - 1).to_bytes(4, "little") + rng.randbytes(40)


async def _feed_one(data: bytes) -> str:
    """Feed hostile bytes to a fresh server connection; return its close
    reason or "open" if it is still serving after a well-formed ping."""
    client, server_stream = trio.testing.memory_stream_pair()
    conn = Connection(server_stream, bootstrap=DiagServer(), limits=rpc.Limits(frame_bytes_max=1 << 20))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        try:
            await client.send_all(data)
        except trio.BrokenResourceError:
            pass
        await trio.sleep(1)
        state = conn.close_reason if conn.is_closed else "open"
        conn.close("test done")
    return state


def test_mutated_frames_never_crash_or_hang():
    rng = random.Random(SEED)
    frames = _valid_frames()
    reasons = {"open": 0, "closed": 0}
    for case in range(300):
        data = mutate(rng, frames)
        try:
            state = trio.run(_feed_one, data, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseException as e:  # pragma: no cover - the failure report
            pytest.fail(f"seed={SEED} case={case} input={data[:80]!r} raised {e!r}")
        reasons["open" if state == "open" else "closed"] += 1
        if state != "open":
            assert state, f"seed={SEED} case={case}: closed without a reason"
    # Both outcomes must occur, or the mutations are not exercising anything.
    assert reasons["open"] > 10 and reasons["closed"] > 10, reasons


@pytest.mark.integration
async def test_hostile_tcp_peers_do_not_disturb_a_healthy_client():
    rng = random.Random(SEED + 1)
    frames = _valid_frames()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(rpc.serve_tcp, DiagServer, 0)
        port = listeners[0].socket.getsockname()[1]
        healthy_ok = []

        async def healthy():
            async with rpc.connect(f"127.0.0.1:{port}") as conn:
                cap = await conn.bootstrap(diag.Diag)
                for i in range(300):
                    data = i.to_bytes(4, "little") * 64
                    healthy_ok.append((await cap.echo(data=data, timeout_s=10)).data == data)
                    await trio.sleep(0)

        async def hostile(data: bytes):
            with trio.move_on_after(5):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    try:
                        await stream.send_all(data)
                        await trio.sleep(0.05)
                    except trio.BrokenResourceError:
                        pass

        async with trio.open_nursery() as inner:
            inner.start_soon(healthy)
            for _ in range(150):
                inner.start_soon(hostile, mutate(rng, frames))
        assert len(healthy_ok) == 300 and all(healthy_ok)
        # A new connection after the storm is served too.
        async with rpc.connect(f"127.0.0.1:{port}") as conn:
            assert (await (await conn.bootstrap(diag.Diag)).ping()).nodeName == ""
        nursery.cancel_scope.cancel()
