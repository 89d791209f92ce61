"""chordfs RPC against pycapnp's asyncio RPC, same workload, same run.

Each side serves Diag.echo from its own process on 127.0.0.1 and is driven by
a client of its own kind in another process:
  - sequential small calls/s (one call in flight),
  - concurrent small calls/s (1,000 calls in flight: 1,000 workers each
    making calls in turn),
  - MiB/s of 1 MiB echoes (sent and returned, counted once).
chordfs is measured three times: with echo as an inline method (how the
node's Diag serves it), as a task-per-call method (any method that may
block), and inline over mutual TLS as nodes and mounts run it (certificates
from a throwaway CA); the last column is TLS / plain.
Each figure is the median of --repeats interleaved runs; ratios are
chordfs / pycapnp.

    python benchmarks/rpc_bench.py [--calls 3000] [--repeats 3]
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

import rpc  # noqa: E402
from server.diag import DiagServer, diag  # noqa: E402


class TaskDiag(DiagServer):
    async def echo(self, params, results):  # not inline: one task per call
        results.data = params.data


async def _serve(kind: str, *tls_files: str) -> None:
    from server import pki
    factory = TaskDiag if kind == "task" else DiagServer
    context = pki.server_context(*tls_files) if tls_files else None
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: rpc.serve_tcp(factory, 0, ssl_context=context,
                                              task_status=task_status))
        print("READY", listeners[0].socket.getsockname()[1], flush=True)


def _start(argv: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline().split()
    if not line or line[0] != "READY":
        proc.kill()
        raise SystemExit(f"server {argv} did not start")
    return proc, int(line[1])


async def _chordfs_client(addr: str, n: int, *tls_files: str, workers: int = 1000,
                          big_reps: int = 200) -> dict:
    from server import pki
    context = pki.client_context(*tls_files) if tls_files else None
    async with rpc.connect(addr, ssl_context=context) as conn:
        cap = await conn.bootstrap(diag.Diag)
        await cap.ping()
        small = b"x" * 16
        t0 = time.perf_counter()
        for _ in range(n):
            await cap.echo(data=small)
        seq = n / (time.perf_counter() - t0)
        per_worker = n * 4 // workers

        async def worker():
            for _ in range(per_worker):
                await cap.echo(data=small)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(worker)
        conc = per_worker * workers / (time.perf_counter() - t0)
        big = b"z" * (1 << 20)
        t0 = time.perf_counter()
        for _ in range(big_reps):
            await cap.echo(data=big)
        mibs = big_reps / (time.perf_counter() - t0)
        return {"seq_calls_s": seq, "conc_calls_s": conc, "echo_1mib_mib_s": mibs}


def _client_run(which: str, port: int, calls: int, tls_files: list[str]) -> dict:
    addr = f"127.0.0.1:{port}"
    if which == "pycapnp":
        out = subprocess.run([sys.executable, "-m", "tests.rpc.pycapnp_peer", "bench", addr, str(calls)],
                             cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode:
            raise SystemExit(f"pycapnp client failed: {out.stderr.strip()[-500:]}")
        return json.loads(out.stdout)
    out = subprocess.run([sys.executable, __file__, "_client", addr, str(calls), *tls_files], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise SystemExit(f"chordfs client failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "_serve":
        trio.run(_serve, *argv[1:])
        return 0
    if argv and argv[0] == "_client":
        print(json.dumps(trio.run(_chordfs_client, argv[1], int(argv[2]), *argv[3:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from tests import tls
    server_cert, server_key = tls._issue("node", "bench-server")
    client_cert, client_key = tls._issue("client", "bench-client")
    servers = {
        "pycapnp": ["-m", "tests.rpc.pycapnp_peer", "server", "0"],
        "chordfs-inline": [__file__, "_serve", "inline"],
        "chordfs-task": [__file__, "_serve", "task"],
        "chordfs-tls": [__file__, "_serve", "inline", tls.ca_cert(), server_cert, server_key],
    }
    client_tls = {"chordfs-tls": [tls.ca_cert(), client_cert, client_key]}
    # All servers up at once and the repeats interleaved, so background load
    # on a shared machine lands on every side alike.
    started = {name: _start(cmd) for name, cmd in servers.items()}
    runs = {name: [] for name in servers}
    try:
        for _ in range(args.repeats):
            for name, (_, port) in started.items():
                client = "pycapnp" if name == "pycapnp" else "chordfs"
                runs[name].append(_client_run(client, port, args.calls, client_tls.get(name, [])))
    finally:
        for proc, _ in started.values():
            proc.kill()
            proc.wait()
    results = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for name, rs in runs.items()}
    _report(results)
    return 0


def _report(results: dict) -> None:
    keys = [("seq_calls_s", "sequential small calls/s"), ("conc_calls_s", "concurrent calls/s (1,000 in flight)"),
            ("echo_1mib_mib_s", "1 MiB echo MiB/s")]
    base = results["pycapnp"]
    print(f"{'metric':40s} {'pycapnp':>10s} {'chordfs-inline':>15s} {'ratio':>6s} "
          f"{'chordfs-task':>13s} {'ratio':>6s} {'inline+TLS':>11s} {'TLS/plain':>9s}")
    for key, label in keys:
        b = base[key]
        i = results["chordfs-inline"][key]
        t = results["chordfs-task"][key]
        s = results["chordfs-tls"][key]
        print(f"{label:40s} {b:10.0f} {i:15.0f} {i / b:6.2f} {t:13.0f} {t / b:6.2f} "
              f"{s:11.0f} {s / i:9.2f}")
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
