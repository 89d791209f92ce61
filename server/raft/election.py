"""Leader election: pre-vote, vote granting, tallying (Raft §5.2, §5.4.1,
thesis §9.6 pre-vote, §6.2 / §4.2.3 leader stickiness).

Mixed into RaftNode (core.py); uses its state and helpers.

Rules:
  * A node campaigns only if it is a voter in its own latest membership.
  * With pre_vote, a node first asks "would you vote for me at term+1?"
    without changing any durable state, so a partitioned node cannot inflate
    terms and depose a healthy leader when it rejoins.
  * A vote is granted iff the term is current, we have not voted for someone
    else in it, and the candidate's log is at least as up to date as ours.
  * With check_quorum, a node that heard from a leader less than an election
    timeout ago ignores (pre-)vote requests of higher terms (the "lease"),
    unless the request is a leadership transfer.  A freshly started node
    also waits one election timeout: it may have acked the leader's lease
    before it crashed.
  * Only votes from voters of the candidate's own membership count.
"""

from __future__ import annotations

from .messages import Role, VoteRequest, VoteResponse

PURE_CORE = True


class ElectionMixin:
    def _promotable(self) -> bool:
        return self.id in self.log.membership().voters

    def _in_lease(self) -> bool:
        if not self.cfg.check_quorum:
            return False
        if self.leader is None and not self._fresh_start:
            return False
        return self.election_elapsed < self.cfg.election_timeout_ticks

    def campaign(self, transfer: bool = False) -> None:
        """Start an election now (normally called by tick on timeout)."""
        self._start_election(pre_vote=self.cfg.pre_vote and not transfer,
                             transfer=transfer)

    def _start_election(self, pre_vote: bool, transfer: bool) -> None:
        if not self._promotable():
            return
        if pre_vote:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes = {self.id: True}
        if self._tally(transfer):
            return
        for voter in sorted(self.log.membership().voters - {self.id}):
            self._send(VoteRequest(
                frm=self.id, to=voter, term=term,
                last_log_index=self.log.last_index(),
                last_log_term=self.log.last_term(),
                pre_vote=pre_vote, transfer=transfer))

    def _handle_vote_request(self, m: VoteRequest) -> None:
        # Called with m.term >= self.term (and for a real vote ==, after the
        # term rules moved us to it).
        if m.pre_vote:
            can_vote = m.term > self.term or (
                self.vote in (None, m.frm) and self.leader is None)
        else:
            can_vote = self.vote == m.frm or (self.vote is None and self.leader is None)
        granted = can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if granted and not m.pre_vote:
            self.vote = m.frm
            self.election_elapsed = 0  # granting a vote counts as progress
        # A granted pre-vote answers in the future term so the pre-candidate
        # can match it; a refusal carries our term so it can catch up.
        term = m.term if granted else self.term
        self._send(VoteResponse(frm=self.id, to=m.frm, term=term,
                                granted=granted, pre_vote=m.pre_vote))

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self.role == Role.PRE_CANDIDATE and m.pre_vote:
            if m.term != self.term + 1 and m.granted:
                return  # answer to an older pre-campaign
        elif self.role == Role.CANDIDATE and not m.pre_vote:
            if m.term != self.term:
                return
        else:
            return  # not campaigning, or a response of the other kind
        self.votes[m.frm] = m.granted
        self._tally()

    def _tally(self, transfer: bool = False) -> bool:
        """Act on the votes so far; True if the election is decided."""
        membership = self.log.membership()
        granted = sum(1 for v in membership.voters if self.votes.get(v) is True)
        rejected = sum(1 for v in membership.voters if self.votes.get(v) is False)
        if granted >= membership.quorum():
            if self.role == Role.PRE_CANDIDATE:
                self._start_election(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return True
        if rejected > len(membership.voters) - membership.quorum():
            self._become_follower(self.term, None)
            return True
        return False
