"""Who a node is, and which cluster it belongs to, kept in its data directory.

A node's id is random, created at its first start and stored in
``DATA_DIR/identity`` (temp file, fsync, rename, fsync of the directory).
It is the node's Raft id, so a machine whose disk was replaced comes back
under a new id: it can never vote as the member it replaced, with no memory
of what that member promised (the "amnesiac voter").

The cluster id is created once, by ``chordfs cluster init`` or the first
start of a node with ``--init``; every other node learns it when the leader
adds it as a member.  Raft messages and joins carry it, and a node refuses
traffic that names another cluster.

States of a data directory:

  no identity file             brand new: a node id is created; the node joins
                               through its seeds (or bootstraps with --init)
  node id, no cluster id       created, never admitted: it asks to join again
  node id, cluster id, member  admitted: its Raft storage must hold state; if it
                               does not, the storage was lost and the node
                               refuses to start (see AmnesiaError)

Invariants: a node id is never 0 and never changes for a directory; a cluster
id, once written, never changes."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets

FILE_NAME = "identity"
NODE_ID_BITS = 63  # fits SQLite and Cap'n Proto UInt64 alike


class IdentityError(Exception):
    """The identity file is unusable; str() is one sentence for an operator."""


class AmnesiaError(IdentityError):
    """This node was a member but its Raft storage is gone."""


@dataclasses.dataclass(frozen=True)
class Identity:
    node_id: int
    cluster_id: str = ""   # hex, 32 digits; "" until admitted
    member: bool = False    # set once this node's storage holds the cluster's log
    founder: bool = False   # this directory created the cluster id (init)

    def __post_init__(self) -> None:
        if not 0 < self.node_id < (1 << NODE_ID_BITS):
            raise IdentityError(f"node id {self.node_id} is out of range")
        if self.cluster_id and (len(self.cluster_id) != 32
                                or any(c not in "0123456789abcdef" for c in self.cluster_id)):
            raise IdentityError(f"cluster id {self.cluster_id!r} is not 32 hex digits")


def new_cluster_id() -> str:
    return secrets.token_hex(16)


def new_node_id() -> int:
    return secrets.randbits(NODE_ID_BITS - 1) + 1


def path_of(data_dir: str) -> str:
    return os.path.join(data_dir, FILE_NAME)


def load(data_dir: str) -> Identity | None:
    path = path_of(data_dir)
    try:
        with open(path, "rb") as f:
            raw = json.loads(f.read())
        return Identity(int(raw["node_id"]), str(raw.get("cluster_id", "")),
                        bool(raw.get("member", False)), bool(raw.get("founder", False)))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise IdentityError(f"{path} is damaged ({e}); restore it or start with an empty "
                            "data directory as a new member") from None


def save(data_dir: str, ident: Identity) -> None:
    """Durable before it returns: what we announce to peers must survive us."""
    os.makedirs(data_dir, exist_ok=True)
    path = path_of(data_dir)
    old = load(data_dir)
    if old is not None:
        assert old.node_id == ident.node_id, "a node id never changes"
        assert not old.cluster_id or old.cluster_id == ident.cluster_id, "nor a cluster id"
    tmp = path + ".tmp"
    body = json.dumps(dataclasses.asdict(ident), sort_keys=True).encode() + b"\n"
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(data_dir)


def fsync_dir(path: str) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create(data_dir: str) -> Identity:
    ident = load(data_dir)
    if ident is None:
        ident = Identity(new_node_id())
        save(data_dir, ident)
    return ident


def init_cluster(data_dir: str, cluster_id: str | None = None) -> Identity:
    """Make this directory the first member of a new cluster, under
    ``cluster_id`` (a TLS cluster's: its CA's) or a new id.  Refuses a
    directory that already belongs to a cluster (init runs once)."""
    ident = load_or_create(data_dir)
    if ident.cluster_id:
        raise IdentityError(f"{data_dir} already belongs to cluster {ident.cluster_id}; "
                            "cluster init runs once, on one node")
    ident = dataclasses.replace(ident, cluster_id=cluster_id or new_cluster_id(), founder=True)
    save(data_dir, ident)
    return ident


def check_storage(ident: Identity, has_raft_state: bool) -> None:
    """A member whose Raft storage is empty lost its disk: starting it would
    make it vote with no memory of its promises."""
    if ident.member and not has_raft_state:
        raise AmnesiaError(
            f"this node (id {ident.node_id:x}) is a member of cluster {ident.cluster_id} but its "
            f"Raft storage is empty: remove it with `chordfs members ANY_NODE remove {ident.node_id:x}` "
            "and start it again with an empty data directory to re-add it as a new member")
