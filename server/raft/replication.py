"""Leader side of log replication, commitment, ReadIndex / lease reads and
leadership transfer (Raft §5.3, §5.4.2, §6.4, thesis §3.10).

Mixed into RaftNode (core.py).

Rules:
  * Append-only: the leader never rewrites its own log.
  * AppendEntries are batched (append_entries_max / append_bytes_max) and
    pipelined: in REPLICATE state `next` advances when sending, with at most
    inflight_max messages outstanding; a rejection falls back to PROBE.
  * A rejection carries (hint_index, hint_term); the leader jumps `next`
    past the whole conflicting term instead of one index per round trip.
  * An entry is committed once a quorum of the *configured* voters holds it
    and it is of the leader's current term (§5.4.2); earlier entries commit
    with it.  The leader's own vote counts only for persisted entries.
  * Every heartbeat broadcast is a numbered round.  ReadIndex requests are
    attached to the next round and released once a quorum acks a round that
    was sent after they were registered.  A quorum-acked round also extends
    the leader lease to sent_tick + election_timeout - lease_margin.
"""

from __future__ import annotations

import dataclasses

from .messages import (
    AppendEntries, AppendResponse, Compacted, Heartbeat, HeartbeatResponse,
    InstallSnapshot, NodeId, ProtocolError, ReadState, Role, TimeoutNow,
)
from .progress import ProgressState

PURE_CORE = True


@dataclasses.dataclass
class ReadRound:
    seq: int
    sent_tick: int
    acks: set
    reads: list  # of ReadState


