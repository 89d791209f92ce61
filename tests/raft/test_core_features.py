"""Pre-vote, check-quorum, reads, snapshots, transfer, membership."""

import pytest

from server.raft.config import ChangeOp, ConfChange, RaftConfig
from server.raft.messages import (
    EntryKind, InstallSnapshot, Membership, ProposalDropped, Role,
    TimeoutNow, VoteRequest,
)

from .helpers import CFG, Net


# ------------------------------------------------------ pre-vote / quorum
def test_partitioned_node_does_not_inflate_terms_with_pre_vote():
    net = Net()
    net.elect(1)
    term = net.nodes[1].term
    net.cut = {(3, 1), (3, 2), (1, 3), (2, 3)}
    net.tick(60, nodes=[3])
    assert net.nodes[3].term == term  # only pre-votes, which change no term
    net.cut = set()
    net.tick(5)
    assert net.leaders() == [1] and net.nodes[1].term == term


def test_without_pre_vote_a_rejoining_node_disrupts():
    cfg = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2,
                     pre_vote=False, check_quorum=False)
    net = Net(cfg=cfg)
    net.elect(1)
    net.cut = {(3, 1), (3, 2), (1, 3), (2, 3)}
    net.tick(60, nodes=[3])
    assert net.nodes[3].term > net.nodes[1].term  # what pre-vote prevents


def test_follower_in_lease_ignores_higher_term_votes():
    net = Net()
    leader = net.elect(1)
    follower = net.nodes[2]
    follower.step(VoteRequest(3, 2, leader.term + 1, 100, leader.term + 1))
    assert follower.term == leader.term and not follower.has_ready()


def test_transfer_vote_bypasses_the_lease():
    net = Net()
    leader = net.elect(1)
    follower = net.nodes[2]
    follower.step(VoteRequest(3, 2, leader.term + 1, 100, leader.term, transfer=True))
    assert follower.term == leader.term + 1 and follower.vote == 3


def test_check_quorum_leader_steps_down_when_isolated():
    net = Net()
    net.elect(1)
    net.down = {2, 3}
    net.tick(25, nodes=[1])
    assert net.nodes[1].role == Role.FOLLOWER


def test_restarted_node_waits_a_lease_before_voting():
    import random
    from server.raft.core import RaftNode
    voters = Membership(frozenset({1, 2, 3}))
    n = RaftNode(1, CFG, random.Random(1), bootstrap=voters)  # fresh start
    n.step(VoteRequest(2, 1, 5, 10, 4))
    assert n.term == 1  # it may have acked a lease before it crashed


# ------------------------------------------------------------------ reads
def test_read_index_needs_a_quorum_round():
    net = Net()
    leader = net.elect(1)
    leader.propose(b"w")
    net.pump()
    net.down = {2, 3}
    leader.read_index(b"r1")
    net.pump()
    assert net.read_states[1] == []
    net.down = set()
    net.tick(2)
    (rs,) = net.read_states[1]
    assert rs.context == b"r1" and rs.index == leader.log.committed


def test_lease_read_answers_without_a_round_and_expires():
    cfg = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2, lease_reads=True)
    net = Net(cfg=cfg)
    leader = net.elect(1)
    net.tick(2)  # one acked heartbeat round grants the lease
    net.down = {2, 3}
    leader.read_index(b"fast")
    net.drain(1)
    assert [r.context for r in net.read_states[1]] == [b"fast"]
    net.tick(9, nodes=[1])
    leader.read_index(b"slow")
    net.drain(1)
    assert [r.context for r in net.read_states[1]] == [b"fast"]  # lease over


def test_lease_reads_require_check_quorum():
    with pytest.raises(ValueError):
        RaftConfig(lease_reads=True, check_quorum=False)


# -------------------------------------------------------------- snapshots
def test_lagging_follower_gets_snapshot_and_catches_up():
    net = Net()
    leader = net.elect(1)
    net.down = {3}
    for i in range(10):
        leader.propose(b"%d" % i)
        net.pump()
    leader.compact(leader.log.applied, b"image")
    net.down = set()
    net.tick(3)
    assert any(isinstance(m, InstallSnapshot) for m in net.sent)
    f = net.nodes[3]
    assert f.log.snap_index == leader.log.snap_index and f.log.snapshot.data == b"image"
    assert f.log.last_index() == leader.log.last_index()


