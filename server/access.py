"""Who may call what on a node: the role a peer's certificate proves
(server/pki.py) against the methods of the node's interfaces.

  node        every method (Raft traffic, snapshots, membership, ring
              gossip, chunk delete and listing, test hooks)
  client      the client surface a mount and the operator CLI use:
              metadata queries and lease events, proposing commands, Raft
              status, chunk has/get/put/verify/stats, the ring's member list,
              ping
  read-only   a client without the methods that change anything (propose,
              chunk put)
  subdir      a client whose queries and commands may name only inodes
              inside its directory (server/subtree.py)

Whatever the method allows, a client never proposes the commands only nodes
make (NODE_COMMANDS), not even inside a lease batch.

A refused call answers ``PermissionDenied`` (a typed Failed) and the
connection stays up: a mount that asks for too much learns why, and the
node keeps serving.  A plain-TCP node (``insecure``) has no peer identity
and refuses nothing, which is why that setting is loud everywhere.

Invariant: a method missing from CLIENT is node-only, so a method added to
a schema later is closed to clients until it is listed here."""

from __future__ import annotations

import logging

import rpc
from rpc import schema
from rpc.logfmt import kv

from .pki import PeerIdentity

_IFACES = {name: rpc.Interface.of(getattr(schema.load(module), name)).id
           for module, name in (("diag", "Diag"), ("meta", "Metadata"), ("raft", "Raft"),
                                ("ring", "RingPeer"), ("store", "ChunkStore"))}

CLIENT = {
    "Diag": {"ping", "report"},
    "Metadata": {"query", "leaseEvents"},
    "Raft": {"propose", "status"},
    "RingPeer": {"members"},
    "ChunkStore": {"has", "put", "putBegin", "putPiece", "putCommit", "putAbort", "get",
                   "verify", "stats"},
}
CHANGES = {"Raft": {"propose"},
           "ChunkStore": {"put", "putBegin", "putPiece", "putCommit", "putAbort"}}

# Commands only nodes propose: the clock (Tick), GC's forgetting of dead
# blocks (ForgetChunks) and the compactor's rewrites (Compact). From a
# client they would move lease time, drop blocks still in use, or point a
# file at bytes nobody checked.
NODE_COMMANDS = frozenset({"tick", "forgetChunks", "compact"})

_CLIENT_IDS = {(_IFACES[i], m) for i, ms in CLIENT.items() for m in ms}
_CHANGE_IDS = {(_IFACES[i], m) for i, ms in CHANGES.items() for m in ms}
_NAMES = {v: k for k, v in _IFACES.items()}
log = logging.getLogger("chordfs.access")


def refusal(peer: PeerIdentity | None, interface_id: int, method: str) -> str | None:
    """Why ``peer`` may not call the method, or None if it may."""
    if peer is None or peer.is_node:
        return None
    key = (interface_id, method)
    iface = _NAMES.get(interface_id, f"interface {interface_id:x}")
    if key not in _CLIENT_IDS:
        return f"{iface}.{method} is for cluster nodes; client {peer.name} may not call it"
    if peer.read_only and key in _CHANGE_IDS:
        return f"client {peer.name} is read-only; {iface}.{method} changes the filesystem"
    return None


def command_refusal(peer: PeerIdentity | None, command: bytes) -> str | None:
    """Why ``peer`` may not propose ``command`` (one of its lease batch's
    ops included), or None.  Undecodable bytes are left to the state
    machine's validation, which answers EINVAL."""
    if peer is None or peer.is_node:
        return None
    from .meta import codec
    try:
        kinds = [codec.command_kind(command)]
        if kinds[0] in ("leaseBatch", "sessioned"):
            kinds += [codec.command_kind(op) for op in codec.decode_command(command).ops]
    except ValueError:
        return None
    for kind in kinds:
        if kind in NODE_COMMANDS:
            return f"client {peer.name} may not propose {kind}: it is for cluster nodes"
    return None


class Guarded:
    """Mixin for a served object: ``self.peer`` (a PeerIdentity, or None on
    a plain-TCP node) is checked before every call."""

    peer: PeerIdentity | None = None
    _subtree = None

    def subtree(self):
        """The Subtree a --subdir client is confined to, or None."""
        peer = self.peer
        if peer is None or peer.is_node or peer.subdir == "/":
            return None
        if self._subtree is None:
            from .subtree import Subtree
            self._subtree = Subtree(peer.subdir)
        return self._subtree

    async def check_command(self, command: bytes) -> None:
        """PermissionDenied unless this peer may propose ``command``."""
        reason = command_refusal(self.peer, command)
        tree = self.subtree() if reason is None else None
        if tree is not None:
            try:
                inos = tree.command_inos(command)
            except ValueError:
                return  # undecodable: the state machine answers EINVAL
            reason = await self._outside(tree, inos)
        if reason is not None:
            raise rpc.PermissionDenied(reason)

    async def check_query(self, q) -> None:
        tree = self.subtree()
        if tree is None:
            return
        store = self.metadata.reader
        inos = tree.query_inos(store, q)
        reason = await self._outside(tree, inos) if inos else None
        if reason is not None:
            raise rpc.PermissionDenied(reason)

    async def _outside(self, tree, inos) -> str | None:
        store = self.metadata.reader
        if tree.outside(store, inos) is None:
            return None
        # This replica may not have applied the inode yet: catch up, look again.
        try:
            await self.metadata.group.service.read_index(timeout_s=5)
        except Exception:  # noqa: BLE001 - no leader: the refusal stands
            pass
        bad = tree.outside(store, inos)
        if bad is None:
            return None
        return (f"client {self.peer.name} is confined to {tree.path}; inode {bad} is outside it"
                if tree.resolve(store) is not None else
                f"client {self.peer.name} is confined to {tree.path}, which does not exist")

    def rpc_lookup(self, interface_id: int, method_id: int):
        entry = super().rpc_lookup(interface_id, method_id)
        if entry is None:
            return None
        reason = refusal(self.peer, interface_id, entry[1].name)
        if reason is None:
            return entry
        logged = self.__dict__.setdefault("_refused_logged", set())
        if len(logged) < 16 and (interface_id, method_id) not in logged:  # once per method
            logged.add((interface_id, method_id))
            log.warning(kv("access.refused", peer=self.peer.uri, method=entry[1].name,
                           reason=reason))

        async def refuse(params, results):
            raise rpc.PermissionDenied(reason)
        return refuse, entry[1], True
