"""Leader-side view of each follower: how far it matches, what to send next,
and how much is in flight (etcd-io/raft's Progress / Inflights).

States:
  PROBE      we do not know where the follower's log diverges; send one
             AppendEntries at a time and wait for its answer (or the next
             heartbeat response) before sending again.
  REPLICATE  the follower is in sync; send optimistically (next advances when
             sending, not on ack), bounded by `inflight_max` messages.
  SNAPSHOT   the follower needs the snapshot at `pending_snapshot`; nothing
             else is sent until it acks or fails.
Invariant: match < next (asserted).
"""

from __future__ import annotations

import collections
import dataclasses
import enum

from .messages import Membership, NodeId

PURE_CORE = True


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclasses.dataclass
class Progress:
    match: int
    next: int
    inflight_max: int
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    recent_active: bool = False
    heard_tick: int = -1       # leader's tick of this peer's last answer (-1: never)
    snapshot_stalled: int = 0  # heartbeat answers seen while in SNAPSHOT
    inflight: collections.deque = dataclasses.field(default_factory=collections.deque)

    def check(self) -> None:
        assert self.match < self.next, (self.match, self.next)
        assert len(self.inflight) <= self.inflight_max

    def become_probe(self) -> None:
        # Coming back from a snapshot, the follower holds at least that index.
        if self.state == ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_stalled = 0
        self.inflight.clear()

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= self.inflight_max
        return True

    def sent_entries(self, last: int) -> None:
        """Bookkeeping after sending entries up to `last` (0: none sent)."""
        if self.state == ProgressState.REPLICATE and last:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """Successful ack of `index`; False if stale (nothing changed)."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """Rejection of prev_index `rejected`; `hint` is the leader's best
        guess of the follower's last matching index.  Stale rejections (for a
        message sent before the current probe) change nothing."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1)
        self.probe_sent = False
        return True


class Tracker:
    """Progress of every member except nobody: the leader tracks itself too
    (its match is its *persisted* last index, so a leader never counts an
    entry toward commit before its own fsync)."""

    def __init__(self, membership: Membership, last_index: int, inflight_max: int) -> None:
        self.inflight_max = inflight_max
        self.progress: dict[NodeId, Progress] = {}
        self.membership = Membership()
        self.set_membership(membership, last_index)

    def set_membership(self, membership: Membership, last_index: int) -> None:
        for node in membership.members() - self.progress.keys():
            self.progress[node] = Progress(
                match=0, next=last_index + 1, inflight_max=self.inflight_max,
                recent_active=True)  # a fresh peer gets one election's grace
        for node in self.progress.keys() - membership.members():
            del self.progress[node]
        self.membership = membership

    def committed_index(self) -> int:
        """Highest index held by a quorum of voters (0 if no voters)."""
        voters = self.membership.voters
        if not voters:
            return 0
        matches = sorted((self.progress[v].match for v in voters), reverse=True)
        return matches[self.membership.quorum() - 1]

    def quorum_active(self, self_id: NodeId) -> bool:
        active = sum(1 for v in self.membership.voters
                     if v == self_id or self.progress[v].recent_active)
        return active >= self.membership.quorum()

    def reset_recent_active(self, self_id: NodeId) -> None:
        for node, pr in self.progress.items():
            pr.recent_active = node == self_id

    def has_quorum(self, acks: set[NodeId]) -> bool:
        return len(acks & self.membership.voters) >= self.membership.quorum()
