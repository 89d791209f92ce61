"""Metadata state machine throughput on this machine, single-threaded.

Prints applies/s for create, rename, setattr, commit_write and tick (one SQLite transaction per
Raft entry, and batches of entries per transaction as the Raft service can
apply a committed run at once); the microseconds per operation of a
mount's lease batches (``LEASE_BATCH`` operations per Raft entry, as a
mount writing in a directory it leases sends them: a small file's create
with its inline 4 KiB, a rename, an unlink), which every replica spends on
every operation; lookup/getattr/s, readdir of a large
directory (first page and total), and database size, measured at
``--dir-entries`` inodes and extrapolated linearly to a million.

Commands are encoded before timing (encoding is the proposer's work); apply
times include Cap'n Proto decoding. The database is a file in WAL mode with
synchronous=NORMAL, as in production.

    .venv/bin/python benchmarks/meta_bench.py [--ops 20000] [--dir-entries 100000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from server.meta import codec  # noqa: E402
from server.meta import types as t  # noqa: E402
from server.meta.store import InitParams, MetaStore  # noqa: E402

ROOT = t.ROOT_INO
T0_NS = 1_700_000_000_000_000_000
BATCH = 100
LEASE_BATCH = 128
HOLDER = 0x5EED


class Bench:
    def __init__(self, path: str) -> None:
        self.store = MetaStore(path, InitParams(now_ns=T0_NS))
        self.index = 0

    def encode(self, cmds) -> list[tuple[int, bytes]]:
        out = []
        for cmd in cmds:
            self.index += 1
            out.append((self.index, codec.encode_command(cmd)))
        return out

    def run(self, entries, batch: int) -> float:
        """Applies per second; every result must be a success."""
        start = time.perf_counter()
        if batch == 1:
            results = [self.store.apply(i, data) for i, data in entries]
        else:
            results = []
            for k in range(0, len(entries), batch):
                results += self.store.apply_batch(entries[k:k + batch])
        elapsed = time.perf_counter() - start
        bad = [r for r in results if r.err]
        assert not bad, bad[:3]
        return len(entries) / elapsed


def bench_applies(b: Bench, ops: int) -> dict[str, tuple[float, float]]:
    out = {}
    for batch in (1, BATCH):
        mk = b.encode([t.Mkdir(ROOT, b"d%d" % batch, 0o755, 0, 0, T0_NS)])
        d = b.store.apply(*mk[0]).attr.ino
        first_ino = b.store.statfs().next_ino
        session = 1000 + batch
        b.store.apply(*b.encode([t.OpenSession(session)])[0])
        # Encoded right before each run: indexes must follow the order applied.
        kinds = (
            ("create", lambda: (t.Create(d, b"file-%07d" % i, 0o644, 1000, 1000, T0_NS + i)
                                for i in range(ops))),
            # The same creates as a mount sends them: inside its client
            # session (server/meta/sessions.py keeps each reply until acked).
            ("create in a session", lambda: (t.Sessioned(session, i + 1, i + 1, [
                codec.encode_command(t.Create(d, b"sess-%07d" % i, 0o644, 1000, 1000,
                                              T0_NS + i))]) for i in range(ops))),
            ("rename", lambda: (t.Rename(d, b"file-%07d" % i, d, b"moved-%07d" % i, 0, T0_NS + i)
                                for i in range(ops))),
            ("setattr", lambda: (t.SetAttr(first_ino + i, T0_NS + i, mode=0o600)
                                 for i in range(ops))),
        )
        for name, make in kinds:
            out.setdefault(name, [0.0, 0.0])[batch != 1] = b.run(b.encode(make()), batch)
    return out


def bench_lease_batches(b: Bench, ops: int) -> dict[str, float]:
    """Microseconds per operation applied inside lease batches (min of 3
    passes over fresh names: this machine's timings move between runs)."""
    b.store.apply(*b.encode([t.Tick(T0_NS)])[0])  # leases count in log time
    out: dict[str, float] = {}
    for attempt in range(3):
        mk = b.encode([t.Mkdir(ROOT, b"leased-%d" % attempt, 0o755, 0, 0, T0_NS)])
        d = b.store.apply(*mk[0]).attr.ino
        grant = b.store.apply(*b.encode([t.AcquireLease(
            HOLDER, d, attempt + 1, t.LEASE_DURATION_MAX_NS, ops + 1)])[0])
        assert grant.err == 0, grant
        first, data, seq = grant.ino_next, os.urandom(4096), attempt * 10_000

        def batches(make):
            nonlocal seq
            out = []
            for k in range(0, ops, LEASE_BATCH):
                cmds, inos = make(range(k, min(ops, k + LEASE_BATCH)))
                seq += 1
                out += b.encode([t.LeaseBatch(HOLDER, seq, [codec.encode_command(c) for c in cmds],
                                              inos, [d], [attempt + 1])])
            return out

        def creates(rng):
            cmds, inos = [], []
            for i in rng:
                cmds += [t.Create(d, b"f%07d" % i, 0o644, 0, 0, T0_NS + i),
                         t.CommitWrite(first + i, 4096, T0_NS + i, [t.Slice(0, 4096, data=data)])]
                inos += [first + i, 0]
            return cmds, inos

        kinds = (
            ("create + 4 KiB", creates),
            ("rename", lambda rng: ([t.Rename(d, b"f%07d" % i, d, b"r%07d" % i, 0, T0_NS + i)
                                     for i in rng], [0] * len(rng))),
            ("unlink", lambda rng: ([t.Unlink(d, b"r%07d" % i, T0_NS + i) for i in rng],
                                    [0] * len(rng))),
        )
        for name, make in kinds:
            entries = batches(make)
            start = time.perf_counter()
            for index, data_ in entries:
                reply = b.store.apply(index, data_)
                assert reply.err == 0 and not any(reply.results[:-1]), (name, reply)
            us = (time.perf_counter() - start) / ops * 1e6
            out[name] = min(out.get(name, us), us)
    return out


def bench_writes(b: Bench, ops: int) -> tuple[float, float, int]:
    """CommitWrites of one 4 KiB slice each at seeded random offsets of a
    64 MiB file (each cuts whatever it overlaps), then Ticks."""
    rng = random.Random(1)
    mk = b.encode([t.Create(ROOT, b"written", 0o644, 0, 0, T0_NS)])
    ino = b.store.apply(*mk[0]).attr.ino
    writes = b.encode(t.CommitWrite(ino, (i % 4 + 1) << 24, T0_NS + i, [t.Slice(
        rng.randrange(1 << 24) * 4, 4096, b"w" + i.to_bytes(15, "big"), 0, 4096, fresh=True)],
        observed=b.index) for i in range(ops))  # b.index: the entry before this one
    per_s = b.run(writes, BATCH)
    ticks = b.encode(t.Tick(T0_NS + i * 10**9) for i in range(ops))
    tick_s = b.run(ticks, 1)
    extents = len(b.store.extents_in(ino, 0, 1 << 26))
    return per_s, tick_s, extents


def bench_queries(b: Bench, ops: int) -> tuple[float, float]:
    d = b.store.lookup(ROOT, b"d1").attr.ino
    names = [b"moved-%07d" % i for i in range(ops)]
    start = time.perf_counter()
    inos = [b.store.lookup(d, name).attr.ino for name in names]
    lookups = ops / (time.perf_counter() - start)
    start = time.perf_counter()
    for ino in inos:
        assert b.store.getattr(ino).err == 0
    getattrs = ops / (time.perf_counter() - start)
    return lookups, getattrs


def bench_readdir(b: Bench, entries: int) -> tuple[float, float, int]:
    """Fills one directory with files of one block each, then lists it."""
    mk = b.encode([t.Mkdir(ROOT, b"big", 0o755, 0, 0, T0_NS)])
    big = b.store.apply(*mk[0]).attr.ino
    base, start = b.store.statfs().next_ino, b.index
    cmds = []
    for i in range(entries):
        cmds.append(t.Create(big, b"entry-%08d" % i, 0o644, 1000, 1000, T0_NS + i))
        cmds.append(t.CommitWrite(base + i, 1 << 20, T0_NS + i,
                                  [t.Slice(0, 1 << 20, i.to_bytes(16, "big"), 0, 1 << 20,
                                           fresh=True)], observed=start + 2 * i + 1))
    b.run(b.encode(cmds), 1000)
    start = time.perf_counter()
    page = b.store.readdir(big)
    first = time.perf_counter() - start
    count = len(page.entries)
    while not page.done:
        page = b.store.readdir(big, page.cursor)
        count += len(page.entries)
    total = time.perf_counter() - start
    assert count == entries
    return first, total, count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--dir-entries", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="meta-bench-") as tmp:
        b = Bench(os.path.join(tmp, "meta.db"))
        applies = bench_applies(b, args.ops)
        print(f"applies/s ({args.ops} each; 1 entry per transaction | {BATCH} per transaction):")
        for name, (single, batched) in applies.items():
            print(f"  {name:19s} {single:10,.0f} | {batched:10,.0f}")
        leased = bench_lease_batches(b, min(args.ops, 4096))
        print(f"  in lease batches of {LEASE_BATCH} operations (us per operation, min of 3): "
              + ", ".join(f"{name} {us:.0f}" for name, us in leased.items()))
        writes, ticks, extents = bench_writes(b, args.ops)
        print(f"  {'commit':19s} {'':10s} | {writes:10,.0f}  (4 KiB block slices at random offsets, "
              f"{extents:,} extents after)")
        print(f"  {'tick':19s} {ticks:10,.0f} |")
        lookups, getattrs = bench_queries(b, args.ops)
        print(f"lookup/s {lookups:,.0f}   getattr/s {getattrs:,.0f}")
        first, total, count = bench_readdir(b, args.dir_entries)
        print(f"readdir of {count:,} entries: first page ({t.READDIR_PAGE_MAX}) "
              f"{first * 1e3:.2f} ms, all {total * 1e3:.0f} ms")
        inodes = b.store.statfs().inodes
        b.store.checkpoint()
        size = os.path.getsize(os.path.join(tmp, "meta.db"))
        per_million = size / inodes * 1_000_000
        print(f"database: {size / 2**20:.1f} MiB for {inodes:,} inodes (entry + one block each for "
              f"{count:,} of them) -> ~{per_million / 2**20:.0f} MiB per million inodes "
              f"(extrapolated linearly from {inodes:,}, not measured at a million)")
        b.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
