"""The product path end to end: three `chordfs node` processes on 127.0.0.1
and a real FUSE mount of the cluster.  A file copied in reads back intact,
also after one node is killed with SIGKILL, and writes keep working; the
killed node restarts from its directory (Raft log, metadata, chunks),
catches up, and then carries the cluster while another node is down."""

import filecmp
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import tls
from tests.netutil import free_ports

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]


def _wait(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)  # each probe is a CLI process: ~0.5 s of CPU on a 2-core suite


def _answers(addr):
    return subprocess.run([sys.executable, "-m", "server.cli", "ping", addr, "--count", "1",
                           *tls.cli_flags(),
                           "--timeout-s", "1"], capture_output=True).returncode == 0


def _voters(addr) -> int:
    out = subprocess.run([sys.executable, "-m", "server.cli", "members", addr,
                          *tls.cli_flags(node=True)],
                         capture_output=True, text=True)
    return out.stdout.count(" voter ") if out.returncode == 0 else -1


def _applied(addr) -> int:
    out = subprocess.run([sys.executable, "-c", (
        "import sys, trio, rpc\n"
        "from server.raft.wire import raft_capnp\n"
        "from server import pki\n"
        "async def main(a, *files):\n"
        "    ctx = pki.client_context(*files)\n"
        "    async with rpc.connect(a, connect_timeout_s=1, ssl_context=ctx) as c:\n"
        "        s = await (await c.bootstrap(raft_capnp.Raft, timeout_s=1)).status(timeout_s=1)\n"
        "        print(s.applied)\n"
        "trio.run(main, *sys.argv[1:])\n"), addr, *tls.cli_flags()[1::2]],
        capture_output=True, text=True)
    return int(out.stdout) if out.returncode == 0 and out.stdout.strip() else -1


@pytest.mark.xdist_group("heavy")
def test_three_nodes_mount_copy_kill_one(tmp_path):
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    procs, mnt = [], tmp_path / "mnt"
    mnt.mkdir()
    try:
        def start(i):
            return subprocess.Popen(
                [sys.executable, "-m", "server.cli", "node", "--listen-port", addrs[i].split(":")[1],
                 "--data-dir", str(tmp_path / f"n{i}"), "--seeds", ",".join(addrs),
                 "--log-level", "warning", *tls.node_flags(addrs[i])] + (["--init"] if i == 0 else []),
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"n{i}.log", "ab"))

        procs.extend(start(i) for i in range(3))
        _wait(lambda: all(_answers(a) for a in addrs), 20, "nodes")
        _wait(lambda: _voters(addrs[0]) == 3, 30, "the joiners to be promoted")
        mounted = subprocess.run([sys.executable, "-m", "fusefs.mount", ",".join(addrs), str(mnt),
                                  "-o", tls.mount_options(),
                                  "--log", str(tmp_path / "mount.log")],
                                 capture_output=True, text=True, timeout=60)
        assert mounted.returncode == 0, mounted.stderr
        src = tmp_path / "src.bin"
        src.write_bytes(os.urandom(12 * 1024 * 1024 + 12345))
        subprocess.run(["cp", str(src), str(mnt / "a.bin")], check=True, timeout=60)
        os.mkdir(mnt / "dir")
        (mnt / "dir" / "note").write_text("hello")
        assert filecmp.cmp(src, mnt / "a.bin", shallow=False)
        procs[2].send_signal(signal.SIGKILL)  # any one node: leader or not
        procs[2].wait()
        copy_out = tmp_path / "out.bin"
        subprocess.run(["cp", str(mnt / "a.bin"), str(copy_out)], check=True, timeout=60)
        assert filecmp.cmp(src, copy_out, shallow=False)
        subprocess.run(["cp", str(src), str(mnt / "b.bin")], check=True, timeout=90)
        assert sorted(os.listdir(mnt)) == ["a.bin", "b.bin", "dir"]
        assert (mnt / "dir" / "note").read_text() == "hello"
        procs[2] = start(2)  # recovers from its directory
        # Where the others were when it came back: comparing with a moving
        # applied index (a Tick every second, each probe a process start)
        # can miss forever on a loaded machine.
        target = _applied(addrs[0])
        assert target > 0
        _wait(lambda: _applied(addrs[2]) >= target, 30, "the restarted node to catch up")
        procs[0].send_signal(signal.SIGKILL)  # now lose another one
        procs[0].wait()
        for name in ("a.bin", "b.bin"):
            assert filecmp.cmp(src, mnt / name, shallow=False)
        (mnt / "dir" / "after").write_text("still writable")
        assert sorted(os.listdir(mnt / "dir")) == ["after", "note"]
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], timeout=30)
        for proc in procs:
            if proc and proc.poll() is None:
                proc.kill()
                proc.wait()
