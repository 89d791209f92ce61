"""Cap'n Proto encoding of metadata commands and results (rpc/schema/meta.capnp).

Not a pure core (it imports capnp): the state machine works on the
dataclasses of ``server.meta.types`` and only this module knows the wire.
The conversion is generic, by field name (snake_case <-> camelCase), with the
field's Python type choosing the shape: plain scalars and bytes, ``X | None``
as an OptU64/OptData union (or an absent pointer for structs),
``int | Utime`` as TimeSet, lists of bytes, ints or dataclasses.

Entries are packed encodings of one ``Command`` (or ``Result``) message.
Decoding rejects unknown union members and oversized messages with
``ValueError``; a Raft log entry that fails to decode is a protocol
violation, never a user error.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import types as pytypes
import typing

import capnp

from rpc.schema import load as load_schema

from . import types as t

schema = load_schema("meta")

MESSAGE_WORDS_MAX = 8 << 20  # 64 MiB: a ForgetChunks or CommitWrite batch fits

_RESULTS = (t.Status, t.EntryReply, t.RemoveReply, t.AlreadyApplied, t.LeaseReply,
            t.BatchReply)
_BY_NAME = {cls.__name__: cls for cls in (*t.COMMANDS, *_RESULTS)}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _member(cls: type) -> str:
    return cls.__name__[0].lower() + cls.__name__[1:]


@functools.cache
def _shapes(cls: type) -> tuple[tuple[str, str, str, object], ...]:
    """(python name, capnp name, shape, inner type) for each field."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if hint in (int, bool, bytes):
            shape, inner = "plain", hint
        elif isinstance(hint, pytypes.UnionType) and t.Utime in args:
            shape, inner = "time", None
        elif isinstance(hint, pytypes.UnionType) and type(None) in args:
            (inner,) = [a for a in args if a is not type(None)]
            shape = "struct?" if dataclasses.is_dataclass(inner) else "opt"
        elif typing.get_origin(hint) is list:
            (inner,) = args
            shape = "list"
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: unsupported type {hint}")
        out.append((f.name, _camel(f.name), shape, inner))
    return tuple(out)


def _fill(builder, obj) -> None:
    for name, cname, shape, inner in _shapes(type(obj)):
        value = getattr(obj, name)
        if shape == "plain":
            setattr(builder, cname, value)
        elif shape == "time":
            sub = builder.init(cname)
            if value is t.Utime.OMIT:
                sub.omit = None
            elif value is t.Utime.NOW:
                sub.now = None
            else:
                sub.ns = value
        elif shape == "opt":
            sub = builder.init(cname)
            if value is None:
                sub.none = None
            else:
                sub.some = value
        elif shape == "struct?":
            if value is not None:
                _fill(builder.init(cname), value)
        else:
            items = builder.init(cname, len(value))
            for i, item in enumerate(value):
                if inner in (bytes, int):
                    items[i] = item
                else:
                    _fill(items[i], item)


@functools.cache
def _plan(cls: type):
    """How ``_read`` builds a ``cls``: each field read through its schema
    field handle, then the dataclass built positionally, in field order.
    pycapnp's attribute access costs about 1.2 us a field and ``which()``
    2.6 us; ``_get_by_field`` with a handle looked up once costs 0.3 us and
    ``_which_str`` 0.4 us. Every replica decodes every operation of every
    lease batch it applies, so this is most of a follower's decoding."""
    fields = getattr(schema, cls.__name__).schema.fields
    shapes = _shapes(cls)
    plain = tuple((i, fields[cname], inner) for i, (_, cname, shape, inner)
                  in enumerate(shapes) if shape == "plain")
    rest = tuple((i, fields[cname], shape, inner) for i, (_, cname, shape, inner)
                 in enumerate(shapes) if shape != "plain")
    return plain, rest, len(shapes)


def _read(reader, cls: type):
    plain, rest, count = _plan(cls)
    get = reader._get_by_field
    values = [None] * count
    # Data and integer fields come back as bytes and int already, a Bool as
    # bool: only a type that differs is converted.
    for i, field, inner in plain:
        value = get(field)
        values[i] = value if type(value) is inner else inner(value)
    for i, field, shape, inner in rest:
        if shape == "time":
            sub = get(field)
            which = sub._which_str()
            value = {"omit": t.Utime.OMIT, "now": t.Utime.NOW}.get(which)
            if value is None:
                value = sub.ns
        elif shape == "opt":
            sub = get(field)
            value = None if sub._which_str() == "none" else inner(sub.some)
        elif shape == "struct?":
            value = _read(get(field), inner) if reader._has_by_field(field) else None
        else:
            items = get(field)
            value = [inner(x) if inner in (bytes, int) else _read(x, inner) for x in items]
        values[i] = value
    return cls(*values)


def encode(obj) -> bytes:
    """Any types.py dataclass as a packed message of the same-named struct."""
    message = getattr(schema, type(obj).__name__).new_message()
    if type(obj) is t.DirPage:
        _fill_page(message, obj)
    else:
        _fill(message, obj)
    return message.to_bytes_packed()


