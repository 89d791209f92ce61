"""Interfaces, server objects and client proxies.

An interface is declared in ``rpc/schema/*.capnp`` and loaded with pycapnp.
A server object subclasses ``Server`` naming the interfaces it implements and
defines one ``async def method(self, params, results)`` per method: ``params``
is the request struct (a reader), ``results`` the response struct (a builder
inside the outgoing Return, so filling it copies nothing twice).  A method may
instead return a dict of result fields.  A client proxy (``Capability``)
exposes methods as ``await cap.method(field=value, ...)`` returning the result
struct reader."""

import dataclasses
import re

from .errors import RpcError


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    ordinal: int
    param_type: object  # pycapnp StructSchema
    result_type: object


class Interface:
    """The wire identity (64-bit id, method ordinals) of a capnp interface."""

    _cache: dict[int, "Interface"] = {}

    def __init__(self, module):
        node = module.schema.node
        self.id: int = node.id
        self.name: str = node.displayName.rpartition(":")[2]
        self.module = module
        methods = module.schema.methods
        self.by_name: dict[str, Method] = {}
        self.by_ordinal: dict[int, Method] = {}
        for ordinal, proto in enumerate(node.interface.methods):
            m = methods[proto.name]
            method = Method(proto.name, ordinal, m.param_type, m.result_type)
            self.by_name[proto.name] = method
            self.by_ordinal[ordinal] = method

    @classmethod
    def of(cls, module_or_iface) -> "Interface":
        if isinstance(module_or_iface, Interface):
            return module_or_iface
        key = module_or_iface.schema.node.id
        iface = cls._cache.get(key)
        if iface is None:
            iface = cls._cache[key] = Interface(module_or_iface)
        return iface


def inline(method):
    """Mark a server method that never blocks (no await on I/O, locks or
    sleeps): it runs inside the connection's reader, in arrival order, without
    a task of its own.  That saves a task spawn per call; the price is that a
    slow inline method stalls the connection, and one that tries to block is
    stopped and its caller gets a Failed error."""
    method._rpc_inline = True
    return method


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class Server:
    """Base of objects served over RPC.  Subclasses pass the interfaces:
    ``class Node(Server, interfaces=[diag.Diag])``; every method of every
    interface must be defined (camelCase or snake_case name, or prefixed with
    the interface's snake_case name), so a typo is a class-definition error
    rather than a runtime Unimplemented.  Subclasses inherit the dispatch
    table, so one class can combine several servers by inheritance."""

    _rpc_dispatch: dict = {}

    def __init_subclass__(cls, interfaces=(), **kw):
        super().__init_subclass__(**kw)
        # Inherited entries are re-read: a subclass may override a method and
        # change whether it is inline.
        inherited = {}
        for base in reversed(cls.__mro__[1:]):  # every base: servers combine by inheritance
            inherited.update(base.__dict__.get("_rpc_dispatch", {}))
        table = {key: (attr, method, getattr(getattr(cls, attr), "_rpc_inline", False))
                 for key, (attr, method, _) in inherited.items()}
        for module in interfaces:
            iface = Interface.of(module)
            for method in iface.by_ordinal.values():
                # A class serving several interfaces names a clashing method
                # `<interface>_<method>` (e.g. ring_ping beside Diag's ping).
                candidates = (f"{_snake(iface.name)}_{_snake(method.name)}", method.name,
                              _snake(method.name))
                attr = next((c for c in candidates if hasattr(cls, c)), None)
                if attr is None:
                    raise TypeError(f"{cls.__name__} lacks method {method.name} of {iface.name}")
                inline_ = getattr(getattr(cls, attr), "_rpc_inline", False)
                table[(iface.id, method.ordinal)] = (attr, method, inline_)
        cls._rpc_dispatch = table

    def rpc_lookup(self, interface_id: int, method_id: int):
        """(bound coroutine function, Method, inline) or None."""
        entry = self._rpc_dispatch.get((interface_id, method_id))
        if entry is None:
            return None
        return getattr(self, entry[0]), entry[1], entry[2]


def _blob_bytes(fields: dict) -> int:
    """Bytes of the blob fields: sizes the payload's first segment."""
    return sum(len(v) for v in fields.values() if isinstance(v, (bytes, bytearray, memoryview, str)))


def fill_struct(builder, fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, dict):
            fill_struct(builder.init(key), value)
        else:
            setattr(builder, key, value)


class Capability:
    """A reference to a remote object, bound to one connection.

    ``await cap.echo(data=b"x")`` sends a Call and returns the result struct;
    ``timeout_s=`` overrides the connection's default deadline."""

    def __init__(self, conn, target: tuple, interface: Interface):
        self._conn = conn
        self._target = target  # ("import", export_id) or ("answer", question_id)
        self.interface = interface

    def cast(self, module) -> "Capability":
        return Capability(self._conn, self._target, Interface.of(module))

    @property
    def connection(self):
        return self._conn

    async def call(self, name: str, fields: dict | None = None, *, fill=None, timeout_s=None):
        method = self.interface.by_name.get(name)
        if method is None:
            raise RpcError(f"{self.interface.name} has no method {name}")
        if fill is None:
            fill = (lambda p: fill_struct(p, fields)) if fields else None
        return await self._conn.call(self._target, self.interface.id, method, fill, timeout_s,
                                     size_hint=_blob_bytes(fields) if fields else 0)

    def __getattr__(self, name: str):
        if name.startswith("_") or name not in self.interface.by_name:
            raise AttributeError(name)
        method = self.interface.by_name[name]
        conn, target, iface_id = self._conn, self._target, self.interface.id

        async def invoke(timeout_s=None, **fields):
            fill = (lambda p: fill_struct(p, fields)) if fields else None
            return await conn.call(target, iface_id, method, fill, timeout_s,
                                   size_hint=_blob_bytes(fields))

        invoke.__name__ = name
        setattr(self, name, invoke)  # cached: later lookups skip __getattr__
        return invoke

    async def release(self) -> None:
        """Tell the peer we no longer hold this reference."""
        await self._conn.release_import(self._target)
