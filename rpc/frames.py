"""Frames the connection sends besides hot-path calls: control messages
(Finish, Release, Abort, exception and canceled Returns), the general Call
and Return encodings that the fast path falls back to, and the coalescing of
queued frames into few socket writes."""

from . import envelope, schema
from .framing import BIG_FRAME_BYTES, encode, frame_size

Message = schema.rpc_protocol().Message
_EXC_TYPES = ("failed", "overloaded", "disconnected", "unimplemented")


def coalesce(batch: list):
    """Join small frames into few buffers; hand large segments over as they
    are (send_all slices them without copying)."""
    small = []
    for frame in batch:
        parts = (frame,) if isinstance(frame, (bytes, bytearray)) else frame
        for part in parts:
            if len(part) >= BIG_FRAME_BYTES:
                if small:
                    yield b"".join(small)
                    small = []
                yield part
            else:
                small.append(part)
    if small:
        yield small[0] if len(small) == 1 else b"".join(small)


def set_exception(ret, kind: str, reason: str) -> None:
    exc = ret.init("exception")
    exc.reason = reason
    exc.type = kind if kind in _EXC_TYPES else "failed"


def _return_frame(qid: int, fill) -> bytes:
    msg = Message.new_message()
    ret = msg.init("return")
    ret.answerId = qid
    ret.noFinishNeeded = True
    fill(ret)
    return msg.to_bytes()


def exception_frame(qid: int, kind: str, reason: str) -> bytes:
    return _return_frame(qid, lambda ret: set_exception(ret, kind, reason))


def canceled_frame(qid: int) -> bytes:
    return _return_frame(qid, lambda ret: setattr(ret, "canceled", None))


def results_frame(qid: int, payload):
    """(frame, spilled bytes): the Return carrying ``payload`` (a standalone
    Payload message); spilled bytes is 0 on the fast path, else the frame
    size, so the caller can give the next payload a bigger first segment."""
    frame = envelope.encode_return(qid, payload)
    if frame is not None:
        return frame, 0
    msg = Message.new_message()  # results spilled over one segment
    ret = msg.init("return")
    ret.answerId = qid
    ret.noFinishNeeded = True
    ret.init("results").content.set(payload.as_reader().content)
    frame = encode(msg)
    return frame, frame_size(frame)


def call_frame(qid: int, target: tuple, interface_id: int, method, fill):
    """The general Call encoding: any target, payloads of any size."""
    msg = Message.new_message()
    call = msg.init("call")
    call.questionId = qid
    if target[0] == "import":
        call.target.importedCap = target[1]
    else:
        call.target.init("promisedAnswer").questionId = target[1]
    call.interfaceId = interface_id
    call.methodId = method.ordinal
    params = call.params.content.as_struct(method.param_type)
    if fill is not None:
        fill(params)
    return encode(msg)


def finish_frame(qid: int, release_caps: bool) -> bytes:
    msg = Message.new_message()
    fin = msg.init("finish")
    fin.questionId = qid
    fin.releaseResultCaps = release_caps
    fin.requireEarlyCancellationWorkaround = False
    return msg.to_bytes()


def release_frame(import_id: int, count: int) -> bytes:
    msg = Message.new_message()
    rel = msg.init("release")
    rel.id = import_id
    rel.referenceCount = count
    return msg.to_bytes()


def abort_frame(reason: str) -> bytes:
    msg = Message.new_message()
    exc = msg.init("abort")
    exc.reason = reason[:1000]
    exc.type = "failed"
    return msg.to_bytes()
