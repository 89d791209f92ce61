"""The hand-written Call/Return envelopes mean exactly what pycapnp says."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from rpc import envelope
from rpc.connection import Message
from rpc.framing import FrameDecoder, encode
from rpc.limits import Limits
from server.diag import diag

ECHO = diag.Diag.schema.methods["echo"]


def _segments(frame) -> list:
    decoder = FrameDecoder(Limits())
    decoder.feed(frame if isinstance(frame, bytes) else b"".join(frame))
    return decoder.next_frame()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(qid=st.integers(0, 2**32 - 1), import_id=st.integers(0, 2**32 - 1),
       iface=st.integers(0, 2**64 - 1), method=st.integers(0, 2**16 - 1), data=st.binary(max_size=2000))
def test_fast_call_reads_back_in_pycapnp_and_fast_decoder(qid, import_id, iface, method, data):
    payload, params = envelope.new_payload(ECHO.param_type)
    params.data = data
    segs = _segments(envelope.encode_call(qid, import_id, iface, method, payload))
    msg = Message.from_segments(segs)
    assert msg.which() == "call"
    call = msg.call
    assert (call.questionId, call.interfaceId, call.methodId) == (qid, iface, method)
    assert call.target.which() == "importedCap" and call.target.importedCap == import_id
    assert call.sendResultsTo.which() == "caller"
    assert len(call.params.capTable) == 0
    assert call.params.content.as_struct(ECHO.param_type).data == data
    fast = envelope.decode(segs, 1 << 20, 64)
    assert isinstance(fast, envelope.FastCall)
    assert (fast.qid, fast.import_id, fast.interface_id, fast.method_id) == (qid, import_id, iface, method)
    assert fast.payload.content.as_struct(ECHO.param_type).data == data


@settings(max_examples=100, deadline=None, derandomize=True)
@given(qid=st.integers(0, 2**32 - 1), data=st.binary(max_size=2000))
def test_fast_return_reads_back(qid, data):
    payload, results = envelope.new_payload(ECHO.result_type)
    results.data = data
    segs = _segments(envelope.encode_return(qid, payload))
    ret = getattr(Message.from_segments(segs), "return")
    assert ret.answerId == qid and ret.which() == "results" and ret.noFinishNeeded
    assert ret.releaseParamCaps  # the default a level-0 callee must send
    assert ret.results.content.as_struct(ECHO.result_type).data == data
    fast = envelope.decode(segs, 1 << 20, 64)
    assert isinstance(fast, envelope.FastReturn) and fast.qid == qid and fast.no_finish


def test_large_payload_declines_fast_path():
    payload, params = envelope.new_payload(ECHO.param_type)
    params.data = b"x" * (1 << 20)
    assert envelope.encode_call(1, 0, 1, 0, payload) is None
    assert envelope.encode_return(1, payload) is None


def test_other_messages_fall_back():
    for kind in ("bootstrap", "finish", "release", "abort"):
        msg = Message.new_message()
        msg.init(kind)
        assert envelope.decode(_segments(encode(msg)), 1 << 20, 64) is None
    # A pycapnp-built call (single segment, content inline) also falls back.
    msg = Message.new_message()
    call = msg.init("call")
    call.params.content.as_struct(ECHO.param_type).data = b"abc"
    assert envelope.decode(_segments(encode(msg)), 1 << 20, 64) is None


def test_corrupted_fast_frames_never_crash_the_decoder():
    rng = random.Random(7)
    payload, params = envelope.new_payload(ECHO.param_type)
    params.data = b"payload"
    good = envelope.encode_call(3, 0, 5, 1, payload)
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(16, len(data))] ^= 1 << rng.randrange(8)
        segs = _segments(bytes(data))
        if segs is None:
            continue
        try:
            fast = envelope.decode(segs, 1 << 20, 64)
            if fast is not None:
                fast.payload.content.as_struct(ECHO.param_type).data
        except Exception as e:  # noqa: BLE001 -- only capnp's own checked errors are fine
            assert type(e).__name__ == "KjException", repr(e)


def test_sized_payload_keeps_the_fast_path():
    data = bytes(range(256)) * 4096
    payload, params = envelope.new_payload(ECHO.param_type, envelope.words_for(len(data)))
    params.data = data
    segs = _segments(envelope.encode_call(9, 0, 5, 1, payload))
    fast = envelope.decode(segs, 1 << 22, 64)
    assert isinstance(fast, envelope.FastCall)
    assert fast.payload.content.as_struct(ECHO.param_type).data == data
