"""`chordfs members` and `chordfs cluster init`: the operator's hands on the
committed cluster configuration.

Membership changes go to the Raft leader (found through any node given on
the command line, following its leader address) as ``Raft.changeMember``;
the leader checks that the change leaves a live quorum and answers once the
change is committed.  Promotion rules (also in the README):

  * A node with an empty data directory joins as a learner through its
    seeds; it never votes until it is promoted.
  * The leader promotes live, caught-up learners while the voters number
    fewer than min(voters_max, the largest odd number <= members).
  * ``remove`` is refused when the voters left would not hold a live quorum
    (``--force`` overrides for a voter already known dead for good).
  * ``replace OLD NEW`` promotes learner NEW, then removes OLD.
"""

from __future__ import annotations

import dataclasses
import sys

import trio

import rpc
from rpc.pool import Pool

REPLY_TIMEOUT_S = 15.0


@dataclasses.dataclass(frozen=True)
class MemberRow:
    id: int
    name: str
    voter: bool
    live: bool
    match: int


@dataclasses.dataclass(frozen=True)
class ClusterView:
    cluster_id: str
    leader_addr: str
    term: int
    commit: int
    members: tuple[MemberRow, ...]

    def find(self, text: str) -> MemberRow | None:
        """A member by address or by (a unique prefix of) its hex id."""
        by_name = [m for m in self.members if m.name == text]
        if by_name:
            return by_name[0]
        try:
            int(text, 16)
        except ValueError:
            return None
        by_id = [m for m in self.members if f"{m.id:x}".startswith(text.lower())]
        return by_id[0] if len(by_id) == 1 else None


async def _raft_cap(pool, addr: str, timeout_s: float):
    from .raft.wire import raft_capnp
    return await pool.bootstrap(addr, raft_capnp.Raft, timeout_s=timeout_s)


async def leader_view(pool, addrs: list[str], timeout_s: float = 3.0) -> ClusterView:
    """The configuration as the leader sees it (liveness and match are only
    known there); any node given leads to it."""
    last = "no address given"
    for addr in addrs:
        for _ in range(3):
            try:
                cap = await _raft_cap(pool, addr, timeout_s)
                st = await cap.status(timeout_s=timeout_s)
            except rpc.RpcError as e:
                last = f"{addr} did not answer: {e}"
                break
            if st.role == "leader" or not st.leaderAddr or st.leaderAddr == addr:
                rows = tuple(MemberRow(m.id, m.name, m.voter, m.live, m.match) for m in st.members)
                return ClusterView(st.clusterId, addr if st.role == "leader" else "",
                                   st.term, st.commit, rows)
            addr = st.leaderAddr
    raise rpc.ConnectionLost(last)


def format_view(view: ClusterView) -> str:
    lines = [f"cluster {view.cluster_id or '(none)'}  term {view.term}  commit {view.commit}  "
             f"leader {view.leader_addr or '(unknown: liveness not shown)'}",
             f"{'id':<16}  {'address':<24} {'role':<8} {'state':<7} match"]
    for m in sorted(view.members, key=lambda m: (not m.voter, m.name)):
        state = ("live" if m.live else "down") if view.leader_addr else "?"
        lines.append(f"{m.id:016x}  {m.name:<24} {'voter' if m.voter else 'learner':<8} "
                     f"{state:<7} {m.match}")
    return "\n".join(lines)


async def change(pool, view: ClusterView, op: str, node: int, force: bool = False) -> str:
    """One committed change on the leader; returns "" or one sentence why not."""
    if not view.leader_addr:
        return "no leader is known: the cluster has no live quorum, or is electing"
    cap = await _raft_cap(pool, view.leader_addr, REPLY_TIMEOUT_S)
    reply = await cap.changeMember(op=op, nodeId=node, force=force, timeout_s=REPLY_TIMEOUT_S)
    if reply.notLeader:
        return f"{view.leader_addr} is no longer the leader; try again"
    return reply.refused if not reply.done else ""


def view_json(view: ClusterView) -> str:
    import json
    return json.dumps({
        "cluster": view.cluster_id or None, "leader": view.leader_addr or None,
        "term": view.term, "commit": view.commit,
        "members": [{"id": f"{m.id:016x}", "name": m.name,
                     "role": "voter" if m.voter else "learner",
                     "live": m.live if view.leader_addr else None, "match": m.match}
                    for m in sorted(view.members, key=lambda m: (not m.voter, m.name))]},
        indent=2, sort_keys=True)


async def members_main(addrs: list[str], action: str, targets: list[str], force: bool,
                       timeout_s: float, ssl_context=None, as_json: bool = False) -> int:
    async with trio.open_nursery() as nursery:
        pool = Pool(nursery, connect_timeout_s=timeout_s, backoff_max_s=0.5,
                    ssl_context=ssl_context)
        try:
            return await _members(pool, addrs, action, targets, force, timeout_s, as_json)
        except (rpc.RpcError, trio.TooSlowError) as e:
            print(f"chordfs: {e or 'timed out'}", file=sys.stderr)
            return 1
        finally:
            pool.close()


async def _members(pool, addrs, action, targets, force, timeout_s, as_json=False) -> int:
    with trio.fail_after(timeout_s * 4):
        view = await leader_view(pool, addrs, timeout_s)
    if action == "list":
        print(view_json(view) if as_json else format_view(view))
        return 0
    rows = []
    for text in targets:
        row = view.find(text)
        if row is None:
            print(f"chordfs: {text} is not a member of cluster {view.cluster_id} "
                  "(give its address or hex id, see `chordfs members`)", file=sys.stderr)
            return 2
        rows.append(row)
    steps = {"remove": [("remove", rows[0])], "add": [("promote", rows[0])],
             "replace": [("promote", rows[-1]), ("remove", rows[0])]}[action]
    for op, row in steps:
        if op == "promote" and row.voter:
            continue  # already a voter: replace resumes after a half-done run
        refusal = await change(pool, view, op, row.id, force)
        if refusal:
            print(f"chordfs: {refusal}", file=sys.stderr)
            return 1
        print(f"{op}d {row.id:016x} ({row.name})" if op == "remove" else
              f"promoted {row.id:016x} ({row.name}) to voter")
    return 0


def init_main(cfg) -> int:
    """chordfs cluster init: found a new cluster in this node's data directory."""
    import os

    from . import identity
    from .meta.service import found_cluster
    meta_dir = os.path.join(cfg.data_dir, "meta")
    existing = identity.load(cfg.data_dir)
    if existing is not None and existing.cluster_id and (existing.member or not existing.founder):
        print(f"chordfs: {cfg.data_dir} already belongs to cluster {existing.cluster_id}; "
              "cluster init runs once, on one node", file=sys.stderr)
        return 1
    cluster_id = None
    if cfg.tls_cert:  # a TLS cluster's id is its CA's
        from .pki import PkiError, identity_of_pem
        try:
            cluster_id = identity_of_pem(cfg.tls_cert).cluster_id
        except PkiError as e:
            print(f"chordfs: {e}", file=sys.stderr)
            return 2
    ident = found_cluster(cfg.data_dir, os.path.join(meta_dir, "raft"), cfg.node_name,
                          cluster_id=cluster_id)
    print(f"cluster {ident.cluster_id} founded: node {ident.node_id:016x} at {cfg.node_name} is its "
          "first voter; start it with `chordfs node`, and the others with --seeds pointing at it")
    return 0
