"""Typed errors of the RPC layer.  Only this layer maps to and from wire
exceptions (``rpc.capnp``'s ``Exception.Type``); callers catch these."""


class RpcError(Exception):
    """Base of every error raised by rpc/."""


class ProtocolError(RpcError):
    """The peer sent something that breaks the protocol or our limits; the
    connection is closed (after an Abort when possible)."""


class ConnectionLost(RpcError):
    """The connection closed before the call returned."""


class CallTimeout(RpcError, TimeoutError):
    """The call's deadline passed; a Finish was sent to cancel it remotely."""


class RemoteError(RpcError):
    """The remote object raised; ``kind`` is the wire exception type."""

    kind = "failed"

    def __init__(self, reason: str, remote_type: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.remote_type = remote_type  # class name on the remote side, when known


class Failed(RemoteError):
    kind = "failed"


class PermissionDenied(Failed):
    """The callee's policy refuses this peer the call (its certificate's
    role); the remote side sees a Failed whose remote_type names this."""


class Overloaded(RemoteError):
    """The callee refused the call for lack of capacity; retry later."""

    kind = "overloaded"


class Disconnected(RemoteError):
    """The callee lost a resource it needed (e.g. its own peer)."""

    kind = "disconnected"


class Unimplemented(RemoteError):
    """The callee does not implement the interface or method."""

    kind = "unimplemented"


BY_KIND = {cls.kind: cls for cls in (Failed, Overloaded, Disconnected, Unimplemented)}


def from_wire(kind: str, reason: str) -> RemoteError:
    """Build the typed error for a received ``Exception``.  chordfs servers
    prefix the reason with the remote class name as ``Name: text``."""
    remote_type = ""
    head, sep, _ = reason.partition(": ")
    if sep and head.isidentifier():
        remote_type = head
    return BY_KIND.get(kind, Failed)(reason, remote_type)


def to_wire(exc: BaseException) -> tuple[str, str]:
    """(kind, reason) for an exception raised by a local method."""
    kind = exc.kind if isinstance(exc, RemoteError) else "failed"
    if isinstance(exc, RemoteError) and exc.remote_type:
        return kind, exc.reason
    return kind, f"{type(exc).__name__}: {exc}"
