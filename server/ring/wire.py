"""Ring messages to and from Cap'n Proto (rpc/schema/ring.capnp).

The pure core speaks the frozen dataclasses of ``messages.py``; this is the
only place that knows the wire structs. The schema mirrors the dataclasses
one to one (snake_case here, camelCase there, ``src``/``dst`` on the
``RingMessage`` envelope, one union member per message type), so both
directions are driven by the dataclass fields rather than written out per
type: a field added to both sides needs no change here.

Decoding copies everything out of the reader (the RPC layer frees it when
the handler returns) and checks what the struct types cannot: an unknown
union member or status value is a ``ProtocolError``, so a peer running a
newer schema cannot hand the core a value it never expects. Whether ``src``
names a real peer is the service's check, not the codec's.
"""

from __future__ import annotations

import dataclasses

from rpc import schema

from .messages import (
    CHORD_MESSAGES, SWIM_MESSAGES, ProtocolError, Status, Update,
)

ring_capnp = schema.load("ring")

_TYPES = SWIM_MESSAGES + CHORD_MESSAGES
_UPDATE_LISTS = ("updates", "members")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _union_name(cls) -> str:
    return cls.__name__[0].lower() + cls.__name__[1:]


# (wire field, python field) pairs of each body, src/dst excluded.
_BODY_FIELDS = {
    cls: tuple((_camel(f.name), f.name) for f in dataclasses.fields(cls)
               if f.name not in ("src", "dst"))
    for cls in _TYPES
}
_BY_UNION = {_union_name(cls): cls for cls in _TYPES}
_UNION_OF = {cls: name for name, cls in _BY_UNION.items()}


def fill_updates(lst_builder, updates) -> None:
    """Fill an already initialised ``List(Update)`` builder."""
    for i, u in enumerate(updates):
        b = lst_builder[i]
        b.name, b.incarnation, b.status = u.name, u.incarnation, u.status.name.lower()


def updates_from(lst_reader) -> tuple[Update, ...]:
    out = []
    for r in lst_reader:
        try:
            status = Status(r.status.raw)
        except ValueError:
            raise ProtocolError(f"unknown member status {r.status.raw}") from None
        out.append(Update(r.name, r.incarnation, status))
    return tuple(out)


def fill_message(b, msg) -> None:
    """Fill a ``RingMessage`` builder from a core message."""
    kind = type(msg)
    union = _UNION_OF.get(kind)
    if union is None:
        raise TypeError(f"not a ring message: {kind.__name__}")
    b.src, b.dst = msg.src, msg.dst
    body = b.body.init(union)
    for wire_name, name in _BODY_FIELDS[kind]:
        value = getattr(msg, name)
        if name in _UPDATE_LISTS:
            fill_updates(body.init(wire_name, len(value)), value)
        elif isinstance(value, tuple):
            lst = body.init(wire_name, len(value))
            for i, v in enumerate(value):
                lst[i] = v
        else:
            setattr(body, wire_name, value)


def message_from(r):
    """The core message a ``RingMessage`` reader holds (a full copy)."""
    try:
        union = r.body.which()
    except Exception as exc:  # pycapnp raises its own type for an unknown member
        raise ProtocolError(f"unreadable ring message body: {exc}") from None
    kind = _BY_UNION.get(union)
    if kind is None:
        raise ProtocolError(f"unknown ring message {union!r}")
    body = getattr(r.body, union)
    values = {}
    for wire_name, name in _BODY_FIELDS[kind]:
        value = getattr(body, wire_name)
        if name in _UPDATE_LISTS:
            value = updates_from(value)
        elif not isinstance(value, (bool, int, str)):
            value = tuple(str(v) for v in value)  # List(Text)
        values[name] = value
    return kind(str(r.src), str(r.dst), **values)


def to_bytes(msg) -> bytes:
    """A standalone encoding, for tests and benchmarks."""
    b = ring_capnp.RingMessage.new_message()
    fill_message(b, msg)
    return b.to_bytes()


def from_bytes(data: bytes):
    with ring_capnp.RingMessage.from_bytes(data) as r:
        return message_from(r)
