"""Runs seeded fault scenarios against a 3-node cluster in network
namespaces and reports, per scenario: operations, acknowledged, lost
(must be 0), duplicated (must be 0), the linearizability verdict, the
longest time no operation succeeded, and the time from the last healing
step to the first success after it.

One cluster serves every scenario of a run (each gets its own
directories); after a scenario the network is healed, paused nodes resumed,
killed ones restarted, and the cluster must be healthy again before the
next.  A writer mount (FUSE) writes and fsyncs files throughout; a second
mount reads everything back at the end of each scenario."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import random
import signal
import time

import trio

from tests import tls
from tests.fuse.conftest import start_mount, stop_mount

from .cluster import NsCluster
from .linearizability import check
from .netns import Net
from .scenarios import SCENARIOS, pick
from .workload import FileWriter, Namespace, Unique

TAIL_S = 4.0  # workload after the last step: recovery is measured there
KINDS_WAIT_S = 10.0  # more, at most, until every kind of operation took effect once


@dataclasses.dataclass
class Result:
    index: int
    seed: int
    scenario: str
    ops: int
    acknowledged: int
    unknown: int
    lost: int
    duplicated: int
    linearizable: bool | None
    longest_unavailable_s: float
    recovery_s: float | None
    files_acked: int
    steps: list[str]
    error: str = ""  # the read-back through the reader mount failed
    # Operations of each kind that took effect or found something (not an errno).
    succeeded: dict[str, int] = dataclasses.field(default_factory=dict)

    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicated == 0 and self.linearizable is not False
                and not self.error)


def _timed(fn):
    began = time.monotonic()
    out = fn()
    return out, time.monotonic() - began


def _gaps(successes: list[float], start: float, end: float) -> float:
    points = sorted([start] + [t for t in successes if start <= t <= end] + [end])
    return max((b - a for a, b in zip(points, points[1:])), default=0.0)


class Runner:
    def __init__(self, base: pathlib.Path, seed: int, *, clients: int = 4,
                 log=print) -> None:
        self.base, self.seed, self.clients, self.log = base, seed, clients, log
        self.net = Net(3)
        self.cluster = NsCluster(base, self.net)
        self.writer_mount = self.reader_mount = None

    def __enter__(self):
        self.base.mkdir(parents=True, exist_ok=True)
        self.net.setup()
        try:
            self.cluster.start_all()
            self.writer_mount = self._mount("w")
            self.reader_mount = self._mount("r")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for mount in (self.writer_mount, self.reader_mount):
            if mount is not None:
                stop_mount(mount)
        self.cluster.stop()
        self.net.teardown()

    def _mount(self, name: str):
        return start_mount(self.cluster.spec, self.base / f"mnt-{name}",
                           self.base / f"mount-{name}.log", options="deadline=10")

    def run_one(self, index: int) -> Result:
        rng = random.Random(self.seed * 7919 + index)
        name = pick(rng, index)
        context = tls.client_context()
        ns = Namespace(self.cluster.addrs, context, clients=self.clients, seed=rng.random())
        uq = Unique(self.cluster.addrs, context, clients=2, seed=rng.random())
        files = os.path.join(self.writer_mount.path, f"s{index}-files")
        writer = FileWriter(files, seed=index)
        steps = SCENARIOS[name](rng, self.cluster, self.net)
        if name == "kill-mount":
            steps = [(1.0, "kill -9 the writer mount", self._kill_writer_mount),
                     (3.0, "mount again", self._remount_writer)]
        done: list[str] = []
        times: dict[str, float] = {}

        async def main():
            async with trio.open_nursery() as nursery:
                await ns.prepare(nursery, f"s{index}-ns")
                await uq.prepare(nursery, f"s{index}-uq")
                nursery.cancel_scope.cancel()  # the prepare pools
            start = trio.current_time()
            until = start + max((t for t, _, _ in steps), default=0.0) + TAIL_S
            times["start"] = start
            writer.start()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ns.run, until)
                nursery.start_soon(uq.run, until)
                for at, what, fn in sorted(steps, key=lambda s: s[0]):
                    await trio.sleep_until(start + at)
                    # Unavailability counts from when the first fault began
                    # to land; recovery from when the last step finished.
                    times.setdefault("first_step", trio.current_time())
                    began = trio.current_time()
                    note, ran = await trio.to_thread.run_sync(_timed, fn)
                    took = trio.current_time() - began
                    done.append(f"{at:.0f}s {what}" + (f" {note}" if isinstance(note, str) else "")
                                + (f" (took {took:.1f}s, ran {ran:.1f}s)" if took >= 0.5 else ""))
                    times["last_step"] = trio.current_time()
                    # A step that took long (a loaded machine) still gets
                    # the whole tail of workload after it.
                    for w in (ns, uq):
                        w.until = max(w.until, times["last_step"] + TAIL_S)
                # A loaded machine runs fewer operations, and a rare kind (a
                # link needs a free name and a live inode) may not have taken
                # effect yet: the namespace clients go on, at most KINDS_WAIT_S
                # past the tail, until every kind did once.
                await trio.sleep_until(ns.until - 0.5)
                give_up = times.get("last_step", start) + TAIL_S + KINDS_WAIT_S
                while not ns.every_kind_took_effect() and trio.current_time() < give_up:
                    ns.until = max(ns.until, trio.current_time() + 0.5)
                    await trio.sleep(0.25)
            times["end"] = trio.current_time()
            await trio.to_thread.run_sync(writer.stop)

        trio.run(main)
        self._restore()
        verdict = check(ns.history, time_limit_s=60.0)
        error = ""
        try:
            listing = set(os.listdir(os.path.join(self.reader_mount.path, f"s{index}-uq")))
        except OSError as e:
            # Say so and go on with a fresh reader: one broken mount must not
            # end the run (the remaining scenarios still count).
            error = f"reader mount: {e}"
            stop_mount(self.reader_mount)
            self.reader_mount = self._mount("r")
            listing = set(os.listdir(os.path.join(self.reader_mount.path, f"s{index}-uq")))
        lost_u, dup_u = uq.check(listing)
        lost_f = FileWriter.check(os.path.join(self.reader_mount.path, f"s{index}-files"),
                                  writer.acked)
        after = [t for t in ns.stats.successes if t >= times.get("last_step", times["start"])]
        recovery = (min(after) - times["last_step"]) if after and "last_step" in times else None
        result = Result(index, self.seed, name, ns.stats.ops, ns.stats.acknowledged,
                        ns.stats.unknown, lost_u + lost_f, dup_u, verdict.linearizable,
                        _gaps(ns.stats.successes, times.get("first_step", times["start"]),
                              times["end"]),
                        recovery, len(writer.acked), done, error,
                        dict(ns.stats.succeeded))
        if not result.ok():
            self.log(f"scenario {index} ({name}, seed {self.seed}) FAILED: {result}\n"
                     f"linearizability: {verdict}\n{self.cluster.logs()}")
        return result

    def _kill_writer_mount(self) -> None:
        self.writer_mount.proc.send_signal(signal.SIGKILL)
        self.writer_mount.proc.wait()

    def _remount_writer(self) -> None:
        stop_mount(self.writer_mount)
        self.writer_mount = self._mount("w")

    def _restore(self) -> None:
        """Heal everything and wait for a healthy cluster."""
        self.net.heal()
        for i in range(self.net.n):
            self.cluster.resume(i)
            proc = self.cluster.procs[i]
            if proc is None or proc.poll() is not None:
                self.cluster.start(i)
        self.cluster.wait_healthy()
        if self.writer_mount.proc.poll() is not None:
            self._remount_writer()


def format_table(results: list[Result]) -> str:
    head = ["#", "scenario", "ops", "acked", "unknown", "lost", "dup", "linearizable",
            "longest unavail s", "recovery s", "files"]
    rows = [head] + [[str(r.index), r.scenario, str(r.ops), str(r.acknowledged), str(r.unknown),
                      str(r.lost), str(r.duplicated),
                      {True: "yes", False: "NO", None: "timeout"}[r.linearizable],
                      f"{r.longest_unavailable_s:.2f}",
                      "-" if r.recovery_s is None else f"{r.recovery_s:.2f}",
                      str(r.files_acked)] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def run(runs: int, seed: int, base: pathlib.Path, *, log=print) -> list[Result]:
    results = []
    started = time.monotonic()
    with Runner(base, seed, log=log) as runner:
        for index in range(runs):
            result = runner.run_one(index)
            results.append(result)
            log(f"[{time.monotonic() - started:6.0f}s] {index}: {result.scenario}: "
                f"{result.ops} ops, lost {result.lost}, dup {result.duplicated}, "
                f"linearizable {result.linearizable}, steps: {'; '.join(result.steps)}")
    return results
