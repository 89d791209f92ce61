"""Figure 2 of the Raft paper, rule by rule, plus typed errors."""

import random

import pytest

from server.raft.core import RaftNode
from server.raft.messages import (
    AppendEntries, AppendResponse, Entry, EntryKind, HardState, Heartbeat, Membership,
    NotLeader, ProtocolError, Role, VoteRequest, VoteResponse,
)

from .helpers import CFG, Net

VOTERS = Membership(frozenset({1, 2, 3}))
CONF = Entry(1, 1, EntryKind.CONFIG, VOTERS.encode())


def node(entries=(CONF,), term=1, vote=None, commit=1, cfg=CFG, nid=1):
    n = RaftNode(nid, cfg, random.Random(0), hard_state=HardState(term, vote, commit),
                 entries=list(entries))
    n._fresh_start = False
    return n


def out(n):
    rd = n.ready()
    n.advance(rd)
    return rd


def E(index, term, data=b""):
    return Entry(index, term, EntryKind.COMMAND, data)


# ----------------------------------------------------------------- terms
def test_higher_term_makes_follower_and_adopts_term():
    n = node()
    n.campaign(transfer=True)  # candidate at term 2
    assert n.role == Role.CANDIDATE and n.term == 2
    n.step(AppendEntries(2, 1, 5, 1, 1, (), 1))
    assert (n.role, n.term, n.leader, n.vote) == (Role.FOLLOWER, 5, 2, None)


def test_stale_term_message_is_rejected_and_changes_nothing():
    n = node(term=5)
    out(n)
    n.step(AppendEntries(2, 1, 3, 1, 1, (E(2, 3),), 2))
    assert n.log.last_index() == 1 and n.term == 5
    (resp,) = out(n).messages
    assert isinstance(resp, AppendResponse) and resp.term == 5 and not resp.success


def test_message_for_another_node_is_a_protocol_error():
    with pytest.raises(ProtocolError):
        node().step(Heartbeat(2, 3, 1, 0))


# ------------------------------------------------------------------ votes
def test_vote_granted_once_per_term():
    n = node()
    n.step(VoteRequest(2, 1, 2, 1, 1))
    n.step(VoteRequest(3, 1, 2, 1, 1))
    rd = out(n)
    assert [m.granted for m in rd.messages] == [True, False]
    assert rd.hard_state.vote == 2
    n.step(VoteRequest(2, 1, 2, 1, 1))  # a retry from the same candidate
    assert out(n).messages[0].granted


@pytest.mark.parametrize("last_index,last_term,granted", [
    (2, 1, False),   # older last term loses even when longer
    (3, 2, False),   # same last term, shorter log
    (4, 2, True),    # equal logs
    (9, 2, True),    # same term, longer
    (1, 3, True),    # newer last term wins even when shorter
])
def test_vote_requires_up_to_date_log(last_index, last_term, granted):
    n = node(entries=(CONF, E(2, 1), E(3, 2), E(4, 2)), term=2)
    n.step(VoteRequest(2, 1, 3, last_index, last_term))
    assert out(n).messages[0].granted is granted


def test_vote_is_persisted_before_it_is_sent():
    n = node()
    n.step(VoteRequest(2, 1, 2, 1, 1))
    rd = n.ready()
    assert rd.hard_state == HardState(2, 2, 1) and rd.messages[0].granted


# ---------------------------------------------------------- append entries
def test_append_consistency_check_rejects_with_hint():
    n = node(entries=(CONF, E(2, 1), E(3, 1)), term=3)
    n.step(AppendEntries(2, 1, 3, prev_index=5, prev_term=3, entries=(), commit=1))
    (r,) = out(n).messages
    assert not r.success and r.reject_index == 5 and (r.hint_index, r.hint_term) == (3, 1)
    assert n.log.last_index() == 3


def test_conflicting_suffix_is_truncated_and_replaced():
    n = node(entries=(CONF, E(2, 1), E(3, 2), E(4, 2)), term=3)
    out(n)
    n.step(AppendEntries(2, 1, 3, 2, 1, (E(3, 3), E(4, 3), E(5, 3)), commit=1))
    assert [e.term for e in n.log.entries] == [1, 1, 3, 3, 3]
    rd = out(n)
    assert [e.index for e in rd.entries] == [3, 4, 5]
    assert rd.messages[0].success and rd.messages[0].match_index == 5


def test_existing_matching_entries_are_kept_on_a_stale_append():
    n = node(entries=(CONF, E(2, 3), E(3, 3)), term=3)
    out(n)
    n.step(AppendEntries(2, 1, 3, 1, 1, (E(2, 3),), commit=1))  # reordered older message
    assert n.log.last_index() == 3  # an old, shorter append never truncates


