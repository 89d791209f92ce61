"""The Raft RPC interface of a node (rpc/schema/raft.capnp).

``step`` only queues messages for the driver, so it runs inline in the
connection reader.  ``propose`` waits for the command to apply; on a
follower it is forwarded once to the leader the core knows, so a client may
talk to any node (the answer still carries the leader hint for next time)."""

import logging

import trio

import rpc
from rpc import trace
from rpc.logfmt import kv

from .config import ChangeOp, ConfChange
from .messages import Compacted, NotLeader, ProposalDropped, ProtocolError, Role, Unavailable
from .service import ProposalFailed
from .snapparts import Joiner
from .wire import SnapshotPart, fill_message, message_from, raft_capnp

PROPOSE_TIMEOUT_S = 10.0
# How long an exchange waits for the driver's answers; later ones go back
# as a step call of their own.
ANSWER_WAIT_S = 0.5
CHANGE_TIMEOUT_S = 10.0
log = logging.getLogger("chordfs.raft")


class NoReplica(rpc.Unimplemented):
    """This node holds no replica of the Raft group (not an initial voter)."""


class RaftServer(rpc.Server, interfaces=[raft_capnp.Raft]):
    """Mixin: the serving object provides ``raft_service`` (a RaftService,
    or None on a node without a replica), ``raft_pool`` (an rpc Pool) and
    ``raft_addr_of(node_id)``.  The service's ``cluster_id`` ("" for a test
    group or a node not admitted yet) is checked on every step batch."""

    def _raft(self):
        if self.raft_service is None:
            raise NoReplica("this node holds no metadata replica; ask another node")
        return self.raft_service

    @rpc.inline
    async def step(self, params, results):
        service, messages = self._received(params)
        if any(type(m) is SnapshotPart for m in messages):
            # Joining writes to disk, which an inline call must not do.
            raise rpc.Failed("snapshot parts go through exchange, not step")
        results.accepted = service.deliver(messages)

    async def exchange(self, params, results):
        service, messages = self._received(params)
        messages = await self._join_parts(service, messages)
        accepted, waiter = service.deliver_and_answer(messages)
        results.accepted = accepted
        if waiter is not None:
            answers = await waiter.answers(ANSWER_WAIT_S)
            out = results.init("answers", len(answers))
            for i, m in enumerate(answers):
                fill_message(out[i], m)

    async def _join_parts(self, service, messages):
        if not any(type(m) is SnapshotPart for m in messages):
            return messages
        # One joiner per connection: a sender's parts come in order on its
        # connection (server objects are per connection).
        joiner = getattr(self, "_raft_joiner", None)
        if joiner is None:
            joiner = self._raft_joiner = Joiner(service.storage.dir)
        joined = []
        try:
            for m in messages:
                if type(m) is SnapshotPart:
                    m = await joiner.add(m)
                if m is not None:
                    joined.append(m)
        except ProtocolError as e:
            raise rpc.Failed(f"bad Raft message: {e}") from None
        except OSError as e:
            joiner.close()
            raise rpc.Failed(f"snapshot part not stored: {e}") from None
        return joined

    def rpc_closed(self) -> None:
        joiner = getattr(self, "_raft_joiner", None)
        if joiner is not None:
            joiner.close()

    def _received(self, params):
        """The batch's messages, checked (cluster, addressee, sender
        address); snapshot parts are joined by the caller."""
        service = self._raft()
        ours, theirs = service.cluster_id, params.clusterId
        if ours != theirs:
            # Empty on both sides only for test groups; a member always has
            # one, and a joiner takes its cluster's traffic once admitted.
            _refuse_step(service, f"Raft traffic of cluster {theirs or '(none)'} reached "
                                  f"cluster {ours or '(not admitted yet)'}")
        messages = []
        peer = getattr(self, "peer", None)  # the certificate's identity (TLS nodes)
        membership = service.core.log.membership() if peer is not None else None
        try:
            for r in params.messages:
                m = message_from(r)
                frm = m.message.frm if type(m) is SnapshotPart else m.frm
                if membership is not None:
                    named = membership.name_of(frm)
                    if named is not None and named != peer.name:
                        # A node may speak only for itself: forged senders
                        # would vote, depose leaders or install entries.
                        _refuse_step(service, f"node {peer.name} sent Raft messages as node "
                                              f"{frm:x}, which is {named}")
                to = m.message.to if type(m) is SnapshotPart else m.to
                if to != service.core.id:
                    _refuse_step(service, f"Raft message for node {to:x} reached node "
                                          f"{service.core.id:x} (a replaced machine at the "
                                          "old address?)")
                messages.append(m)
        except ProtocolError as e:
            raise rpc.Failed(f"bad Raft message: {e}") from None
        if messages and params.fromAddr:
            try:
                rpc.split_addr(params.fromAddr)
            except ValueError:
                raise rpc.Failed(f"bad sender address {params.fromAddr!r}") from None
            first = messages[0]
            frm = first.message.frm if type(first) is SnapshotPart else first.frm
            service.transport.learn_address(frm, params.fromAddr)
        return service, messages

    async def propose(self, params, results):
        command = params.command
        service = self._raft()
        check = getattr(self, "check_command", None)
        if check is not None:
            await check(command)  # the peer's role and subtree (server/access.py)
        # A command apply would refuse anyway never enters the log: the
        # state machine's answer goes back at once, with index and term 0.
        validate = getattr(service.sm, "validate", None)
        refused = validate(command) if validate is not None else None
        if refused is not None:
            results.index, results.term, results.result = 0, 0, refused
            return
        if trace.ENABLED:
            trace.mark("node.propose")
        gate = getattr(service, "propose_gate", None)
        try:
            if gate is None:
                index, term, result = await service.propose(command, timeout_s=PROPOSE_TIMEOUT_S)
            else:
                # The metadata leases' recall (server/meta/recall.py).
                index, term, result = await gate(
                    command, lambda c: service.propose(c, timeout_s=PROPOSE_TIMEOUT_S))
        except NotLeader as e:
            hint = e.leader_hint or 0
            if params.forwarded or not hint or self.raft_addr_of(hint) is None:
                results.notLeader, results.leaderHint = True, hint
                results.leaderAddr = (self.raft_addr_of(hint) or "") if hint else ""
                return
            await self._forward(command, hint, results)
            return
        except (ProposalDropped, ProposalFailed) as e:
            raise rpc.Overloaded(f"proposal not committed: {e}") from None
        results.index, results.term, results.result = index, term, result
        if trace.ENABLED:
            trace.mark("node.propose.done")

    @rpc.inline
    async def status(self, params, results):
        service = self._raft()
        core = service.core
        st = core.status()
        results.id, results.term, results.leader = st.id, st.term, st.leader or 0
        results.role, results.commit = st.role.name.lower(), st.commit
        results.applied, results.lastIndex = service.applied, st.last_index
        results.clusterId = service.cluster_id
        results.leaderAddr = (st.membership.name_of(st.leader) or "") if st.leader else ""
        for field, ids in (("voters", st.membership.voters), ("learners", st.membership.learners)):
            out = results.init(field, len(ids))
            for i, node in enumerate(sorted(ids)):
                out[i] = node
        params = st.membership.params
        keys, values = results.init("paramKeys", len(params)), results.init("paramValues", len(params))
        for i, (k, v) in enumerate(params):
            keys[i], values[i] = k, v
        results.configIndex = core.log.config_index()
        rows = member_rows(core, st.membership)
        out = results.init("members", len(rows))
        for m, (node, name, voter, live, match) in zip(out, rows):
            m.id, m.name, m.voter, m.live, m.match = node, name, voter, bool(live), match or 0

    def _not_leader(self, core, results) -> bool:
        if core.role == Role.LEADER:
            return False
        results.notLeader = True
        hint = core.leader or 0
        if hasattr(results, "leaderHint"):
            results.leaderHint = hint
        results.leaderAddr = (core.log.membership().name_of(hint) or "") if hint else ""
        return True

    @rpc.inline
    async def add_learner(self, params, results):
        service = self._raft()
        core = service.core
        if self._not_leader(core, results):
            return
        name, joiner = params.name, params.nodeId
        rpc.split_addr(name)  # ValueError -> Failed: names are host:port
        results.clusterId = service.cluster_id
        refusal = join_refusal(core.log.membership(), service.cluster_id, name, joiner,
                               params.clusterId)
        peer = getattr(self, "peer", None)
        if not refusal and peer is not None and peer.name != name:
            refusal = f"the joining node's certificate is {peer.name}'s, not {name}'s"
        if refusal:
            log.warning(kv("raft.join_refused", node=core.id, term=core.term, joiner=f"{joiner:x}",
                           addr=name, reason=refusal))
            results.refused = refusal
            return
        if joiner not in core.log.membership().members():
            try:
                core.propose_conf_change(ConfChange(ChangeOp.ADD_LEARNER, joiner, name))
            except ProposalDropped as e:
                raise rpc.Overloaded(f"cannot add {name} now: {e}") from None
            service.poke()
            log.info(kv("raft.learner_added", node=core.id, term=core.term, joiner=f"{joiner:x}",
                        addr=name))
        results.added = True
        results.config = core.log.membership().encode()

    async def change_member(self, params, results):
        service = self._raft()
        core = service.core
        if self._not_leader(core, results):
            return
        node, op = params.nodeId, params.op
        if op == "remove":
            # Liveness from answers to heartbeats sent after this request:
            # a voter that died a moment ago must not count.
            asked_at, beats = core.ticks, core.cfg.heartbeat_interval_ticks
            with trio.move_on_after(CHANGE_TIMEOUT_S):
                while core.role == Role.LEADER and core.ticks <= asked_at + 3 * beats + 1:
                    await trio.sleep(service.tick_s)
            if self._not_leader(core, results):
                return
            refusal = core.removal_refusal(node, heard_after=asked_at)
            if refusal and not (params.force and node in core.log.membership().members()
                                and node != core.id):
                results.refused = f"not removing node {node:x}: {refusal}"
                return
            change = ConfChange(ChangeOp.REMOVE, node)
        elif op == "promote":
            change = ConfChange(ChangeOp.PROMOTE, node)
        else:
            results.refused = f"unknown membership operation {op!r} (remove or promote)"
            return
        try:
            proposed = core.propose_conf_change(change)
        except ProposalDropped as e:
            results.refused = f"cannot {op} node {node:x} now: {e}"
            return
        service.poke()
        log.info(kv("raft.member_change", node=core.id, term=core.term, op=op, target=f"{node:x}",
                    index=proposed.index, forced=bool(params.force)))
        with trio.move_on_after(CHANGE_TIMEOUT_S):
            while core.log.committed < proposed.index and core.role == Role.LEADER:
                await trio.sleep(0.01)
        results.done = (core.log.committed >= proposed.index
                        and _term_at(core, proposed.index) in (proposed.term, -1))
        if not results.done:
            results.refused = f"the {op} of node {node:x} was not committed in time"

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
        results.leaderAddr = reply.leaderAddr


