"""The wire codec (server/ring/wire.py) round-trips every core message type
through rpc/schema/ring.capnp, and rejects what the core must never see."""

import pytest

from server.ring import messages as m

capnp = pytest.importorskip("capnp")
wire = pytest.importorskip("server.ring.wire")

SAMPLES = [
    m.Ping("a", "b", 1, (m.Update("c", 2, m.Status.SUSPECT),)),
    m.Ack("a", "b", 1, "c"),
    m.PingReq("a", "b", 1, "c"),
    m.Join("a", "b", 3),
    m.JoinReply("a", "b", True, (m.Update("a", 0, m.Status.ALIVE),
                                 m.Update("d", 9, m.Status.LEFT))),
    m.Sync("a", "b", False),
    m.Sync("a", "b", True, (m.Update("e", 2**64 - 1, m.Status.DEAD),)),
    m.FindNext("a", "b", 7, 2**64 - 1, True),
    m.FindNextReply("a", "b", 7, True, "c", "d", ("c", "d", "e")),
    m.FindNextReply("a", "b", 8, False, ""),
    m.GetNeighbours("a", "b", 8),
    m.Neighbours("a", "b", 8, "z", ("c", "d")),
    m.Notify("a", "b"),
    m.LeaveNotice("a", "b", "z", ("c",)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_message_round_trips(msg):
    assert wire.from_bytes(wire.to_bytes(msg)) == msg


def test_every_message_type_is_covered():
    assert {type(s) for s in SAMPLES} == set(m.SWIM_MESSAGES + m.CHORD_MESSAGES)


def test_unknown_status_is_a_protocol_error():
    # A newer peer's enum value reads back as a bare number.
    status = type("E", (), {"raw": 7})()
    entry = type("U", (), {"name": "c", "incarnation": 0, "status": status})()
    with pytest.raises(m.ProtocolError, match="unknown member status"):
        wire.updates_from([entry])


def test_non_message_is_refused():
    with pytest.raises(TypeError):
        wire.to_bytes(m.Update("a", 0, m.Status.ALIVE))
