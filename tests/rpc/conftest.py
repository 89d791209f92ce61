import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def pycapnp_server():
    """pycapnp's asyncio RPC serving Diag in a subprocess; yields its address."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.rpc.pycapnp_peer", "server", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline().split()
        assert line and line[0] == "READY", "pycapnp server did not start"
        yield f"127.0.0.1:{line[1]}"
    finally:
        proc.kill()
        proc.wait()