def test_compact_beyond_applied_is_refused():
    from server.raft.messages import Unavailable
    net = Net()
    leader = net.elect(1)
    with pytest.raises(Unavailable):
        leader.compact(leader.log.last_index() + 5, b"")


# --------------------------------------------------------------- transfer
def test_leadership_transfer():
    net = Net()
    leader = net.elect(1)
    leader.transfer_leadership(3)
    with pytest.raises(ProposalDropped):
        leader.propose(b"x")
    net.pump()
    assert any(isinstance(m, TimeoutNow) for m in net.sent)
    assert net.leaders() == [3] and net.nodes[3].term == leader.term


def test_transfer_to_lagging_target_catches_it_up_first():
    net = Net()
    leader = net.elect(1)
    net.down = {3}
    leader.propose(b"a")
    net.pump()
    net.down = set()
    leader.transfer_leadership(3)
    net.pump()
    net.tick(2)
    assert net.leaders() == [3]


# ------------------------------------------------------------- membership
def grow(net, leader, node):
    leader.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, node))
    net.pump()
    net.tick(2)


def test_learner_replicates_but_never_campaigns_or_counts():
    net = Net(extra=[4])
    leader = net.elect(1)
    grow(net, leader, 4)
    learner = net.nodes[4]
    assert learner.log.membership().learners == {4}
    assert learner.log.last_index() == leader.log.last_index()
    net.down = {1}
    net.tick(60, nodes=[4])
    assert learner.role == Role.FOLLOWER and not any(
        isinstance(m, VoteRequest) and m.frm == 4 for m in net.sent)
    # quorum is still 2 of the 3 voters: the learner alone does not help
    net.down = {2, 3}
    leader.propose(b"x")
    net.pump()
    assert leader.log.committed < leader.log.last_index()


def test_second_change_refused_while_first_uncommitted():
    net = Net(extra=[4, 5])
    leader = net.elect(1)
    net.down = {2, 3}
    leader.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, 5))


def test_promote_then_quorum_grows():
    net = Net(extra=[4])
    leader = net.elect(1)
    grow(net, leader, 4)
    leader.propose_conf_change(ConfChange(ChangeOp.PROMOTE, 4))
    net.pump()
    assert leader.log.membership().voters == {1, 2, 3, 4}
    net.down = {3, 4}
    leader.propose(b"x")
    net.pump()
    assert leader.log.committed < leader.log.last_index()  # 2 of 4 is no quorum


def test_invalid_changes_are_refused():
    net = Net()
    leader = net.elect(1)
    for change in [ConfChange(ChangeOp.PROMOTE, 2), ConfChange(ChangeOp.ADD_LEARNER, 2),
                   ConfChange(ChangeOp.REMOVE, 9)]:
        with pytest.raises(ProposalDropped):
            leader.propose_conf_change(change)


def test_removing_the_leader_steps_it_down_after_commit():
    net = Net()
    leader = net.elect(1)
    leader.propose_conf_change(ConfChange(ChangeOp.REMOVE, 1))
    assert leader.role == Role.LEADER  # manages the cluster until committed
    net.pump()
    assert leader.role == Role.FOLLOWER
    net.tick(40)
    assert len(net.leaders()) == 1 and net.leaders()[0] in (2, 3)
    assert net.nodes[net.leaders()[0]].log.membership().voters == {2, 3}


def test_uncommitted_config_rolls_back_on_truncation():
    net = Net(extra=[4])
    leader = net.elect(1)
    net.cut = {(1, 3), (1, 4)}
    net.down = {2}
    leader.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, 4))
    # Only leader 1 holds the change; partition it away.
    net.down = {1}
    net.cut = set()
    net.tick(40, nodes=[2, 3])  # leases expire, 2 or 3 wins
    assert net.leaders() in ([2], [3])
    new = net.nodes[net.leaders()[0]]
    new.propose(b"next")
    net.pump()
    net.down = set()
    net.tick(4)
    old = net.nodes[1]
    assert 4 not in old.log.membership().learners  # rolled back with its entry
    assert all(e.kind != EntryKind.CONFIG or e.index == 1 for e in old.log.entries)


