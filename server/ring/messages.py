"""Messages, events and outputs of the ring cores.

Messages are plain frozen dataclasses so the cores stay free of Cap'n Proto;
the service converts them to and from ``rpc/schema/ring.capnp`` one to one
(field names match, snake_case here, camelCase there). Every message carries
``src`` and ``dst`` node names: the driver routes on ``dst`` and must check
that a received message's ``src`` is the authenticated peer.

Membership updates ride on SWIM messages (gossip piggybacked on pings). An
update says "member ``name`` has ``status`` at ``incarnation``"; higher
incarnations win and, at one incarnation, LEFT > DEAD > SUSPECT > ALIVE, so
merging updates is commutative and idempotent. Only the member itself raises
its incarnation (to refute a suspicion or to rejoin after a restart).
"""

from __future__ import annotations

import dataclasses
import enum

from .ringmath import KeyRange, Move, Ring, gained_lost, moved_ranges

PURE_CORE = True


class Status(enum.IntEnum):
    # Order matters: at equal incarnation the larger status wins.
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Update:
    name: str
    incarnation: int
    status: Status

    def overrides(self, other: Update) -> bool:
        """True if this update is strictly newer knowledge than ``other``."""
        return (self.incarnation, self.status) > (other.incarnation, other.status)


# --- SWIM failure detector -------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    src: str
    dst: str
    seq: int
    updates: tuple[Update, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """Answer to Ping; ``target`` is the node that proved alive (for an
    indirect probe the helper forwards the target's Ack under the asker's seq)."""
    src: str
    dst: str
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PingReq:
    """Ask ``dst`` to ping ``target`` on our behalf (indirect probe)."""
    src: str
    dst: str
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Join:
    """First contact with a seed; ``incarnation`` is the joiner's own."""
    src: str
    dst: str
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class JoinReply:
    """The seed's full member table; ``accepted`` is False while the seed is
    itself not yet part of a ring (the joiner then tries the next seed)."""
    src: str
    dst: str
    accepted: bool
    members: tuple[Update, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Sync:
    """Push-pull anti-entropy: full member table; ``reply`` marks the pull
    half so it is not answered again."""
    src: str
    dst: str
    reply: bool
    members: tuple[Update, ...] = ()


# --- Chord maintenance and routing ------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class FindNext:
    """One iterative lookup step: "is ``key`` yours to answer, or who is closer?"."""
    src: str
    dst: str
    req: int
    key: int
    want_replicas: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class FindNextReply:
    """``done``: ``node`` is the successor of key on the physical ring and
    ``replicas`` the replica set in the answerer's member view (the one-hop
    hint). Otherwise ``node`` is the closest preceding node the answerer
    knows and ``fallback`` its successor, tried if ``node`` does not answer."""
    src: str
    dst: str
    req: int
    done: bool
    node: str
    fallback: str = ""
    replicas: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class GetNeighbours:
    src: str
    dst: str
    req: int


@dataclasses.dataclass(frozen=True, slots=True)
class Neighbours:
    src: str
    dst: str
    req: int
    predecessor: str
    successors: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Notify:
    """"I think I am your predecessor"."""
    src: str
    dst: str


@dataclasses.dataclass(frozen=True, slots=True)
class LeaveNotice:
    """Graceful leave: the leaver hands its neighbours to each other."""
    src: str
    dst: str
    predecessor: str
    successors: tuple[str, ...]


SWIM_MESSAGES = (Ping, Ack, PingReq, Join, JoinReply, Sync)
CHORD_MESSAGES = (FindNext, FindNextReply, GetNeighbours, Neighbours, Notify, LeaveNotice)
Message = (Ping | Ack | PingReq | Join | JoinReply | Sync | FindNext | FindNextReply
           | GetNeighbours | Neighbours | Notify | LeaveNotice)


# --- Events ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class MemberUp:
    name: str
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class MemberSuspect:
    name: str
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class MemberDown:
    name: str
    incarnation: int
    left: bool  # True: graceful leave; False: declared failed


@dataclasses.dataclass(frozen=True, slots=True)
class Refuted:
    """We were suspected (or thought dead) and raised our incarnation."""
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class Joined:
    """Chord join finished: ``successor`` is our first successor."""
    successor: str


@dataclasses.dataclass(frozen=True, slots=True)
class LookupDone:
    req: int
    key: int
    successor: str
    replicas: tuple[str, ...]
    hops: int


@dataclasses.dataclass(frozen=True, slots=True)
class LookupFailed:
    req: int
    key: int
    hops: int


@dataclasses.dataclass(frozen=True, slots=True)
class RangesChanged:
    """The member view changed. At most one per step/tick call. The range
    sets are computed on demand (a 100-node ring with 256 virtual ids is
    25,600 points), so a subscriber that only needs ``after`` pays nothing."""
    me: str
    before: Ring
    after: Ring
    replicas: int

    def moves(self) -> tuple[Move, ...]:
        if not self.before.names or not self.after.names:
            return ()
        return moved_ranges(self.before, self.after, self.replicas)

    def gained_lost(self) -> tuple[tuple[KeyRange, ...], tuple[KeyRange, ...]]:
        """Ranges this node must now hold / may now drop (as a replica)."""
        if not self.before.names and self.after.names:
            return self.after.replica_ranges(self.me, self.replicas), ()
        return gained_lost(self.moves(), self.me)


Event = (MemberUp | MemberSuspect | MemberDown | Refuted | Joined | LookupDone
         | LookupFailed | RangesChanged)


@dataclasses.dataclass(slots=True)
class Output:
    """What one core call hands back: messages to send (any order, each may
    be lost) and events to deliver in order."""
    messages: list = dataclasses.field(default_factory=list)
    events: list = dataclasses.field(default_factory=list)

    def extend(self, other: Output) -> Output:
        self.messages.extend(other.messages)
        self.events.extend(other.events)
        return self


class ProtocolError(ValueError):
    """A message that breaks the protocol (wrong dst, unknown type, a node
    claiming another's incarnation). The driver drops it and logs; the core
    state is unchanged."""
