"""Static checks of one metadata command: the field ranges, names and sizes
a command must have before it can mean anything, decided from the command
alone (no database), so the proposer can refuse it before it reaches the
Raft log and apply can refuse it again, identically on every replica.

``check(cmd)`` returns 0 or the errno the command answers; ``error_result``
wraps that errno in the result type the command's handler would return, so a
refusal looks like any other failure to the caller.

Limits (the database stores integers as SQLite int64, which is why inode
numbers, rdev, sizes and chunk indexes stop at 2**63-1 although the wire
carries UInt64):
- inode numbers 1..2**63-1; mode, uid, gid and flags 0..2**32-1; rdev
  0..2**63-1; times (``now_ns``, explicit atime/mtime) within int64;
- sizes 0..2**63-1 (EINVAL below, EFBIG above, as truncate(2) answers);
- names 1..255 bytes (ENAMETOOLONG), without ``/`` or NUL, never ``.`` or
  ``..`` (EINVAL); symlink targets 1..4095 bytes (ENOENT when empty,
  ENAMETOOLONG when long), no NUL;
- xattr names 1..255 bytes without NUL (ERANGE), values up to 64 KiB (E2BIG);
- slices (``blocks.validate_slices``): at most ``COMMIT_SLICES_MAX`` and
  ``COMMIT_INLINE_BYTES_MAX`` inline bytes per command, 16-byte block ids,
  each within its block; ForgetChunks lists up to ``CHUNK_REFS_MAX``.
Everything else is EINVAL, including a field of the wrong Python type.

Where a handler makes the same check, this module asks in the same order
(e.g. mknod's file type before the name, rename's flags first), so the
errno a client sees does not depend on which of the two refused it.
"""

from __future__ import annotations

import errno
import stat

from . import blocks
from .types import (COMMANDS, LEASE_BATCH_OPS_MAX, LEASE_DURATION_MAX_NS,
                    LEASE_DURATION_MIN_NS, LEASE_INOS_MAX, NAME_BYTES_MAX, AcquireLease,
                    BatchReply, LeaseBatch, LeaseReply, OpenSession, ReleaseLease, Sessioned,
                    RENAME_EXCHANGE, RENAME_NOREPLACE, SYMLINK_BYTES_MAX,
                    XATTR_CREATE, XATTR_NAME_BYTES_MAX, XATTR_REPLACE,
                    XATTR_VALUE_BYTES_MAX, Clone, CommitWrite, Compact, Create, EntryReply, ForgetChunks,
                    Link, Mkdir, Mknod, ReleaseOrphan, RemoveReply,
                    RemoveXattr, Rename, Result, Rmdir, SetAttr, SetXattr,
                    Slice, Status, Symlink, Tick, Unlink, Utime)

PURE_CORE = True

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
U32_MAX = (1 << 32) - 1
INO_MAX = INT64_MAX
FILE_BYTES_MAX = INT64_MAX
# Writers commit at most 64 refs at a time (fusefs.filedata.PENDING_REFS_MAX)
# and the chunk GC forgets at most 1000; the bound keeps one entry small.
CHUNK_REFS_MAX = 4096
CHUNK_ID_BYTES_MAX = 64

_MKNOD_KINDS = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
_ENTRY_COMMANDS = (Create, Mkdir, Mknod, Symlink, Link, SetAttr, CommitWrite, Clone)
_REMOVE_COMMANDS = (Unlink, Rmdir, Rename)


def _is_int(value: object) -> bool:
    # type(...) is int, not isinstance: a bool is not a number here, and
    # every replica checks every field of every operation it applies.
    return type(value) is int


def _in(value: object, low: int, high: int) -> bool:
    return _is_int(value) and low <= value <= high


def check_name(name: object) -> int:
    """The directory-entry name rules; the handlers and queries ask this too."""
    if not isinstance(name, bytes):
        return errno.EINVAL
    if len(name) > NAME_BYTES_MAX:
        return errno.ENAMETOOLONG
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        return errno.EINVAL
    return 0


def _ranges(*pairs: tuple[object, int, int]) -> int:
    for value, low, high in pairs:
        if not _in(value, low, high):
            return errno.EINVAL
    return 0


def _ino(value: object) -> tuple[object, int, int]:
    return value, 1, INO_MAX


def _u32(value: object) -> tuple[object, int, int]:
    return value, 0, U32_MAX


def _time(value: object) -> tuple[object, int, int]:
    return value, INT64_MIN, INT64_MAX


def _size(value: object) -> int:
    if not _is_int(value) or value < 0:
        return errno.EINVAL
    return errno.EFBIG if value > FILE_BYTES_MAX else 0


def _new_entry(cmd: Create | Mkdir | Mknod | Symlink) -> int:
    return check_name(cmd.name) or _ranges(
        _ino(cmd.parent), _u32(cmd.uid), _u32(cmd.gid), _time(cmd.now_ns))


