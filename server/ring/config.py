"""Ring settings: one frozen dataclass, units in field names, validated once.

All durations are in ticks; the service decides how long a tick is (the
simulations and the benchmark print seconds for a 50 ms tick). Defaults
are tuned for a LAN where a round trip takes well under one tick.
"""

from __future__ import annotations

import dataclasses

from .ringmath import REPLICAS_DEFAULT, VIRTUAL_IDS_DEFAULT

PURE_CORE = True


@dataclasses.dataclass(frozen=True, slots=True)
class RingConfig:
    replicas: int = REPLICAS_DEFAULT
    virtual_ids: int = VIRTUAL_IDS_DEFAULT
    successors_len: int = REPLICAS_DEFAULT + 2
    # SWIM: one probe per period; indirect probes after the ack timeout.
    ping_period_ticks: int = 20
    ack_timeout_ticks: int = 5
    indirect_probes: int = 3
    relays_in_flight_max: int = 256  # PingReqs we ping for at once; more are dropped
    suspicion_timeout_ticks: int = 100
    # Each update is piggybacked gossip_retransmit_mult * ceil(log10(N + 1))
    # times (memberlist's rule), at most gossip_per_message_max per message.
    gossip_retransmit_mult: int = 4
    gossip_per_message_max: int = 8
    # Push-pull with one random member: bounds the epidemic's tail (a node
    # gossip happened to miss) to about one sync period.
    sync_period_ticks: int = 200
    tombstone_ticks: int = 12_000
    join_timeout_ticks: int = 10
    # A seed that no other seed admits forms a ring alone after this many
    # rounds (join_timeout_ticks per seed) times 1 + its rank in the sorted
    # seed list, so in a fresh cluster the first seed bootstraps and the rest
    # join it, yet the loss of that seed does not block the others.
    bootstrap_after_rounds: int = 3
    # Chord maintenance.
    stabilize_period_ticks: int = 20
    fix_fingers_period_ticks: int = 20
    lookup_timeout_ticks: int = 8
    lookup_retries_max: int = 2
    lookup_hops_max: int = 64
    lookups_in_flight_max: int = 1024
    # Drop a successor after this many unanswered stabilize queries; 0 =
    # never: SWIM is the failure detector (exclude()), and dropping a live
    # successor on message loss sends lookups to the wrong node until the
    # next stabilize round repairs it.
    successor_timeouts_max: int = 0
    # Let the member list (which SWIM makes complete) propose successors
    # Chord has not found yet; this also merges rings formed apart.
    membership_hints: bool = True

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.virtual_ids < 1:
            raise ValueError("replicas and virtual_ids must be >= 1")
        if self.successors_len < self.replicas + 2:
            raise ValueError("successors_len must be >= replicas + 2")
        if not 0 < self.ack_timeout_ticks < self.ping_period_ticks:
            raise ValueError("need 0 < ack_timeout_ticks < ping_period_ticks")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_ticks") and value <= 0:
                raise ValueError(f"{field.name} must be > 0")

    @classmethod
    def from_dict(cls, data: dict) -> RingConfig:
        """From a TOML table; unknown keys are an error, not a silent skip."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ring settings: {', '.join(unknown)}")
        return cls(**data)
