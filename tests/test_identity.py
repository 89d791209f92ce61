"""Node identity and the committed cluster configuration, below the
processes: the identity file, the join rules the leader applies, the
configuration's encoding (addresses and settings), the quorum check before a
removal, and the cluster settings a node takes over its own."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import clusterparams, identity
from server.config import NodeConfig
from server.meta.service import JoinRefused, MetadataGroup, found_cluster
from server.meta.store import InitParams
from server.raft.config import ChangeOp, ConfChange, RaftConfig, apply_change
from server.raft.messages import Membership, ProposalDropped, ProtocolError
from server.raft.server import join_refusal
from server.raft.storage import LogStorage
from tests.raft.helpers import Net


def test_identity_is_created_once_and_kept(tmp_path):
    first = identity.load_or_create(str(tmp_path))
    assert not first.cluster_id and not first.member
    assert identity.load_or_create(str(tmp_path)) == first
    founded = identity.init_cluster(str(tmp_path))
    assert founded.node_id == first.node_id and len(founded.cluster_id) == 32 and founded.founder
    with pytest.raises(identity.IdentityError, match="already belongs"):
        identity.init_cluster(str(tmp_path))


def test_a_damaged_identity_file_is_one_sentence(tmp_path):
    (tmp_path / "identity").write_text("{not json")
    with pytest.raises(identity.IdentityError) as e:
        identity.load(str(tmp_path))
    assert "damaged" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "identity").write_text(json.dumps({"node_id": 0}))
    with pytest.raises(identity.IdentityError, match="out of range"):
        identity.load(str(tmp_path))


def test_a_member_without_raft_storage_refuses_to_start(tmp_path):
    """The amnesiac voter, caught locally: identity survived, the log did not."""
    meta = tmp_path / "meta"
    ident = found_cluster(str(tmp_path), str(meta / "raft"), "127.0.0.1:1")
    assert ident.member and LogStorage.has_state(str(meta / "raft"))
    for name in (meta / "raft").iterdir():
        name.unlink()
    with pytest.raises(identity.AmnesiaError) as e:
        MetadataGroup("127.0.0.1:1", ["127.0.0.1:2"], str(meta), pool=None, tick_s=0.01,
                      cfg=RaftConfig(), init=InitParams(now_ns=0), identity_dir=str(tmp_path))
    assert f"remove {ident.node_id:x}" in str(e.value)


def test_init_is_finished_after_a_crash_and_never_repeated(tmp_path):
    """Founding writes the cluster id, then the log, then the member mark;
    a crash after the first step is finished by the next start."""
    ident = identity.init_cluster(str(tmp_path))  # crashed right after this
    again = found_cluster(str(tmp_path), str(tmp_path / "raft"), "127.0.0.1:1")
    assert again.cluster_id == ident.cluster_id and again.member
    storage = LogStorage(str(tmp_path / "raft"))
    first = Membership.decode(storage.entries()[0].data)
    storage.close()
    assert first.voters == {ident.node_id} and first.name_of(ident.node_id) == "127.0.0.1:1"
    assert found_cluster(str(tmp_path), str(tmp_path / "raft"), "127.0.0.1:1") == again


def test_a_node_without_cluster_or_seeds_is_told_what_to_do(tmp_path):
    with pytest.raises(JoinRefused, match="--init"):
        MetadataGroup("127.0.0.1:1", [], str(tmp_path), pool=None, tick_s=0.01,
                      cfg=RaftConfig(), init=InitParams(now_ns=0))


CONFIG = Membership(frozenset({1, 2}), frozenset({3}), ((1, "a:1"), (2, "b:1"), (3, "c:1")))


@pytest.mark.parametrize("name, joiner, theirs, expect", [
    ("d:1", 4, "", ""),                        # a new node
    ("d:1", 4, "c" * 32, "belongs to cluster"),  # another cluster's node
    ("b:1", 9, "", "is the address of member 2 (a voter)"),  # b:1 lost its disk
    ("c:1", 3, "", ""),                        # a learner asking again
    ("e:1", 3, "", "is a member at c:1"),
    ("d:1", 0, "", "no node id"),
])
def test_join_rules(name, joiner, theirs, expect):
    refusal = join_refusal(CONFIG, "a" * 32, name, joiner, theirs)
    assert (expect in refusal) if expect else refusal == ""


names = st.text(alphabet="abc.:1234", min_size=1, max_size=20)


@settings(max_examples=200, derandomize=True)
@given(st.sets(st.integers(1, 2**63), max_size=6), st.data())
def test_configuration_encoding_round_trips(ids, data):
    ids = sorted(ids)
    cut = data.draw(st.integers(0, len(ids)))
    named = data.draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    params = data.draw(st.dictionaries(st.sampled_from(sorted(clusterparams.PARAMS)),
                                       st.integers(-2**63, 2**63 - 1)))
    m = Membership(frozenset(ids[:cut]), frozenset(ids[cut:]),
                   tuple(sorted((i, data.draw(names)) for i in named)), tuple(sorted(params.items())))
    assert Membership.decode(m.encode()) == m
    blob = m.encode()
    for end in range(len(blob)):  # every cut is refused or decodes (never crashes)
        try:
            Membership.decode(blob[:end])
        except ProtocolError:
            pass


def test_configuration_changes_keep_addresses_and_settings():
    m = Membership(frozenset({1}), frozenset(), ((1, "a:1"),), (("replication_factor", 3),))
    m = apply_change(m, ConfChange(ChangeOp.ADD_LEARNER, 2, "b:1"))
    with pytest.raises(ProposalDropped, match="already the address"):
        apply_change(m, ConfChange(ChangeOp.ADD_LEARNER, 3, "b:1"))
    m = apply_change(m, ConfChange(ChangeOp.PROMOTE, 2))
    m = apply_change(m, ConfChange(ChangeOp.SET_PARAMS, 0, params=(("replication_factor", 2),)))
    assert m.param("replication_factor") == 2 and m.name_of(2) == "b:1"
    m = apply_change(m, ConfChange(ChangeOp.REMOVE, 1))
    assert m.voters == {2} and m.names == ((2, "b:1"),) and m.param("replication_factor") == 2


def test_removal_needs_a_live_quorum_of_the_voters_left():
    """Five voters, two of them down: removing a dead one leaves 3 live of
    4 (quorum 3), allowed; with a third voter down, any removal leaves fewer
    live voters than the new quorum: refused.  The leader itself never."""
    net = Net(5)
    leader = net.elect(1)
    net.down = {4, 5}
    net.tick(12)  # an election timeout: 4 and 5 stop counting as live
    assert leader.live_members() == {1, 2, 3}
    assert leader.removal_refusal(5) is None
    assert "leader" in leader.removal_refusal(1)
    assert "not a member" in leader.removal_refusal(9)
    net.down = {3, 4, 5}
    net.tick(12)  # 3 goes quiet too, before check-quorum deposes the leader
    assert leader.live_members() == {1, 2}
    # Removing dead 5 leaves {1, 2, 3, 4}: 2 live, quorum 3.
    assert "2 of 4 voters are live, fewer than the quorum of 3" in leader.removal_refusal(5)
    net.tick(12)
    assert leader.live_members() == frozenset()  # deposed: a follower knows no liveness


def test_nodes_take_the_cluster_settings_over_their_own(caplog):
    local = NodeConfig(data_dir="/x", virtual_ids_per_node=256, replication_factor=3)
    committed = clusterparams.params_of(NodeConfig(data_dir="/y", virtual_ids_per_node=32,
                                                   replication_factor=2))
    eff = clusterparams.effective(local, committed)
    assert (eff.virtual_ids_per_node, eff.replication_factor) == (32, 2)
    assert "cluster.setting_overridden" in caplog.text
    with pytest.raises(clusterparams.ParamsError):
        clusterparams.check({"write_quorum_min": 3, "replication_factor": 2})
