"""Raft messages to and from Cap'n Proto (rpc/schema/raft.capnp).

The pure core speaks frozen dataclasses (messages.py); this is the only
place that knows the wire structs.  Decoding checks what the struct types
cannot: an unknown entry kind or message kind is a ProtocolError, so a bad
peer cannot hand the core a value it never expects."""

import dataclasses

from rpc import schema

from .messages import (AppendEntries, AppendResponse, Entry, EntryKind, Heartbeat,
                       HeartbeatResponse, InstallSnapshot, Membership, ProtocolError, Snapshot,
                       SnapshotMeta, TimeoutNow, VoteRequest, VoteResponse)

raft_capnp = schema.load("raft")


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotPart:
    """Wire-level piece of an InstallSnapshot too large for one frame:
    ``message.snapshot.data`` holds bytes [offset, offset + len) of
    ``total``.  The transport cuts them, the receiving server joins them
    (``snapparts``); the core only ever sees whole snapshots."""
    message: InstallSnapshot
    offset: int
    total: int


def _fill_entry(b, e: Entry) -> None:
    b.index, b.term, b.kind, b.data = e.index, e.term, int(e.kind), e.data


def _entry(r) -> Entry:
    try:
        kind = EntryKind(r.kind)
    except ValueError:
        raise ProtocolError(f"unknown entry kind {r.kind}") from None
    return Entry(r.index, r.term, kind, r.data)


def _fill_membership(b, m: Membership) -> None:
    voters = b.init("voters", len(m.voters))
    for i, v in enumerate(sorted(m.voters)):
        voters[i] = v
    learners = b.init("learners", len(m.learners))
    for i, v in enumerate(sorted(m.learners)):
        learners[i] = v
    ids, known = sorted(m.voters) + sorted(m.learners), dict(m.names)
    names = b.init("names", len(ids))
    for i, v in enumerate(ids):
        names[i] = known.get(v, "")
    keys, values = b.init("paramKeys", len(m.params)), b.init("paramValues", len(m.params))
    for i, (k, v) in enumerate(m.params):
        keys[i], values[i] = k, v


def _membership(r) -> Membership:
    voters, learners = frozenset(r.voters), frozenset(r.learners)
    if voters & learners:
        raise ProtocolError("a node is listed as both voter and learner")
    ids, names = sorted(voters) + sorted(learners), list(r.names)
    if names and len(names) != len(ids):
        raise ProtocolError("membership names do not match its members")
    keys, values = list(r.paramKeys), list(r.paramValues)
    if len(keys) != len(values) or len(set(keys)) != len(keys):
        raise ProtocolError("membership params do not pair up")
    return Membership(voters, learners, tuple(sorted((i, n) for i, n in zip(ids, names) if n)),
                      tuple(sorted(zip(keys, values))))


def fill_snapshot(b, snap: Snapshot) -> None:
    b.index, b.term, b.data = snap.meta.index, snap.meta.term, snap.data
    _fill_membership(b.init("membership"), snap.meta.membership)


def snapshot_from(r) -> Snapshot:
    return Snapshot(SnapshotMeta(r.index, r.term, _membership(r.membership)), r.data)


def fill_message(b, m) -> None:
    if type(m) is SnapshotPart:
        fill_message(b, m.message)
        g = b.installSnapshot
        g.total, g.offset = m.total, m.offset
        return
    setattr(b, "from", m.frm)  # `from` is a Python keyword
    b.to, b.term = m.to, m.term
    kind = type(m)
    if kind is AppendEntries:
        g = b.init("appendEntries")
        g.prevIndex, g.prevTerm, g.commit = m.prev_index, m.prev_term, m.commit
        entries = g.init("entries", len(m.entries))
        for i, e in enumerate(m.entries):
            _fill_entry(entries[i], e)
    elif kind is AppendResponse:
        g = b.init("appendResponse")
        g.success, g.matchIndex, g.rejectIndex = m.success, m.match_index, m.reject_index
        g.hintIndex, g.hintTerm = m.hint_index, m.hint_term
    elif kind is VoteRequest:
        g = b.init("requestVote")
        g.lastLogIndex, g.lastLogTerm, g.preVote, g.transfer = (
            m.last_log_index, m.last_log_term, m.pre_vote, m.transfer)
    elif kind is VoteResponse:
        g = b.init("voteResponse")
        g.granted, g.preVoteResponse = m.granted, m.pre_vote
    elif kind is Heartbeat:
        g = b.init("heartbeat")
        g.heartbeatCommit, g.readSeq = m.commit, m.read_seq
    elif kind is HeartbeatResponse:
        b.init("heartbeatResponse").responseReadSeq = m.read_seq
    elif kind is InstallSnapshot:
        fill_snapshot(b.init("installSnapshot"), m.snapshot)
    elif kind is TimeoutNow:
        b.timeoutNow = None
    else:
        raise TypeError(f"not a Raft message: {m!r}")


def message_from(r):
    frm, to, term = getattr(r, "from"), r.to, r.term
    which = r.which()
    if which == "appendEntries":
        g = r.appendEntries
        return AppendEntries(frm, to, term, g.prevIndex, g.prevTerm,
                             tuple(_entry(e) for e in g.entries), g.commit)
    if which == "appendResponse":
        g = r.appendResponse
        return AppendResponse(frm, to, term, g.success, g.matchIndex, g.rejectIndex,
                              g.hintIndex, g.hintTerm)
    if which == "requestVote":
        g = r.requestVote
        return VoteRequest(frm, to, term, g.lastLogIndex, g.lastLogTerm, g.preVote, g.transfer)
    if which == "voteResponse":
        g = r.voteResponse
        return VoteResponse(frm, to, term, g.granted, g.preVoteResponse)
    if which == "heartbeat":
        g = r.heartbeat
        return Heartbeat(frm, to, term, g.heartbeatCommit, g.readSeq)
    if which == "heartbeatResponse":
        return HeartbeatResponse(frm, to, term, r.heartbeatResponse.responseReadSeq)
    if which == "installSnapshot":
        g = r.installSnapshot
        message = InstallSnapshot(frm, to, term, snapshot_from(g))
        if g.total == 0:
            return message
        if g.offset + len(g.data) > g.total:
            raise ProtocolError(f"snapshot part [{g.offset}, +{len(g.data)}) past its total {g.total}")
        return SnapshotPart(message, g.offset, g.total)
    if which == "timeoutNow":
        return TimeoutNow(frm, to, term)
    raise ProtocolError(f"unknown Raft message kind {which}")


def fill_batch(params, messages) -> None:
    out = params.init("messages", len(messages))
    for i, m in enumerate(messages):
        fill_message(out[i], m)
