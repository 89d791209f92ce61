"""chordfs FUSE mount (LocalBackend) against a local directory, same run,
same disk: sequential write/read MB/s, small-file create/read/stat per
second, and ``ls -l`` of a 10,000-file directory.

    .venv/bin/python benchmarks/fuse_bench.py [--dir BASE] [--size-mib 256]

Cold reads drop the kernel page cache (root only) and, for chordfs, remount
so the chunk cache starts empty too. If writing the first 64 MiB takes more
than ``SLOW_S``, the sequential size falls back to 64 MiB (printed).
"""

from __future__ import annotations

import argparse
import os
import pathlib
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
SLOW_S = 4.0


def drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write("3")
    except OSError:
        pass


class Mounted:
    def __init__(self, data: pathlib.Path, mnt: pathlib.Path) -> None:
        self.data, self.mnt, self.proc = data, mnt, None

    def __enter__(self) -> pathlib.Path:
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusefs.mount", "--local", str(self.data), str(self.mnt),
             "--foreground"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def ls_big_dir(d: pathlib.Path) -> float:
    d.mkdir()
    for i in range(LS_FILES):
        os.close(os.open(d / f"entry-{i:05d}", os.O_CREAT | os.O_WRONLY, 0o644))
    time.sleep(1.1)
    start = time.perf_counter()
    subprocess.run(["ls", "-l", str(d)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run_suite(base: pathlib.Path, size: int, remount) -> dict:
    out = {"write MB/s": seq_write(base / "seq.bin", size)}
    base = remount(base)
    drop_caches()
    out["cold read MB/s"] = seq_read(base / "seq.bin")
    out["warm read MB/s"] = seq_read(base / "seq.bin")
    out["creates/s (4 KiB)"], out["reads/s (4 KiB)"], out["stats/s"] = small_files(base / "small")
    out["ls -l 10k files (s)"] = ls_big_dir(base / "big")
    return out


def pick_size(mnt: pathlib.Path, size_mib: int) -> int:
    start = time.perf_counter()
    seq_write(mnt / "probe.bin", 64 << 20)
    os.unlink(mnt / "probe.bin")
    if time.perf_counter() - start > SLOW_S and size_mib > 64:
        print(f"writing 64 MiB took over {SLOW_S:.0f} s: using 64 MiB instead of {size_mib}")
        return 64 << 20
    return size_mib << 20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=None, help="base directory (default: a temp dir)")
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args(argv)
    base = pathlib.Path(tempfile.mkdtemp(prefix="fusebench-", dir=args.dir))
    try:
        local = base / "local"
        local.mkdir()
        data, mnt = base / "data", base / "mnt"
        state = {"mount": Mounted(data, mnt)}
        state["mount"].__enter__()

        def remount(_: pathlib.Path) -> pathlib.Path:
            state["mount"].__exit__()
            state["mount"] = Mounted(data, mnt)
            return state["mount"].__enter__()

        try:
            size = pick_size(mnt, args.size_mib)
            print(f"sequential size: {size >> 20} MiB; small files: {SMALL_FILES} x "
                  f"{SMALL_BYTES} B; ls -l of {LS_FILES} files")
            chord = run_suite(mnt, size, remount)
        finally:
            state["mount"].__exit__()
        plain = run_suite(local, size, lambda p: p)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'':24}{'chordfs':>12}{'local dir':>12}{'chordfs/local':>15}")
    for key in chord:
        print(f"{key:24}{chord[key]:12.1f}{plain[key]:12.1f}{chord[key] / plain[key]:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
