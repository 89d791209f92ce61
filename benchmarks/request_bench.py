"""Where a small-file workload's time goes, phase by phase: a real local
3-node cluster (mutual TLS, as deployed) mounted with default options, and
a local directory in the same run as the baseline.

For each phase of the peers harness's small-file run (2,000 files of 4 KiB
in one directory: create, ``ls -l`` cold and warm, reads cold and warm,
rename, ``rm -r``; then ``mkdir -p`` of a 500-directory tree and its
``rm -r``) it prints the rate on chordfs and on the local directory, and
for chordfs:

- the FUSE requests the kernel sent per operation (per listing for
  ``ls -l``), by kind, with the mean time the mount took to answer each
  kind (the mount's own metrics);
- the CPU the mount and the three nodes used, in cores, and the CPU the
  hypervisor took from this machine meanwhile (``steal``): on a shared VM a
  phase with steal is slower for reasons outside chordfs.

Requests per operation show what the kernel asks and what a cache saves;
cores show which process a phase is bound by.

    .venv/bin/python benchmarks/request_bench.py [--dir BASE] [--files 2000]

Cold phases drop the kernel's caches (root only) and the mount's own
(``chordfs drop-cache``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.fuse_bench import Mounted, drop_caches  # noqa: E402

FILE_BYTES = 4096
TREE = [f"a{i}/b{j}/c{k}" for i in range(5) for j in range(9) for k in range(10)]
TREE_DIRS = 5 + 5 * 9 + len(TREE)
_SAMPLE = re.compile(r'chordfs_mount_op_seconds_(count|sum)\{op="(\w+)"\} (\S+)')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steal_s() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


class Probe:
    """Mount metrics and process CPU around one phase."""

    def __init__(self, port: int | None, mount_pid: int | None, node_pids: list[int]) -> None:
        self.port, self.mount_pid, self.node_pids = port, mount_pid, node_pids

    def _requests(self) -> dict[tuple[str, str], float]:
        if self.port is None:
            return {}
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5).read()
        return {(m[2], m[1]): float(m[3]) for m in _SAMPLE.finditer(text.decode())}

    def snapshot(self):
        cpu = [proc_cpu_s(p) for p in ([self.mount_pid] if self.mount_pid else []) + self.node_pids]
        return time.perf_counter(), self._requests(), cpu, steal_s()

    @staticmethod
    def report(before, after, ops: int) -> str:
        (t0, r0, c0, s0), (t1, r1, c1, s1) = before, after
        wall = t1 - t0
        kinds = []
        for (op, kind), value in sorted(r1.items()):
            count = value - r0.get((op, kind), 0.0)
            if kind != "count" or count < 1:
                continue
            total_s = r1[(op, "sum")] - r0.get((op, "sum"), 0.0)
            kinds.append(f"{op} {count / ops:.2f} ({total_s / count * 1e6:.0f} us)")
        cores = [(b - a) / wall for a, b in zip(c0, c1)]
        mount, nodes = (cores[0], sum(cores[1:])) if cores else (0.0, 0.0)
        return (f"cores: mount {mount:.2f}, nodes {nodes:.2f}, steal {(s1 - s0) / wall:.2f}\n"
                f"      per op: " + ", ".join(kinds))


def phases(d: pathlib.Path, files: int, drop, probe: Probe | None):
    """Yields (phase, ops/s, report) for each phase, in order."""
    data = os.urandom(FILE_BYTES)
    small = d / "small"
    small.mkdir()
    names = [small / f"f{i:05d}" for i in range(files)]
    renamed = [small / f"r{i:05d}" for i in range(files)]
    env = dict(os.environ, LC_ALL="C")

    def create():
        for p in names:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)

    def ls():
        subprocess.run(["ls", "-l", str(small)], stdout=subprocess.DEVNULL, env=env, check=True)

    def read():
        for p in names:
            fd = os.open(p, os.O_RDONLY)
            os.read(fd, 65536)
            os.close(fd)

    def rename():
        for a, b in zip(names, renamed):
            os.rename(a, b)

    def rm_r(path):
        subprocess.run(["rm", "-r", str(path)], check=True)

    def mkdir_p():
        subprocess.run(["mkdir", "-p", *[str(d / "tree" / t) for t in TREE]], check=True)

    steps = [("create", create, files, False), ("ls -l cold", ls, 1, True),
             ("ls -l warm", ls, 1, False), ("read cold", read, files, True),
             ("read warm", read, files, False), ("rename", rename, files, False),
             ("rm -r", lambda: rm_r(small), files + 1, False),
             ("mkdir -p", mkdir_p, TREE_DIRS, False),
             ("rm -r tree", lambda: rm_r(d / "tree"), TREE_DIRS + 1, False)]
    for name, run, ops, cold in steps:
        if cold:
            subprocess.run(["sync"], check=True)
            drop()
            drop_caches()
        before = probe.snapshot() if probe else None
        start = time.perf_counter()
        run()
        wall = time.perf_counter() - start
        report = Probe.report(before, probe.snapshot(), ops) if probe else ""
        rate = wall if ops == 1 else ops / wall
        yield name, rate, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=None, help="base directory (default: a temp dir)")
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("--files must be at least 1")
    from tests import tls
    from tests.fuse.realcluster import start_cluster
    base = pathlib.Path(tempfile.mkdtemp(prefix="requestbench-", dir=args.dir))
    try:
        cluster = start_cluster(base / "cluster")
        try:
            port = free_port()
            mnt = base / "mnt"
            mounted = Mounted(cluster.spec, mnt, f"{tls.mount_options()},metrics_port={port}")
            with mounted:  # --foreground: its process is the mount's
                probe = Probe(port, mounted.proc.pid, [p.pid for p in cluster.procs])
                work = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=mnt))
                drop = lambda: subprocess.run(  # noqa: E731
                    [sys.executable, "-m", "server.cli", "drop-cache", str(mnt)], cwd=ROOT,
                    stdout=subprocess.DEVNULL, check=False)
                chord = list(phases(work, args.files, drop, probe))
        finally:
            cluster.stop()
        local = base / "local"
        local.mkdir()
        plain = {name: rate for name, rate, _ in phases(local, args.files, lambda: None, None)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.files} files of {FILE_BYTES} B; ls -l in seconds, the rest in operations/s")
    print(f"{'phase':12}{'chordfs':>10}{'local dir':>11}{'speed vs local':>16}")
    for name, rate, report in chord:
        ratio = plain[name] / rate if name.startswith("ls") else rate / plain[name]
        print(f"{name:12}{rate:10.4g}{plain[name]:11.4g}{ratio:16.3g}")
        print(f"      {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
