"""An operator's whole path, as the README tells it, from `make install`:
install into a temporary prefix, make a CA and certificates with the
installed `chordfs`, write three node configs, found the cluster, start
the nodes through the installed unit's ExecStart line (each with an
emulated NOTIFY_SOCKET that must hear READY=1), mount with
`mount -t chordfs` (mount(8) finding the installed mount.chordfs), copy
files in, kill a node: `chordfs status --json` reports it dead and blocks
under-replicated while reads go on; restart it and `chordfs heal`: no block
under-replicated or missing; a copy corrupted on disk is found and restored
by `chordfs scrub`.  `make uninstall` removes what was installed.

mount(8) looks for helpers only in /sbin: the mount runs in a private
mount namespace where /usr/sbin is an overlay with the temporary sbin on
top, so the machine's own /sbin is never touched.  The test reaches the
mount through /proc/PID/root of a process in that namespace."""

from __future__ import annotations

import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import socket
import subprocess
import time

import pytest

from tests.netutil import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
INSTALLED = "/usr/local/bin/chordfs"

# Not in the "heavy" group: nothing here has a timing budget, and its
# addresses (fresh ports, a private mount namespace) are its own.
# Not in the "heavy" group: nothing here has a timing budget, and its
# addresses (fresh ports, a private mount namespace) are its own.
pytestmark = [pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                 reason="needs root and unshare for a private mount namespace")]


def _run(*argv, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                         timeout=timeout, **kw)
    if check:
        assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
    return out


class Node:
    def __init__(self, argv: list[str], log: pathlib.Path, notify: pathlib.Path):
        self.argv, self.log_path, self.notify_path = argv, log, notify
        self.proc = None

    def start(self) -> None:
        self.notify_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.notify_path))
        sock.settimeout(60)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path)})
        try:
            assert sock.recv(256) == b"READY=1", self.log_path.read_text()[-3000:]
        finally:
            sock.close()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def _status(chordfs, spec, tls_args) -> dict:
    out = _run(chordfs, "status", spec, "--json", "--timeout-s", "2", *tls_args, check=False)
    assert out.returncode in (0, 3), out.stderr
    return json.loads(out.stdout)


def _rings_complete(st: dict) -> bool:
    """Every node answered and its ring lists every node alive. The summary
    counts a node no ring lists yet as alive, and a node killed before it
    joined any ring is never declared dead by the others."""
    names = set(st["nodes"])
    return all("error" not in r and {m["name"] for m in r.get("ring") or []
                                     if m["state"] == "alive"} >= names
               for r in st["nodes"].values())


def _wait_status(chordfs, spec, tls_args, predicate, what: str, timeout_s: float = 90,
                 rings: bool = False) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        st = _status(chordfs, spec, tls_args)
        if predicate(st["summary"]) and (not rings or _rings_complete(st)):
            return st
        if time.monotonic() > deadline:
            rings_seen = ({n: r.get("ring") for n, r in st["nodes"].items()} if rings else "")
            raise AssertionError(f"{what} not seen in {timeout_s} s: {st['summary']} {rings_seen}")
        time.sleep(1)


