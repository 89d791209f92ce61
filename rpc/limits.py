"""Every bound of a connection in one frozen value, units last in names."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Limits:
    frame_bytes_max: int = 16 * 1024 * 1024
    # Cap'n Proto's own reader refuses more than 512 segments; so do we.
    segments_max: int = 512
    # Words a reader may traverse per message: a multiple of the frame size so
    # a payload can be read a few times, yet amplification attacks stay bounded.
    traversal_factor: int = 4
    nesting_max: int = 64
    inflight_calls_max: int = 1024  # answers being computed for the peer
    # Bytes of the params of those calls: past it the connection stops
    # reading (TCP pushes back on the peer) until calls finish, so a peer
    # cannot park frame_bytes_max x inflight_calls_max in our memory.
    inflight_bytes_max: int = 64 * 1024 * 1024
    outstanding_calls_max: int = 1024  # our own questions awaiting a return
    send_queue_frames_max: int = 4096
    call_timeout_s: float = 30.0
    write_batch_bytes: int = 256 * 1024

    def __post_init__(self):
        if self.frame_bytes_max < 64 or self.frame_bytes_max > (1 << 31):
            raise ValueError("frame_bytes_max must be between 64 bytes and 2 GiB")
        for name in ("segments_max", "nesting_max", "inflight_calls_max",
                     "outstanding_calls_max", "send_queue_frames_max", "traversal_factor",
                     "inflight_bytes_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.call_timeout_s <= 0:
            raise ValueError("call_timeout_s must be positive")

    @property
    def traversal_words_max(self) -> int:
        return self.frame_bytes_max // 8 * self.traversal_factor
