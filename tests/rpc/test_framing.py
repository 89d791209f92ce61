"""The incremental frame decoder against a direct reference."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpc.errors import ProtocolError
from rpc.framing import BIG_FRAME_BYTES, FrameDecoder, frame_segments
from rpc.limits import Limits

segment = st.integers(min_value=1, max_value=40).flatmap(
    lambda words: st.binary(min_size=8 * words, max_size=8 * words))
frame = st.lists(segment, min_size=1, max_size=5)


def _decode_all(data: bytes, cuts: list[int], limits=Limits()) -> list[list[bytes]]:
    decoder = FrameDecoder(limits)
    out, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        decoder.feed(data[last:cut])
        last = cut
        while (segs := decoder.next_frame()) is not None:
            out.append([bytes(s) for s in segs])
    return out


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(frame, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 5000), max_size=30))
def test_any_split_yields_the_same_frames(frames, cuts):
    data = b"".join(frame_segments(f) for f in frames)
    cuts = [c % (len(data) + 1) for c in cuts]
    assert _decode_all(data, cuts) == frames


@pytest.mark.parametrize("piece", [1000, 65536, 300_000])
def test_big_frame_assembled_in_place(piece):
    segs = [b"a" * 64, bytes(range(256)) * (3 * BIG_FRAME_BYTES // 256)]
    small = [b"b" * 16]
    data = frame_segments(segs) + frame_segments(small) + frame_segments(segs)
    cuts = list(range(piece, len(data), piece))
    assert _decode_all(data, cuts) == [segs, small, segs]


def test_oversized_frame_refused_from_header_alone():
    limits = Limits(frame_bytes_max=4096)
    decoder = FrameDecoder(limits)
    decoder.feed(struct.pack("<II", 0, 1_000_000))  # claims 8 MB, sends 8 bytes
    with pytest.raises(ProtocolError, match="exceeds limit"):
        decoder.next_frame()


def test_too_many_segments_refused():
    decoder = FrameDecoder(Limits(segments_max=4))
    decoder.feed(struct.pack("<II", 9, 1) + b"\0" * 64)
    with pytest.raises(ProtocolError, match="segments"):
        decoder.next_frame()


def test_empty_first_segment_refused():
    decoder = FrameDecoder(Limits())
    decoder.feed(struct.pack("<II", 0, 0))
    with pytest.raises(ProtocolError, match="empty"):
        decoder.next_frame()
