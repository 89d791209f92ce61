"""Opens one node's Raft group from its directory: recover storage, restore
the state machine from the snapshot if it is behind, build the core (with
the initial voters when the directory is brand new), and wire the service
to a transport.  What a node process and the tests share."""

import dataclasses
import random

from .config import RaftConfig
from .core import RaftNode
from .messages import HardState, Membership
from .service import RaftService
from .snapparts import PART_BYTES
from .storage import LogStorage
from .transport import RaftTransport


@dataclasses.dataclass
class RaftGroup:
    node_id: int
    storage: LogStorage
    service: RaftService
    transport: RaftTransport
    addrs: dict[int, str]
    fresh: bool = False  # the directory held no Raft state when opened

    def addr_of(self, node_id: int) -> str | None:
        return (self.service.core.log.membership().name_of(node_id) or self.addrs.get(node_id)
                or self.transport._resolve(node_id))


def open_group(node_id: int, addrs: dict[int, str], data_dir: str, state_machine, pool, *,
               cfg: RaftConfig = RaftConfig(), tick_s: float = 0.1, seed: int | None = None,
               snapshot_entries: int = 10_000, bootstrap: bool | Membership = True,
               resolve=None, frame_bytes_max: int = 16 << 20) -> RaftGroup:
    """``addrs`` maps known members' ids to their RPC addresses.  On a
    brand-new directory ``bootstrap`` decides the first configuration: True
    makes every id of ``addrs`` a voter (tests and the standalone tool), a
    Membership is used as given (chordfs cluster init: this node alone), and
    False starts with none: a joining node learns it from the leader once it
    has been added as a learner.  Addresses of later members come from the
    configuration in the log.
    ``frame_bytes_max``: the peers' RPC frame limit, which step batches and
    snapshot parts stay well below."""
    storage = LogStorage(data_dir)
    snapshot, entries, hard_state = storage.snapshot, storage.entries(), storage.hard_state
    if snapshot is not None and state_machine.applied_index() < snapshot.meta.index:
        state_machine.restore(snapshot.meta.index, snapshot.data)
    fresh = snapshot is None and not entries and hard_state == HardState()
    last = entries[-1].index if entries else (snapshot.meta.index if snapshot else 0)
    applied = max(state_machine.applied_index(), snapshot.meta.index if snapshot else 0)
    if hard_state.commit < min(applied, last):
        # Storage does not write commit-only changes: whatever the state
        # machine applied was committed, so the commit index is at least that.
        hard_state = dataclasses.replace(hard_state, commit=min(applied, last))
    if bootstrap is True:
        bootstrap = Membership(frozenset(addrs), names=tuple(sorted(addrs.items())))
    core = RaftNode(node_id, cfg, random.Random(node_id if seed is None else seed),
                    hard_state=hard_state, snapshot=snapshot, entries=entries,
                    applied=min(applied, last) if applied > last else applied,
                    bootstrap=bootstrap if fresh and bootstrap else None)

    def resolve_member(peer: int) -> str | None:
        return core.log.membership().name_of(peer) or (resolve(peer) if resolve else None)
    transport = RaftTransport(pool, addrs, self_id=node_id, resolve=resolve_member,
                              batch_bytes_max=frame_bytes_max // 2,
                              part_bytes=min(PART_BYTES, frame_bytes_max // 4))
    service = RaftService(core, storage, state_machine, transport, tick_s=tick_s,
                          snapshot_entries=snapshot_entries)
    transport.on_report(service.report)
    transport.on_answers(service.deliver)
    return RaftGroup(node_id, storage, service, transport, dict(addrs), fresh)