def decode(cls: type, data: bytes):
    struct = getattr(schema, cls.__name__)
    reader = struct.from_bytes_packed(data, traversal_limit_in_words=MESSAGE_WORDS_MAX)
    if cls is t.DirPage:
        return _read_page(reader)
    return _read(reader, cls)


# A directory page goes column by column (rpc/schema/meta.capnp DirPage):
# readdirplus pages of 1,024 entries took 35 ms to decode as structs and
# 13 ms to encode; as lists of numbers about 2 ms each way.
_ATTR_NAMES = tuple(f.name for f in dataclasses.fields(t.Attr))
assert _ATTR_NAMES[7:] == ("atime_ns", "mtime_ns", "ctime_ns"), "DirPage.times: the signed ones"
_ATTR_UNSIGNED = operator.attrgetter(*_ATTR_NAMES[:7])
_ATTR_TIMES = operator.attrgetter(*_ATTR_NAMES[7:])
_NO_ATTR = t.Attr(*[0] * len(_ATTR_NAMES))


def _fill_page(message, page: t.DirPage) -> None:
    message.err, message.cursor, message.done, message.parent = (
        page.err, page.cursor, page.done, page.parent)
    entries = page.entries
    message.names = [e.name for e in entries]
    message.inos = [e.ino for e in entries]
    message.kinds = [e.kind for e in entries]
    if any(e.attr is not None for e in entries):
        attrs = [e.attr or _NO_ATTR for e in entries]
        message.hasAttr = [e.attr is not None for e in entries]
        message.hasXattrs = [bool(e.xattrs) for e in entries]
        message.attrs = [v for a in attrs for v in _ATTR_UNSIGNED(a)]
        message.times = [v for a in attrs for v in _ATTR_TIMES(a)]


def _read_page(reader) -> t.DirPage:
    names, inos, kinds = list(reader.names), list(reader.inos), list(reader.kinds)
    if not len(names) == len(inos) == len(kinds):
        raise ValueError("a directory page whose columns differ in length")
    attrs, times, xattrs = list(reader.attrs), list(reader.times), list(reader.hasXattrs)
    present = list(reader.hasAttr)
    if attrs or times or xattrs or present:
        if (len(attrs) != 7 * len(names) or len(times) != 3 * len(names)
                or len(xattrs) != len(names) or len(present) != len(names)):
            raise ValueError("a readdirplus page whose attributes do not match its names")
        entries = [t.DirEntry(name, ino, kind,
                              t.Attr(*attrs[7 * i:7 * i + 7], *times[3 * i:3 * i + 3])
                              if has else None, x)
                   for i, (name, ino, kind, x, has)
                   in enumerate(zip(names, inos, kinds, xattrs, present))]
    else:
        entries = [t.DirEntry(name, ino, kind) for name, ino, kind in zip(names, inos, kinds)]
    return t.DirPage(reader.err, entries, reader.cursor, reader.done, reader.parent)


def _encode_union(root, obj) -> bytes:
    """ValueError for values the wire cannot carry (negative sizes, ...):
    the proposer rejects those before anything reaches the log."""
    message = root.new_message()
    try:
        _fill(message.init(_member(type(obj))), obj)
    except capnp.KjException as exc:
        raise ValueError(f"cannot encode {obj!r}: {exc.description}") from exc
    except (OverflowError, TypeError) as exc:
        # pycapnp raises these itself for an int past 2**64 or a wrong type.
        raise ValueError(f"cannot encode {obj!r}: {exc}") from exc
    return message.to_bytes_packed()


def _decode_union(root, data: bytes, allowed: tuple[type, ...]):
    try:
        reader = root.from_bytes_packed(data, traversal_limit_in_words=MESSAGE_WORDS_MAX)
        which = reader._which_str()
        cls = _BY_NAME.get(which[0].upper() + which[1:])
        if cls not in allowed:
            raise ValueError(f"unexpected union member {which!r}")
        return _read(reader._get(which), cls)
    except capnp.KjException as exc:
        raise ValueError(f"undecodable {root}: {exc}") from exc


def encode_command(cmd: t.Command) -> bytes:
    return _encode_union(schema.Command, cmd)


def decode_command(data: bytes) -> t.Command:
    return _decode_union(schema.Command, data, t.COMMANDS)


def command_kind(data: bytes) -> str:
    """The union member of an encoded Command ("commitWrite", ...) without
    converting it: cheap even for a large command. ValueError if it does
    not decode."""
    try:
        reader = schema.Command.from_bytes_packed(data, traversal_limit_in_words=MESSAGE_WORDS_MAX)
        return reader.which()
    except capnp.KjException as exc:
        raise ValueError(f"undecodable command: {exc}") from exc


def encode_result(result: t.Result) -> bytes:
    return _encode_union(schema.Result, result)


def decode_result(data: bytes) -> t.Result:
    return _decode_union(schema.Result, data, _RESULTS)


def _install() -> None:
    # Lease batches carry encoded commands; apply (a pure core) gets the
    # codec handed in rather than importing capnp.
    from . import apply, leases
    apply.use_codec(leases.Codec(decode_command, encode_result, decode_result))


_install()
