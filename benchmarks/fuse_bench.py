"""chordfs FUSE mounts against a local directory, same run, same disk:
sequential write/read MB/s, random 4 KiB writes per second (into the
sequential file, then fsync and close), small-file create/read/stat per
second, and ``ls -l`` of a 10,000-file directory. Mounts measured: the
LocalBackend, and with ``--cluster`` also a real local cluster of three
``chordfs node`` processes on 127.0.0.1 (3 replicas, Raft metadata).
``--writeback both`` measures each chordfs mount with the kernel's
writeback cache off and on (``-o nowriteback`` / ``-o writeback``).
The cluster runs with mutual TLS as deployed (a throwaway CA); ``--tls
both`` also measures a plain-TCP cluster (``insecure``) in the same run:
the cost of TLS.

    .venv/bin/python benchmarks/fuse_bench.py [--dir BASE] [--size-mib 256] [--cluster]
        [--writeback off|on|both]

Cold reads drop the kernel page cache (root only) and, for chordfs, run
``chordfs drop-cache`` so the mount's chunk cache starts empty too. If writing the first 64 MiB on the
slowest mount takes more than ``SLOW_S``, the sequential size falls back to
64 MiB; if it creates fewer than ``LS_SLOW_CREATES_S`` files per second, the
``ls -l`` directory holds ``LS_FILES_SLOW`` files instead (both printed, and
used for every column so the ratios compare the same work).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
BLOCK = 1 << 20
SMALL_FILES = 2000
SMALL_BYTES = 4096
LS_FILES = 10_000
LS_FILES_SLOW = 2000
LS_SLOW_CREATES_S = 300.0
SLOW_S = 4.0
RANDOM_WRITE_BYTES = 4096
RANDOM_WRITES_MAX = 20_000
RANDOM_WRITE_S = 10.0
RANDOM_SEED = 11


def drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write("3")
    except OSError:
        pass


class Mounted:
    """A mount of a local data directory, or of a cluster when ``data`` is a
    str of HOST:PORT,..."""

    def __init__(self, data: pathlib.Path | str, mnt: pathlib.Path, options: str = "") -> None:
        self.data, self.mnt, self.options, self.proc = data, mnt, options, None

    def __enter__(self) -> pathlib.Path:
        self.mnt.mkdir(parents=True, exist_ok=True)
        source = [self.data] if isinstance(self.data, str) else ["--local", str(self.data)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusefs.mount", *source, str(self.mnt), "--foreground",
             *(["-o", self.options] if self.options else [])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("chordfs mount did not come up")
            time.sleep(0.02)
        return self.mnt

    def __exit__(self, *exc) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)])
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def seq_write(path: pathlib.Path, size: int) -> float:
    block = os.urandom(BLOCK)
    start = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(size // BLOCK):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    return size / (time.perf_counter() - start) / 1e6


def seq_read(path: pathlib.Path) -> float:
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(BLOCK):
            total += len(chunk)
    return total / (time.perf_counter() - start) / 1e6


def random_writes(path: pathlib.Path) -> float:
    """4 KiB writes at random aligned offsets of an existing file, until
    ``RANDOM_WRITES_MAX`` or ``RANDOM_WRITE_S``; then fsync and close, which
    count: a cache that only defers the work must not look faster."""
    rng = random.Random(RANDOM_SEED)
    blocks = path.stat().st_size // RANDOM_WRITE_BYTES
    payload = os.urandom(RANDOM_WRITE_BYTES)
    fd = os.open(path, os.O_WRONLY)
    start = time.perf_counter()
    done = 0
    while done < RANDOM_WRITES_MAX and time.perf_counter() - start < RANDOM_WRITE_S:
        os.pwrite(fd, payload, rng.randrange(blocks) * RANDOM_WRITE_BYTES)
        done += 1
    os.fsync(fd)
    os.close(fd)
    return done / (time.perf_counter() - start)


def small_files(d: pathlib.Path) -> tuple[float, float, float]:
    d.mkdir()
    payload = os.urandom(SMALL_BYTES)
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        fd = os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, payload)
        os.close(fd)
    create = SMALL_FILES / (time.perf_counter() - start)
    time.sleep(1.1)  # let chordfs's 1 s attribute cache expire: measure real work
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        with open(d / f"f{i}", "rb") as f:
            assert len(f.read()) == SMALL_BYTES
    read = SMALL_FILES / (time.perf_counter() - start)
    time.sleep(1.1)
    start = time.perf_counter()
    for i in range(SMALL_FILES):
        os.stat(d / f"f{i}")
    stat = SMALL_FILES / (time.perf_counter() - start)
    return create, read, stat


def ls_big_dir(d: pathlib.Path, files: int) -> float:
    d.mkdir()
    for i in range(files):
        os.close(os.open(d / f"entry-{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644))
    time.sleep(1.1)
    start = time.perf_counter()
    subprocess.run(["ls", "-l", str(d)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def drop_mount_cache(mnt: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "server.cli", "drop-cache", str(mnt)],
                   cwd=ROOT, check=True)


def run_suite(base: pathlib.Path, size: int, ls_files: int, drop_cache) -> dict:
    out = {"write MB/s": seq_write(base / "seq.bin", size)}
    drop_cache(base)
    drop_caches()
    out["cold read MB/s"] = seq_read(base / "seq.bin")
    out["warm read MB/s"] = seq_read(base / "seq.bin")
    out["random 4 KiB writes/s"] = random_writes(base / "seq.bin")
    out["creates/s (4 KiB)"], out["reads/s (4 KiB)"], out["stats/s"] = small_files(base / "small")
    out["ls -l (s)"] = ls_big_dir(base / "big", ls_files)
    return out


def pick_size(mnt: pathlib.Path, size_mib: int) -> int:
    start = time.perf_counter()
    seq_write(mnt / "probe.bin", 64 << 20)
    os.unlink(mnt / "probe.bin")
    if time.perf_counter() - start > SLOW_S and size_mib > 64:
        print(f"writing 64 MiB took over {SLOW_S:.0f} s: using 64 MiB instead of {size_mib}")
        return 64 << 20
    return size_mib << 20


def pick_ls_files(mnt: pathlib.Path) -> int:
    d = mnt / "probe"
    d.mkdir()
    start = time.perf_counter()
    for i in range(100):
        os.close(os.open(d / f"p{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    rate = 100 / (time.perf_counter() - start)
    shutil.rmtree(d)
    if rate < LS_SLOW_CREATES_S:
        print(f"{rate:.0f} creates/s: ls -l of {LS_FILES_SLOW} files instead of {LS_FILES}")
        return LS_FILES_SLOW
    return LS_FILES


def measure_mount(data: pathlib.Path | str, mnt: pathlib.Path, options: str, size: int | None,
                  size_mib: int, ls_files: int | None) -> tuple[dict, int, int]:
    """Runs the suite in a fresh directory of a mount of ``data`` (dropping
    the mount's caches before cold reads); picks the sizes on this mount when
    not given."""
    with Mounted(data, mnt, options) as root:
        work = pathlib.Path(tempfile.mkdtemp(prefix="run-", dir=root))
        size = size or pick_size(work, size_mib)
        ls_files = ls_files or pick_ls_files(work)
        out = run_suite(work, size, ls_files, lambda _: drop_mount_cache(root))
    print(f"{data} -o {options}: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()),
          file=sys.stderr, flush=True)
    return out, size, ls_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=None, help="base directory (default: a temp dir)")
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--cluster", action="store_true",
                        help="also measure a mount of a real local 3-node cluster")
    parser.add_argument("--writeback", choices=("off", "on", "both"), default="off",
                        help="the kernel writeback cache on the chordfs mounts (both: a column "
                             "for each)")
    parser.add_argument("--tls", choices=("on", "both"), default="on",
                        help="both: also a plain-TCP cluster (column cluster-notls)")
    parser.add_argument("--ls-files", type=int, default=None,
                        help="files in the ls -l directory (default: 10,000, or 2,000 on a "
                             "mount creating fewer than 300 files/s)")
    args = parser.parse_args(argv)
    if args.ls_files is not None and args.ls_files < 1:
        parser.error("--ls-files must be at least 1")
    base = pathlib.Path(tempfile.mkdtemp(prefix="fusebench-", dir=args.dir))
    results, size, ls_files = {}, None, args.ls_files
    modes = {"off": [""], "on": ["+wb"], "both": ["", "+wb"]}[args.writeback]
    options = {"": "nowriteback", "+wb": "writeback"}
    try:
        if args.cluster:
            sys.path.insert(0, str(ROOT))
            from tests import tls
            from tests.fuse.realcluster import start_cluster
            for secure in ([True, False] if args.tls == "both" else [True]):
                cluster = start_cluster(base / f"cluster{int(secure)}", secure=secure)
                extra = tls.mount_options() if secure else "insecure"
                try:
                    for mode in modes:
                        results["cluster" + mode + ("" if secure else "-notls")], size, ls_files = \
                            measure_mount(cluster.spec, base / "cmnt", f"{options[mode]},{extra}",
                                          size, args.size_mib, ls_files)
                finally:
                    cluster.stop()
        for mode in modes:
            results["chordfs" + mode], size, ls_files = measure_mount(
                base / f"data{mode}", base / "mnt", options[mode], size, args.size_mib,
                ls_files)
        local = base / "local"
        local.mkdir()
        results["local dir"] = run_suite(local, size, ls_files, lambda p: p)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"sequential size: {size >> 20} MiB; small files: {SMALL_FILES} x {SMALL_BYTES} B; "
          f"ls -l of {ls_files} files")
    names = [n for n in ("chordfs", "chordfs+wb", "cluster", "cluster+wb", "cluster-notls",
                         "cluster+wb-notls", "local dir") if n in results]
    plain = results["local dir"]
    ratios = [n for n in names if n != "local dir"]
    print(f"{'':24}" + "".join(f"{n:>12}" for n in names)
          + "".join(f"{n + '/local':>18}" for n in ratios))
    for key in plain:
        print(f"{key:24}" + "".join(f"{results[n][key]:12.{1 if results[n][key] >= 1 else 3}f}"
                                    for n in names)
              + "".join(f"{results[n][key] / plain[key]:18.3g}" for n in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
