"""Seeded simulation of a Raft cluster (FoundationDB/TigerBeetle style).

One `random.Random(seed)` drives everything: message loss, duplication,
reordering (random delays), symmetric and asymmetric partitions, crashes at
any point of the driver cycle (losing whatever was not persisted yet),
restarts, lost disks, proposals, reads, membership changes and leadership
transfers.  After every step the checker asserts election safety, log
matching, leader completeness and state-machine safety; after the faults
stop and the network heals, every acknowledged proposal must be applied on
every live member and every lost machine must be replaced (liveness).

A lost disk (log, hard state, snapshot and state machine) is modelled as in
production: the machine comes back under a fresh node id with empty storage
and never bootstraps; the simulation's operator has the leader remove the
old id once a quorum of the remaining voters is up (until then it is a dead
voter), add the new id as a learner at the machine's address, and promote it
if it replaced a voter.  A wipe that would make dead ids half or more of a
configuration's voters is refused: no protocol survives that.  The flag
`amnesia_keeps_id` is the broken model (same id, empty disk) the checker
must catch.

    python -m tests.raft.simulation --seeds 5000          # many seeds
    python -m tests.raft.simulation --seed 1234 --nodes 5 # replay one
    python -m tests.raft.simulation --amnesia-keeps-id    # the broken model
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import random
import sys
import time

from server.raft.config import ChangeOp, ConfChange, RaftConfig
from server.raft.core import RaftNode
from server.raft.messages import (
    Entry, EntryKind, HardState, InstallSnapshot, Membership, RaftError, Role, Snapshot,
)


# Once faults stop, a healthy cluster must converge well within this.
QUIESCE_STEPS_MAX = 2000
# The operator never lets a configuration hold more members than this (dead
# ids awaiting removal included), nor promotes past VOTERS_MAX at random.
MEMBERS_MAX = 7
VOTERS_MAX = 5


class SafetyViolation(AssertionError):
    pass


@dataclasses.dataclass
class Disk:
    """What survives a crash: only what a Ready handed over and the driver
    'fsynced' before the crash point."""
    hard_state: HardState = HardState()
    snapshot: Snapshot | None = None
    entries: list = dataclasses.field(default_factory=list)

    def save(self, hs, entries, snapshot) -> None:
        if snapshot is not None:
            # A leader's snapshot replaces the whole log (RaftLog.restore).
            self.snapshot, self.entries = snapshot, []
        if entries:
            first = entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(entries)
        if hs is not None and (hs.term, hs.vote) != (self.hard_state.term, self.hard_state.vote):
            # Like LogStorage.save: a change of commit alone is not written
            # (commit is volatile; a restarted node relearns it).
            self.hard_state = hs

    def compact(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]


class SimNode:
    def __init__(self, cluster: "Cluster", node_id: int, bootstrap: Membership | None,
                 name: str) -> None:
        # `name` is the machine's address: it outlives a lost disk, the id does not.
        self.cluster, self.id, self.name = cluster, node_id, name
        self.disk = Disk()
        self.restarts = 0
        self.alive = True
        self._boot(bootstrap)

    def _boot(self, bootstrap: Membership | None) -> None:
        d = self.disk
        rng = random.Random(self.cluster.rng.getrandbits(64))
        self.core = RaftNode(self.id, self.cluster.cfg, rng, hard_state=d.hard_state,
                             snapshot=d.snapshot, entries=list(d.entries), bootstrap=bootstrap)
        # The state machine is rebuilt from the snapshot, then replayed.
        self.sm: dict[int, tuple] = pickle.loads(d.snapshot.data) if d.snapshot else {}
        self.applied = d.snapshot.meta.index if d.snapshot else 0

    def crash(self) -> None:
        self.alive = False

    def restart(self) -> None:
        self.restarts += 1
        self.alive = True
        self._boot(None)

    def drive(self) -> None:
        """persist -> send -> apply -> advance, with a chance to crash
        between any two of them."""
        c = self.cluster
        while self.alive and self.core.has_ready():
            rd = self.core.ready()
            # Like RaftService: a leader sends before its own write.
            early = self.core.may_send_before_persist(rd)
            if early:
                for m in rd.messages:
                    c.send(m)
            if c.maybe_crash_mid_ready(self, "before persist"):
                return
            self.disk.save(rd.hard_state, list(rd.entries), rd.snapshot)
            if c.maybe_crash_mid_ready(self, "before send"):
                return
            if not early:
                for m in rd.messages:
                    c.send(m)
            c.interleave(self)  # the contract allows steps before advance()
            if c.maybe_crash_mid_ready(self, "before apply"):
                return
            if rd.snapshot is not None:
                self.sm = pickle.loads(rd.snapshot.data)
                self.applied = rd.snapshot.meta.index
                c.check_snapshot(self, rd.snapshot)
            for e in rd.committed_entries:
                if e.index <= self.applied:
                    continue
                assert e.index == self.applied + 1, (self.id, e.index, self.applied)
                self.sm[e.index] = (e.term, int(e.kind), e.data)
                self.applied = e.index
                c.on_apply(self, e)
            for rs in rd.read_states:
                c.on_read_state(self, rs)
            self.core.advance(rd)
            if self.applied - self.core.log.snap_index > c.compact_every:
                snap = self.core.compact(self.applied, pickle.dumps(self.sm))
                self.disk.compact(snap)


@dataclasses.dataclass
class Faults:
    loss: float = 0.05
    dup: float = 0.03
    delay_max_ticks: int = 3
    crash: float = 0.004
    crash_mid_ready: float = 0.002
    restart: float = 0.05
    partition: float = 0.01
    heal: float = 0.03
    propose: float = 0.3
    conf_change: float = 0.02
    transfer: float = 0.01
    read: float = 0.05
    wipe: float = 0.004     # per step: one machine loses its whole disk
    replace: float = 0.2    # per step: the operator's next replacement change


class Cluster:
    def __init__(self, seed: int, nodes: int = 3, spares: int = 2,
                 faults: Faults | None = None, cfg: RaftConfig | None = None,
                 amnesia_keeps_id: bool = False) -> None:
        self.seed, self.rng = seed, random.Random(seed)
        self.amnesia_keeps_id = amnesia_keeps_id
        self.faults = faults or Faults()
        self.cfg = cfg or self._random_config()
        self.compact_every = self.rng.choice([5, 20, 1000])
        ids = range(1, nodes + spares + 1)
        voters = Membership(voters=frozenset(ids[:nodes]),
                            names=tuple((i, self._address(i)) for i in ids[:nodes]))
        # Current machines by their current id; a wiped machine's old id
        # moves to `gone` and its new id to `to_add` (value: replaces a voter).
        self.nodes = {i: SimNode(self, i, voters if i <= nodes else None, self._address(i))
                      for i in ids}
        self.gone: set[int] = set()
        self.to_remove: set[int] = set()
        self.to_add: dict[int, bool] = {}
        self.next_id = nodes + spares + 1
        self.committed_config: tuple[int, Membership] = (1, voters)
        self.now = 0
        self.in_flight: list[tuple[int, int, object]] = []
        self.msg_seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.leaders: dict[int, int] = {}                 # term -> leader
        self.committed: dict[int, tuple] = {}              # index -> (term, kind, data)
        self.committed_seen_term: dict[int, int] = {}      # index -> term it was seen committed
        self.proposals: dict[bytes, tuple[int, int]] = {}  # data -> (term, index)
        self.acked: dict[int, bytes] = {}                  # index -> data
        self.ack_tick: dict[int, int] = {}                 # index -> step first seen acked
        self.next_cmd = 0
        self.faults_on = True
        self.clients_on = True
        self.reads_served = 0
        self.stats = dict(crashes=0, partitions=0, wipes=0, wipes_refused=0,
                          conf_changes=0, replace_changes=0, member_wipes=0, transfers=0,
                          elections=0, snapshots_installed=0)

    @staticmethod
    def _address(machine: int) -> str:
        return f"10.0.0.{machine}:7600"

    def _random_config(self) -> RaftConfig:
        r = self.rng
        check_quorum = r.random() < 0.8
        return RaftConfig(
            election_timeout_ticks=10, heartbeat_interval_ticks=r.choice([1, 2, 3]),
            pre_vote=r.random() < 0.8, check_quorum=check_quorum,
            lease_reads=check_quorum and r.random() < 0.5,
            append_entries_max=r.choice([1, 4, 64]), append_bytes_max=r.choice([100, 300, 1 << 20]),
            inflight_max=r.choice([1, 4, 16]))

    def fail(self, text: str) -> None:
        raise SafetyViolation(f"seed {self.seed} step {self.now}: {text}")

    # ------------------------------------------------------------- network
    def send(self, m) -> None:
        f = self.faults
        copies = 2 if self.faults_on and self.rng.random() < f.dup else 1
        for _ in range(copies):
            self.msg_seq += 1
            delay = self.rng.randint(1, f.delay_max_ticks)
            self.in_flight.append((self.now + delay, self.msg_seq, m))

    def _deliver_due(self) -> None:
        due = [x for x in self.in_flight if x[0] <= self.now]
        self.in_flight = [x for x in self.in_flight if x[0] > self.now]
        self.rng.shuffle(due)
        for _, _, m in due:
            self._deliver(m)

    def _deliver(self, m) -> None:
        target = self.nodes.get(m.to)  # None: a wiped machine's old id
        lost = self.faults_on and self.rng.random() < self.faults.loss
        if lost or (m.frm, m.to) in self.blocked or target is None or not target.alive:
            self._report_drop(m)
            return
        try:
            target.core.step(m)
        except RaftError as e:
            self.fail(f"node {m.to} rejected {m!r}: {e!r}")
        sender = self.nodes.get(m.frm)
        if (isinstance(m, InstallSnapshot) and sender is not None and sender.alive
                and sender.core.term == m.term):
            sender.core.report_snapshot(m.to, True)
            self.stats["snapshots_installed"] += 1

    def interleave(self, node: SimNode) -> None:
        """Deliver one early message to `node` between ready() and advance()
        (an async driver keeps receiving while it fsyncs)."""
        if not self.faults_on or self.rng.random() > 0.2:
            return
        mine = [x for x in self.in_flight if x[2].to == node.id]
        if not mine:
            return
        pick = self.rng.choice(mine)
        self.in_flight.remove(pick)
        self._deliver(pick[2])
        if node.core.role == Role.LEADER and self.rng.random() < 0.5:
            self.propose(node)

    def _report_drop(self, m) -> None:
        # A real transport learns that an InstallSnapshot call failed.
        sender = self.nodes.get(m.frm)
        if (isinstance(m, InstallSnapshot) and sender is not None and sender.alive
                and sender.core.term == m.term):
            sender.core.report_snapshot(m.to, False)

    # -------------------------------------------------------------- faults
    def maybe_crash_mid_ready(self, node: SimNode, where: str) -> bool:
        if self.faults_on and self.rng.random() < self.faults.crash_mid_ready:
            node.crash()
            self.stats["crashes"] += 1
            return True
        return False

    def _random_faults(self) -> None:
        f, r = self.faults, self.rng
        ids = sorted(self.nodes)
        for node in self.nodes.values():
            if node.alive and r.random() < f.crash:
                node.crash()
                self.stats["crashes"] += 1
            elif not node.alive and r.random() < f.restart:
                node.restart()
        if r.random() < f.partition:
            self.stats["partitions"] += 1
            if r.random() < 0.5:
                side = set(r.sample(ids, r.randint(1, len(ids) // 2)))
                self.blocked = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
            else:  # asymmetric: a few one-way link cuts
                self.blocked |= {tuple(r.sample(ids, 2)) for _ in range(r.randint(1, 3))}
        if r.random() < f.heal:
            self.blocked = set()
        if r.random() < f.wipe:
            self.wipe(r.choice(ids))

    def wipe(self, node_id: int) -> bool:
        """Machine `node_id` loses its whole disk and goes down.  It comes
        back under a fresh id with empty storage (production: a new node-id
        file), or under the same id in the broken `amnesia_keeps_id` model.
        Refused (False) if the dead ids could stop every election for good
        (see `_live_majority_without`)."""
        node = self.nodes[node_id]
        if self.amnesia_keeps_id:
            node.crash()
            node.disk = Disk()
            self.stats["wipes"] += 1
            return True
        in_play = self._memberships_in_play()
        if not all(self._live_majority_without(old, new, self.gone | {node_id})
                   for old in in_play for new in in_play if new.voters <= old.voters):
            self.stats["wipes_refused"] += 1
            return False
        node.crash()
        del self.nodes[node_id]
        self.gone.add(node_id)
        new_id, self.next_id = self.next_id, self.next_id + 1
        fresh = SimNode(self, new_id, None, node.name)  # no bootstrap: it must be added
        fresh.crash()  # down until a restart, like any crashed machine
        self.nodes[new_id] = fresh
        if any(node_id in m.members() for m in in_play):
            self.stats["member_wipes"] += 1  # needs at least a removal and an add
        if node_id in self.to_add:  # a replacement replaced in turn
            self.to_add[new_id] = self.to_add.pop(node_id)
        elif any(node_id in m.members() for m in in_play):
            self.to_add[new_id] = node_id in self.committed_config[1].voters
        self.to_remove.add(node_id)
        self.stats["wipes"] += 1
        return True

    @staticmethod
    def _live_majority_without(old: Membership, new: Membership, dead: set[int]) -> bool:
        """Whether the voters of `new` that are not dead are a quorum of
        `old`, where `new` is `old` or `old` minus some voters.  A node whose
        log holds its own removal never campaigns (it is no voter in its
        latest config), yet a node still on `old` needs its vote if the dead
        ids leave no `old` majority without it; and a removed node holding
        the longest log refuses that vote: no leader, for good.  (Applied to
        a promotion's pair it only refuses more than needed.)"""
        return len(new.voters - dead) >= old.quorum()

    def _memberships_in_play(self) -> set[Membership]:
        """Every configuration a current or future leader may be using: the
        last committed one, and the latest and committed ones in the log of
        each of its members (which holds any newer config; a log outside it
        is stale for good and cannot make a config commit)."""
        committed = self.committed_config[1]
        found = {committed}
        for node_id in committed.members() & self.nodes.keys():
            log = self.nodes[node_id].core.log
            found |= {log.membership(), log.membership_at(log.committed)}
        return {m for m in found if m.voters}  # a new member's empty log has none

    def _random_client_ops(self) -> None:
        f, r = self.faults, self.rng
        leaders = [n for n in self.nodes.values() if n.alive and n.core.role == Role.LEADER]
        if not leaders:
            return
        leader = r.choice(leaders)
        if r.random() < f.propose:
            for _ in range(r.randint(1, 3)):  # several proposals, one fsync
                self.propose(leader)
        if self.faults_on and r.random() < f.conf_change:
            self._conf_change(leader)
        if (self.to_remove or self.to_add) and r.random() < f.replace:
            self._replace_members(leader)
        if self.faults_on and r.random() < f.transfer:
            target = r.choice(sorted(self.nodes))
            try:
                leader.core.transfer_leadership(target)
                self.stats["transfers"] += 1
            except RaftError:
                pass
        if r.random() < f.read:
            try:
                leader.core.read_index(b"%d" % self.now)
            except RaftError:
                pass

    def propose(self, leader: SimNode) -> bytes | None:
        """A client write; it is acknowledged (self.acked) once applied
        where it landed.  None if `leader` refused it."""
        self.next_cmd += 1
        data = b"cmd-%d" % self.next_cmd
        try:
            p = leader.core.propose(data)
        except RaftError:
            return None
        self.proposals[data] = (p.term, p.index)
        return data

    def _conf_change(self, leader: SimNode) -> None:
        r, m = self.rng, leader.core.log.membership()
        options = []
        if len(m.members()) < MEMBERS_MAX:
            outsiders = sorted(set(self.nodes) - m.members())
            options += [ConfChange(ChangeOp.ADD_LEARNER, n, name=self.nodes[n].name)
                        for n in outsiders]
        options += [ConfChange(ChangeOp.PROMOTE, n) for n in sorted(m.learners)
                    if len(m.voters) < VOTERS_MAX and n in self.nodes]
        options += [ConfChange(ChangeOp.REMOVE, n) for n in sorted(m.learners)]
        # Without pre-vote and check-quorum a removed voter that never heard
        # of its removal disrupts the cluster forever (thesis §4.2.3).
        if len(m.voters) > 2 and (self.cfg.pre_vote or self.cfg.check_quorum):
            options += [ConfChange(ChangeOp.REMOVE, n) for n in sorted(m.voters)
                        if self._live_majority_without(m, self._without(m, n), self.gone)]
        if not options:
            return
        try:
            leader.core.propose_conf_change(r.choice(options))
            self.stats["conf_changes"] += 1
        except RaftError:
            pass

    @staticmethod
    def _without(m: Membership, node: int) -> Membership:
        return Membership(voters=m.voters - {node}, learners=m.learners - {node})

    def _replacements_left(self) -> bool:
        """Forget finished work: an old id no configuration in play holds
        (a stale leader's commit index may be old, so ask the logs), a new
        id the last committed configuration holds as it should."""
        if self.to_remove:
            in_play = set().union(*(m.members() for m in self._memberships_in_play()))
            self.to_remove &= in_play
        done = self.committed_config[1]
        self.to_add = {n: voter for n, voter in self.to_add.items()
                       if n not in (done.voters if voter else done.members())}
        return bool(self.to_remove or self.to_add)

    def _replace_members(self, leader: SimNode) -> None:
        """The operator's side of a lost disk, one change at a time through
        the leader: remove the old id once the voters left that are up are
        a majority of the current configuration (the quorum-safety check of
        `chordfs members remove`, see `_live_majority_without`), add the new
        id as a learner (the core refuses an address still in use, so after
        the removal), promote it once caught up if it replaced a voter."""
        log = leader.core.log
        m = log.membership()
        if not self._replacements_left():
            return
        options = []
        for old in sorted(self.to_remove & m.members()):
            after = self._without(m, old)
            down = {v for v in m.voters if v not in self.nodes or not self.nodes[v].alive}
            if after.voters and self._live_majority_without(m, after, down):
                options.append(ConfChange(ChangeOp.REMOVE, old))
        for new, voter in sorted(self.to_add.items()):
            node = self.nodes[new]
            # The core refuses an address in use: the old id goes first.
            if (new not in m.members() and node.alive and len(m.members()) < MEMBERS_MAX
                    and m.id_named(node.name) is None):
                options.append(ConfChange(ChangeOp.ADD_LEARNER, new, name=node.name))
            caught_up = node.applied + 10 >= log.committed or self.rng.random() < 0.2
            if voter and new in m.learners and caught_up:
                options.append(ConfChange(ChangeOp.PROMOTE, new))
        if not options:
            return
        try:
            leader.core.propose_conf_change(self.rng.choice(options))
            self.stats["replace_changes"] += 1
        except RaftError:
            pass

    # ------------------------------------------------------------- checks
    def on_apply(self, node: SimNode, e: Entry) -> None:
        known = self.committed.get(e.index)
        mine = (e.term, int(e.kind), e.data)
        if known is not None and known != mine:
            self.fail(f"state machine safety: node {node.id} applies {mine} at {e.index}, "
                      f"others {known}")
        if known is None:
            self.committed[e.index] = mine
            self.committed_seen_term[e.index] = node.core.term
            self._note_committed_config(e)
        if e.kind == EntryKind.COMMAND and self.proposals.get(e.data) == (e.term, e.index):
            self.acked[e.index] = e.data

    def check_snapshot(self, node: SimNode, snap: Snapshot) -> None:
        for index, entry in node.sm.items():
            known = self.committed.get(index)
            if known is not None and known != entry:
                self.fail(f"snapshot on {node.id} disagrees at {index}")

    def on_read_state(self, node: SimNode, rs) -> None:
        # The read index must cover every entry acknowledged before the read.
        asked_at = int(rs.context)
        if any(i > rs.index for i in self._acked_before(asked_at)):
            self.fail(f"read at {asked_at} on {node.id} misses an acked write")
        self.reads_served += 1

    def _acked_before(self, t: int):
        return [i for i, tick in self.ack_tick.items() if tick < t]

    def check(self) -> None:
        live = [n for n in self.nodes.values() if n.alive]
        for n in live:
            n.core.log.check()
            assert len(n.core.log.membership().members()) <= MEMBERS_MAX, n.core.log.membership()
            if n.core.role == Role.LEADER:
                seen = self.leaders.setdefault(n.core.term, n.id)
                if seen != n.id:
                    self.fail(f"election safety: {seen} and {n.id} lead term {n.core.term}")
        self._record_commits(live)
        self._check_log_matching(live)
        self._check_leader_completeness(live)

    def _record_commits(self, live) -> None:
        for n in live:
            log = n.core.log
            for i in range(max(log.first_index(), log.applied + 1), log.committed + 1):
                e = log.entry(i)
                mine = (e.term, int(e.kind), e.data)
                known = self.committed.setdefault(i, mine)
                self.committed_seen_term.setdefault(i, n.core.term)
                if known != mine:
                    self.fail(f"node {n.id} committed {mine} at {i}, others {known}")
                self._note_committed_config(e)
                if e.kind == EntryKind.COMMAND and self.proposals.get(e.data) == (e.term, i):
                    if i not in self.ack_tick:
                        self.ack_tick[i] = self.now

    def _note_committed_config(self, e: Entry) -> None:
        if e.kind == EntryKind.CONFIG and e.index > self.committed_config[0]:
            self.committed_config = (e.index, Membership.decode(e.data))

    def _check_log_matching(self, live) -> None:
        for a_i, a in enumerate(live):
            for b in live[a_i + 1:]:
                la, lb = a.core.log, b.core.log
                lo = max(la.first_index(), lb.first_index())
                hi = min(la.last_index(), lb.last_index())
                top = next((i for i in range(hi, lo - 1, -1)
                            if la.term(i) == lb.term(i)), None)
                if top is None:
                    continue
                for i in range(lo, top + 1):
                    if la.entry(i) != lb.entry(i):
                        self.fail(f"log matching: {a.id} and {b.id} differ at {i} "
                                  f"but agree at {top}")

    def _check_leader_completeness(self, live) -> None:
        for n in live:
            if n.core.role != Role.LEADER:
                continue
            log = n.core.log
            for i, entry in self.committed.items():
                if self.committed_seen_term[i] >= n.core.term or i <= log.snap_index:
                    continue
                if i > log.last_index() or (lambda e: (e.term, int(e.kind), e.data))(
                        log.entry(i)) != entry:
                    self.fail(f"leader completeness: leader {n.id} of term {n.core.term} "
                              f"lacks committed index {i}")

    # ---------------------------------------------------------------- run
    def step(self) -> None:
        self.now += 1
        if self.faults_on:
            self._random_faults()
        for node in self.nodes.values():
            if node.alive:
                node.core.tick()
        self._deliver_due()
        if self.clients_on:
            self._random_client_ops()
        elif (self.to_remove or self.to_add) and self.rng.random() < self.faults.replace:
            # The operator keeps replacing lost machines while clients pause.
            leaders = [n for n in self.nodes.values() if n.alive and n.core.role == Role.LEADER]
            if leaders:
                self._replace_members(self.rng.choice(leaders))
        for node in self.nodes.values():
            node.drive()
        self.check()

    def heal(self) -> None:
        self.faults_on = False
        self.blocked = set()
        for node in self.nodes.values():
            if not node.alive:
                node.restart()

    def converged(self) -> bool:
        leaders = [n for n in self.nodes.values() if n.core.role == Role.LEADER]
        if len(leaders) != 1:
            return False
        log = leaders[0].core.log
        if self._replacements_left():
            return False
        return log.committed == log.last_index() and all(
            self.nodes[i].applied == log.committed for i in log.membership().members())

    def check_liveness(self) -> None:
        leaders = [n for n in self.nodes.values() if n.core.role == Role.LEADER]
        if not leaders:
            self.fail("liveness: no leader after heal")
        leader = max(leaders, key=lambda n: n.core.term)
        members = leader.core.log.membership().members()
        if self.to_remove or self.to_add or members & self.gone:
            self.fail(f"liveness: lost machines not replaced: remove {sorted(self.to_remove)}, "
                      f"add {sorted(self.to_add)}, members {sorted(members)}")
        for node_id in sorted(members):
            node = self.nodes[node_id]
            for index, data in self.acked.items():
                got = node.sm.get(index)
                if got is None or got[2] != data:
                    self.fail(f"liveness: acked index {index} not applied on {node_id} "
                              f"(applied {node.applied}, leader {leader.id})")


def run(seed: int, nodes: int = 3, steps: int = 300, heal_steps: int = 200,
        amnesia_keeps_id: bool = False, faults: Faults | None = None) -> Cluster:
    c = Cluster(seed, nodes, faults=faults, amnesia_keeps_id=amnesia_keeps_id)
    for _ in range(steps):
        c.step()
    c.heal()
    for _ in range(heal_steps):
        c.step()
    c.clients_on = False  # let the last commits reach everyone
    for _ in range(QUIESCE_STEPS_MAX):
        c.step()
        if c.converged():
            break
    c.check_liveness()
    return c


def replay_command(seed: int, nodes: int, steps: int = 300, heal_steps: int = 200,
                   amnesia_keeps_id: bool = False, wipe: float | None = None) -> str:
    extra = " --amnesia-keeps-id" if amnesia_keeps_id else ""
    extra += f" --wipe {wipe}" if wipe is not None else ""
    return (f"python -m tests.raft.simulation --seed {seed} --nodes {nodes} "
            f"--steps {steps} --heal-steps {heal_steps}{extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=1000)
    p.add_argument("--seed", type=int, help="run one seed (replay)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--nodes", type=int, default=0, help="3 or 5 (default: alternate)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--heal-steps", type=int, default=200)
    p.add_argument("--wipe", type=float, default=None,
                   help=f"chance per step that a disk is lost (default {Faults.wipe})")
    p.add_argument("--amnesia-keeps-id", action="store_true",
                   help="broken model: a wiped node returns with its old id (must fail)")
    args = p.parse_args(argv)
    faults = Faults() if args.wipe is None else Faults(wipe=args.wipe)
    seeds = [args.seed] if args.seed is not None else range(args.first_seed,
                                                            args.first_seed + args.seeds)
    failures, started, totals = 0, time.monotonic(), {}
    for seed in seeds:
        nodes = args.nodes or (3 if seed % 2 == 0 else 5)
        try:
            c = run(seed, nodes, args.steps, args.heal_steps, args.amnesia_keeps_id, faults)
        except AssertionError as e:
            failures += 1
            replay = replay_command(seed, nodes, args.steps, args.heal_steps,
                                    args.amnesia_keeps_id, args.wipe)
            print(f"FAIL seed={seed} nodes={nodes}: {e}\n  replay: {replay}", flush=True)
            continue
        c.stats["elections"] = len(c.leaders)
        for k, v in c.stats.items():
            totals[k] = totals.get(k, 0) + v
        totals["seeds_with_wipes"] = totals.get("seeds_with_wipes", 0) + bool(c.stats["wipes"])
        totals["acked"] = totals.get("acked", 0) + len(c.acked)
        totals["reads"] = totals.get("reads", 0) + c.reads_served
    n = len(seeds)
    print(f"{n} seeds, {n - failures} passed, {failures} failed in "
          f"{time.monotonic() - started:.1f}s; totals {totals}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
