"""Fast path for the two hot messages, Call and Return.

Reading or writing an envelope field through pycapnp costs about a
microsecond; a Call touches a dozen of them.  Here the envelope words are
packed and unpacked with ``struct`` at offsets taken from ``rpc.capnp``'s own
schema (nothing is hard-coded), while payloads stay pycapnp structs:

- encoding: the payload is built as a standalone ``Payload`` message; the
  envelope is a hand-written segment 0 whose params/results pointer is a far
  pointer to segment 1, word 0 -- the payload message's root pointer, which is
  a valid landing pad.  Payloads that spill over one segment take the
  ordinary pycapnp path (``encode_*`` returns None).
- decoding: a frame whose segment 0 equals our own Call or Return template
  outside the id fields is read here; everything else returns None and is
  read with pycapnp, which checks every pointer.  Matching a fixed template
  means no pointer of the envelope is ever followed by this code.

Equivalence with pycapnp's encoding is property-tested in
tests/rpc/test_envelope.py."""

import struct

import capnp

from . import schema

_RPC = schema.rpc_protocol()
Message, Call, Return, Payload, Target = (_RPC.Message, _RPC.Call, _RPC.Return, _RPC.Payload,
                                          _RPC.MessageTarget)
_WORD = struct.Struct("<Q")
_SIZES = {"uint16": 2, "uint32": 4, "uint64": 8}


def _shape(mod) -> tuple[int, int]:
    node = mod.schema.node.struct
    return node.dataWordCount, node.pointerCount


def _field(mod, name):
    return mod.schema.fields[name].proto


def _byte_offset(mod, name) -> int:
    slot = _field(mod, name).slot
    return slot.offset * _SIZES[slot.type.which()]


def _bit(mod, name) -> int:
    return _field(mod, name).slot.offset


def _disc_byte(mod) -> int:
    return mod.schema.node.struct.discriminantOffset * 2


class _L:
    """Layout of the envelope structs, read from the schema."""
    msg = _shape(Message)
    msg_disc = _disc_byte(Message)
    msg_call = _field(Message, "call").discriminantValue
    msg_return = _field(Message, "return").discriminantValue
    msg_ptr = _field(Message, "call").slot.offset
    call = _shape(Call)
    call_qid = _byte_offset(Call, "questionId")
    call_iface = _byte_offset(Call, "interfaceId")
    call_method = _byte_offset(Call, "methodId")
    call_target = _field(Call, "target").slot.offset
    call_params = _field(Call, "params").slot.offset
    call_srt_disc = Call.schema.fields["sendResultsTo"].schema.node.struct.discriminantOffset * 2
    target = _shape(Target)
    target_disc = _disc_byte(Target)
    target_import = _byte_offset(Target, "importedCap")
    target_is_import = _field(Target, "importedCap").discriminantValue
    ret = _shape(Return)
    ret_qid = _byte_offset(Return, "answerId")
    ret_disc = _disc_byte(Return)
    ret_results = _field(Return, "results").discriminantValue
    ret_ptr = _field(Return, "results").slot.offset
    ret_no_finish_bit = _bit(Return, "noFinishNeeded")
    payload = _shape(Payload)
    payload_content = _field(Payload, "content").slot.offset
    payload_caps = _field(Payload, "capTable").slot.offset


assert _L.msg_ptr == _field(Message, "return").slot.offset
assert _L.payload_content == 0 and _L.payload[0] == 0  # the far pointer goes in word 0


def _struct_ptr(ptr_word: int, target_word: int, shape: tuple[int, int]) -> int:
    offset = target_word - ptr_word - 1
    return ((offset << 2) & 0xFFFFFFFF) | (shape[0] << 32) | (shape[1] << 48)


_FAR_TO_SEGMENT_1 = 2 | (1 << 32)  # single-far pointer: segment 1, landing pad at word 0


def _envelope(body_shape: tuple[int, int], body_data: bytes, body_ptr_slot: int,
              disc: int) -> bytearray:
    """Segment 0 holding Message{disc -> body} where body's pointer
    ``body_ptr_slot`` is a far pointer to the payload in segment 1."""
    dw_m, pw_m = _L.msg
    dw_b, pw_b = body_shape
    msg_at, body_at = 1, 1 + dw_m + pw_m
    size = body_at + dw_b + pw_b
    seg = bytearray(size * 8)
    _WORD.pack_into(seg, 0, _struct_ptr(0, msg_at, _L.msg))
    struct.pack_into("<H", seg, msg_at * 8 + _L.msg_disc, disc)
    ptr = msg_at + dw_m + _L.msg_ptr
    _WORD.pack_into(seg, ptr * 8, _struct_ptr(ptr, body_at, body_shape))
    seg[body_at * 8: body_at * 8 + len(body_data)] = body_data
    _WORD.pack_into(seg, (body_at + dw_b + body_ptr_slot) * 8, _FAR_TO_SEGMENT_1)
    return seg


DEFAULT_SEGMENT_WORDS = 1024  # pycapnp's first segment


def new_payload(struct_schema, first_segment_words: int = 0):
    """A standalone Payload message and its content struct builder.  A
    payload expected to be large gets a first segment big enough to hold it,
    so it stays one segment and keeps the fast path (the segment is calloc'd:
    pages it never touches cost nothing)."""
    if first_segment_words > DEFAULT_SEGMENT_WORDS:
        payload = capnp.lib.capnp._MallocMessageBuilder(first_segment_words).init_root(Payload)
    else:
        payload = Payload.new_message()
    return payload, payload.content.as_struct(struct_schema)


