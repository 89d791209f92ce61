"""`chordfs status` and `chordfs df`: the cluster as its nodes report it.

One reachable node names the members (its Raft configuration and its ring
view); every member is then asked for its own report (server/report.py) at
once, each under the same deadline, so a dead node costs one timeout, not
one per question.  Human output is aligned tables; ``--json`` prints the
reports as they came (an unreachable member as {"error": ...})."""

from __future__ import annotations

import json
import sys

import trio

import rpc

from .diag import diag


async def _report(addr: str, timeout_s: float, context) -> dict:
    try:
        with trio.fail_after(timeout_s):
            async with rpc.connect(addr, connect_timeout_s=timeout_s, ssl_context=context) as conn:
                cap = await conn.bootstrap(diag.Diag, timeout_s=timeout_s)
                reply = await cap.report(timeout_s=timeout_s)
                return json.loads(reply.json)
    except trio.TooSlowError:
        return {"error": f"no answer within {timeout_s:g} s"}
    except (rpc.RpcError, OSError, ValueError) as e:
        return {"error": str(e) or type(e).__name__}


async def reports_of(names, timeout_s: float, context) -> dict[str, dict]:
    """The reports of exactly ``names``, asked all at once."""
    reports: dict[str, dict] = {}

    async def one(name):
        reports[name] = await _report(name, timeout_s, context)
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return reports


async def gather(addrs: list[str], timeout_s: float, context) -> dict[str, dict]:
    """Every member's report, keyed by node name (seed addresses first)."""
    first = None
    for addr in addrs:
        first = await _report(addr, timeout_s, context)
        if "error" not in first:
            break
    if first is None or "error" in first:
        raise rpc.ConnectionLost(f"no node of {','.join(addrs)} answered: "
                                 f"{first['error'] if first else 'no address'}")
    names = {m["name"] for m in (first.get("raft") or {}).get("members", []) if m["name"]}
    names |= {m["name"] for m in first.get("ring") or []}
    names.add(first["node"])
    reports = await reports_of(sorted(names - {first["node"]}), timeout_s, context)
    reports[first["node"]] = first
    return dict(sorted(reports.items()))


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(n) < 1024 or unit == "P":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _leader(reports: dict) -> dict:
    for r in reports.values():
        raft = r.get("raft") or {}
        if raft.get("role") == "leader":
            return r
    return {}


def summary(reports: dict) -> dict:
    """The cluster in a few figures, as `status --json` gives it beside the
    nodes' own reports: each member's state (its ring state as the nodes
    that answered see it; "dead" or "unreachable" for one that did not
    answer), who is down, and the leader's last census of block health."""
    leader = _leader(reports)
    ok = [r for r in reports.values() if "error" not in r]
    ring_state: dict[str, str] = {}
    for r in ok:
        for m in r.get("ring") or []:
            # The worst state any answering node reports wins: a node one
            # peer already declared dead is not healthy for the operator.
            worst = max(ring_state.get(m["name"], "alive"), m["state"], key=_severity)
            ring_state[m["name"]] = worst
    states = {}
    for name, r in reports.items():
        state = ring_state.get(name, "alive")
        if "error" in r:
            state = "dead" if state == "dead" else "unreachable"
        elif r.get("isolated"):
            state = "isolated"  # up, but reaching no other member
        states[name] = state
    census = (leader.get("census") or {}) if leader else {}
    last = census.get("last")
    blocks = None
    if last:
        blocks = {"checked": last["blocks_checked"], "healthy": last["healthy"],
                  "under_replicated": last["under_replicated"], "missing": last["missing"],
                  "nodes_unreachable": last["nodes_unreachable"],
                  "missing_examples": last["missing_examples"],
                  "counting": census.get("running") is not None,
                  "age_s": max(0.0, leader["wall_time_s"] - (last["finished_wall_s"] or 0)),
                  "census_passes": census.get("passes", 0)}
    lraft = leader.get("raft") or {}
    return {
        "cluster": next((r.get("cluster") for r in ok if r.get("cluster")), None),
        "leader": leader.get("node"), "term": lraft.get("term"), "commit": lraft.get("commit"),
        "members": states,
        "down": sorted(n for n, st in states.items() if st in ("dead", "unreachable", "isolated")),
        "blocks": blocks,
        "repair_backlog": sum((r.get("repair") or {}).get("backlog_tasks", 0) for r in ok),
        "quarantined": sum((r.get("store") or {}).get("quarantined_count", 0) for r in ok),
    }


_SEVERITY = ("alive", "suspect", "left", "dead")


def _severity(state: str) -> int:
    return _SEVERITY.index(state) if state in _SEVERITY else 0


