"""POSIX ACLs as the state machine keeps them: the Linux xattr encoding of
``system.posix_acl_access`` and ``system.posix_acl_default``, and the three
rules a filesystem that announces FUSE_POSIX_ACL must apply itself (the
kernel enforces the ACLs it reads back, but leaves these to the server):

- setting an access ACL sets the mode's permission bits from it (owner,
  mask or else owning group, other); an ACL that says no more than a mode
  is stored as the mode alone, as ext4 does;
- chmod rewrites the access ACL's owner, mask (or owning group) and other
  entries (posix_acl_chmod);
- a node created in a directory with a default ACL gets that ACL, masked by
  the mode asked for, as its access ACL (and a new directory the default
  ACL too); without one, the caller's umask applies (posix_acl_create).

Encoding (include/uapi/linux/posix_acl_xattr.h): a little-endian u32
version 2, then entries of (u16 tag, u16 perm, u32 id), sorted by tag and
then id. Anything else is EINVAL.
"""

from __future__ import annotations

import errno
import struct

PURE_CORE = True

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
ENTRIES_MAX = 1024  # far past what fits a 64 KiB xattr anyway

Entry = tuple[int, int, int]  # (tag, perm, id)


def decode(value: bytes) -> list[Entry] | int:
    """The entries ([] for a header alone, which removes the ACL), or
    EINVAL for anything a kernel would not accept."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        return errno.EINVAL
    if _HEADER.unpack_from(value)[0] != VERSION:
        return errno.EINVAL
    count = (len(value) - _HEADER.size) // _ENTRY.size
    if count > ENTRIES_MAX:
        return errno.EINVAL
    entries = [_ENTRY.unpack_from(value, _HEADER.size + i * _ENTRY.size) for i in range(count)]
    return entries if not entries or _valid(entries) else errno.EINVAL


def stored(value: bytes | None) -> list[Entry]:
    """The entries of a stored ACL xattr; [] when there is none (a value
    set before these rules that does not decode counts as none)."""
    entries = decode(value) if value is not None else []
    return [] if isinstance(entries, int) else entries


def _valid(entries: list[Entry]) -> bool:
    seen: dict[int, int] = {}
    last = (0, -1)
    for tag, perm, ident in entries:
        if perm & ~0o7 or tag not in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER):
            return False
        key = (tag, ident if tag in (USER, GROUP) else -1)
        if key <= last:
            return False  # out of order, or the same entry twice
        last = key
        seen[tag] = seen.get(tag, 0) + 1
    if any(seen.get(tag) != 1 for tag in (USER_OBJ, GROUP_OBJ, OTHER)):
        return False
    named = seen.get(USER, 0) + seen.get(GROUP, 0)
    mask = seen.get(MASK, 0)
    return mask <= 1 and (mask == 1 or not named)  # named entries need a mask


def encode(entries: list[Entry]) -> bytes:
    out = [_HEADER.pack(VERSION)]
    for tag, perm, ident in entries:
        out.append(_ENTRY.pack(tag, perm, ident if tag in (USER, GROUP) else _UNDEFINED_ID))
    return b"".join(out)


def _group_class(entries: list[Entry]) -> int:
    """Index of the entry that holds the mode's group bits: the mask if
    there is one, else the owning group."""
    tags = [tag for tag, _, _ in entries]
    return tags.index(MASK) if MASK in tags else tags.index(GROUP_OBJ)


def mode_bits(entries: list[Entry]) -> int:
    """The 0o777 bits an access ACL stands for."""
    perms = {tag: perm for tag, perm, _ in entries}
    return (perms[USER_OBJ] << 6) | (entries[_group_class(entries)][1] << 3) | perms[OTHER]


def is_minimal(entries: list[Entry]) -> bool:
    """Says no more than a mode does (owner, owning group, other only)."""
    return len(entries) == 3


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The access ACL after chmod to ``mode``."""
    out = list(entries)
    group = _group_class(out)
    for i, (tag, perm, ident) in enumerate(out):
        if tag == USER_OBJ:
            out[i] = (tag, (mode >> 6) & 0o7, ident)
        elif i == group:
            out[i] = (tag, (mode >> 3) & 0o7, ident)
        elif tag == OTHER:
            out[i] = (tag, mode & 0o7, ident)
    return out


def inherit(default: list[Entry], mode: int) -> tuple[int, list[Entry] | None]:
    """A new node's (mode, access ACL or None) from its directory's default
    ACL and the mode asked for (which keeps its file type and setuid,
    setgid and sticky bits); the umask does not apply."""
    entries = []
    group = _group_class(default)
    for i, (tag, perm, ident) in enumerate(default):
        if tag == USER_OBJ:
            perm &= (mode >> 6) & 0o7
        elif i == group:
            perm &= (mode >> 3) & 0o7
        elif tag == OTHER:
            perm &= mode & 0o7
        entries.append((tag, perm, ident))
    new_mode = (mode & ~0o777) | mode_bits(entries)
    return new_mode, None if is_minimal(entries) else entries
