"""RaftNode: the pure Raft state machine, driven like etcd-io/raft's RawNode.

No I/O, no clock, no global randomness: time is `tick()`, randomness is the
seeded `random.Random` given to the constructor, the network is `step()` in
and `Ready.messages` out, the disk is `Ready.hard_state/entries/snapshot`.

Driver contract (one RaftNode per process, single-threaded access):

    node = RaftNode(node_id, RaftConfig(...), random.Random(seed),
                    hard_state=..., snapshot=..., entries=..., applied=...)
    # new cluster: RaftNode(..., bootstrap=Membership(voters=...)) on every
    # initial voter; a joining node starts empty and is added as a learner.
    loop:
        node.tick()                 every tick interval (e.g. 100 ms)
        node.step(msg)              for every message received
        node.propose(data)          -> Proposed(term, index) | NotLeader | ProposalDropped
        node.propose_conf_change(ConfChange(op, node_id))
        node.read_index(ctx)        -> a ReadState(index, ctx) appears in a later Ready
        node.transfer_leadership(to)  # target must be a voter; TimeoutNow when caught up
        node.status()               -> Status(id, role, term, leader, commit, applied, ...)
        if node.has_ready():
            rd = node.ready()
            1. persist, then fsync:  rd.snapshot (if any) first, then
               rd.entries (truncate the stored log from rd.entries[0].index
               before writing them), then rd.hard_state (if any).
               storage.LogStorage.save(rd.hard_state, rd.entries, rd.snapshot)
               does exactly this.
            2. send rd.messages (any order; loss is fine, Raft retries).
               Report failures with report_unreachable(to); report the end of
               every InstallSnapshot send with report_snapshot(to, ok).
            3. apply: install rd.snapshot into the state machine, then apply
               rd.committed_entries in order (skip NOOP; CONFIG entries carry
               a Membership, informational for the driver); serve reads whose
               ReadState.index <= applied index.
            4. node.advance(rd)
        node.compact(index, snapshot_blob) after saving a state-machine image
        at applied index `index`; then drop the stored log prefix <= index.

    Restart: st = LogStorage(dir); RaftNode(id, cfg, rng, hard_state=st.hard_state,
    snapshot=st.snapshot, entries=st.entries(), applied=<state machine's
    applied index>).  If the state machine is older than st.snapshot, load the
    snapshot into it first.  A restarted node refuses votes for one election
    timeout (it may have acked a leader's lease just before crashing).

    Order of work: persist (fsync) -> send -> apply -> advance.  Persisting
    before sending is what makes votes and acks durable promises.  step(),
    tick() and the propose/read calls may be made between ready() and
    advance(); ready() may not be called again before advance().

Proposals: Proposed(term, index) says where the entry landed; it succeeded
iff the entry the driver later applies at `index` has that `term` (else
another leader overwrote it: fail the caller).  Call propose() many times and
ready() once for group commit: one fsync covers all of them.

Leases: with RaftConfig.lease_reads (requires check_quorum) a leader answers
read_index() at once while a quorum acked a heartbeat sent less than
election_timeout_ticks - lease_margin_ticks of *its* ticks ago.  Followers
refuse votes for election_timeout_ticks of *their* ticks after hearing from
the leader (and after a restart), so this is safe only while no node's tick
runs faster than the leader's by more than the margin: bounded clock drift.

Errors: calls raise typed errors (messages.py) *before* changing anything:
NotLeader(hint), ProposalDropped, Compacted, Unavailable; ProtocolError for a
peer or driver breaking the protocol (e.g. two leaders in one term, a leader
rewriting a committed entry).  Pending ReadIndex requests are silently
dropped when leadership is lost: the driver must time them out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ConfChange, RaftConfig, apply_change
from .election import ElectionMixin
from .log import RaftLog
from .messages import (
    AppendEntries, AppendResponse, Entry, EntryKind, HardState, Heartbeat,
    HeartbeatResponse, InstallSnapshot, Membership, Message, NodeId, NotLeader,
    Proposed, ProposalDropped, ProtocolError, ReadState, Role, Snapshot,
    SnapshotMeta, TimeoutNow, VoteRequest, VoteResponse,
)
from .progress import Tracker
from .replication import ReplicationMixin

PURE_CORE = True


@dataclasses.dataclass(frozen=True)
class SoftState:
    leader: NodeId | None
    role: Role


@dataclasses.dataclass(frozen=True)
class Ready:
    """One batch of work for the driver; see the module docstring."""
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    soft_state: SoftState | None

    @property
    def committed(self) -> tuple[Entry, ...]:
        return self.committed_entries

    @property
    def must_sync(self) -> bool:
        return bool(self.hard_state or self.snapshot or self.entries)


@dataclasses.dataclass(frozen=True)
class Status:
    id: NodeId
    role: Role
    term: int
    leader: NodeId | None
    commit: int
    applied: int
    last_index: int
    membership: Membership


_EMPTY_SNAPSHOT = Snapshot(SnapshotMeta(0, 0, Membership()))


class RaftNode(ElectionMixin, ReplicationMixin):
    def __init__(self, node_id: NodeId, cfg: RaftConfig, rng: Any, *,
                 hard_state: HardState = HardState(),
                 snapshot: Snapshot | None = None,
                 entries: tuple[Entry, ...] | list[Entry] = (),
                 applied: int | None = None,
                 bootstrap: Membership | None = None) -> None:
        """rng: a seeded random.Random (passed in; never the global one).
        hard_state/snapshot/entries: what storage recovered (all persisted).
        applied: the state machine's last applied index (default: snapshot).
        bootstrap: initial voters of a brand-new cluster; identical on every
        initial voter, ignored (must be None) when restarting."""
        self.id, self.cfg, self.rng = node_id, cfg, rng
        snapshot = snapshot or _EMPTY_SNAPSHOT
        entries = list(entries)
        last = snapshot.meta.index + len(entries)
        if hard_state.commit > last:
            raise ProtocolError(f"hard state commit {hard_state.commit} beyond log end {last}")
        self.term, self.vote = hard_state.term, hard_state.vote
        self.log = RaftLog(snapshot, entries, hard_state.commit, applied)
        self.prev_hard_state = hard_state
        if bootstrap is not None:
            self._bootstrap(bootstrap)
        self.role, self.leader = Role.FOLLOWER, None
        self.election_elapsed = self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self._fresh_start = True
        self.ticks = 0
        self.votes: dict[NodeId, bool] = {}
        self.tracker: Tracker | None = None
        self.outbox: list[Message] = []
        self.read_states: list[ReadState] = []
        self.reads_waiting: list[bytes] = []
        self.rounds: dict = {}
        self.read_seq = 0
        self.lease_until = 0
        self.lease_rounds_from = -1  # rounds sent at or before it cannot extend the lease
        self.lease_revoked = False
        self.commit_unsent = False  # a commit advance followers have not been sent
        self.transferee: NodeId | None = None
        self.prev_soft = SoftState(None, Role.FOLLOWER)
        self._ready_out: Ready | None = None
        self._reset_timeout()

    def _bootstrap(self, voters: Membership) -> None:
        if self.log.last_index() != 0 or self.term != 0:
            raise ProtocolError("bootstrap of a node that already has state")
        if self.id not in voters.voters:
            raise ProtocolError("a bootstrapping node must be an initial voter")
        self.log.append([Entry(1, 1, EntryKind.CONFIG, voters.encode())])
        self.term = 1
        self.log.commit_to(1)  # identical on every initial voter: trivially safe

    # ----------------------------------------------------------- public API
    def tick(self) -> None:
        self.ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_timeout_ticks:
            self._fresh_start = False
        if self._promotable() and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self.campaign()

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_timeout_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                if not self.tracker.quorum_active(self.id):
                    self._become_follower(self.term, None)
                    return
                self.tracker.reset_recent_active(self.id)
            self.transferee = None  # a transfer that did not finish in time
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        if self.commit_unsent:
            self._broadcast_append()

    def propose(self, data: bytes) -> Proposed:
        self._check_can_propose()
        return self._append_own(EntryKind.COMMAND, data)

    def propose_conf_change(self, change: ConfChange) -> Proposed:
        self._check_can_propose()
        if self.log.config_index() > self.log.committed:
            raise ProposalDropped("a membership change is still uncommitted")
        if not self._committed_in_term():
            raise ProposalDropped("leader has not committed an entry of its term yet")
        new = apply_change(self.log.membership(), change)
        proposed = self._append_own(EntryKind.CONFIG, new.encode())
        self.tracker.set_membership(new, proposed.index - 1)
        return proposed

    def live_members(self, heard_after: int | None = None) -> frozenset[NodeId]:
        """On a leader: the members that answered after tick ``heard_after``
        (default: within an election timeout), itself included; empty on a
        follower."""
        if self.role != Role.LEADER or self.tracker is None:
            return frozenset()
        if heard_after is None:
            heard_after = max(0, self.ticks - self.cfg.election_timeout_ticks) - 1
        return frozenset(n for n, pr in self.tracker.progress.items()
                         if n == self.id or pr.heard_tick > heard_after)

    def removal_refusal(self, node: NodeId, heard_after: int | None = None) -> str | None:
        """Why removing ``node`` now would stop the cluster, or None.  The
        voters left must hold a live quorum of their own, or the removal
        (which takes effect when appended and commits under the new
        configuration) and everything after it would wait for machines that
        are gone.  A driver passes ``heard_after`` = the tick the request
        came in at, after letting a few heartbeats go out, so a voter that
        died a moment ago does not count as live."""
        membership = self.log.membership()
        if node not in membership.members():
            return f"node {node:x} is not a member"
        if node == self.id:
            return "this node is the leader: transfer leadership before removing it"
        voters = membership.voters - {node}
        if not voters:
            return "cannot remove the last voter"
        live = len(voters & self.live_members(heard_after))
        quorum = len(voters) // 2 + 1
        if live < quorum:
            return (f"after the removal {live} of {len(voters)} voters are live, "
                    f"fewer than the quorum of {quorum}")
        return None

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if self.transferee is not None:
            raise ProposalDropped("leadership transfer in progress")
        if self.log.last_index() - self.log.committed >= self.cfg.uncommitted_entries_max:
            raise ProposalDropped("too many uncommitted entries")

    def _append_own(self, kind: EntryKind, data: bytes) -> Proposed:
        entry = Entry(self.log.last_index() + 1, self.term, kind, data)
        self.log.append([entry])
        self._broadcast_append()
        return Proposed(entry.term, entry.index)

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read point; answered by a ReadState with
        the same ctx in a later Ready (or never, if leadership is lost)."""
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if not self._committed_in_term():
            # Our commit index may lag the previous leader's until our NOOP
            # commits (§6.4 step 1): wait for it.
            self.reads_waiting.append(ctx)
            return
        self._start_read(ctx)

    def transfer_leadership(self, to: NodeId) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(self.leader)
        if to == self.id or self.transferee == to:
            return
        if to not in self.log.membership().voters:
            raise ProposalDropped(f"transfer target {to} is not a voter")
        self.transferee = to
        self.election_elapsed = 0  # the transfer must finish within a timeout
        if self.tracker.progress[to].match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The driver saved a state-machine image at applied `index`."""
        if self.log.pending_snapshot is not None:
            # Its Ready is not persisted yet; compacting now would let an
            # older snapshot overwrite this one on disk.
            raise ProtocolError("compact() while a received snapshot is unpersisted")
        return self.log.compact(index, data)

    def status(self) -> Status:
        return Status(self.id, self.role, self.term, self.leader, self.log.committed,
                      self.log.applied, self.log.last_index(), self.log.membership())

    # ------------------------------------------------------- ready/advance
    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def has_ready(self) -> bool:
        if self._ready_out is not None:
            return False
        return bool(
            self._hard_state() != self.prev_hard_state or self.outbox
            or self.log.pending_snapshot or self.log.unstable_entries()
            or self.log.committed > self.log.applied or self.read_states
            or self._soft_state() != self.prev_soft)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)

    def ready(self) -> Ready:
        if self._ready_out is not None:
            raise ProtocolError("ready() called again before advance()")
        hs, soft = self._hard_state(), self._soft_state()
        rd = Ready(
            hard_state=hs if hs != self.prev_hard_state else None,
            snapshot=self.log.pending_snapshot,
            entries=tuple(self.log.unstable_entries()),
            messages=tuple(self.outbox),
            committed_entries=tuple(self.log.next_committed(self.cfg.apply_bytes_max)),
            read_states=tuple(self.read_states),
            soft_state=soft if soft != self.prev_soft else None)
        self.outbox, self.read_states = [], []
        self._ready_out = rd
        return rd

    def advance(self, rd: Ready) -> None:
        if rd is not self._ready_out:
            raise ProtocolError("advance() with a Ready that is not outstanding")
        self._ready_out = None
        if rd.hard_state is not None:
            self.prev_hard_state = rd.hard_state
        if rd.soft_state is not None:
            self.prev_soft = rd.soft_state
        if rd.snapshot is not None and self.log.pending_snapshot is rd.snapshot:
            self.log.pending_snapshot = None
        if rd.entries:
            self.log.stable_to(rd.entries[-1].index, rd.entries[-1].term)
            if self.role == Role.LEADER:
                self._self_persisted()
        if rd.committed_entries and rd.committed_entries[-1].index > self.log.applied:
            self.log.applied_to(rd.committed_entries[-1].index)
        self.log.check()

    def may_send_before_persist(self, rd: Ready) -> bool:
        """Whether the driver may send ``rd.messages`` while it is still
        persisting ``rd`` (thesis §10.2.1): a leader's appends and
        heartbeats do not depend on its own copy being durable, because it
        counts itself toward a commit only in advance(), after the write.
        Not when the Ready changes term or vote (a vote must be durable
        before anyone hears of it) or installs a snapshot, and never for a
        follower or candidate, whose answers promise what they persist."""
        if self.role != Role.LEADER or rd.snapshot is not None:
            return False
        hs, prev = rd.hard_state, self.prev_hard_state
        return hs is None or (hs.term, hs.vote) == (prev.term, prev.vote)

    def _self_persisted(self) -> None:
        pr = self.tracker.progress.get(self.id)
        if pr is not None and pr.maybe_update(self.log.stable_index):
            self._maybe_commit()

    # ---------------------------------------------------------------- step
    def step(self, m: Message) -> None:
        """Feed one received message.  Checks before changing state."""
        if m.to != self.id:
            raise ProtocolError(f"message for {m.to} delivered to {self.id}")
        self._validate(m)
        if m.term > self.term:
            if not self._step_higher_term(m):
                return
        elif m.term < self.term:
            self._step_lower_term(m)
            return
        self._dispatch(m)

    def _validate(self, m: Message) -> None:
        """Protocol checks that need no state change; raise before any."""
        same_term_leader = m.term == self.term and (
            self.role == Role.LEADER or self.leader not in (None, m.frm))
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) and same_term_leader:
            raise ProtocolError(f"two leaders in term {m.term}: {self.leader} and {m.frm}")
        if isinstance(m, AppendEntries):
            for n, e in enumerate(m.entries):
                if e.index != m.prev_index + 1 + n or e.term > m.term:
                    raise ProtocolError(f"malformed entries after {m.prev_index}")
            if m.term >= self.term and self.log.match_term(m.prev_index, m.prev_term):
                for e in m.entries:
                    if e.index <= self.log.committed and e.index > self.log.snap_index \
                            and self.log.term(e.index) != e.term:
                        raise ProtocolError(f"{m.frm} rewrites committed index {e.index}")
        if isinstance(m, Heartbeat) and m.term >= self.term and m.commit > self.log.last_index():
            raise ProtocolError(f"{m.frm} commits {m.commit} beyond our log")

    def _step_higher_term(self, m: Message) -> bool:
        if isinstance(m, VoteRequest):
            if not m.transfer and self._in_lease():
                return False  # leader stickiness: ignore, do not even answer
            if m.pre_vote:
                return True   # pre-votes never change our term
            self._become_follower(m.term, None)
            return True
        if isinstance(m, VoteResponse) and m.pre_vote and m.granted:
            return True       # carries the term the pre-candidate asked for
        leader = m.frm if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot,
                                         TimeoutNow)) else None
        self._become_follower(m.term, leader)
        return True

    def _step_lower_term(self, m: Message) -> None:
        if isinstance(m, (AppendEntries, Heartbeat)) and (self.cfg.check_quorum or self.cfg.pre_vote):
            # A deposed leader on the far side of a partition would otherwise
            # never learn the new term (pre-vote keeps us from bumping it).
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=False))
        elif isinstance(m, VoteRequest) and m.pre_vote:
            self._send(VoteResponse(frm=self.id, to=m.frm, term=self.term,
                                    granted=False, pre_vote=True))

    def _dispatch(self, m: Message) -> None:
        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            if self.role != Role.FOLLOWER:
                self._become_follower(self.term, m.frm)
            self.leader = m.frm
            self.election_elapsed = 0
            self._fresh_start = False
            if isinstance(m, AppendEntries):
                self._handle_append(m)
            elif isinstance(m, Heartbeat):
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif isinstance(m, (AppendResponse, HeartbeatResponse)):
            if self.role == Role.LEADER:
                if isinstance(m, AppendResponse):
                    self._handle_append_response(m)
                else:
                    self._handle_heartbeat_response(m)
        elif isinstance(m, TimeoutNow):
            if self.leader in (None, m.frm):
                self.campaign(transfer=True)
        else:
            raise ProtocolError(f"unknown message type {type(m).__name__}")

    # ------------------------------------------------------ follower side
    def _handle_append(self, m: AppendEntries) -> None:
        if m.prev_index < self.log.committed:
            # Everything up to our commit index already matches the leader.
            self._reply_append(m, success=True, match=self.log.committed)
            return
        match = self.log.maybe_append(m.prev_index, m.prev_term, m.entries)
        if match is None:
            hint_index = min(m.prev_index, self.log.last_index())
            hint_index, hint_term = self.log.find_conflict_by_term(hint_index, m.prev_term)
            self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term, success=False,
                                      reject_index=m.prev_index, hint_index=hint_index,
                                      hint_term=hint_term))
            return
        self.log.commit_to(min(m.commit, match))
        self._reply_append(m, success=True, match=match)

    def _reply_append(self, m: Message, success: bool, match: int) -> None:
        self._send(AppendResponse(frm=self.id, to=m.frm, term=self.term,
                                  success=success, match_index=match))

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        self.log.commit_to(m.commit)
        self._send(HeartbeatResponse(frm=self.id, to=m.frm, term=self.term,
                                     read_seq=m.read_seq))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.snapshot.meta
        if meta.index <= self.log.committed:
            self._reply_append(m, success=True, match=self.log.committed)
            return
        if self.log.match_term(meta.index, meta.term):
            # We already hold the snapshot's last entry: keep our log.
            self.log.commit_to(meta.index)
        else:
            self.log.restore(m.snapshot)
        self._reply_append(m, success=True, match=meta.index)

    # ------------------------------------------------------- transitions
    def _send(self, m: Message) -> None:
        assert m.frm == self.id and m.to != self.id
        self.outbox.append(m)

    def _reset_timeout(self) -> None:
        t = self.cfg.election_timeout_ticks
        self.randomized_timeout = t + self.rng.randrange(t)

    def _reset(self, term: int) -> None:
        if term != self.term:
            assert term > self.term, "terms only grow"
            self.term, self.vote = term, None
        self.leader = None
        self.election_elapsed = self.heartbeat_elapsed = 0
        self._reset_timeout()
        self.votes = {}
        self.tracker = None
        self.transferee = None
        self.rounds, self.reads_waiting, self.lease_until = {}, [], 0
        self.lease_revoked = False
        self.commit_unsent = False

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role, self.leader = Role.FOLLOWER, leader

    def _become_pre_candidate(self) -> None:
        assert self.role != Role.LEADER
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._fresh_start = False

    def _become_candidate(self) -> None:
        assert self.role != Role.LEADER
        self._reset(self.term + 1)
        self.role, self.vote = Role.CANDIDATE, self.id
        self._fresh_start = False

    def _become_leader(self) -> None:
        assert self.role == Role.CANDIDATE
        self._reset(self.term)
        self.role, self.leader = Role.LEADER, self.id
        self.tracker = Tracker(self.log.membership(), self.log.last_index(), self.cfg.inflight_max)
        own = self.tracker.progress.get(self.id)
        if own is not None:
            own.match, own.next = self.log.stable_index, self.log.last_index() + 1
        # §5.4.2 / §8: a NOOP of our term lets earlier entries commit and
        # tells us the commit point before we serve reads.
        self._append_own(EntryKind.NOOP, b"")
