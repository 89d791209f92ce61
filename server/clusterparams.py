"""Cluster-wide settings that every node and mount must agree on.

Where a chunk lives is a function of the ring's members and of these
numbers; if a mount placed chunks with other numbers than the nodes repair,
hand off and collect with, copies would be read where nothing keeps them.
So they are not per-node settings: the founder's configuration fixes them
in the first committed cluster configuration (``Membership.params``), every
node takes them from its log (its own ``node.toml`` values are overridden,
with a warning when they differ), and mounts read them with ``Raft.status``
along with the configuration's index, the map epoch.

Changing them on a running cluster would move most chunks; no command does
it yet (see the README)."""

from __future__ import annotations

import dataclasses
import logging

from rpc.logfmt import kv

log = logging.getLogger("chordfs.cluster")

# key -> (lowest, highest); the keys are NodeConfig field names.
PARAMS: dict[str, tuple[int, int]] = {
    "virtual_ids_per_node": (1, 256),
    "replication_factor": (1, 16),
    "write_quorum_min": (1, 16),
    "chunk_bytes_max": (4096, 64 << 20),
}


class ParamsError(ValueError):
    """Settings that cannot be the cluster's; str() is one sentence."""


def check(params: dict[str, int]) -> None:
    for key, value in params.items():
        if key not in PARAMS:
            raise ParamsError(f"{key} is not a cluster-wide setting")
        lo, hi = PARAMS[key]
        if not lo <= value <= hi:
            raise ParamsError(f"{key} = {value} is outside {lo}..{hi}")
    if params.get("write_quorum_min", 1) > params.get("replication_factor", 16):
        raise ParamsError("write_quorum_min cannot exceed replication_factor")


def params_of(cfg) -> tuple[tuple[str, int], ...]:
    """The founder's settings, as they go into the first configuration."""
    params = {key: int(getattr(cfg, key)) for key in PARAMS}
    check(params)
    return tuple(sorted(params.items()))


def effective(cfg, committed: tuple[tuple[str, int], ...]):
    """``cfg`` with the committed settings in place of its own; a differing
    local value is logged once, since an operator who set it expects it."""
    values = dict(committed)
    changes = {}
    for key in PARAMS:
        if key in values and values[key] != getattr(cfg, key):
            log.warning(kv("cluster.setting_overridden", node=cfg.node_name, key=key,
                           local=getattr(cfg, key), cluster=values[key]))
            changes[key] = values[key]
    return dataclasses.replace(cfg, **changes) if changes else cfg
