"""The Raft RPC interface of a node (rpc/schema/raft.capnp).

``step`` only queues messages for the driver, so it runs inline in the
connection reader.  ``propose`` waits for the command to apply; on a
follower it is forwarded once to the leader the core knows, so a client may
talk to any node (the answer still carries the leader hint for next time)."""

import rpc

from ..ring.ringmath import node_id as ring_node_id
from .config import ChangeOp, ConfChange
from .messages import NotLeader, ProposalDropped, ProtocolError, Role
from .service import ProposalFailed
from .snapparts import Joiner
from .wire import SnapshotPart, message_from, raft_capnp

PROPOSE_TIMEOUT_S = 10.0


class NoReplica(rpc.Unimplemented):
    """This node holds no replica of the Raft group (not an initial voter)."""


class RaftServer(rpc.Server, interfaces=[raft_capnp.Raft]):
    """Mixin: the serving object provides ``raft_service`` (a RaftService,
    or None on a node without a replica), ``raft_pool`` (an rpc Pool),
    ``raft_addr_of(node_id)`` and ``raft_register(node_id, addr)``."""

    raft_register = None

    def _raft(self):
        if self.raft_service is None:
            raise NoReplica("this node holds no metadata replica; ask another node")
        return self.raft_service

    @rpc.inline
    async def step(self, params, results):
        service = self._raft()
        messages = []
        try:
            for r in params.messages:
                m = message_from(r)
                if type(m) is SnapshotPart:
                    # One joiner per connection: a sender's parts come in
                    # order on its connection (server objects are per connection).
                    if getattr(self, "_raft_joiner", None) is None:
                        self._raft_joiner = Joiner()
                    m = self._raft_joiner.add(m)
                    if m is None:
                        continue
                messages.append(m)
        except ProtocolError as e:
            raise rpc.Failed(f"bad Raft message: {e}") from None
        results.accepted = service.deliver(messages)

    async def propose(self, params, results):
        command = params.command
        service = self._raft()
        try:
            index, term, result = await service.propose(command, timeout_s=PROPOSE_TIMEOUT_S)
        except NotLeader as e:
            hint = e.leader_hint or 0
            if params.forwarded or not hint or self.raft_addr_of(hint) is None:
                results.notLeader, results.leaderHint = True, hint
                return
            await self._forward(command, hint, results)
            return
        except (ProposalDropped, ProposalFailed) as e:
            raise rpc.Overloaded(f"proposal not committed: {e}") from None
        results.index, results.term, results.result = index, term, result

    @rpc.inline
    async def status(self, params, results):
        st = self._raft().core.status()
        results.id, results.term, results.leader = st.id, st.term, st.leader or 0
        results.role, results.commit = st.role.name.lower(), st.commit
        results.applied, results.lastIndex = self.raft_service.applied, st.last_index
        for field, ids in (("voters", st.membership.voters), ("learners", st.membership.learners)):
            out = results.init(field, len(ids))
            for i, node in enumerate(sorted(ids)):
                out[i] = node

    @rpc.inline
    async def add_learner(self, params, results):
        service = self._raft()
        core = service.core
        if core.role != Role.LEADER:
            results.notLeader, results.leaderHint = True, core.leader or 0
            return
        if self.raft_register is None:
            raise rpc.Unimplemented("this server does not take new members")
        name = params.name
        rpc.split_addr(name)  # ValueError -> Failed: names are host:port
        joiner = ring_node_id(name)
        self.raft_register(joiner, name)
        if joiner not in core.status().membership.members():
            try:
                core.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, joiner))
            except ProposalDropped as e:
                raise rpc.Overloaded(f"cannot add {name} now: {e}") from None
            service.poke()
        results.added = True

    async def _forward(self, command: bytes, leader: int, results) -> None:
        try:
            cap = await self.raft_pool.bootstrap(self.raft_addr_of(leader), raft_capnp.Raft,
                                                 timeout_s=PROPOSE_TIMEOUT_S)
            reply = await cap.propose(command=command, forwarded=True, timeout_s=PROPOSE_TIMEOUT_S)
        except rpc.ConnectionLost:
            # The leader we know of is gone; the caller retries elsewhere.
            results.notLeader, results.leaderHint = True, leader
            return
        results.index, results.term, results.result = reply.index, reply.term, reply.result
        results.notLeader, results.leaderHint = reply.notLeader, reply.leaderHint or leader
