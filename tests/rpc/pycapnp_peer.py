"""pycapnp's own asyncio RPC, run in a subprocess as the reference peer.

    python -m tests.rpc.pycapnp_peer server PORT       serve Diag, print "READY <port>"
    python -m tests.rpc.pycapnp_peer client ADDR       run the interop checks, print JSON
    python -m tests.rpc.pycapnp_peer bench ADDR N      measure, print JSON

Kept apart from chordfs code on purpose: it must exercise the C++ RPC stack,
not ours."""

import asyncio
import json
import sys
import time

import capnp

from rpc.schema import path_of

diag = capnp.load(path_of("diag"))

_KINDS = {
    "failed": capnp.KjException.Type.FAILED,
    "overloaded": capnp.KjException.Type.OVERLOADED,
    "disconnected": capnp.KjException.Type.DISCONNECTED,
    "unimplemented": capnp.KjException.Type.UNIMPLEMENTED,
}


class DiagImpl(diag.Diag.Server):
    async def ping(self, _context, **kwargs):
        _context.results.nodeName = "pycapnp"
        _context.results.nowNs = time.time_ns()

    async def echo(self, data, _context, **kwargs):
        _context.results.data = data

    async def fail(self, kind, message, _context, **kwargs):
        raise capnp.KjException(type=_KINDS.get(kind, _KINDS["failed"]), message=message)

    async def sleep(self, ms, _context, **kwargs):
        await asyncio.sleep(min(ms, 10_000) / 1000)
        _context.results.completed = True


async def serve(port: int):
    async def new_connection(stream):
        await capnp.TwoPartyServer(stream, bootstrap=DiagImpl()).on_disconnect()

    server = await capnp.AsyncIoStream.create_server(new_connection, "127.0.0.1", port)
    print("READY", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def _bootstrap(addr: str):
    host, port = addr.rsplit(":", 1)
    stream = await capnp.AsyncIoStream.create_connection(host=host, port=int(port))
    client = capnp.TwoPartyClient(stream)
    return client, client.bootstrap().cast_as(diag.Diag)


async def client_checks(addr: str) -> dict:
    client, cap = await _bootstrap(addr)
    out = {}
    out["ping"] = (await cap.ping()).nodeName
    out["small"] = (await cap.echo(b"hello chordfs")).data.decode()
    big = bytes(range(256)) * 4096  # 1 MiB
    out["big_ok"] = (await cap.echo(big)).data == big
    errors = {}
    for kind in ("failed", "overloaded", "disconnected", "unimplemented"):
        try:
            await cap.fail(kind, f"boom-{kind}")
            errors[kind] = "no error"
        except capnp.KjException as e:
            errors[kind] = [str(e.type), e.description]
    out["errors"] = errors
    # Pipelined on the bootstrap promise: a fresh client calls before the
    # bootstrap Return arrives.
    client2, cap2 = await _bootstrap(addr)
    results = await asyncio.gather(*(cap2.echo(str(i).encode()) for i in range(50)))
    out["pipelined"] = all(r.data == str(i).encode() for i, r in enumerate(results))
    return out


async def bench(addr: str, n: int, workers: int = 1000, big_reps: int = 200) -> dict:
    """Same workload and idiom as benchmarks/rpc_bench.py's chordfs side:
    sequential calls, then `workers` coroutines each making calls in turn
    (so `workers` calls are in flight), then 1 MiB echoes."""
    client, cap = await _bootstrap(addr)
    await cap.ping()
    small = b"x" * 16
    t0 = time.perf_counter()
    for _ in range(n):
        await cap.echo(small)
    seq = n / (time.perf_counter() - t0)

    async def worker(count):
        for _ in range(count):
            await cap.echo(small)

    total = n * 4
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(total // workers) for _ in range(workers)))
    conc = total // workers * workers / (time.perf_counter() - t0)
    big = b"z" * (1 << 20)
    t0 = time.perf_counter()
    for _ in range(big_reps):
        await cap.echo(big)
    mibs = big_reps / (time.perf_counter() - t0)
    return {"seq_calls_s": seq, "conc_calls_s": conc, "echo_1mib_mib_s": mibs}


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "server":
        asyncio.run(capnp.run(serve(int(argv[1]))))
    elif mode == "client":
        print(json.dumps(asyncio.run(capnp.run(client_checks(argv[1])))), flush=True)
    elif mode == "bench":
        print(json.dumps(asyncio.run(capnp.run(bench(argv[1], int(argv[2]))))), flush=True)
    else:
        print(f"unknown mode {mode!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