class ReplicationMixin:
    # ------------------------------------------------------------ sending
    def _peers(self) -> list[NodeId]:
        return sorted(n for n in self.tracker.progress if n != self.id)

    def _broadcast_append(self) -> None:
        self.commit_unsent = False  # every append carries the commit index
        for peer in self._peers():
            self._send_append(peer)

    def _send_append(self, to: NodeId, send_if_empty: bool = True) -> bool:
        pr = self.tracker.progress[to]
        if pr.is_paused():
            return False
        last = self.log.last_index()
        try:
            prev_term = self.log.term(pr.next - 1)
            entries = self.log.slice(pr.next, last + 1, self.cfg.append_bytes_max,
                                     self.cfg.append_entries_max) if pr.next <= last else []
        except Compacted:
            return self._send_snapshot(to)
        if not entries and not send_if_empty:
            return False
        self._send(AppendEntries(
            frm=self.id, to=to, term=self.term, prev_index=pr.next - 1,
            prev_term=prev_term, entries=tuple(entries), commit=self.log.committed))
        pr.sent_entries(entries[-1].index if entries else 0)
        pr.check()
        return True

    def _send_snapshot(self, to: NodeId) -> bool:
        pr = self.tracker.progress[to]
        if not pr.recent_active:
            return False  # do not ship a big snapshot to a node that is down
        snapshot = self.log.snapshot
        pr.become_snapshot(snapshot.meta.index)
        self._send(InstallSnapshot(frm=self.id, to=to, term=self.term, snapshot=snapshot))
        return True

    def _broadcast_heartbeat(self) -> None:
        round_ = self._new_round()
        for peer in self._peers():
            pr = self.tracker.progress[peer]
            # Never tell a follower to commit past what it is known to hold.
            self._send(Heartbeat(frm=self.id, to=peer, term=self.term,
                                 commit=min(pr.match, self.log.committed),
                                 read_seq=round_.seq))
        self._check_rounds()

    # ---------------------------------------------------------- responses
    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return  # a node removed from the membership
        pr.recent_active, pr.heard_tick = True, self.ticks
        if not m.success:
            hint = m.hint_index
            if m.hint_term > 0:
                hint, _ = self.log.find_conflict_by_term(m.hint_index, m.hint_term)
            if pr.maybe_decrease(m.reject_index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        if m.match_index > self.log.last_index():
            raise ProtocolError(f"{m.frm} acks {m.match_index} beyond our log")
        if not pr.maybe_update(m.match_index):
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        self._maybe_commit()
        if self.tracker is None:
            return  # the commit removed us: we stepped down
        while self._send_append(m.frm, send_if_empty=False):
            pass  # fill the pipeline window
        if m.frm == self.transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.frm)

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.tracker.progress.get(m.frm)
        if pr is None:
            return
        pr.recent_active, pr.heard_tick = True, self.ticks
        pr.probe_sent = False
        if pr.state == ProgressState.SNAPSHOT:
            # The follower is alive but never acked the snapshot: the driver
            # did not report the send (or lost it).  Retry after a while.
            pr.snapshot_stalled += 1
            if pr.snapshot_stalled >= self.cfg.snapshot_retry_heartbeats:
                pr.become_probe()
        if pr.state == ProgressState.REPLICATE and pr.is_paused():
            # Appends may have been lost; free one slot so we probe again.
            pr.inflight.popleft()
        if pr.match < self.log.last_index():
            self._send_append(m.frm)
        round_ = self.rounds.get(m.read_seq)
        if round_ is not None:
            round_.acks.add(m.frm)
            self._check_rounds()

    def _send_timeout_now(self, to: NodeId) -> None:
        # The target's election bypasses the followers' leases, so our lease
        # means nothing for the rest of this term, even if the transfer is
        # later abandoned.
        self.lease_revoked = True
        self._send(TimeoutNow(frm=self.id, to=to, term=self.term))

    def report_snapshot(self, to: NodeId, ok: bool) -> None:
        """Driver: the InstallSnapshot to `to` finished (ok) or failed."""
        pr = self.tracker.progress.get(to) if self.tracker else None
        if pr is None or pr.state != ProgressState.SNAPSHOT:
            return
        # On success, resume right after the snapshot but wait for the
        # follower's ack (or heartbeat answer) before sending more.
        pr.become_probe()
        pr.probe_sent = ok

    def report_unreachable(self, to: NodeId) -> None:
        """Driver: sending to `to` failed; stop pipelining into the void."""
        pr = self.tracker.progress.get(to) if self.tracker else None
        if pr is not None and pr.state == ProgressState.REPLICATE:
            pr.become_probe()

    # ------------------------------------------------------------- commit
    def _maybe_commit(self) -> None:
        """Advance the commit index if a quorum allows.  Followers learn it
        from the next append, or at the next tick at the latest: an append
        sent only to carry the commit costs every follower a step call, a
        Ready and an answer per commit, about half of the messages of a
        proposal at one in flight, while nothing waits on a follower's
        apply (clients read from the leader; a follower's ReadIndex waits
        at most that tick)."""
        index = self.tracker.committed_index()
        if index <= self.log.committed or self.log.term(index) != self.term:
            return  # §5.4.2: count replicas only for current-term entries
        self.log.commit_to(index)
        self.commit_unsent = True
        self._on_commit_advanced()

    def _on_commit_advanced(self) -> None:
        if self._committed_in_term() and self.reads_waiting:
            waiting, self.reads_waiting = self.reads_waiting, []
            for ctx in waiting:
                self._start_read(ctx)
        membership = self.log.membership()
        if self.log.config_index() <= self.log.committed and self.id not in membership.voters:
            # Thesis §4.2.2: a removed leader steps down once the change that
            # removed it is committed; it managed the cluster until then.
            self._become_follower(self.term, None)

    def _committed_in_term(self) -> bool:
        return self.log.term(self.log.committed) == self.term

    # -------------------------------------------------------------- reads
    def _start_read(self, ctx: bytes) -> None:
        state = ReadState(self.log.committed, ctx)
        if self._read_needs_no_round():
            self.read_states.append(state)
            return
        round_ = self._new_round()
        round_.reads.append(state)
        for peer in self._peers():
            pr = self.tracker.progress[peer]
            self._send(Heartbeat(frm=self.id, to=peer, term=self.term,
                                 commit=min(pr.match, self.log.committed),
                                 read_seq=round_.seq))

    def lease_read_index(self) -> int | None:
        """Driver: the index a read may wait for right now without any
        round, if this leader's lease covers it (or it is the only voter);
        None otherwise (then use read_index).  Same answer read_index would
        give through a ReadState, minus the trip through Ready."""
        if self.role != Role.LEADER or not self._committed_in_term():
            return None
        return self.log.committed if self._read_needs_no_round() else None

    def followers_behind(self, index: int) -> bool:
        """Driver, before compacting to ``index``: whether a follower this
        leader is streaming entries to has not acked ``index`` yet.  It would
        need a whole snapshot after the compaction, only for being a few
        entries behind; a follower that is down or probing is not counted."""
        if self.role != Role.LEADER or self.tracker is None:
            return False
        return any(pr.state == ProgressState.REPLICATE and pr.match < index
                   for peer, pr in self.tracker.progress.items() if peer != self.id)

    def expire_lease(self) -> None:
        """Driver: real time passed that ticks did not count (the process
        stalled), so the lease, measured in ticks, no longer bounds it: no
        lease read until a heartbeat round sent from now on is acked."""
        self.lease_until = min(self.lease_until, self.ticks)
        # A round sent before the stall measured its lease from a tick that
        # now stands for an earlier real time than it did.
        self.lease_rounds_from = self.ticks

    def _read_needs_no_round(self) -> bool:
        """A sole voter, or a leader within its lease, knows its commit
        index is current without asking a quorum."""
        return self.log.membership().voters == {self.id} or self._lease_valid()

    def _lease_valid(self) -> bool:
        return (self.cfg.lease_reads and self.transferee is None
                and not self.lease_revoked and self.ticks < self.lease_until)

    def _new_round(self) -> ReadRound:
        self.read_seq += 1
        acks = {self.id} if self.id in self.log.membership().voters else set()
        round_ = ReadRound(self.read_seq, self.ticks, acks, [])
        self.rounds[round_.seq] = round_
        return round_

    def _check_rounds(self) -> None:
        done = [r for r in self.rounds.values() if self.tracker.has_quorum(r.acks)]
        if not done:
            self._expire_rounds()
            return
        newest = max(done, key=lambda r: r.seq)
        if newest.sent_tick > self.lease_rounds_from:
            lease = self.cfg.election_timeout_ticks - self.cfg.lease_margin_ticks
            self.lease_until = max(self.lease_until, newest.sent_tick + lease)
        for seq in sorted(s for s in self.rounds if s <= newest.seq):
            self.read_states.extend(self.rounds.pop(seq).reads)

    def _expire_rounds(self) -> None:
        # Rounds without reads are only lease candidates; keep them one
        # election timeout (older acks could not extend the lease anyway).
        horizon = self.ticks - self.cfg.election_timeout_ticks
        for seq in [s for s, r in self.rounds.items() if not r.reads and r.sent_tick < horizon]:
            del self.rounds[seq]
