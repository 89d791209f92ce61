"""Small fault-free harness for unit tests: nodes plus a message pump."""

import random

from server.raft.config import RaftConfig
from server.raft.core import RaftNode
from server.raft.messages import Membership, Role

CFG = RaftConfig(election_timeout_ticks=10, heartbeat_interval_ticks=2)


class Net:
    def __init__(self, n=3, cfg=CFG, voters=None, extra=()):
        voters = Membership(frozenset(voters or range(1, n + 1)))
        self.nodes = {i: RaftNode(i, cfg, random.Random(i), bootstrap=voters)
                      for i in sorted(voters.voters)}
        for i in extra:
            self.nodes[i] = RaftNode(i, cfg, random.Random(i))
        for node in self.nodes.values():
            # A brand-new cluster: nobody can have acked a lease before.
            node._fresh_start = False
        self.down = set()           # nodes that receive nothing
        self.cut = set()            # (frm, to) pairs dropped
        self.drop = lambda m: False  # per-message loss
        self.applied = {i: [] for i in self.nodes}
        self.read_states = {i: [] for i in self.nodes}
        self.sent = []

    def drain(self, node_id):
        """One driver cycle: returns the messages the node sends."""
        node = self.nodes[node_id]
        out = []
        while node.has_ready():
            rd = node.ready()
            out.extend(rd.messages)
            self.applied[node_id].extend(rd.committed_entries)
            self.read_states[node_id].extend(rd.read_states)
            node.advance(rd)
        return out

    def pump(self, rounds=50, drop=None):
        drop = drop or self.drop
        for _ in range(rounds):
            msgs = [m for i in self.nodes if i not in self.down for m in self.drain(i)]
            self.sent.extend(msgs)
            msgs = [m for m in msgs if m.to not in self.down and (m.frm, m.to) not in self.cut
                    and not drop(m)]
            if not msgs:
                return
            for m in msgs:
                self.nodes[m.to].step(m)

    def tick(self, times=1, nodes=None):
        for _ in range(times):
            for i in nodes or self.nodes:
                if i not in self.down:
                    self.nodes[i].tick()
            self.pump()

    def elect(self, node_id):
        self.nodes[node_id].campaign()
        self.pump()
        assert self.nodes[node_id].role == Role.LEADER
        return self.nodes[node_id]

    def leaders(self):
        return [i for i, n in self.nodes.items() if n.role == Role.LEADER and i not in self.down]