def _term_at(core, index: int) -> int:
    try:
        return core.log.term(index)
    except Compacted:
        return -1  # below the snapshot: committed, so it stands
    except Unavailable:
        return 0


def member_rows(core, membership) -> list[tuple[int, str, bool, bool | None, int | None]]:
    """(id, name, voter, live, match) of each member, voters first. live and
    match are known on the leader only (None elsewhere)."""
    live = core.live_members()
    progress = core.tracker.progress if core.tracker is not None and live else {}
    return [(node, membership.name_of(node) or "", node in membership.voters,
             node in live if live else None,
             progress[node].match if node in progress else None)
            for node in sorted(membership.voters) + sorted(membership.learners)]


def _refuse_step(service, reason: str) -> None:
    service.refused_steps += 1
    if service.refused_steps in (1, 10) or service.refused_steps % 1000 == 0:
        log.warning(kv("raft.step_refused", node=f"{service.core.id:x}", term=service.core.term,
                       reason=reason, refused=service.refused_steps))
    raise rpc.Failed(reason)


def join_refusal(membership, cluster_id: str, name: str, joiner: int, theirs: str) -> str:
    """Why node ``joiner`` at ``name`` may not join, in one sentence; "" if it may."""
    if not joiner:
        return "the joining node sent no node id (an older chordfs?)"
    if theirs and cluster_id and theirs != cluster_id:
        return f"the node belongs to cluster {theirs}, this is cluster {cluster_id}"
    known = membership.name_of(joiner)
    if known is not None and known != name:
        return f"node {joiner:x} is a member at {known}, not at {name}"
    holder = membership.id_named(name)
    if holder is not None and holder != joiner:
        role = "voter" if holder in membership.voters else "learner"
        return (f"{name} is the address of member {holder:x} (a {role}); if that machine lost its "
                f"storage, remove it first with `chordfs members ANY_NODE remove {holder:x}`, "
                "then start this node again to join as a new member")
    return ""
