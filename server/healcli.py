"""`chordfs heal` and `chordfs scrub`: start maintenance passes on every
node now, follow them with a progress bar, and report what they did.

heal   every reachable node starts a repair pass at once (no debounce);
       when each has finished one, the metadata leader counts block health
       (server/store/census.py).  Exit 0 when no referenced block is
       under-replicated or missing, 4 when some still are (a node is down,
       or a disk full), with the reason in one sentence.
scrub  every reachable node re-reads and re-hashes every copy it holds,
       at ``--rate`` bytes/s per node (default: its scrub_bytes_per_s);
       a corrupt copy is quarantined and restored from a replica.  Exit 0
       when nothing corrupt stayed unrestored, 4 otherwise.

Both go through ``Diag.maintain`` (node certificates only: an operator runs
them where a node's key lives) and watch the nodes' reports, so a pass a
node started on its own is never confused with the one asked for: each
request answers the pass counter that marks its pass done."""

from __future__ import annotations

import json
import sys

import trio

import rpc

from .diag import diag
from .statuscli import _leader, _size, _table, gather, reports_of, summary

POLL_S = 0.5
EXIT_UNHEALTHY = 4


async def _maintain(addr: str, action: str, args: dict, timeout_s: float, context) -> int:
    with trio.fail_after(timeout_s):
        async with rpc.connect(addr, connect_timeout_s=timeout_s, ssl_context=context) as conn:
            cap = await conn.bootstrap(diag.Diag, timeout_s=timeout_s)
            reply = await cap.maintain(action=action, argsJson=json.dumps(args),
                                       timeout_s=timeout_s)
            return json.loads(reply.json)["target"]


class _Bar:
    """A rich progress bar on stderr (nothing when ``quiet``)."""

    def __init__(self, quiet: bool):
        self.progress = None
        if not quiet:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn,
                                       TimeElapsedColumn)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TaskProgressColumn(), TextColumn("{task.fields[detail]}"),
                                     TimeElapsedColumn(), console=Console(stderr=True))

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def task(self, description: str, total: float) -> int | None:
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total or 1, detail="")

    def update(self, task, completed: float, total: float, detail: str) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, completed=completed, total=total or 1, detail=detail)


async def _start_everywhere(reports: dict, action: str, args: dict, timeout_s: float,
                            context) -> tuple[dict[str, int], dict[str, str]]:
    targets: dict[str, int] = {}
    failed: dict[str, str] = {}

    async def one(name):
        try:
            targets[name] = await _maintain(name, action, args, timeout_s, context)
        except trio.TooSlowError:
            failed[name] = f"no answer within {timeout_s:g} s"
        except (rpc.RpcError, OSError, ValueError) as e:
            failed[name] = str(e) or type(e).__name__
    async with trio.open_nursery() as nursery:
        for name, r in reports.items():
            if "error" in r:
                failed[name] = r["error"]
            else:
                nursery.start_soon(one, name)
    return targets, failed


async def _follow(targets: dict[str, int], key: str, progress_of, bar: _Bar, task,
                  deadline_s: float, timeout_s: float, context) -> dict[str, dict]:
    """Poll the nodes' reports until each one's ``key`` counter reached its
    target; returns the last reports."""
    reports: dict[str, dict] = {}
    while True:
        reports.update(await reports_of(sorted(targets), timeout_s, context))
        done = [n for n in targets if _counter(reports.get(n), key) >= targets[n]]
        completed, total, detail = progress_of(reports, targets, done)
        bar.update(task, completed, total, detail)
        if len(done) == len(targets):
            return reports
        if trio.current_time() >= deadline_s:
            late = ", ".join(sorted(set(targets) - set(done)))
            raise TimeoutError(f"{late} did not finish in time")
        await trio.sleep(POLL_S)


def _counter(report: dict | None, key: str) -> int:
    if not report or "error" in report:
        return -1
    section, field = key.split(".")
    return (report.get(section) or {}).get(field, 0)


def _repair_progress(reports, targets, done):
    total = completed = 0
    for name in targets:
        repair = (reports.get(name) or {}).get("repair") or {}
        prog = repair.get("progress")
        if name in done:
            last = repair.get("last") or {}
            total += last.get("tasks_total", 1) or 1
            completed += last.get("tasks_total", 1) or 1
        elif prog:
            total += prog["total"] or 1
            completed += prog["done"]
        else:
            total += 1
    return completed, total, f"{len(done)}/{len(targets)} nodes"


def _scrub_progress(reports, targets, done):
    total = completed = 0
    for name in targets:
        scrub = (reports.get(name) or {}).get("scrub") or {}
        running, last = scrub.get("running"), scrub.get("last") or {}
        if name in done:
            total += last.get("checked_bytes", 0)
            completed += last.get("checked_bytes", 0)
        elif running:
            total += max(running["total_bytes"], running["checked_bytes"])
            completed += running["checked_bytes"]
    return completed, total, f"{_size(completed)} of {_size(total)}, {len(done)}/{len(targets)} nodes"


