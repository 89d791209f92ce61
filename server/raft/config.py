"""Node settings (RaftConfig) and single-server membership changes.

Membership changes follow the Raft thesis §4.1: one server at a time, each
carried as a CONFIG log entry holding the *whole* new membership, in effect
as soon as it is appended (not committed) on every node, and rolled back if
the entry is truncated.  A leader refuses a new change while the previous
one is uncommitted, and before it has committed an entry of its own term
(the fix for the single-server-change bug Ongaro described in 2015).

Allowed steps from membership M:
  ADD_LEARNER n     n not in M              -> learners + n
  PROMOTE n         n a learner of M        -> voters + n
  REMOVE n          n a member of M         -> without n (at least one voter left)
  SET_PARAMS p      any M                   -> same members, settings updated by p
"""

from __future__ import annotations

import dataclasses
import enum

from .messages import Membership, NodeId, ProposalDropped

PURE_CORE = True


@dataclasses.dataclass(frozen=True)
class RaftConfig:
    election_timeout_ticks: int = 10   # randomized in [t, 2t) per election
    heartbeat_interval_ticks: int = 1
    # Keep at least one of these on: with both off, a removed voter that
    # missed its removal keeps bumping terms and can stall the cluster
    # (Raft thesis §4.2.3), and a rejoining partitioned node deposes leaders.
    pre_vote: bool = True
    check_quorum: bool = True
    # Lease reads answer without a heartbeat round.  Safe only with
    # check_quorum and if no node's tick runs faster than the leader's by
    # more than the margin below (bounded clock drift).
    lease_reads: bool = False
    lease_margin_ticks: int = 2        # drift allowance subtracted from the lease
    append_entries_max: int = 64
    append_bytes_max: int = 1 << 20
    inflight_max: int = 8              # AppendEntries in flight per follower
    apply_bytes_max: int = 8 << 20     # committed entries per Ready
    uncommitted_entries_max: int = 10_000  # back-pressure on proposals
    # Heartbeat answers from a follower that never acks its snapshot before
    # the leader sends it again (a safety net: drivers should call
    # report_snapshot).  Keep it above a snapshot's transfer time.
    snapshot_retry_heartbeats: int = 50

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ticks <= 0:
            raise ValueError("heartbeat_interval_ticks must be positive")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election timeout must exceed the heartbeat interval")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads requires check_quorum")
        if not 0 <= self.lease_margin_ticks < self.election_timeout_ticks:
            raise ValueError("lease_margin_ticks must be below the election timeout")
        if min(self.append_entries_max, self.append_bytes_max, self.inflight_max) <= 0:
            raise ValueError("batching limits must be positive")


class ChangeOp(enum.Enum):
    ADD_LEARNER = "add_learner"
    PROMOTE = "promote"
    REMOVE = "remove"
    SET_PARAMS = "set_params"


@dataclasses.dataclass(frozen=True)
class ConfChange:
    op: ChangeOp
    node: NodeId
    name: str = ""  # ADD_LEARNER: the address the new member is served at
    params: tuple[tuple[str, int], ...] = ()  # SET_PARAMS: the settings that change


def apply_change(current: Membership, change: ConfChange) -> Membership:
    """The membership after `change`, or ProposalDropped if not a valid
    single-server step from `current`."""
    n = change.node
    if change.op == ChangeOp.ADD_LEARNER:
        if n in current.members():
            raise ProposalDropped(f"node {n} is already a member")
        if change.name and current.id_named(change.name) is not None:
            raise ProposalDropped(f"{change.name} is already the address of node "
                                  f"{current.id_named(change.name)}")
        return Membership(current.voters, current.learners | {n},
                          current.with_name(n, change.name or current.name_of(n)), current.params)
    if change.op == ChangeOp.PROMOTE:
        if n not in current.learners:
            raise ProposalDropped(f"node {n} is not a learner")
        return Membership(current.voters | {n}, current.learners - {n}, current.names,
                          current.params)
    if change.op == ChangeOp.REMOVE:
        if n not in current.members():
            raise ProposalDropped(f"node {n} is not a member")
        if current.voters == {n}:
            raise ProposalDropped("cannot remove the last voter")
        return Membership(current.voters - {n}, current.learners - {n}, current.with_name(n, None),
                          current.params)
    if change.op == ChangeOp.SET_PARAMS:
        merged = dict(current.params) | dict(change.params)
        return Membership(current.voters, current.learners, current.names,
                          tuple(sorted(merged.items())))
    raise AssertionError(change.op)
