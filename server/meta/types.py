"""Plain values of the metadata state machine: commands, results, attributes.

Commands are what Raft carries (encoded by ``server.meta.codec``); results are
what apply and the queries hand back. Every result carries ``err``: 0 for
success, otherwise an ``errno`` value; user errors never raise.

Conventions shared by every command:
- ``now_ns`` is stamped by the proposer; the applying node never reads a clock,
  so every replica computes the same times.
- ``mode`` is the mode asked for. With POSIX ACLs on (FUSE_POSIX_ACL) the
  kernel leaves the umask to the filesystem: Create, Mkdir and Mknod carry
  the caller's ``umask``, which applies only when the parent directory has
  no default ACL (then the default ACL does, see ``acl.py``); a mask the
  kernel applied already is not changed by applying it again.
- Names are bytes, 1..255 bytes, without ``/`` or NUL, and never ``.``/``..``
  (the FUSE layer answers ``.`` and ``..`` itself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

PURE_CORE = True

ROOT_INO = 1
NAME_BYTES_MAX = 255
SYMLINK_BYTES_MAX = 4095
LINK_MAX = 65000
XATTR_NAME_BYTES_MAX = 255
XATTR_VALUE_BYTES_MAX = 65536
INLINE_BYTES_MAX = 65536
READDIR_PAGE_MAX = 1024
MANIFEST_PAGE_MAX = 4096
MANIFESTS_MAX = 64   # files per ``manifests`` query
CHUNK_BYTES_DEFAULT = 4 << 20
# One CommitWrite carries at most this many slices and inline bytes, so a
# Raft entry stays well under a step batch.
COMMIT_SLICES_MAX = 8192
COMMIT_INLINE_BYTES_MAX = 1 << 20
# How long (log time) an uploaded block may wait for the commit that uses
# it; older uncommitted copies are swept (server/meta/blocks.py).
UPLOAD_WINDOW_NS = 30 * 10**9

# A command that would change a directory another mount holds a lease on is
# refused with this code (outside the errno range: the leader recalls the
# lease and proposes again, a client never sees it).
LEASED = 0x10001
LEASE_DURATION_MIN_NS = 10**9
LEASE_DURATION_MAX_NS = 60 * 10**9
LEASE_INOS_MAX = 1 << 20
LEASE_LISTING_MAX = 4096
LEASE_BATCH_OPS_MAX = 4096

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2


class Utime(enum.Enum):
    """setattr time choices besides an explicit nanosecond value."""

    OMIT = "omit"
    NOW = "now"


# ---------------------------------------------------------------- commands


@dataclass(frozen=True)
class Create:
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    now_ns: int
    umask: int = 0  # applied unless the parent has a default ACL


@dataclass(frozen=True)
class Mkdir:
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    now_ns: int
    umask: int = 0  # applied unless the parent has a default ACL


@dataclass(frozen=True)
class Mknod:
    """Regular file (type bits 0 or S_IFREG), fifo, socket, char/block device."""

    parent: int
    name: bytes
    mode: int
    rdev: int
    uid: int
    gid: int
    now_ns: int
    umask: int = 0  # applied unless the parent has a default ACL


@dataclass(frozen=True)
class Symlink:
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int
    now_ns: int


@dataclass(frozen=True)
class Link:
    ino: int
    new_parent: int
    new_name: bytes
    now_ns: int


@dataclass(frozen=True)
class Unlink:
    """``keep_orphan``: the FUSE layer knows the file is still open; the
    inode then survives with nlink 0 until ``ReleaseOrphan``."""

    parent: int
    name: bytes
    now_ns: int
    keep_orphan: bool = False


@dataclass(frozen=True)
class Rmdir:
    parent: int
    name: bytes
    now_ns: int


@dataclass(frozen=True)
class Rename:
    """``flags``: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. ``keep_orphan``
    applies to a replaced target whose last link goes away."""

    parent: int
    name: bytes
    new_parent: int
    new_name: bytes
    flags: int
    now_ns: int
    keep_orphan: bool = False


@dataclass(frozen=True)
class SetAttr:
    """None / Utime.OMIT leave a field unchanged; ctime always becomes now."""

    ino: int
    now_ns: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: int | Utime = Utime.OMIT
    mtime: int | Utime = Utime.OMIT


@dataclass(frozen=True)
class SetXattr:
    ino: int
    name: bytes
    value: bytes
    flags: int
    now_ns: int


@dataclass(frozen=True)
class RemoveXattr:
    ino: int
    name: bytes
    now_ns: int


@dataclass(frozen=True)
class Slice:
    """Bytes [off, off+length) of a file. They are bytes [block_off,
    block_off+length) of block ``block_id`` (``block_size`` bytes in all),
    or, with an empty ``block_id``, exactly ``data`` (inline: kept in the
    metadata itself). In a CommitWrite, ``fresh`` says the writer stored the
    block itself (stamped at least ``observed``) rather than finding it
    there already; see ``server/meta/blocks.py`` for why that matters."""

    off: int
    length: int
    block_id: bytes = b""
    block_off: int = 0
    block_size: int = 0
    data: bytes = b""
    fresh: bool = False


@dataclass(frozen=True)
class CommitWrite:
    """A writer's flushed ranges, applied in order, each replacing what the
    file held there; bytes nobody wrote here are untouched, so two mounts
    writing different ranges both keep theirs and a stale writer never cuts
    another's append. The size grows to ``size`` (the end this writer's
    writes reached) if larger: shrinking is setattr's job. ``observed`` is
    the smallest stamp the block stores returned for the fresh blocks.
    ``now_ns`` becomes mtime and ctime."""

    ino: int
    size: int
    now_ns: int
    slices: list[Slice] = field(default_factory=list)
    observed: int = 0


@dataclass(frozen=True)
class Compact:
    """Rewrite [off, off+length) of a file into ``slices`` (fresh blocks,
    holes stay holes) if its extents there still hash to ``expect``
    (``blocks.range_digest``); EAGAIN otherwise. Times and size unchanged."""

    ino: int
    off: int
    length: int
    expect: bytes
    slices: list[Slice] = field(default_factory=list)
    observed: int = 0


@dataclass(frozen=True)
class Clone:
    """A new regular file ``name`` in ``parent`` with the content of
    ``src`` at this index: the same extents, sharing blocks (copy on write
    by construction: blocks never change). Mode and owner are the caller's,
    like a create; times are ``now_ns``."""

    src: int
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    now_ns: int


@dataclass(frozen=True)
class Tick:
    """The leader's clock, once a second: the only time the state machine
    trusts for windows (log time never goes back, whoever leads)."""

    now_ns: int


@dataclass(frozen=True)
class ReleaseOrphan:
    ino: int
    now_ns: int


@dataclass(frozen=True)
class ForgetChunks:
    """Every copy of these dying blocks stamped below their mark is deleted:
    each becomes a tombstone if it is still dying with that same mark."""

    chunk_ids: list[bytes] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class AcquireLease:
    """Give mount session ``holder`` the exclusive write lease on directory
    ``dir`` under the fencing ``epoch`` the holder chose (unique per grant:
    a batch naming an older epoch is refused). Every lease of a holder
    expires together, ``duration_ns`` of log time after its last grant or
    batch. ``inos``: the holder wants a range of that many inode numbers
    for the nodes it creates under its leases. See ``leases.py``."""

    holder: int
    dir: int
    epoch: int
    duration_ns: int
    inos: int = 0
    # A read lease instead: shared with other readers, no changes answered;
    # the holder answers lookups, getattrs and opens there from its cache.
    shared: bool = False


@dataclass(frozen=True)
class ReleaseLease:
    holder: int
    dir: int
    epoch: int


@dataclass(frozen=True)
class LeaseBatch:
    """A lease holder's changes, in order, as one log entry: ``ops`` are
    encoded Commands (AcquireLease and ReleaseLease of this holder
    included); ``inos[i]`` is the inode number the holder gave the node
    ``ops[i]`` creates (0 otherwise). ``leases``/``epochs``: the leases the
    batch relies on; if any is not the holder's any more, nothing applies.
    ``seq`` makes a retried batch answer its first result instead of
    applying twice."""

    holder: int
    seq: int
    ops: list[bytes] = field(default_factory=list)
    inos: list[int] = field(default_factory=list)
    leases: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    want_inos: int = 0


@dataclass(frozen=True)
class OpenSession:
    """A client session (server/meta/sessions.py): the mount picks a random
    ``session`` id and opens it once before its first Sessioned command."""

    session: int


@dataclass(frozen=True)
class Sessioned:
    """One client command applied at most once (Raft dissertation 6.3):
    ``ops`` holds exactly one encoded Command, ``seq`` is the client's
    number for it (from 1, one per command, never reused), ``acked`` the
    lowest seq whose answer the client still waits for (the replies of
    those below are dropped)."""

    session: int
    seq: int
    acked: int
    ops: list[bytes] = field(default_factory=list)


COMMANDS = (
    Create, Mkdir, Mknod, Symlink, Link, Unlink, Rmdir, Rename, SetAttr,
    SetXattr, RemoveXattr, CommitWrite, ReleaseOrphan, ForgetChunks, Compact, Tick,
    Clone, AcquireLease, ReleaseLease, LeaseBatch, OpenSession, Sessioned,
)
Command = (
    Create | Mkdir | Mknod | Symlink | Link | Unlink | Rmdir | Rename | SetAttr
    | SetXattr | RemoveXattr | CommitWrite | ReleaseOrphan | ForgetChunks
    | Compact | Tick | Clone | AcquireLease | ReleaseLease | LeaseBatch
    | OpenSession | Sessioned
)


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class Attr:
    ino: int
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    rdev: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class Status:
    err: int = 0


@dataclass(frozen=True)
class EntryReply:
    """create/mkdir/mknod/symlink/link/setattr/commit_write, lookup, getattr."""

    err: int = 0
    attr: Attr | None = None
    # After a change to a directory's entries: its attributes now (the
    # kernel drops its cached ones after every such change and would ask).
    parents: list[Attr] = field(default_factory=list)
    # lookup and getattr: whether the node has extended attributes (ACLs
    # included): 0 not said, 1 none, 2 some. `ls -l` asks every file for
    # its ACL; a mount that knows there is none answers without a round trip.
    xattrs: int = 0


@dataclass(frozen=True)
class RemoveReply:
    """unlink/rmdir/rename: the inode that lost a link (0 if none) and its
    nlink afterwards, so the FUSE layer can invalidate its caches."""

    err: int = 0
    ino: int = 0
    nlink: int = 0
    parents: list[Attr] = field(default_factory=list)  # as in EntryReply


@dataclass(frozen=True)
class AlreadyApplied:
    """Raft re-delivered an index the database already holds (typically after
    a restart, when nobody waits for the original result any more)."""

    index: int
    applied_index: int
    err: int = 0


@dataclass(frozen=True)
class LeaseReply:
    """AcquireLease: the lease's epoch, the holder's inode range
    [ino_next, ino_hi), the directory's attributes and how many entries it
    holds (counted up to LEASE_LISTING_MAX + 1)."""

    err: int = 0
    epoch: int = 0
    ino_next: int = 0
    ino_hi: int = 0
    attr: Attr | None = None
    entries: int = 0


@dataclass(frozen=True)
class BatchReply:
    """LeaseBatch: ``err`` refuses the whole batch (ESTALE: a lease it
    relies on is gone; LEASED: an op touches another holder's directory);
    otherwise ``results[i]`` is the encoded Result of ``ops[i]`` if it
    failed or is the last op, and empty if it succeeded (the holder answered
    it already). The holder's inode range after the batch comes back too."""

    err: int = 0
    results: list[bytes] = field(default_factory=list)
    ino_next: int = 0
    ino_hi: int = 0


Result = Status | EntryReply | RemoveReply | AlreadyApplied | LeaseReply | BatchReply


@dataclass(frozen=True)
class DirEntry:
    """``kind`` is the S_IFMT bits of the inode's mode; ``attr`` only in
    readdirplus pages."""

    name: bytes
    ino: int
    kind: int
    attr: Attr | None = None
    # readdirplus only: whether the inode has any extended attribute (ACLs
    # included). `ls -l` asks every file for its ACL; a mount that knows
    # there is none answers without a round trip.
    xattrs: bool = True


@dataclass(frozen=True)
class DirPage:
    """Entries sorted by name (bytewise) strictly after the cursor; pass
    ``cursor`` back for the next page. ``parent`` is the ino for ``..``."""

    err: int = 0
    entries: list[DirEntry] = field(default_factory=list)
    cursor: bytes = b""
    done: bool = True
    parent: int = 0


@dataclass(frozen=True)
class BytesReply:
    """readlink and getxattr."""

    err: int = 0
    value: bytes = b""


@dataclass(frozen=True)
class NamesReply:
    err: int = 0
    names: list[bytes] = field(default_factory=list)


@dataclass(frozen=True)
class ManifestPage:
    """The file's extents starting at or after ``start``, in offset order,
    never overlapping; gaps below ``size`` are holes (zeros)."""

    err: int = 0
    size: int = 0
    chunk_bytes: int = 0
    slices: list[Slice] = field(default_factory=list)
    next_off: int = 0
    done: bool = True
    # The file's attributes, on every page: an open needs them and the
    # layout, and gets both in one round trip.
    attr: Attr | None = None


@dataclass(frozen=True)
class ManifestPages:
    """The first manifest page of each file of a prefix of those asked
    (at most MANIFESTS_MAX, and only as many as fit about a megabyte of
    inline data, at least one), in the order asked: a mount reading a
    directory of small files fetches their layouts ahead this way."""

    pages: list[ManifestPage] = field(default_factory=list)


@dataclass(frozen=True)
class StatFs:
    inodes: int
    bytes: int
    chunks: int
    next_ino: int
    applied_index: int
    name_bytes_max: int = NAME_BYTES_MAX