async def heal(addrs, as_json: bool, wait_s: float, timeout_s: float, context) -> int:
    reports = await gather(addrs, timeout_s, context)
    targets, failed = await _start_everywhere(reports, "heal", {}, timeout_s, context)
    deadline_s = trio.current_time() + wait_s
    with _Bar(as_json or not targets) as bar:
        task = bar.task("repair", len(targets))
        after = await _follow(targets, "repair.passes", _repair_progress, bar, task, deadline_s,
                              timeout_s, context)
        leader = _leader(after) or _leader(reports)
        if not leader:
            raise LookupError("no node leads the metadata group, so no census can count blocks")
        name = leader["node"]
        census_target = {name: await _maintain(name, "census", {}, timeout_s, context)}
        task = bar.task("census", 1)

        def census_progress(reps, targets_, done):
            running = ((reps.get(name) or {}).get("census") or {}).get("running") or {}
            if done:
                return 1, 1, "done"
            total = running.get("total") or 1
            return running.get("checked", 0) / total, 1, f"{running.get('checked', 0)} blocks"
        final = await _follow(census_target, "census.passes", census_progress, bar, task,
                              deadline_s, timeout_s, context)
    after.update(final)
    for n, why in failed.items():
        after.setdefault(n, {"error": why})
    sm = summary(after)
    copied = {n: ((r.get("repair") or {}).get("last") or {}) for n, r in after.items()
              if n in targets}
    if as_json:
        print(json.dumps({"repair": copied, "not_started": failed, "summary": sm},
                         indent=2, sort_keys=True, default=list))
    else:
        rows = [["NODE", "COPIED", "BYTES", "SKIPPED", "PEERS UNREACHABLE"]]
        for n, last in sorted(copied.items()):
            rows.append([n, str(last.get("chunks_pulled", 0) + last.get("chunks_pushed", 0)),
                         _size(last.get("bytes_copied", 0)), str(last.get("chunks_skipped", 0)),
                         ", ".join(sorted(last.get("peers_unreachable") or [])) or "-"])
        for n, why in sorted(failed.items()):
            rows.append([n, "-", "-", "-", f"not started: {why[:60]}"])
        print(_table(rows))
        _print_blocks(sm)
    return _health_exit(sm)


def _print_blocks(sm: dict) -> None:
    blocks = sm["blocks"] or {}
    print(f"blocks: {blocks.get('checked', '?')} referenced, "
          f"{blocks.get('under_replicated', '?')} under-replicated, "
          f"{blocks.get('missing', '?')} missing")


def _health_exit(sm: dict) -> int:
    blocks = sm["blocks"] or {}
    under, missing = blocks.get("under_replicated", 0), blocks.get("missing", 0)
    if not under and not missing:
        return 0
    why = (f"{', '.join(sm['down'])} {'is' if len(sm['down']) == 1 else 'are'} down"
           if sm["down"] else "some copies could not be made (see each node's log)")
    print(f"chordfs: {under} blocks are still under-replicated and {missing} missing: {why}",
          file=sys.stderr)
    return EXIT_UNHEALTHY


async def scrub(addrs, rate: float | None, as_json: bool, wait_s: float, timeout_s: float,
                context) -> int:
    reports = await gather(addrs, timeout_s, context)
    args = {"bytes_per_s": rate} if rate else {}
    targets, failed = await _start_everywhere(reports, "scrub", args, timeout_s, context)
    deadline_s = trio.current_time() + wait_s
    with _Bar(as_json or not targets) as bar:
        task = bar.task("scrub", 1)
        after = await _follow(targets, "scrub.passes", _scrub_progress, bar, task, deadline_s,
                              timeout_s, context)
    rows = [["NODE", "CHECKED", "BYTES", "CORRUPT", "RESTORED"]]
    result, unrestored = {}, 0
    for n in sorted(targets):
        r = after[n]
        last = (r.get("scrub") or {}).get("last") or {}
        result[n] = {**last, "restored_total": r.get("restored", 0),
                     "restore_failed_total": r.get("restore_failed", 0)}
        unrestored += r.get("restore_failed", 0)
        rows.append([n, str(last.get("checked_count", 0)), _size(last.get("checked_bytes", 0)),
                     str(last.get("corrupt_count", 0)), str(r.get("restored", 0))])
    for n, why in sorted(failed.items()):
        rows.append([n, "-", "-", "-", f"not started: {why[:60]}"])
    if as_json:
        print(json.dumps({"scrub": result, "not_started": failed}, indent=2, sort_keys=True))
    else:
        print(_table(rows))
    if unrestored:
        print(f"chordfs: {unrestored} corrupt copies found since the nodes started could not "
              "be restored from a replica (see their scrub.restore log lines)", file=sys.stderr)
        return EXIT_UNHEALTHY
    return 0


def main(action: str, addrs, *, rate=None, as_json=False, wait_s=3600.0, timeout_s=5.0,
         context=None) -> int:
    try:
        if action == "heal":
            return trio.run(heal, addrs, as_json, wait_s, timeout_s, context)
        return trio.run(scrub, addrs, rate, as_json, wait_s, timeout_s, context)
    except (rpc.RpcError, LookupError, TimeoutError, trio.TooSlowError) as e:
        print(f"chordfs: {action} stopped: {e or type(e).__name__}", file=sys.stderr)
        return 1
