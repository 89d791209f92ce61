"""Cap'n Proto RPC (level 0, two-party) implemented on trio.

Public surface: ``Server`` and ``Capability`` (interface.py), ``Connection``
(connection.py), ``serve_tcp``/``connect``/``memory_pair`` (transport.py),
``Pool`` (pool.py), ``Limits`` and the typed errors."""

from . import errors, schema
from .connection import Connection
from .errors import (CallTimeout, ConnectionLost, Disconnected, Failed, Overloaded,
                     PermissionDenied, ProtocolError, RemoteError, RpcError, Unimplemented)
from .interface import Capability, Interface, Server, inline
from .limits import Limits
from .transport import connect, memory_pair, open_connection, open_tcp_stream, serve_tcp, split_addr

__all__ = [
    "errors", "schema", "Connection", "CallTimeout", "ConnectionLost", "Disconnected", "Failed",
    "Overloaded", "PermissionDenied", "ProtocolError", "RemoteError", "RpcError", "Unimplemented", "Capability",
    "Interface", "Server", "inline", "Limits", "connect", "memory_pair", "open_connection",
    "open_tcp_stream", "serve_tcp", "split_addr",
]
