"""Where the time of one small-file create goes, as the mount sees it.

Starts a 3-node cluster of ``chordfs node`` processes and a FUSE mount on
127.0.0.1 with ``CHORDFS_TRACE_DIR`` set (``rpc/trace.py``: every process
writes wall-clock marks), creates ``--files`` files of 4 KiB in one directory
(open O_CREAT|O_EXCL, write, close, like ``cp``), and prints, per create, the
median time of each FUSE request the kernel sent, of each metadata call
inside them, and of the steps of one Raft commit: mount -> leader, the
leader's fsync, AppendEntries to the quorum follower, its fsync, its answer,
apply, leader -> mount.

    .venv/bin/python benchmarks/create_breakdown.py [--files 300]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _load(trace_dir: pathlib.Path):
    """{pid: [(ns, event)]} sorted by time."""
    marks = collections.defaultdict(list)
    for f in trace_dir.glob("trace.*"):
        for line in f.read_text().splitlines():
            ns, pid, event = line.split(" ", 2)
            marks[pid].append((int(ns), event))
    for m in marks.values():
        m.sort()
    return marks


class Timeline:
    def __init__(self, marks):
        self.marks = marks
        self.times = {pid: [t for t, _ in m] for pid, m in marks.items()}

    def next(self, pid, after, prefix, min_entries=None):
        """First mark of ``pid`` at or after ``after`` starting with ``prefix``."""
        m, times = self.marks[pid], self.times[pid]
        for i in range(bisect.bisect_left(times, after), len(m)):
            t, event = m[i]
            if event.startswith(prefix):
                if min_entries is not None and int(event.rsplit(" ", 1)[1]) < min_entries:
                    continue
                return t
        return None


def _roles(marks):
    mount = next(p for p, m in marks.items() if any(e.startswith("fuse.") for _, e in m))
    leader = max((p for p in marks if p != mount),
                 key=lambda p: sum(e == "node.propose" for _, e in marks[p]))
    followers = [p for p in marks if p not in (mount, leader)]
    return mount, leader, followers


def analyse(marks, starts):
    mount, leader, followers = _roles(marks)
    tl = Timeline(marks)
    per_create = collections.defaultdict(list)  # segment -> [us per create]
    commit = collections.defaultdict(list)      # segment -> [us per commit]
    for begin, end in zip(starts, starts[1:]):
        seen = collections.Counter()
        opened = {}
        for t, event in tl.marks[mount]:
            if t < begin or t >= end:
                continue
            kind = event.split(" ", 1)[0]
            if kind.endswith(".done"):
                name = kind[:-5]
                if name in opened:
                    seen[name] += (t - opened.pop(name)) / 1000
            else:
                opened[kind] = t
                if kind == "client.propose":
                    _commit(tl, mount, leader, followers, t, commit)
        for name in {"fuse.getattr", "fuse.lookup", "fuse.create", "fuse.getxattr",
                     "fuse.write", "fuse.flush", "fuse.release", "client.propose",
                     "client.query"} | set(seen):
            per_create[name].append(seen.get(name, 0.0))
        per_create["total"].append((end - begin) / 1000)
    return per_create, commit


def _commit(tl, mount, leader, followers, sent, out):
    t_node = tl.next(leader, sent, "node.propose")
    t_ps = t_node and tl.next(leader, t_node, "raft.persist ", min_entries=1)
    t_pd = t_ps and tl.next(leader, t_ps, "raft.persist.done")
    t_send = t_node and tl.next(leader, t_node, "raft.send AppendEntries")
    t_apply = t_pd and tl.next(leader, t_pd, "raft.apply ")
    t_ad = t_apply and tl.next(leader, t_apply, "raft.apply.done")
    t_nd = t_ad and tl.next(leader, t_ad, "node.propose.done")
    t_cd = t_nd and tl.next(mount, t_nd, "client.propose.done")
    if None in (t_node, t_ps, t_pd, t_send, t_apply, t_ad, t_nd, t_cd):
        return
    best = None
    for f in followers:
        recv = tl.next(f, t_send, "raft.recv AppendEntries", min_entries=1)
        fps = recv and tl.next(f, recv, "raft.persist ", min_entries=1)
        fpd = fps and tl.next(f, fps, "raft.persist.done")
        # The answer comes back in the reply to the leader's exchange call
        # (the leader marks raft.answers), or as a step call of its own.
        acks = [tl.next(leader, fpd, kind) for kind in ("raft.answers", "raft.recv AppendResponse")] \
            if fpd else []
        ack = min((a for a in acks if a), default=None)
        if ack and (best is None or ack < best[-1]):
            best = (recv, fps, fpd, ack)
    if best is None:
        return
    recv, fps, fpd, ack = best
    us = lambda a, b: (b - a) / 1000  # noqa: E731
    out["mount -> leader (RPC)"].append(us(sent, t_node))
    out["leader: until its fsync"].append(us(t_node, t_ps))
    out["leader: fsync"].append(us(t_ps, t_pd))
    out["leader -> follower (AppendEntries)"].append(us(t_send, recv))
    out["follower: until its fsync"].append(us(recv, fps))
    out["follower: fsync"].append(us(fps, fpd))
    out["follower -> leader (answer)"].append(us(fpd, ack))
    out["leader: answer -> apply"].append(us(ack, t_apply))
    out["leader: apply (SQLite)"].append(us(t_apply, t_ad))
    out["leader: apply -> reply"].append(us(t_ad, t_nd))
    out["leader -> mount (reply)"].append(us(t_nd, t_cd))
    out["total commit seen by the mount"].append(us(sent, t_cd))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=300)
    args = parser.parse_args(argv)
    base = pathlib.Path(tempfile.mkdtemp(prefix="create-breakdown-"))
    trace_dir = base / "trace"
    trace_dir.mkdir()
    os.environ["CHORDFS_TRACE_DIR"] = str(trace_dir)  # inherited by nodes and mount
    from tests.fuse.conftest import start_mount, stop_mount
    from tests.fuse.realcluster import start_cluster
    cluster = start_cluster(base / "cluster")
    mount = None
    starts = []
    try:
        mount = start_mount(cluster.spec, base / "mnt", base / "mount.log")
        d = mount.path / "small"
        d.mkdir()
        data = b"x" * 4096
        for i in range(20):  # warm up connections and caches, not traced below
            with open(d / f"w{i}", "xb") as f:
                f.write(data)
        for i in range(args.files):
            starts.append(time.time_ns())
            with open(d / f"f{i}", "xb") as f:
                f.write(data)
        starts.append(time.time_ns())
    finally:
        if mount is not None:
            stop_mount(mount)
        cluster.stop()
    per_create, commit = analyse(_load(trace_dir), starts)
    print(f"{args.files} creates of 4 KiB files through a 3-node cluster; median microseconds")
    print(f"{'per create':40} {'us':>8}")
    for name, values in sorted(per_create.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {name:38} {statistics.median(values):8.0f}")
    print(f"{'one Raft commit (' + str(len(commit['total commit seen by the mount'])) + ' seen)':40}")
    for name, values in commit.items():
        print(f"  {name:38} {statistics.median(values):8.0f}")
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