def test_rewriting_a_committed_entry_is_refused_without_change():
    n = node(entries=(CONF, E(2, 1), E(3, 1)), term=1, commit=3)
    out(n)
    with pytest.raises(ProtocolError):
        n.step(AppendEntries(2, 1, 2, 1, 1, (E(2, 2),), commit=1))
    assert n.term == 1 and n.log.last_index() == 3 and not n.has_ready()


def test_follower_commit_is_min_of_leader_commit_and_last_new_entry():
    n = node(term=2)
    n.step(AppendEntries(2, 1, 2, 1, 1, (E(2, 2),), commit=10))
    assert n.log.committed == 2


def test_two_leaders_in_one_term_is_a_protocol_error():
    net = Net()
    leader = net.elect(1)
    with pytest.raises(ProtocolError):
        leader.step(AppendEntries(2, 1, leader.term, 1, 1, (), 1))


# ----------------------------------------------------------------- commit
def test_leader_commits_current_term_entry_on_quorum():
    net = Net()
    leader = net.elect(1)
    p = leader.propose(b"a")
    net.pump()
    assert leader.log.committed == p.index
    # Followers learn the commit from the next append or, with none to
    # send, at the leader's next tick -- never a message just for it.
    assert all(n.log.committed < p.index for i, n in net.nodes.items() if i != 1)
    q = leader.propose(b"b")
    net.pump()
    assert all(n.log.committed >= p.index for n in net.nodes.values())
    net.tick(nodes=[1])
    assert all(n.log.committed == q.index for n in net.nodes.values())
    assert [e.data for e in net.applied[2] if e.kind == EntryKind.COMMAND] == [b"a", b"b"]


def test_old_term_entry_is_not_committed_by_counting_replicas():
    # Figure 8: node 1 leads term 3 holding an entry from term 2 that a
    # majority has; it may not commit it until an entry of term 3 commits.
    entries = (CONF, E(2, 2))
    n = node(entries=entries, term=2, commit=1)
    n.campaign(transfer=True)
    n.step(VoteResponse(2, 1, 3, True))
    assert n.role == Role.LEADER
    noop = n.log.last_index()
    out(n)  # persisted: own match = noop index
    n.step(AppendResponse(2, 1, 3, True, match_index=2))
    assert n.log.committed == 1  # index 2 (term 2) is on a majority: not enough
    n.step(AppendResponse(2, 1, 3, True, match_index=noop))
    assert n.log.committed == noop


def test_leader_counts_itself_only_after_persisting():
    n = node(entries=(CONF,), term=1)
    n.campaign(transfer=True)
    n.step(VoteResponse(2, 1, 2, True))
    n.propose(b"x")
    n.step(AppendResponse(2, 1, 2, True, match_index=2))
    assert n.log.committed == 1  # peer 2 alone is not a quorum; own entry not yet fsynced
    out(n)
    assert n.log.committed == 2


def test_leader_log_is_append_only():
    net = Net()
    leader = net.elect(1)
    before = list(leader.log.entries)
    leader.step(AppendResponse(2, 1, leader.term, False, reject_index=1, hint_index=0))
    assert leader.log.entries[:len(before)] == before


# ---------------------------------------------------------- typed errors
def test_propose_on_follower_is_not_leader_with_hint():
    net = Net()
    net.elect(2)
    with pytest.raises(NotLeader) as err:
        net.nodes[1].propose(b"x")
    assert err.value.leader_hint == 2


def test_ready_twice_without_advance_is_a_protocol_error():
    n = node()
    n.campaign(transfer=True)
    n.ready()
    with pytest.raises(ProtocolError):
        n.ready()


def test_restart_refuses_commit_beyond_log():
    with pytest.raises(ProtocolError):
        node(commit=5)


def test_step_between_ready_and_advance_keeps_replaced_entries_unstable():
    n = node(term=2)
    out(n)
    n.step(AppendEntries(2, 1, 2, 1, 1, (E(2, 2), E(3, 2)), commit=1))
    rd = n.ready()  # driver starts persisting 2..3 of term 2
    n.step(AppendEntries(3, 1, 3, 1, 1, (E(2, 3),), commit=1))  # new leader replaces them
    n.advance(rd)
    assert n.log.stable_index == 1  # 2..3 of term 2 no longer prove anything
    rd2 = out(n)
    assert [(e.index, e.term) for e in rd2.entries] == [(2, 3)]
    assert rd2.hard_state.term == 3 and not n.has_ready()
