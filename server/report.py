"""What one node knows about itself, as one plain dict: its Raft state, its
disk and blocks, its view of the ring, its repair, scrub, GC and sweep
passes, and (on the metadata leader) the census of under-replicated and
missing blocks.  It is what ``Diag.report`` answers (as JSON), what ``chordfs
status`` gathers from every member, and what the metrics endpoint and the
status page show, so the operator's three views never disagree.

Everything here is read from the node's own state at the moment of the
call; nothing waits on the network.  Keys are stable (tools and tests read
them); a value not known yet (a joiner without a ring) is None."""

from __future__ import annotations

import dataclasses
import json
import time

import trio

from .raft.messages import Role
from .raft.server import member_rows

REPORT_VERSION = 2


def _raft(node) -> dict | None:
    group = node.metadata.group if node.metadata is not None else None
    if group is None:
        return None
    service, core = group.service, group.service.core
    st = core.status()
    members = st.membership
    return {
        "id": f"{st.id:x}", "role": st.role.name.lower(), "term": st.term,
        "leader": f"{st.leader:x}" if st.leader else None,
        "leader_addr": (members.name_of(st.leader) or None) if st.leader else None,
        "commit": st.commit, "applied": service.applied, "last_index": st.last_index,
        "snapshot_index": group.storage.snapshot.meta.index if group.storage.snapshot else 0,
        "members": [{"id": f"{i:x}", "name": name, "voter": voter, "live": live, "match": match}
                    for i, name, voter, live, match in member_rows(core, members)],
    }


def _ring(node) -> list[dict] | None:
    if node.ring is None:
        return None
    return [{"name": u.name, "state": u.status.name.lower(), "incarnation": u.incarnation}
            for u in sorted(node.ring.members(), key=lambda u: u.name)]


def isolated(node) -> bool:
    """True while this node reaches no other member: its ring holds only
    itself alive, Raft knows no leader, and the cluster has other members.
    It answers RPCs but serves nothing useful; status says so instead of
    "alive"."""
    if node.ring is None or node.metadata is None or node.metadata.group is None:
        return False
    core = node.metadata.group.service.core
    st = core.status()
    others = [m for m in node.ring.members() if m.name != node.config.node_name]
    alive_others = [m for m in others if m.status.name == "ALIVE"]
    members = len(st.membership.voters) + len(st.membership.learners)
    return not alive_others and not st.leader and (bool(others) or members > 1)


def _gc_backlog(node) -> int | None:
    """Dying blocks GC has yet to delete, on the metadata leader (the one
    that runs GC); None elsewhere."""
    group = node.metadata.group if node.metadata is not None else None
    if group is None or group.service.core.role != Role.LEADER:
        return None
    return node.metadata.reader.dying_count()


def _namespace(node) -> dict | None:
    """This replica's counters (as of its applied index): files and bytes
    the filesystem holds, blocks it references."""
    if node.metadata is None:
        return None
    st = node.metadata.reader.statfs()
    return {"inodes": st.inodes, "bytes": st.bytes, "blocks": st.chunks}


async def node_report(node) -> dict:
    cfg = node.effective
    stats = await node.store.stats() if node.store is not None else None
    maintenance = node.maintenance.status() if node.maintenance is not None else None
    running = node.maintenance.repair_running if node.maintenance is not None else None
    ident = node.metadata.identity if node.metadata is not None else None
    return {
        "version": REPORT_VERSION,
        "node": cfg.node_name,
        "cluster": (ident.cluster_id or None) if ident is not None else None,
        "secure": node.tls is not None,
        "isolated": isolated(node),
        "wall_time_s": time.time(),
        "uptime_s": round(trio.current_time() - node.started_s, 1),
        "placement": {"replication_factor": cfg.replication_factor,
                      "virtual_ids_per_node": cfg.virtual_ids_per_node,
                      "chunk_bytes_max": cfg.chunk_bytes_max},
        "raft": _raft(node),
        "namespace": _namespace(node),
        "store": dataclasses.asdict(stats) if stats is not None else None,
        "ring": _ring(node),
        "repair": {
            "running": running is not None,
            "backlog_tasks": (running.tasks_total - running.tasks_done) if running else 0,
            "progress": ({"done": running.tasks_done, "total": running.tasks_total}
                         if running else None),
            "passes": maintenance["repair_passes"] if maintenance else 0,
            "copied_bytes_total": maintenance["repair_copied_bytes_total"] if maintenance else 0,
            "copied_blocks_total": maintenance["repair_copied_blocks_total"] if maintenance else 0,
            "last": maintenance["repair_last"] if maintenance else None,
        },
        "scrub": ({"passes": maintenance["scrub_passes"], "running": maintenance["scrub_running"],
                   "last": maintenance["scrub_last"]} if maintenance else None),
        # Only the metadata leader counts (server/store/census.py).
        "census": ({"passes": maintenance["census_passes"],
                    "running": maintenance["census_running"],
                    "last": maintenance["census_last"]}
                   if maintenance and (maintenance["census_last"] or maintenance["census_running"])
                   else None),
        "gc": maintenance["gc_last"] if maintenance else None,
        "gc_backlog": _gc_backlog(node),
        "sweep": maintenance["sweep_last"] if maintenance else None,
        "restored": maintenance["restored"] if maintenance else 0,
        "restore_failed": maintenance["restore_failed"] if maintenance else 0,
    }


def to_json(report: dict) -> str:
    return json.dumps(report, sort_keys=True,
                      default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v))