def _create(cmd: Create | Mkdir | Clone) -> int:
    return _new_entry(cmd) or _ranges(_u32(cmd.mode))


def _create_masked(cmd: Create | Mkdir) -> int:
    return _create(cmd) or _ranges(_u32(cmd.umask))


def _mknod(cmd: Mknod) -> int:
    if not _in(cmd.mode, 0, U32_MAX):
        return errno.EINVAL
    kind = stat.S_IFMT(cmd.mode) or stat.S_IFREG
    if kind == stat.S_IFDIR:
        return errno.EPERM
    if kind not in _MKNOD_KINDS:
        return errno.EINVAL
    return _new_entry(cmd) or _ranges((cmd.rdev, 0, INT64_MAX), _u32(cmd.umask))


def _symlink(cmd: Symlink) -> int:
    err = _new_entry(cmd)
    if err:
        return err
    target = cmd.target
    if not isinstance(target, bytes):
        return errno.EINVAL
    if not target:
        return errno.ENOENT
    if len(target) > SYMLINK_BYTES_MAX:
        return errno.ENAMETOOLONG
    return errno.EINVAL if b"\0" in target else 0


def _link(cmd: Link) -> int:
    return check_name(cmd.new_name) or _ranges(
        _ino(cmd.ino), _ino(cmd.new_parent), _time(cmd.now_ns))


def _remove(cmd: Unlink | Rmdir) -> int:
    err = check_name(cmd.name) or _ranges(_ino(cmd.parent), _time(cmd.now_ns))
    if err or (isinstance(cmd, Unlink) and not isinstance(cmd.keep_orphan, bool)):
        return err or errno.EINVAL
    return 0


def _rename(cmd: Rename) -> int:
    flags = cmd.flags
    if not _in(flags, 0, U32_MAX) or flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
            flags == RENAME_NOREPLACE | RENAME_EXCHANGE):
        return errno.EINVAL
    err = check_name(cmd.name) or check_name(cmd.new_name) or _ranges(
        _ino(cmd.parent), _ino(cmd.new_parent), _time(cmd.now_ns))
    if err or not isinstance(cmd.keep_orphan, bool):
        return err or errno.EINVAL
    return 0


def _setattr(cmd: SetAttr) -> int:
    err = _ranges(_ino(cmd.ino), _time(cmd.now_ns))
    for value in (cmd.mode, cmd.uid, cmd.gid):
        if value is not None and not _in(value, 0, U32_MAX):
            err = err or errno.EINVAL
    for value in (cmd.atime, cmd.mtime):
        if not isinstance(value, Utime) and not _in(value, INT64_MIN, INT64_MAX):
            err = err or errno.EINVAL
    if not err and cmd.size is not None:
        err = _size(cmd.size)
    return err


def _xattr_name(name: object) -> int:
    if not isinstance(name, bytes):
        return errno.EINVAL
    if not name or len(name) > XATTR_NAME_BYTES_MAX or b"\0" in name:
        return errno.ERANGE
    return 0


def _setxattr(cmd: SetXattr) -> int:
    err = _ranges(_ino(cmd.ino), _time(cmd.now_ns)) or _xattr_name(cmd.name)
    if err:
        return err
    if not isinstance(cmd.value, bytes):
        return errno.EINVAL
    if len(cmd.value) > XATTR_VALUE_BYTES_MAX:
        return errno.E2BIG
    flags = cmd.flags
    if not _in(flags, 0, U32_MAX) or flags & ~(XATTR_CREATE | XATTR_REPLACE) or (
            flags == XATTR_CREATE | XATTR_REPLACE):
        return errno.EINVAL
    return 0


def _removexattr(cmd: RemoveXattr) -> int:
    return _ranges(_ino(cmd.ino), _time(cmd.now_ns)) or _xattr_name(cmd.name)


def _chunk_id(value: object) -> bool:
    return isinstance(value, bytes) and 0 < len(value) <= CHUNK_ID_BYTES_MAX


def _slices(slices: object, *, inline_allowed: bool = True) -> int:
    """Ranges and types here; overlap rules and block states are apply's."""
    if not isinstance(slices, list):
        return errno.EINVAL
    for s in slices:
        if not (isinstance(s, Slice) and _in(s.off, 0, INT64_MAX)
                and _in(s.length, 1, INT64_MAX - s.off)
                and _in(s.block_off, 0, INT64_MAX) and _in(s.block_size, 0, INT64_MAX)
                and isinstance(s.block_id, bytes) and isinstance(s.data, bytes)
                and isinstance(s.fresh, bool)):
            return errno.EINVAL
    return blocks.validate_slices(slices, inline_allowed=inline_allowed)


def _commit_write(cmd: CommitWrite) -> int:
    return (_ranges(_ino(cmd.ino), _time(cmd.now_ns)) or _size(cmd.size)
            or (0 if _in(cmd.observed, 0, INT64_MAX) else errno.EINVAL)
            or _slices(cmd.slices))


