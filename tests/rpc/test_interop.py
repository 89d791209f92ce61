"""chordfs RPC against pycapnp's own asyncio RPC (the C++ implementation),
in both directions, over real TCP on 127.0.0.1."""

import json
import os
import subprocess
import sys

import pytest
import trio

import rpc
from server.diag import DiagServer, diag

from .conftest import ROOT

pytestmark = pytest.mark.integration
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


async def test_pycapnp_client_calls_chordfs_server():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(rpc.serve_tcp, lambda: DiagServer("chordfs"), 0)
        port = listeners[0].socket.getsockname()[1]
        result = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "tests.rpc.pycapnp_peer", "client", f"127.0.0.1:{port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)}))
        nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ping"] == "chordfs"
    assert out["small"] == "hello chordfs"
    assert out["big_ok"] is True
    assert out["pipelined"] is True  # calls on the bootstrap promise before its Return
    for kind in ("failed", "overloaded", "disconnected", "unimplemented"):
        wire_type, description = out["errors"][kind]
        assert wire_type == kind.upper()
        assert f"boom-{kind}" in description


async def test_chordfs_client_calls_pycapnp_server(pycapnp_server):
    async with rpc.connect(pycapnp_server) as conn:
        cap = await conn.bootstrap(diag.Diag, timeout_s=10)
        assert (await cap.ping()).nodeName == "pycapnp"
        assert (await cap.echo(data=b"small")).data == b"small"
        assert (await cap.echo(data=PAYLOAD)).data == PAYLOAD
        # pycapnp's server turns every Python exception into a FAILED Return.
        with pytest.raises(rpc.Failed, match="boom"):
            await cap.fail(kind="overloaded", message="boom")
        with pytest.raises(rpc.CallTimeout):
            await cap.sleep(ms=5000, timeout_s=0.2)
        assert (await cap.sleep(ms=1)).completed
        results = []

        async def worker(i):
            for j in range(10):
                data = f"{i}:{j}".encode()
                results.append((await cap.echo(data=data)).data == data)

        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(worker, i)
        assert len(results) == 1000 and all(results)
        await cap.release()
        assert (await (await conn.bootstrap(diag.Diag)).ping()).nodeName == "pycapnp"
