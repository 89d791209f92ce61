"""Raft value types: log entries, hard state, snapshots, wire messages, errors.

Everything here is an immutable value so the core can hand it to a driver
without copying and a test can compare it by equality.  Node ids are ints
(chordfs uses the 64-bit ring id of the node).  Term 0 / index 0 mean "before
the first entry": the empty log matches any AppendEntries with prev_index 0.
"""

from __future__ import annotations

import dataclasses
import enum
import struct

PURE_CORE = True

NodeId = int


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class EntryKind(enum.IntEnum):
    COMMAND = 0  # opaque state-machine command
    CONFIG = 1   # full membership (see config.py); takes effect when appended
    NOOP = 2     # appended by every new leader so it can commit in its term


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.COMMAND
    data: bytes = b""

    def size_bytes(self) -> int:
        # Header estimate matches storage.py's record layout closely enough
        # for batching limits.
        return 24 + len(self.data)


@dataclasses.dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message of the same Ready is sent."""
    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """The committed cluster configuration as Raft sees it: who votes, who
    only receives the log, and where each member is served.  ``names`` maps a
    member id to its address (``host:port``): ids are random per data
    directory, so the configuration itself is the one address book every
    node and mount follows (nothing derives an id from an address)."""
    voters: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()
    names: tuple[tuple[NodeId, str], ...] = ()
    # Cluster-wide settings (placement: virtual ids, replication factor,
    # write quorum, chunk size), sorted (key, value) pairs: opaque to Raft,
    # changed only by a SET_PARAMS configuration entry.
    params: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        assert not (self.voters & self.learners), "a node is voter or learner"
        assert all(i in self.voters or i in self.learners for i, _ in self.names), \
            "names only for members"

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.learners

    def quorum(self) -> int:
        # floor(n/2)+1 of the configured voters: never of the live ones.
        return len(self.voters) // 2 + 1

    def param(self, key: str, default: int | None = None) -> int | None:
        for k, v in self.params:
            if k == key:
                return v
        return default

    def name_of(self, node: NodeId) -> str | None:
        for i, name in self.names:
            if i == node:
                return name
        return None

    def id_named(self, name: str) -> NodeId | None:
        for i, n in self.names:
            if n == name:
                return i
        return None

    def with_name(self, node: NodeId, name: str | None) -> tuple[tuple[NodeId, str], ...]:
        """``names`` with ``node`` set to ``name`` (None: dropped), sorted."""
        out = {i: n for i, n in self.names if i != node}
        if name:
            out[node] = name
        return tuple(sorted(out.items()))

    def encode(self) -> bytes:
        voters, learners = sorted(self.voters), sorted(self.learners)
        head = struct.pack(f">II{len(voters)}Q{len(learners)}Q",
                           len(voters), len(learners), *voters, *learners)
        names = dict(self.names)
        tail = b"".join(struct.pack(">H", len(b)) + b
                        for b in (names.get(i, "").encode() for i in voters + learners))
        if self.params:
            tail += struct.pack(">H", len(self.params)) + b"".join(
                struct.pack(">B", len(k.encode())) + k.encode() + struct.pack(">q", v)
                for k, v in self.params)
        return head + tail

    @classmethod
    def decode(cls, blob: bytes) -> Membership:
        if len(blob) < 8:
            raise ProtocolError(f"membership blob of {len(blob)} bytes")
        nv, nl = struct.unpack_from(">II", blob)
        end = 8 + 8 * (nv + nl)
        if len(blob) < end or nv + nl > 4096:
            raise ProtocolError(f"membership blob of {len(blob)} bytes")
        ids = struct.unpack_from(f">{nv + nl}Q", blob, 8)
        names, pos = [], end
        if pos < len(blob):  # names follow the ids (absent in old encodings)
            for node in ids:
                if pos + 2 > len(blob):
                    raise ProtocolError("membership names cut short")
                (n,) = struct.unpack_from(">H", blob, pos)
                if pos + 2 + n > len(blob):
                    raise ProtocolError("membership names cut short")
                try:
                    name = blob[pos + 2:pos + 2 + n].decode()
                except UnicodeDecodeError:
                    raise ProtocolError("membership name is not UTF-8") from None
                pos += 2 + n
                if name:
                    names.append((node, name))
        params, pos = _decode_params(blob, pos)
        voters, learners = frozenset(ids[:nv]), frozenset(ids[nv:])
        if voters & learners or len(voters) + len(learners) != nv + nl:
            raise ProtocolError("membership lists a node twice")
        return cls(voters, learners, tuple(sorted(names)), params)


def _decode_params(blob: bytes, pos: int) -> tuple[tuple[tuple[str, int], ...], int]:
    if pos == len(blob):
        return (), pos
    if pos + 2 > len(blob):
        raise ProtocolError("membership params cut short")
    (count,) = struct.unpack_from(">H", blob, pos)
    pos += 2
    params = {}
    for _ in range(count):
        if pos + 1 > len(blob):
            raise ProtocolError("membership params cut short")
        n = blob[pos]
        if pos + 1 + n + 8 > len(blob):
            raise ProtocolError("membership params cut short")
        try:
            key = blob[pos + 1:pos + 1 + n].decode()
        except UnicodeDecodeError:
            raise ProtocolError("membership param name is not UTF-8") from None
        (params[key],) = struct.unpack_from(">q", blob, pos + 1 + n)
        pos += 1 + n + 8
    if pos != len(blob):
        raise ProtocolError(f"membership blob of {len(blob)} bytes")
    return tuple(sorted(params.items())), pos


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    membership: Membership


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotFile:
    """Snapshot data kept in a file rather than in memory: a metadata image
    of millions of inodes is gigabytes.  The file is written once, fsynced,
    and never changed; storage deletes it when a newer snapshot replaces
    it (a reader that opened it first keeps its descriptor)."""
    path: str
    size: int

    def __len__(self) -> int:
        return self.size


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """State-machine image at meta.index; data is opaque to Raft: bytes (the
    simulations, small state machines) or a SnapshotFile."""
    meta: SnapshotMeta
    data: "bytes | SnapshotFile" = b""


@dataclasses.dataclass(frozen=True, slots=True)
class ReadState:
    """Reads tagged `context` are linearizable once applied >= index."""
    index: int
    context: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Proposed:
    """Where a proposal landed: it succeeded iff the entry applied at
    `index` has this `term`."""
    term: int
    index: int


# ---------------------------------------------------------------- messages

@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    frm: NodeId
    to: NodeId
    term: int


@dataclasses.dataclass(frozen=True, slots=True)
class VoteRequest(Message):
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False   # term is the term the sender would campaign in
    transfer: bool = False   # leadership transfer: bypasses the leader lease


@dataclasses.dataclass(frozen=True, slots=True)
class VoteResponse(Message):
    granted: bool
    pre_vote: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class AppendEntries(Message):
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclasses.dataclass(frozen=True, slots=True)
class AppendResponse(Message):
    """success: follower's log matches the leader's up to match_index.
    Rejection: reject_index is the prev_index that failed; hint_index and
    hint_term let the leader skip a whole conflicting term at once."""
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class InstallSnapshot(Message):
    snapshot: Snapshot


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    commit: int
    read_seq: int = 0  # ReadIndex round this heartbeat confirms (0: none)


@dataclasses.dataclass(frozen=True, slots=True)
class HeartbeatResponse(Message):
    read_seq: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class TimeoutNow(Message):
    """Leader to transfer target: campaign now, skipping pre-vote."""


# ------------------------------------------------------------------ errors

class RaftError(Exception):
    """Base of the typed errors the core raises instead of changing state."""


class NotLeader(RaftError):
    def __init__(self, leader_hint: NodeId | None) -> None:
        super().__init__(f"not leader (leader hint: {leader_hint})")
        self.leader_hint = leader_hint


class ProposalDropped(RaftError):
    """The leader cannot take proposals now (transfer in progress, a config
    change is still uncommitted, or the in-flight limit is reached)."""


class Compacted(RaftError):
    """The requested index is covered by the snapshot."""


class Unavailable(RaftError):
    """The requested index is beyond the log."""


class ProtocolError(RaftError):
    """A peer or the driver broke the protocol; nothing was changed."""
