"""Protocol behaviour of one connection over in-memory streams."""

import pytest
import trio

import rpc
from rpc import schema
from rpc.connection import Message, _Question
from rpc.framing import encode
from server.diag import DiagServer, diag


class Recorder(DiagServer):
    """Diag with a blocking echo and a method that blocks while inline."""

    def __init__(self):
        super().__init__("rec")
        self.gate = trio.Event()
        self.started = 0

    async def echo(self, params, results):  # task per call, waits on the gate
        self.started += 1
        if params.data == b"wait":
            await self.gate.wait()
        results.data = params.data

    @rpc.inline
    async def ping(self, params, results):
        await trio.sleep(0)  # an inline method must not block: this is a bug


async def test_echo_and_typed_errors():
    async with rpc.memory_pair(bootstrap_b=DiagServer("b")) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        assert (await cap.ping()).nodeName == "b"
        assert (await cap.echo(data=b"x" * 100)).data == b"x" * 100
        for kind, cls in rpc.errors.BY_KIND.items():
            with pytest.raises(cls) as info:
                await cap.fail(kind=kind, message="why")
            assert info.value.remote_type == cls.__name__
            assert "why" in info.value.reason
        with pytest.raises(rpc.Failed, match="ValueError"):
            await cap.fail(kind="nonsense", message="")


async def test_deadline_sends_finish_and_cancels_remote(autojump_clock):
    server = DiagServer("b")
    async with rpc.memory_pair(bootstrap_b=server) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        with pytest.raises(rpc.CallTimeout):
            await cap.sleep(ms=50_000, timeout_s=1.0)
        await trio.sleep(0.1)
        assert server.sleeps_cancelled == 1
        assert b._answers == {} and b._running_calls == 0
        assert a._questions == {}  # the canceled Return freed the id
        assert (await cap.sleep(ms=10)).completed


async def test_outer_cancellation_sends_finish(autojump_clock):
    server = DiagServer("b")
    async with rpc.memory_pair(bootstrap_b=server) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        with trio.move_on_after(2):
            await cap.sleep(ms=50_000)
        await trio.sleep(0.1)
        assert server.sleeps_cancelled == 1
        assert a._questions == {}


async def test_connection_loss_fails_pending_calls(autojump_clock):
    rec = Recorder()
    async with rpc.memory_pair(bootstrap_b=rec) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        outcomes = []

        async def call():
            try:
                await cap.echo(data=b"wait")
            except rpc.ConnectionLost as e:
                outcomes.append(e)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.sleep(1)
            b.close("test drops the server side")
        assert len(outcomes) == 5
        with pytest.raises(rpc.ConnectionLost):
            await cap.echo(data=b"after")


async def test_inline_method_that_blocks_fails_cleanly():
    async with rpc.memory_pair(bootstrap_b=Recorder()) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        with pytest.raises(rpc.Failed, match="tried to block"):
            await cap.ping()
        assert (await cap.echo(data=b"still fine")).data == b"still fine"


async def test_server_inflight_limit_answers_overloaded(autojump_clock):
    limits = rpc.Limits(inflight_calls_max=3)
    rec = Recorder()
    async with rpc.memory_pair(bootstrap_b=rec, limits=limits) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        results = []

        async def call():
            try:
                results.append((await cap.echo(data=b"wait")).data)
            except rpc.Overloaded:
                results.append("overloaded")

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
            await trio.sleep(1)
            assert results == ["overloaded", "overloaded"]
            rec.gate.set()
        assert sorted(map(str, results)) == ["b'wait'"] * 3 + ["overloaded"] * 2


async def test_params_bytes_in_flight_pause_reading_instead_of_piling_up(autojump_clock):
    """Calls whose params add up to inflight_bytes_max stop the reader: the
    next frames wait in the peer's socket (TCP back-pressure), none is
    refused, and all run once the first ones finish."""
    limits = rpc.Limits(inflight_bytes_max=100 * 1024)

    class Big(Recorder):
        async def echo(self, params, results):
            self.started += 1
            await self.gate.wait()
            results.data = params.data[:4]

    rec = Big()
    async with rpc.memory_pair(bootstrap_b=rec, limits=limits) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        results = []

        async def call(i):
            results.append((await cap.echo(data=bytes([i]) * (40 * 1024))).data)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(call, i)
            await trio.sleep(1)
            assert rec.started == 3 and b._inflight_bytes >= limits.inflight_bytes_max
            rec.gate.set()
        assert sorted(results) == [bytes([i]) * 4 for i in range(6)] and rec.started == 6
        assert b._inflight_bytes == 0


async def test_client_outstanding_limit_waits(autojump_clock):
    limits = rpc.Limits(outstanding_calls_max=2)
    rec = Recorder()
    async with rpc.memory_pair(bootstrap_b=rec, limits=limits) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(cap.echo, None, )
            await trio.sleep(1)
            # echo(data=None) has empty data, so nothing waits on the gate:
            # the limit only sequences them.
        assert rec.started == 4
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(lambda: cap.echo(data=b"wait"))
            await trio.sleep(1)
            assert rec.started == 6  # two more reached the server, two wait locally
            rec.gate.set()
        assert rec.started == 8


async def test_unknown_method_and_target():
    async with rpc.memory_pair(bootstrap_b=DiagServer()) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        method = cap.interface.by_name["ping"]
        bogus = rpc.interface.Method("bogus", 99, method.param_type, method.result_type)
        with pytest.raises(rpc.Unimplemented):
            await a.call(("import", 0), cap.interface.id, bogus, None, None)
        with pytest.raises(rpc.Failed, match="not a capability"):
            await a.call(("import", 42), cap.interface.id, method, None, None)