def _compact(cmd: Compact) -> int:
    if not (_in(cmd.off, 0, INT64_MAX) and _in(cmd.length, 1, INT64_MAX - cmd.off)
            and _in(cmd.observed, 0, INT64_MAX) and isinstance(cmd.expect, bytes)
            and len(cmd.expect) <= 32):
        return errno.EINVAL
    return _ranges(_ino(cmd.ino)) or _slices(cmd.slices, inline_allowed=False)


def _clone(cmd: Clone) -> int:
    return _ranges(_ino(cmd.src)) or _create(cmd)


def _tick(cmd: Tick) -> int:
    return _ranges(_time(cmd.now_ns))


def _release_orphan(cmd: ReleaseOrphan) -> int:
    return _ranges(_ino(cmd.ino), _time(cmd.now_ns))


def _forget_chunks(cmd: ForgetChunks) -> int:
    ids, marks = cmd.chunk_ids, cmd.marks
    if (not isinstance(ids, list) or not isinstance(marks, list)
            or len(ids) > CHUNK_REFS_MAX or len(ids) != len(marks)):
        return errno.EINVAL
    if not all(_in(m, 0, INT64_MAX) for m in marks):
        return errno.EINVAL
    return 0 if all(_chunk_id(i) for i in ids) else errno.EINVAL


def _holder(value: object) -> tuple[object, int, int]:
    return (value, 1, INT64_MAX)


def _acquire(cmd: AcquireLease) -> int:
    return _ranges(_holder(cmd.holder), _ino(cmd.dir), (cmd.epoch, 1, INT64_MAX),
                   (cmd.duration_ns, LEASE_DURATION_MIN_NS, LEASE_DURATION_MAX_NS),
                   (cmd.inos, 0, LEASE_INOS_MAX))


def _release(cmd: ReleaseLease) -> int:
    return _ranges(_holder(cmd.holder), _ino(cmd.dir), (cmd.epoch, 1, INT64_MAX))


def _batch(cmd: LeaseBatch) -> int:
    ops, inos, dirs, epochs = cmd.ops, cmd.inos, cmd.leases, cmd.epochs
    if not all(isinstance(x, list) for x in (ops, inos, dirs, epochs)):
        return errno.EINVAL
    if len(ops) > LEASE_BATCH_OPS_MAX or len(inos) != len(ops) or len(dirs) != len(epochs):
        return errno.EINVAL
    if not all(isinstance(op, bytes) for op in ops):
        return errno.EINVAL
    if not all(i == 0 or _in(i, 1, INO_MAX) for i in inos):
        return errno.EINVAL
    if not all(_in(d, 1, INO_MAX) for d in dirs) or not all(_in(e, 1, INT64_MAX) for e in epochs):
        return errno.EINVAL
    return _ranges(_holder(cmd.holder), (cmd.seq, 1, INT64_MAX),
                   (cmd.want_inos, 0, LEASE_INOS_MAX))


def _open_session(cmd: OpenSession) -> int:
    return _ranges(_holder(cmd.session))


def _sessioned(cmd: Sessioned) -> int:
    if not isinstance(cmd.ops, list) or len(cmd.ops) != 1 or not isinstance(cmd.ops[0], bytes):
        return errno.EINVAL
    return _ranges(_holder(cmd.session), (cmd.seq, 1, INT64_MAX), (cmd.acked, 1, cmd.seq))


_CHECKS = {
    Create: _create_masked, Mkdir: _create_masked, Mknod: _mknod, Symlink: _symlink,
    Link: _link, Unlink: _remove, Rmdir: _remove, Rename: _rename,
    SetAttr: _setattr, SetXattr: _setxattr, RemoveXattr: _removexattr,
    CommitWrite: _commit_write, ReleaseOrphan: _release_orphan,
    ForgetChunks: _forget_chunks, Compact: _compact, Tick: _tick, Clone: _clone,
    AcquireLease: _acquire, ReleaseLease: _release, LeaseBatch: _batch,
    OpenSession: _open_session, Sessioned: _sessioned,
}
assert set(_CHECKS) == set(COMMANDS), "every command needs a check"


def check(cmd: object) -> int:
    """0 if ``cmd`` may be applied, else the errno it answers. Never raises:
    anything that is not a metadata command is EINVAL."""
    checker = _CHECKS.get(type(cmd))
    return checker(cmd) if checker is not None else errno.EINVAL


def error_result(cmd: object, err: int) -> Result:
    """A failure as the result type ``cmd``'s handler returns."""
    assert err > 0, err
    if isinstance(cmd, _ENTRY_COMMANDS):
        return EntryReply(err)
    if isinstance(cmd, _REMOVE_COMMANDS):
        return RemoveReply(err)
    if isinstance(cmd, AcquireLease):
        return LeaseReply(err)
    if isinstance(cmd, LeaseBatch):
        return BatchReply(err)
    return Status(err)