def words_for(nbytes: int) -> int:
    """A first-segment size for a payload of about ``nbytes``."""
    return nbytes // 8 + nbytes // 32 + 256


def _frame(seg0: bytearray, payload_segment: bytes):
    header = struct.pack("<III", 1, len(seg0) // 8, len(payload_segment) // 8) + b"\0" * 4
    if len(payload_segment) >= 65536:
        return [header + seg0, payload_segment]
    return b"".join((header, seg0, payload_segment))


def _call_template() -> tuple[bytes, int, int, int, int]:
    """Segment 0 of a Call to an import, with zero ids, and where the ids go."""
    dw_c, pw_c = _L.call
    seg = _envelope(_L.call, bytes(dw_c * 8), _L.call_params, _L.msg_call)
    call_at = 1 + sum(_L.msg)
    target_at = len(seg) // 8
    ptr = call_at + dw_c + _L.call_target
    _WORD.pack_into(seg, ptr * 8, _struct_ptr(ptr, target_at, _L.target))
    target = bytearray(sum(_L.target) * 8)
    struct.pack_into("<H", target, _L.target_disc, _L.target_is_import)
    seg += target
    base = call_at * 8
    return (bytes(seg), base + _L.call_qid, base + _L.call_iface, base + _L.call_method,
            target_at * 8 + _L.target_import)


def _return_template() -> tuple[bytes, int]:
    data = bytearray(_L.ret[0] * 8)
    struct.pack_into("<H", data, _L.ret_disc, _L.ret_results)
    byte, bit = divmod(_L.ret_no_finish_bit, 8)
    data[byte] |= 1 << bit
    seg = _envelope(_L.ret, bytes(data), _L.ret_ptr, _L.msg_return)
    return bytes(seg), (1 + sum(_L.msg)) * 8 + _L.ret_qid


_CALL, _CALL_QID, _CALL_IFACE, _CALL_METHOD, _CALL_IMPORT = _call_template()
_RETURN, _RETURN_QID = _return_template()
_U32, _U64, _U16 = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<H")


def encode_call(qid: int, import_id: int, interface_id: int, method_id: int, payload):
    """Frame for a Call to an imported capability, or None if the payload
    needs more than one segment."""
    segments = payload.to_segments()
    if len(segments) != 1:
        return None
    seg = bytearray(_CALL)
    _U32.pack_into(seg, _CALL_QID, qid)
    _U64.pack_into(seg, _CALL_IFACE, interface_id)
    _U16.pack_into(seg, _CALL_METHOD, method_id)
    _U32.pack_into(seg, _CALL_IMPORT, import_id)
    return _frame(seg, segments[0])


def encode_return(qid: int, payload):
    """Frame for a Return with results (noFinishNeeded set), or None if the
    payload needs more than one segment."""
    segments = payload.to_segments()
    if len(segments) != 1:
        return None
    seg = bytearray(_RETURN)
    _U32.pack_into(seg, _RETURN_QID, qid)
    return _frame(seg, segments[0])


# ----------------------------------------------------------------- decoding

class FastCall:
    __slots__ = ("qid", "import_id", "interface_id", "method_id", "payload")


class FastReturn:
    __slots__ = ("qid", "no_finish", "payload")


def _matches(seg: bytes, template: bytes, holes: list[tuple[int, int]]) -> bool:
    """seg equals template outside the byte ranges in ``holes``."""
    if len(seg) != len(template):
        return False
    start = 0
    for lo, hi in holes:
        if seg[start:lo] != template[start:lo]:
            return False
        start = hi
    return seg[start:] == template[start:]


_RETURN_HOLES = [(_RETURN_QID, _RETURN_QID + 4)]
_CALL_HOLES = sorted([(_CALL_QID, _CALL_QID + 4), (_CALL_IFACE, _CALL_IFACE + 8),
                      (_CALL_METHOD, _CALL_METHOD + 2), (_CALL_IMPORT, _CALL_IMPORT + 4)])


def decode(segments, traversal_words: int, nesting: int):
    """FastCall or FastReturn for a frame laid out exactly as our encoders
    write it; None otherwise (the caller then reads it with pycapnp)."""
    if len(segments) != 2:
        return None
    seg = segments[0]
    if _matches(seg, _RETURN, _RETURN_HOLES):
        out = FastReturn()
        out.qid = _U32.unpack_from(seg, _RETURN_QID)[0]
        out.no_finish = True
    elif _matches(seg, _CALL, _CALL_HOLES):
        out = FastCall()
        out.qid = _U32.unpack_from(seg, _CALL_QID)[0]
        out.interface_id = _U64.unpack_from(seg, _CALL_IFACE)[0]
        out.method_id = _U16.unpack_from(seg, _CALL_METHOD)[0]
        out.import_id = _U32.unpack_from(seg, _CALL_IMPORT)[0]
    else:
        return None
    # The template fixes every pointer of the envelope; only the payload
    # segment is left for pycapnp to check as it is read.
    out.payload = Payload.from_segments([segments[1]], traversal_limit_in_words=traversal_words,
                                        nesting_limit=nesting)
    return out