async def test_call_on_promised_bootstrap_answer():
    """pycapnp clients pipeline on the bootstrap question before its Return."""
    async with rpc.memory_pair(bootstrap_b=DiagServer("b")) as (a, b):
        msg = Message.new_message()
        msg.init("bootstrap").questionId = 7
        a._questions[7] = _Question(None, bootstrap=True)  # asked by hand, not awaited
        await a._send(encode(msg))
        method = rpc.Interface.of(diag.Diag).by_name["ping"]
        result = await a.call(("answer", 7), rpc.Interface.of(diag.Diag).id, method, None, 5)
        assert result.nodeName == "b"


async def test_release_drops_export_and_unknown_release_aborts(autojump_clock):
    async with rpc.memory_pair(bootstrap_b=DiagServer()) as (a, b):
        cap = await a.bootstrap(diag.Diag)
        assert len(b._exports) == 1
        await cap.release()
        await trio.sleep(0.1)
        assert len(b._exports) == 0
        msg = Message.new_message()
        rel = msg.init("release")
        rel.id, rel.referenceCount = 5, 1
        await a._send(encode(msg))
        await trio.sleep(0.1)
        assert b.is_closed and "export 5" in b.close_reason
        assert a.is_closed and "aborted" in a.close_reason


async def test_unsupported_message_gets_unimplemented(autojump_clock):
    async with rpc.memory_pair(bootstrap_b=DiagServer()) as (a, b):
        seen = []
        original = type(a)._HANDLERS["unimplemented"]

        async def spy(self, msg):
            seen.append(msg.unimplemented.which())
            await original(self, msg)

        a._HANDLERS = {**type(a)._HANDLERS, "unimplemented": spy}
        msg = Message.new_message()
        msg.init("disembargo").context.senderLoopback = 3
        await a._send(encode(msg))
        await trio.sleep(0.1)
        assert seen == ["disembargo"]
        assert not a.is_closed and not b.is_closed


async def test_many_calls_in_flight_reuse_question_ids():
    async with rpc.memory_pair(bootstrap_b=DiagServer()) as (a, b):
        cap = await a.bootstrap(diag.Diag)

        async def worker(i):
            for j in range(20):
                data = f"{i}-{j}".encode()
                assert (await cap.echo(data=data)).data == data

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(worker, i)
        assert a._questions == {}
        assert a._next_qid <= 201  # ids were recycled, not grown per call


async def test_one_mib_payload_both_ways():
    payload = bytes(range(256)) * 4096
    async with rpc.memory_pair(bootstrap_a=DiagServer("a"), bootstrap_b=DiagServer("b")) as (a, b):
        cap_b = await a.bootstrap(diag.Diag)
        cap_a = await b.bootstrap(diag.Diag)
        assert (await cap_b.echo(data=payload)).data == payload
        assert (await cap_a.echo(data=payload)).data == payload


def test_server_must_implement_every_method():
    with pytest.raises(TypeError, match="lacks method"):
        class Partial(rpc.Server, interfaces=[diag.Diag]):  # noqa: F841
            async def ping(self, params, results):
                pass


def test_limits_validate():
    with pytest.raises(ValueError):
        rpc.Limits(frame_bytes_max=10)
    with pytest.raises(ValueError):
        rpc.Limits(inflight_calls_max=0)


def test_schema_loader_refuses_unknown_names():
    with pytest.raises(FileNotFoundError):
        schema.load("no-such-schema")


async def test_one_object_serves_several_interfaces():
    """Servers combine by inheritance; a clashing method name is
    disambiguated with the interface prefix."""
    from server.store.service import ChunkStoreServer, StoreService, store_capnp

    class Both(DiagServer, ChunkStoreServer):
        def __init__(self):
            DiagServer.__init__(self, "both")
            ChunkStoreServer.__init__(self, StoreService.__new__(StoreService))

    async with rpc.memory_pair(bootstrap_b=Both()) as (a, b):
        diag_cap = await a.bootstrap(diag.Diag)
        assert (await diag_cap.ping()).nodeName == "both"
        store_cap = diag_cap.cast(store_capnp.ChunkStore)
        assert store_cap.interface.id != diag_cap.interface.id
        assert ("import", 0) == store_cap._target


async def test_an_abandoned_bootstrap_is_released_once(autojump_clock):
    """A bootstrap that timed out is released by its Finish alone: its late
    Return must not send a Release too, which would drop the export of the
    next bootstrap (found by tests/chaos: every call on a mount's cached
    capability then failed "not a capability exported" until it was
    remounted)."""
    import trio.testing
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        a = rpc.Connection(left, peer="b")
        await nursery.start(a.run)
        with pytest.raises(rpc.CallTimeout):
            await a.bootstrap(diag.Diag, timeout_s=0.05)
        caps = []

        async def second():
            caps.append(await a.bootstrap(diag.Diag, timeout_s=5))
        nursery.start_soon(second)
        await trio.sleep(0.1)  # Bootstrap, Finish and Bootstrap wait in the stream
        b = rpc.Connection(right, bootstrap=DiagServer("late"), peer="a")
        await nursery.start(b.run)
        await trio.sleep(0.5)
        assert caps and not a.is_closed and not b.is_closed
        assert (await caps[0].ping(timeout_s=5)).nodeName == "late"
        assert len(b._exports) == 1 and a._imports == {caps[0]._target[1]: 1}
        nursery.cancel_scope.cancel()
