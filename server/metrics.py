"""Prometheus metrics of one node (prometheus-client, text format 0.0.4).

Two kinds: what is measured as it happens (RPC calls by method and outcome
with a latency histogram, Raft persist latency, bytes repair moved) and
what is read from the node report at scrape time (server/report.py: Raft
term and indexes, disk, blocks, repair backlog, GC and scrub passes, the
namespace).  The first are fed by hooks the RPC layer and the Raft service
call; they never block and never raise.

Leader changes: ``chordfs_raft_leader_changes_total`` as this node saw them,
and the increase of ``chordfs_raft_term`` (every election raises it);
commit lag is ``chordfs_raft_commit_index - chordfs_raft_applied_index``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.rpc_calls = Counter("chordfs_rpc_calls", "RPC calls served, by method and outcome",
                                 ["method", "outcome"], registry=r)
        self.rpc_seconds = Histogram("chordfs_rpc_call_seconds", "Time to serve an RPC call",
                                     ["method"], buckets=_LATENCY_BUCKETS, registry=r)
        self.proposal_seconds = Histogram("chordfs_raft_proposal_seconds",
                                          "From a proposal on this node (the leader) to its "
                                          "entry applied here", buckets=_LATENCY_BUCKETS,
                                          registry=r)
        self.fsync_seconds = Histogram("chordfs_store_fsync_seconds",
                                       "fsync of one chunk file before its put is answered",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.leader_changes = Counter("chordfs_raft_leader_changes",
                                      "Times this node saw the metadata leader change "
                                      "(between scrapes: a change and back counts once)",
                                      registry=r)
        self.repair_copied_bytes = Counter("chordfs_repair_copied_bytes",
                                           "Bytes repair copied to or from this node", registry=r)
        self.repair_copied_blocks = Counter("chordfs_repair_copied_blocks",
                                            "Blocks repair copied to or from this node",
                                            registry=r)
        self._last_leader: str | None = None
        self._repair_seen = (0, 0)
        self.persist_seconds = Histogram("chordfs_raft_persist_seconds",
                                         "Raft log writes including their fsync",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        g = {}
        for name, doc, labels in (
                ("raft_term", "Raft term this node is in", ()),
                ("raft_is_leader", "1 if this node leads the metadata group", ()),
                ("raft_commit_index", "Highest log index known committed", ()),
                ("raft_applied_index", "Highest log index applied to the metadata", ()),
                ("raft_snapshot_index", "Log index of the latest snapshot", ()),
                ("raft_members", "Members of the Raft configuration", ("kind",)),
                ("store_used_bytes", "Bytes of block copies on this node's disk", ()),
                ("store_free_bytes", "Free bytes on this node's chunk disk", ()),
                ("store_reserve_bytes", "Free space the store never writes into", ()),
                ("store_blocks", "Block copies this node holds", ()),
                ("store_quarantined", "Copies that failed verification, set aside", ()),
                ("ring_members", "Members of this node's ring view by state", ("state",)),
                ("repair_running", "1 while a repair pass runs", ()),
                ("repair_backlog_ranges", "Key ranges the running repair pass has left", ()),
                ("repair_passes", "Repair passes since start", ()),
                ("repair_last_copied_blocks", "Blocks the last repair pass copied", ()),
                ("repair_last_copied_bytes", "Bytes the last repair pass copied", ()),
                ("scrub_last_checked_bytes", "Bytes the last scrub pass verified", ()),
                ("scrub_last_corrupt", "Corrupt copies the last scrub pass found", ()),
                ("scrub_running_checked_bytes", "Bytes the running scrub pass has verified", ()),
                ("scrub_passes", "Scrub passes since start", ()),
                ("census_blocks", "Referenced blocks by replication health at the last census "
                                  "(metadata leader only)", ("health",)),
                ("gc_last_deleted_copies", "Copies the last GC pass deleted", ()),
                ("gc_backlog_blocks", "Dying blocks waiting for GC (metadata leader only)", ()),
                ("gc_last_unconfirmed", "Blocks the last GC pass could not confirm", ()),
                ("restored_copies", "Corrupt copies restored from a replica since start", ()),
                ("namespace_inodes", "Inodes of the filesystem (this replica)", ()),
                ("namespace_bytes", "Bytes in files (this replica)", ()),
                ("namespace_blocks", "Blocks the filesystem references (this replica)", ()),
                ("uptime_seconds", "Seconds since the node started", ()),
                ("tls", "1 if the node serves mutual TLS, 0 on plain TCP (insecure)", ())):
            g[name] = Gauge("chordfs_" + name, doc, list(labels), registry=r)
        self.gauges = g

    # ---- hooks (never block, never raise) ------------------------------
    def observe_call(self, method: str, seconds: float, error) -> None:
        outcome = ("ok" if error is None else error if isinstance(error, str)
                   else type(error).__name__)
        self.rpc_calls.labels(method, outcome).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def observe_persist(self, seconds: float) -> None:
        self.persist_seconds.observe(seconds)

    def observe_proposal(self, seconds: float) -> None:
        self.proposal_seconds.observe(seconds)

    def observe_fsync(self, seconds: float) -> None:  # from store threads: thread-safe
        self.fsync_seconds.observe(seconds)

    # ---- scrape ---------------------------------------------------------
    def render(self, report: dict) -> bytes:
        self._set(report)
        return generate_latest(self.registry)

    def _set(self, rep: dict) -> None:
        g = self.gauges
        raft = rep.get("raft") or {}
        if raft:
            g["raft_term"].set(raft["term"])
            g["raft_is_leader"].set(1 if raft["role"] == "leader" else 0)
            g["raft_commit_index"].set(raft["commit"])
            g["raft_applied_index"].set(raft["applied"])
            g["raft_snapshot_index"].set(raft["snapshot_index"])
            leader = raft.get("leader")
            if leader and leader != self._last_leader:
                if self._last_leader is not None:
                    self.leader_changes.inc()
                self._last_leader = leader
            voters = sum(1 for m in raft["members"] if m["voter"])
            g["raft_members"].labels("voter").set(voters)
            g["raft_members"].labels("learner").set(len(raft["members"]) - voters)
        store = rep.get("store") or {}
        for key, gauge in (("used_bytes", "store_used_bytes"), ("free_bytes", "store_free_bytes"),
                           ("reserve_bytes", "store_reserve_bytes"), ("chunk_count", "store_blocks"),
                           ("quarantined_count", "store_quarantined")):
            if key in store:
                g[gauge].set(store[key])
        states = {"alive": 0, "suspect": 0, "dead": 0, "left": 0}
        for m in rep.get("ring") or []:
            states[m["state"]] = states.get(m["state"], 0) + 1
        for state, count in states.items():
            g["ring_members"].labels(state).set(count)
        repair = rep.get("repair") or {}
        last = repair.get("last") or {}
        g["repair_running"].set(1 if repair.get("running") else 0)
        g["repair_backlog_ranges"].set(repair.get("backlog_tasks", 0))
        g["repair_passes"].set(repair.get("passes", 0))
        g["repair_last_copied_blocks"].set(last.get("chunks_pulled", 0) + last.get("chunks_pushed", 0))
        g["repair_last_copied_bytes"].set(last.get("bytes_copied", 0))
        scrub, gc = rep.get("scrub") or {}, rep.get("gc") or {}
        last_scrub = scrub.get("last") or {}
        g["scrub_last_checked_bytes"].set(last_scrub.get("checked_bytes", 0))
        g["scrub_last_corrupt"].set(last_scrub.get("corrupt_count", 0))
        g["scrub_running_checked_bytes"].set((scrub.get("running") or {}).get("checked_bytes", 0))
        g["scrub_passes"].set(scrub.get("passes", 0))
        census = (rep.get("census") or {}).get("last")
        if census:
            for health in ("healthy", "under_replicated", "missing"):
                g["census_blocks"].labels(health).set(census[health])
        g["gc_last_deleted_copies"].set(gc.get("copies_deleted", 0))
        g["gc_last_unconfirmed"].set(gc.get("unconfirmed", 0))
        if rep.get("gc_backlog") is not None:
            g["gc_backlog_blocks"].set(rep["gc_backlog"])
        totals = (repair.get("copied_bytes_total", 0), repair.get("copied_blocks_total", 0))
        if totals[0] > self._repair_seen[0]:
            self.repair_copied_bytes.inc(totals[0] - self._repair_seen[0])
        if totals[1] > self._repair_seen[1]:
            self.repair_copied_blocks.inc(totals[1] - self._repair_seen[1])
        self._repair_seen = totals
        g["restored_copies"].set(rep.get("restored", 0))
        ns = rep.get("namespace") or {}
        for key in ("inodes", "bytes", "blocks"):
            if key in ns:
                g["namespace_" + key].set(ns[key])
        g["uptime_seconds"].set(rep.get("uptime_s", 0))
        g["tls"].set(1 if rep.get("secure") else 0)
