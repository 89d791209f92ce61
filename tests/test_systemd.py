"""The systemd units as shipped: `systemd-analyze verify` accepts them (with
ExecStart pointing at this checkout's chordfs instead of /usr/local/bin,
which `make install` links), and the node unit's ExecStart line, run as
written against a temporary config, tells an emulated NOTIFY_SOCKET READY=1
once it serves and STOPPING=1 on SIGTERM, then exits 0."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from tests import tls
from tests.netutil import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
UNITS = ROOT / "systemd"
CHORDFS = pathlib.Path(sys.executable).parent / "chordfs"
INSTALLED = "/usr/local/bin/chordfs"


def _local_units(tmp: pathlib.Path) -> pathlib.Path:
    out = tmp / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        (out / unit.name).write_text(unit.read_text().replace(INSTALLED, str(CHORDFS)))
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_units_verify(tmp_path):
    units = _local_units(tmp_path)
    assert INSTALLED in (UNITS / "chordfs-node@.service").read_text()
    names = sorted(p.name for p in units.iterdir()) + ["chordfs-node@n1.service"]
    out = subprocess.run(["systemd-analyze", "verify", *names], cwd=units,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def _exec_start(instance: str, confdir: pathlib.Path) -> list[str]:
    text = (UNITS / "chordfs-node@.service").read_text()
    line = next(l for l in text.splitlines() if l.startswith("ExecStart="))
    line = line[len("ExecStart="):].replace("%i", instance)
    argv = shlex.split(line.replace("/etc/chordfs", str(confdir)))
    assert argv[0] == INSTALLED
    return [str(CHORDFS), *argv[1:]]


def test_exec_start_notifies_ready_and_stopping(tmp_path):
    port = free_ports(1)[0]
    name = f"127.0.0.1:{port}"
    confdir = tmp_path / "etc"
    confdir.mkdir()
    ca, cert, key = tls.node_flags(name)[1::2]
    (confdir / "n1.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\nlisten_port = {port}\n'
        f'tls_ca = "{ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    founded = subprocess.run([str(CHORDFS), "cluster", "init", "--config", str(confdir / "n1.toml")],
                             capture_output=True, text=True, timeout=60)
    assert founded.returncode == 0, founded.stderr
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    log = open(tmp_path / "node.log", "wb")
    proc = subprocess.Popen(_exec_start("n1", confdir), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "NOTIFY_SOCKET": str(notify)})
    try:
        assert sock.recv(256) == b"READY=1", (tmp_path / "node.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        log.close()