def format_status(reports: dict) -> str:
    leader = _leader(reports)
    lraft = leader.get("raft") or {}
    any_ok = next((r for r in reports.values() if "error" not in r), {})
    lines = []
    if not any_ok.get("secure", True):
        lines.append("INSECURE: the nodes serve plain TCP; anyone who reaches them controls the "
                     "cluster")
    lines.append(f"cluster {any_ok.get('cluster') or '-'}  leader {leader.get('node', 'none')}  "
                 f"term {lraft.get('term', '-')}  commit {lraft.get('commit', '-')}")
    ring_state = {m["name"]: m["state"] for m in any_ok.get("ring") or []}
    members = {m["name"]: m for m in lraft.get("members", [])}
    rows = [["NODE", "RING", "ROLE", "TERM", "COMMIT", "APPLIED", "MATCH", "USED", "FREE",
             "BLOCKS", "REPAIR", "SCRUBBED", "GC LAST"]]
    for name, r in reports.items():
        if "error" in r:
            member = members.get(name, {})
            rows.append([name, ring_state.get(name, "?"),
                         ("voter" if member.get("voter") else "learner") if member else "?",
                         "-", "-", "-", "-", "-", "-", "-", "-", "-", f"unreachable: {r['error'][:40]}"])
            continue
        raft, store, repair = r.get("raft") or {}, r.get("store") or {}, r.get("repair") or {}
        member = members.get(name, {})
        role = raft.get("role", "-")
        if role == "follower":
            role = "voter" if member.get("voter", True) else "learner"
        progress = repair.get("progress")
        repair_text = (f"{progress['done']}/{progress['total']}" if progress
                       else f"idle ({repair.get('passes', 0)} passes)")
        scrub, gc = (r.get("scrub") or {}).get("last") or {}, r.get("gc") or {}
        ring_text = "isolated" if r.get("isolated") else ring_state.get(name, "?")
        rows.append([name, ring_text, role, str(raft.get("term", "-")),
                     str(raft.get("commit", "-")), str(raft.get("applied", "-")),
                     str(member.get("match") if member.get("match") is not None else "-"),
                     _size(store.get("used_bytes")), _size(store.get("free_bytes")),
                     str(store.get("chunk_count", "-")), repair_text,
                     _size(scrub.get("checked_bytes")) if scrub else "-",
                     f"{gc.get('copies_deleted', 0)} deleted" if gc else "-"])
    lines.append(_table(rows))
    sm = summary(reports)
    blocks = sm["blocks"]
    if blocks is None:
        health = "block health: not counted yet (the metadata leader counts after start-up)"
    else:
        age = "counting now" if blocks["counting"] else f"counted {blocks['age_s']:.0f} s ago"
        health = (f"blocks: {blocks['checked']} referenced, {blocks['under_replicated']} "
                  f"under-replicated, {blocks['missing']} missing ({age})")
    lines.append(health)
    lines.append(f"repair backlog: {sm['repair_backlog']} ranges   quarantined copies: "
                 f"{sm['quarantined']}   down: {', '.join(sm['down']) or 'none'}")
    return "\n".join(lines)


def format_df(reports: dict) -> str:
    ok = {n: r for n, r in reports.items() if "error" not in r}
    leader = _leader(reports) or next(iter(ok.values()), {})
    ns = leader.get("namespace") or {}
    rf = (leader.get("placement") or {}).get("replication_factor", 1)
    rows = [["NODE", "USED", "FREE", "RESERVE", "BLOCKS"]]
    used = free = blocks = 0
    for name, r in reports.items():
        store = r.get("store") or {}
        if "error" in r or not store:
            rows.append([name, "-", "-", "-", "unreachable"])
            continue
        used += store["used_bytes"]
        free += store["free_bytes"]
        blocks += store["chunk_count"]
        rows.append([name, _size(store["used_bytes"]), _size(store["free_bytes"]),
                     _size(store["reserve_bytes"]), str(store["chunk_count"])])
    rows.append(["total", _size(used), _size(free), "", str(blocks)])
    return (_table(rows) + "\n"
            f"filesystem: {ns.get('inodes', '-')} inodes, {_size(ns.get('bytes'))} in files, "
            f"{ns.get('blocks', '-')} blocks referenced; {rf} copies of each block: about "
            f"{_size(free // max(1, rf))} more fits")


def main(addrs: list[str], what: str, as_json: bool, timeout_s: float, context) -> int:
    try:
        reports = trio.run(gather, addrs, timeout_s, context)
    except rpc.RpcError as e:
        print(f"chordfs: {e}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"nodes": reports, "summary": summary(reports)}, indent=2,
                         sort_keys=True))
    else:
        print(format_status(reports) if what == "status" else format_df(reports))
    return 0 if all("error" not in r for r in reports.values()) else 3
