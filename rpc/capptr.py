"""Writes a capability pointer into a message by hand.

pycapnp can only put a capability into a message through its own RPC system,
which runs on asyncio.  Level-0 Cap'n Proto needs exactly one such pointer:
the bootstrap answer's ``Return.results.content``.  We build the message with
pycapnp, leave ``content`` null, then follow the struct pointers of the
single segment to that slot and store a capability pointer (kind 3, index
into the payload's capTable).  Pointer offsets come from the schema, so the
code does not guess at layout."""

import struct

from .errors import ProtocolError

_WORD = struct.Struct("<Q")


def _follow_struct(seg: bytearray, ptr_word: int) -> tuple[int, int]:
    """Return (data_start_word, pointer_section_start_word) of the struct that
    the pointer at ``ptr_word`` refers to."""
    value = _WORD.unpack_from(seg, ptr_word * 8)[0]
    if value & 3 != 0:
        raise ProtocolError("expected a struct pointer while placing a capability")
    offset = (value & 0xFFFFFFFF) >> 2
    if offset & (1 << 29):
        offset -= 1 << 30
    data_words = (value >> 32) & 0xFFFF
    start = ptr_word + 1 + offset
    return start, start + data_words


def place_capability(segments: list[bytes], pointer_path: list[int], cap_index: int) -> list[bytes]:
    """``pointer_path`` lists, from the root struct down, the pointer-section
    index to follow at each level; the last one is the slot to fill."""
    if len(segments) != 1:
        raise ProtocolError("capability placement needs a single-segment message")
    seg = bytearray(segments[0])
    ptr_word = 0  # the root pointer
    for index in pointer_path[:-1]:
        _, ptrs = _follow_struct(seg, ptr_word)
        ptr_word = ptrs + index
    _, ptrs = _follow_struct(seg, ptr_word)
    slot = ptrs + pointer_path[-1]
    if _WORD.unpack_from(seg, slot * 8)[0] != 0:
        raise ProtocolError("capability slot is not null")
    _WORD.pack_into(seg, slot * 8, (cap_index << 32) | 3)
    return [bytes(seg)]
