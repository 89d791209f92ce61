"""A namespace of many files through the client: create rate, listing a big
directory, memory per node, snapshot size and time, catch-up of a new node,
and leader elections during the run (there should be none).

Starts a 3-node cluster of ``chordfs node`` processes and one FUSE mount on
127.0.0.1, creates ``--dirs`` directories of ``--per-dir`` empty files plus
one directory of ``--big`` files (``--threads`` creators, each its own
directories; the big one is shared), then measures:

- create rate (files/s, wall clock of all creators together);
- ``ls -l`` of the big directory after ``chordfs drop-cache`` (cold);
- resident memory of each node and of the mount;
- a snapshot image of node 0's metadata (the file the Raft service would
  send a new member): its size and how long writing it took;
- a fourth node joining through the seeds: the time until its applied index
  reaches the leader's commit index of when it started;
- leader elections: how many times the Raft term moved during the run;
- compactions on each node (from its log): how many, the longest, and the
  snapshot sent to the new node (bytes, parts, seconds).

    .venv/bin/python benchmarks/namespace_scale.py                  # 1,000,000 files
    .venv/bin/python benchmarks/namespace_scale.py --dirs 100 --big 20000   # quicker
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

import rpc  # noqa: E402
from server.raft.wire import raft_capnp  # noqa: E402
from tests import tls  # noqa: E402
from tests.fuse.conftest import start_mount, stop_mount  # noqa: E402
from tests.fuse.realcluster import start_cluster  # noqa: E402
from tests.netutil import free_ports  # noqa: E402


async def _status(addr: str):
    with trio.fail_after(3):
        async with rpc.connect(addr, connect_timeout_s=3, ssl_context=tls.client_context()) as conn:
            cap = await conn.bootstrap(raft_capnp.Raft, timeout_s=3)
            st = await cap.status(timeout_s=3)
            return {"term": st.term, "role": st.role, "commit": st.commit,
                    "applied": st.applied, "leader": st.leader}


def status(addr: str) -> dict | None:
    try:
        return trio.run(_status, addr)
    except (rpc.RpcError, trio.TooSlowError, OSError):
        return None


def leader_status(addrs) -> dict:
    for addr in addrs:
        st = status(addr)
        if st and st["role"] == "leader":
            return st
    raise RuntimeError("no leader")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def create_files(root: pathlib.Path, dirs: int, per_dir: int, big: int, threads: int) -> float:
    errors: list[BaseException] = []
    bigdir = root / "big"
    bigdir.mkdir()

    def work(t: int) -> None:
        try:
            for d in range(t, dirs, threads):
                sub = root / f"d{d:04d}"
                sub.mkdir()
                for i in range(per_dir):
                    os.close(os.open(sub / f"f{i:04d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            for i in range(t, big, threads):
                os.close(os.open(bigdir / f"f{i:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    done = 0
    while any(w.is_alive() for w in workers):
        time.sleep(10)
        now = sum(1 for _ in root.glob("d*")) if False else None  # listing here would recall leases
        del now
        done += 1
        print(f"  ... {done * 10} s", file=sys.stderr, flush=True)
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - start


def snapshot_image(db: pathlib.Path, out: pathlib.Path) -> tuple[float, int]:
    from server.meta.store import MetaStore
    reader = MetaStore(str(db))
    try:
        start = time.perf_counter()
        reader.snapshot_to(str(out), concurrent=True)
        return time.perf_counter() - start, out.stat().st_size
    finally:
        reader.close()


def compactions(log_path: pathlib.Path) -> str:
    took, sent = [], []
    for line in log_path.read_text(errors="replace").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "raft.compacted" in line:
            took.append(float(fields.get("took_s", 0)))
        elif "raft.snapshot_sent" in line:
            sent.append(f"sent {int(fields['bytes']) / 2**20:.1f} MiB in {fields['parts']} parts, "
                        f"{fields['took_s']} s")
    return (f"{len(took)} compactions, longest save {max(took, default=0):.2f} s"
            + ("; " + "; ".join(sent) if sent else ""))


def join_node(cluster, base: pathlib.Path) -> tuple[subprocess.Popen, str, float]:
    """A fourth node joins through the seeds; seconds until it applied the
    leader's commit index of when it started."""
    port = free_ports(1)[0]
    addr = f"127.0.0.1:{port}"
    target = leader_status(cluster.addrs)["commit"]
    start = time.perf_counter()
    log = open(base / "n3.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "node", "--listen-port", str(port),
         "--data-dir", str(base / "n3"), "--seeds", cluster.spec, "--log-level", "info",
         *tls.node_flags(addr)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    while True:
        st = status(addr)
        if st is not None and st["applied"] >= target:
            return proc, addr, time.perf_counter() - start
        if time.perf_counter() - start > 1800:
            raise RuntimeError("the new node did not catch up in 30 minutes")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dirs", type=int, default=1000)
    ap.add_argument("--per-dir", type=int, default=900)
    ap.add_argument("--big", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--sync-meta", action="store_true", help="mount with -o sync_meta")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args()
    total = args.dirs * args.per_dir + args.big
    base = pathlib.Path(tempfile.mkdtemp(prefix="chordfs-scale-"))
    cluster = start_cluster(base / "cluster", log_level="info")
    extra = None
    mount = start_mount(cluster.spec, base / "mnt", base / "mnt.log",
                        options="sync_meta" if args.sync_meta else "")
    try:
        term0 = leader_status(cluster.addrs)["term"]
        print(f"creating {total:,} files ({args.dirs} dirs x {args.per_dir} + {args.big:,} "
              f"in one), {args.threads} creators, {'sync_meta' if args.sync_meta else 'leases'}")
        seconds = create_files(mount.path, args.dirs, args.per_dir, args.big, args.threads)
        print(f"create: {total / seconds:,.0f} files/s ({seconds:.0f} s)")
        subprocess.run([sys.executable, "-m", "server.cli", "drop-cache", str(mount.path)],
                       cwd=ROOT, check=True, capture_output=True)
        start = time.perf_counter()
        subprocess.run(["ls", "-l", str(mount.path / "big")], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"ls -l of {args.big:,} files, cold: {time.perf_counter() - start:.2f} s")
        for i, proc in enumerate(cluster.procs):
            print(f"node {i} memory: {rss_mib(proc.pid):,.0f} MiB")
        print(f"mount memory: {rss_mib(mount.proc.pid):,.0f} MiB")
        took, size = snapshot_image(base / "cluster" / "n0" / "meta" / "meta.db",
                                    base / "image.db")
        print(f"snapshot image: {size / 2**20:,.1f} MiB in {took:.2f} s")
        extra, _, catch_up = join_node(cluster, base / "cluster")
        print(f"new node caught up in {catch_up:.1f} s")
        term1 = leader_status(cluster.addrs)["term"]
        print(f"leader elections during the run: {term1 - term0}")
        for i in range(len(cluster.procs)):
            print(f"node {i}: {compactions(base / 'cluster' / f'n{i}.log')}")
    finally:
        stop_mount(mount)
        if extra is not None:
            extra.kill()
            extra.wait()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
