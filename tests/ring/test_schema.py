"""The wire schema loads and round-trips every core message type."""

import dataclasses

import pytest

from server.ring import messages as m

capnp = pytest.importorskip("capnp")

SAMPLES = [
    m.Ping("a", "b", 1, (m.Update("c", 2, m.Status.SUSPECT),)),
    m.Ack("a", "b", 1, "c"),
    m.PingReq("a", "b", 1, "c"),
    m.Join("a", "b", 3),
    m.JoinReply("a", "b", True, (m.Update("a", 0, m.Status.ALIVE),)),
    m.Sync("a", "b", False),
    m.FindNext("a", "b", 7, 2**64 - 1, True),
    m.FindNextReply("a", "b", 7, True, "c", "d", ("c", "d", "e")),
    m.GetNeighbours("a", "b", 8),
    m.Neighbours("a", "b", 8, "z", ("c", "d")),
    m.Notify("a", "b"),
    m.LeaveNotice("a", "b", "z", ("c",)),
]


def _camel(name):
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


@pytest.fixture(scope="module")
def schema():
    from rpc.schema import load
    return load("ring")


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_message_has_a_matching_wire_struct(schema, msg):
    wire = schema.RingMessage.new_message(src=msg.src, dst=msg.dst)
    kind = type(msg).__name__
    body = wire.body.init(kind[0].lower() + kind[1:])
    for field in dataclasses.fields(msg):
        if field.name in ("src", "dst"):
            continue
        value = getattr(msg, field.name)
        if field.name in ("updates", "members"):
            lst = body.init(_camel(field.name), len(value))
            for i, u in enumerate(value):
                lst[i].name, lst[i].incarnation = u.name, u.incarnation
                lst[i].status = u.status.name.lower()
        elif isinstance(value, tuple):
            body.__setattr__(_camel(field.name), list(value))
        else:
            body.__setattr__(_camel(field.name), value)
    with schema.RingMessage.from_bytes(wire.to_bytes()) as back:
        assert back.body.which() == kind[0].lower() + kind[1:]
        assert (back.src, back.dst) == (msg.src, msg.dst)