def test_installed_cluster_mounts_loses_a_node_and_heals(tmp_path):
    prefix = tmp_path / "prefix"
    dirs = {"OPT": prefix / "opt", "BINDIR": prefix / "bin", "SBINDIR": prefix / "sbin",
            "UNITDIR": prefix / "units", "CONFDIR": prefix / "etc"}
    _run("make", "-s", "install", *(f"{k}={v}" for k, v in dirs.items()), cwd=ROOT, timeout=600)
    chordfs = dirs["BINDIR"] / "chordfs"
    assert chordfs.resolve() == dirs["OPT"] / "bin" / "chordfs"
    assert (dirs["SBINDIR"] / "mount.chordfs").resolve() == dirs["OPT"] / "bin" / "mount.chordfs"
    unit = (dirs["UNITDIR"] / "chordfs-node@.service").read_text()
    exec_start = next(l for l in unit.splitlines() if l.startswith("ExecStart="))[len("ExecStart="):]
    assert shlex.split(exec_start)[0] == INSTALLED

    conf, tlsdir = dirs["CONFDIR"], dirs["CONFDIR"] / "tls"
    _run(chordfs, "ca", "init", "--dir", tmp_path / "ca")
    ports = free_ports(3)
    names = [f"127.0.0.1:{p}" for p in ports]
    spec = ",".join(names)

    def issue(*who) -> tuple[str, str]:
        out = _run(chordfs, "cert", "issue", "--ca", tmp_path / "ca", *who, "--out", tlsdir).stdout
        lines = dict(l.split(None, 1) for l in out.splitlines() if l.startswith(("certificate", "key")))
        return lines["certificate"].strip(), lines["key"].split()[0]
    ca = str(tlsdir / "ca.crt")
    nodes = []
    for i, (name, port) in enumerate(zip(names, ports)):
        cert, key = issue("--node", name)
        (conf / f"n{i}.toml").write_text(
            f'data_dir = "{tmp_path / f"data{i}"}"\nlisten_host = "127.0.0.1"\n'
            f'listen_port = {port}\nseeds = {json.dumps(names)}\n'
            f'tls_ca = "{ca}"\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
        argv = shlex.split(exec_start.replace("%i", f"n{i}").replace("/etc/chordfs", str(conf)))
        nodes.append(Node([str(chordfs), *argv[1:]], tmp_path / f"n{i}.log",
                          tmp_path / f"notify{i}.sock"))
    admin_cert, admin_key = issue("--node", "ops-admin")  # heal is for node certificates
    admin = ["--tls-ca", ca, "--tls-cert", admin_cert, "--tls-key", admin_key]
    client_cert, client_key = issue("--client", "ops-mount")
    _run(chordfs, "cluster", "init", "--config", conf / "n0.toml")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shell = None
    try:
        for node in nodes:
            node.start()
        _wait_status(chordfs, spec, admin, lambda s: s["leader"] and not s["down"]
                     and all(st == "alive" for st in s["members"].values())
                     and len(s["members"]) == 3, "three live members", rings=True)

        # mount -t chordfs in a namespace where mount(8) finds the helper.
        script = (f"mount -t overlay overlay -o lowerdir={dirs['SBINDIR']}:/usr/sbin /usr/sbin"
                  f" && mount -t chordfs -o tls_ca={ca},tls_cert={client_cert},"
                  f"tls_key={client_key} {spec} {mnt} && echo mounted && exec sleep 600")
        shell = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                                  "sh", "-c", script], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert shell.stdout.readline().strip() == "mounted", shell.stderr.read()
        inside = pathlib.Path(f"/proc/{shell.pid}/root") / str(mnt).lstrip("/")
        src = tmp_path / "src"
        src.mkdir()
        rnd = random.Random(7)
        for i in range(12):
            (src / f"f{i}.bin").write_bytes(rnd.randbytes(rnd.randrange(100_000, 400_000)))
        _run("cp", "-r", src, inside / "data")
        _run("sync")
        _run("nsenter", "-t", shell.pid, "-m", "sync")

        victim = 2
        nodes[victim].kill()
        st = _wait_status(chordfs, spec, admin,
                          lambda s: s["members"][names[victim]] == "dead"
                          and (s["blocks"] or {}).get("under_replicated", 0) > 0,
                          "the killed node dead and blocks under-replicated")
        assert st["summary"]["down"] == [names[victim]]
        assert st["summary"]["blocks"]["missing"] == 0
        for f in src.iterdir():  # reads go on with a node down
            assert (inside / "data" / f.name).read_bytes() == f.read_bytes()

        nodes[victim].start()
        _wait_status(chordfs, spec, admin, lambda s: not s["down"]
                     and all(st == "alive" for st in s["members"].values()), "the node back")
        healed = _run(chordfs, "heal", spec, "--json", *admin, check=False, timeout=300)
        assert healed.returncode == 0, healed.stdout + healed.stderr
        blocks = json.loads(healed.stdout)["summary"]["blocks"]
        assert blocks["under_replicated"] == blocks["missing"] == 0
        assert blocks["checked"] >= 12 and blocks["healthy"] == blocks["checked"]
        st = _status(chordfs, spec, admin)["summary"]
        assert st["blocks"]["under_replicated"] == 0 and not st["down"]
        text = _run(chordfs, "status", spec, *admin).stdout
        assert f"{blocks['checked']} referenced, 0 under-replicated, 0 missing" in text

        # A copy rots on disk: chordfs scrub finds it and restores it.
        held = sorted((tmp_path / "data1" / "chunks" / "chunks").glob("*/*/*"))
        assert held
        rotten = held[0]
        data = bytearray(rotten.read_bytes())
        data[len(data) // 2] ^= 0xFF
        rotten.write_bytes(bytes(data))
        scrubbed = _run(chordfs, "scrub", spec, "--json", "--rate", "1000000000", *admin,
                        check=False, timeout=300)
        assert scrubbed.returncode == 0, scrubbed.stdout + scrubbed.stderr
        passes = json.loads(scrubbed.stdout)["scrub"]
        assert sorted(passes) == sorted(names)
        assert passes[names[1]]["corrupt_count"] == 1 and passes[names[1]]["restored_total"] >= 1
        assert all(p["checked_count"] > 0 for p in passes.values())
        assert rotten.read_bytes() != bytes(data)  # a good copy is back in its place
    finally:
        if shell is not None:
            subprocess.run(["nsenter", "-t", str(shell.pid), "-m", "fusermount3", "-u", "-z",
                            str(mnt)], capture_output=True, timeout=30)
            shell.kill()
            shell.wait()
        for node in nodes:
            node.kill()
    _run("make", "-s", "uninstall", *(f"{k}={v}" for k, v in dirs.items()), cwd=ROOT)
    assert not dirs["OPT"].exists() and not chordfs.is_symlink()
    assert not (dirs["SBINDIR"] / "mount.chordfs").is_symlink()
    assert not (dirs["UNITDIR"] / "chordfs-node@.service").exists()