def test_lease_is_revoked_once_a_transfer_starts():
    cfg = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2, lease_reads=True)
    net = Net(cfg=cfg)
    leader = net.elect(1)
    net.tick(2)
    net.down = {2, 3}  # TimeoutNow is lost
    leader.transfer_leadership(2)
    assert any(isinstance(m, TimeoutNow) for m in net.drain(1))
    net.tick(1, nodes=[1])
    leader.transferee = None  # as if the transfer timed out (tick does this)
    leader.read_index(b"r")
    net.drain(1)
    # The target may have won with votes that bypass the followers' leases.
    assert net.read_states[1] == []


def test_lost_snapshot_is_resent_even_without_a_report():
    net = Net()
    leader = net.elect(1)
    net.down = {3}
    for i in range(5):
        leader.propose(b"%d" % i)
        net.pump()
    leader.compact(leader.log.applied, b"image")
    net.down = set()
    lost = []
    net.drop = lambda m: isinstance(m, InstallSnapshot) and not lost and not lost.append(m)
    net.tick(CFG.heartbeat_interval_ticks * (CFG.snapshot_retry_heartbeats + 5))
    assert lost and net.nodes[3].log.snap_index == leader.log.snap_index


def _lease_net():
    cfg = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2, lease_reads=True)
    net = Net(cfg=cfg)
    leader = net.elect(1)
    net.tick(2)  # one acked heartbeat round grants the lease
    return net, leader


def test_lease_read_index_is_the_commit_index_while_the_lease_holds():
    net, leader = _lease_net()
    assert leader.lease_read_index() == leader.log.committed
    assert net.nodes[2].lease_read_index() is None  # followers never answer
    net.down = {2, 3}
    net.tick(9, nodes=[1])
    assert leader.lease_read_index() is None  # no quorum acked lately


def test_an_expired_lease_is_renewed_only_by_a_round_sent_after_the_stall():
    net, leader = _lease_net()
    # A heartbeat round leaves before the stall; its acks arrive after it.
    leader.tick()
    leader.tick()  # the round goes out on the heartbeat tick
    sent_before = net.drain(1)
    assert sent_before, "the leader sent a heartbeat round"
    leader.expire_lease()
    assert leader.lease_read_index() is None
    for m in sent_before:
        net.nodes[m.to].step(m)
    net.pump()  # acks of the old round: still no lease
    assert leader.lease_read_index() is None
    net.tick(2)  # a fresh round, acked
    assert leader.lease_read_index() == leader.log.committed


def test_only_a_leader_keeping_its_term_and_vote_sends_before_its_write():
    net = Net()
    node = net.nodes[1]
    node.campaign()
    while node.role != Role.LEADER:
        rd = node.ready()  # pre-vote, then the vote for itself: durable first
        assert rd.messages and not node.may_send_before_persist(rd)
        node.advance(rd)
        for m in rd.messages:
            net.nodes[m.to].step(m)
        for peer in (2, 3):
            for m in net.drain(peer):
                node.step(m)
    leader = node
    rd = leader.ready()  # leader of the term it voted in: its first append
    assert rd.messages and leader.may_send_before_persist(rd)
    leader.advance(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    net.pump()
    leader.propose(b"x")
    rd = leader.ready()
    assert rd.entries and rd.messages and leader.may_send_before_persist(rd)
    for m in rd.messages:
        net.nodes[m.to].step(m)
    follower = net.nodes[2]
    frd = follower.ready()
    assert frd.messages and not follower.may_send_before_persist(frd)
    follower.advance(frd)
    for m in frd.messages:
        leader.step(m)
    # One follower's ack is a quorum of 3 only with the leader's own copy,
    # which counts once advance() says it is written.
    assert leader.log.committed < rd.entries[-1].index
    leader.advance(rd)
    assert leader.log.committed == rd.entries[-1].index


def test_followers_behind_counts_only_followers_being_streamed_to():
    net = Net()
    leader = net.elect(1)
    net.pump()
    assert not leader.followers_behind(leader.log.committed)
    net.down = {3}
    leader.propose(b"a")
    net.pump()
    index = leader.log.committed
    assert leader.followers_behind(index)        # 3 missed it, still streamed to
    assert not net.nodes[2].followers_behind(index)  # followers never say so
    leader.report_unreachable(3)                 # now probing: a snapshot is fair
    assert not leader.followers_behind(index)
    net.down = set()
    net.tick(2)
    assert not leader.followers_behind(index)
