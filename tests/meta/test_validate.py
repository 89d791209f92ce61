"""The static command check (server/meta/validate.py): each limit answers
the errno Linux gives for it, and the refusal has the handler's result type."""

import errno
import stat

import pytest

from server.meta import types as t
from server.meta.validate import CHUNK_REFS_MAX, check, error_result

BIG = 2**63
OK_NAME = b"f"


ID = b"i" * 16


def _blk(off=0, length=1, block_id=ID, block_off=0, block_size=1, fresh=False):
    return t.Slice(off, length, block_id, block_off, block_size, fresh=fresh)


def _inl(off=0, data=b"x"):
    return t.Slice(off, len(data), data=data)


CASES = [
    # inode numbers: 1..2**63-1 (SQLite int64)
    (t.Unlink(parent=BIG, name=OK_NAME, now_ns=0), errno.EINVAL),
    (t.Unlink(parent=0, name=OK_NAME, now_ns=0), errno.EINVAL),
    (t.Unlink(parent=BIG - 1, name=OK_NAME, now_ns=0), 0),
    (t.Link(ino=2**64 - 1, new_parent=1, new_name=OK_NAME, now_ns=0), errno.EINVAL),
    (t.Rename(1, OK_NAME, -1, OK_NAME, 0, 0), errno.EINVAL),
    (t.ReleaseOrphan(ino=BIG, now_ns=0), errno.EINVAL),
    # names
    (t.Create(1, b"x" * 255, 0o644, 0, 0, 0), 0),
    (t.Create(1, b"x" * 256, 0o644, 0, 0, 0), errno.ENAMETOOLONG),
    (t.Create(1, b"", 0o644, 0, 0, 0), errno.EINVAL),
    (t.Create(1, b".", 0o644, 0, 0, 0), errno.EINVAL),
    (t.Mkdir(1, b"..", 0o755, 0, 0, 0), errno.EINVAL),
    (t.Mkdir(1, b"a/b", 0o755, 0, 0, 0), errno.EINVAL),
    (t.Rmdir(1, b"a\0b", 0), errno.EINVAL),
    (t.Create(1, "text", 0o644, 0, 0, 0), errno.EINVAL),
    (t.Create(1, b"\xff\xfe", 0o644, 0, 0, 0), 0),
    (t.Rename(1, OK_NAME, 1, b"x" * 256, 0, 0), errno.ENAMETOOLONG),
    # u32 fields and int64 times
    (t.Create(1, OK_NAME, 2**32, 0, 0, 0), errno.EINVAL),
    (t.Create(1, OK_NAME, 0o644, -1, 0, 0), errno.EINVAL),
    (t.Create(1, OK_NAME, 0o644, 0, 0, BIG), errno.EINVAL),
    (t.Create(1, OK_NAME, 0o644, 0, 0, -BIG), 0),
    (t.Create(1, OK_NAME, 0o644, True, 0, 0), errno.EINVAL),
    (t.SetAttr(ino=2, now_ns=0, atime=BIG), errno.EINVAL),
    (t.SetAttr(ino=2, now_ns=0, mtime=t.Utime.NOW, uid=2**32 - 1), 0),
    # mknod: the type before the name, as the handler and Linux do
    (t.Mknod(1, b"x" * 256, stat.S_IFDIR | 0o755, 0, 0, 0, 0), errno.EPERM),
    (t.Mknod(1, OK_NAME, 0o170000, 0, 0, 0, 0), errno.EINVAL),
    (t.Mknod(1, OK_NAME, stat.S_IFCHR | 0o600, 2**64 - 1, 0, 0, 0), errno.EINVAL),
    # symlink targets: PATH_MAX 4096 with its NUL
    (t.Symlink(1, OK_NAME, b"t" * 4095, 0, 0, 0), 0),
    (t.Symlink(1, OK_NAME, b"t" * 4096, 0, 0, 0), errno.ENAMETOOLONG),
    (t.Symlink(1, OK_NAME, b"", 0, 0, 0), errno.ENOENT),
    (t.Symlink(1, OK_NAME, b"a\0", 0, 0, 0), errno.EINVAL),
    # sizes: truncate(2) says EINVAL below 0, EFBIG past the largest file
    (t.SetAttr(ino=2, now_ns=0, size=BIG), errno.EFBIG),
    (t.SetAttr(ino=2, now_ns=0, size=-1), errno.EINVAL),
    (t.CommitWrite(ino=2, size=2**64 - 1, now_ns=0), errno.EFBIG),
    # xattrs: Linux XATTR_NAME_MAX 255 (ERANGE), XATTR_SIZE_MAX 64 KiB (E2BIG)
    (t.SetXattr(2, b"user." + b"n" * 250, b"v", 0, 0), 0),
    (t.SetXattr(2, b"user." + b"n" * 251, b"v", 0, 0), errno.ERANGE),
    (t.SetXattr(2, b"", b"v", 0, 0), errno.ERANGE),
    (t.SetXattr(2, b"user.a", b"v" * 65537, 0, 0), errno.E2BIG),
    (t.SetXattr(2, b"user.a", b"v", 3, 0), errno.EINVAL),
    (t.RemoveXattr(2, b"a\0", 0), errno.ERANGE),
    # slices: in range, inside their block, 16-byte ids, inline data of the
    # slice's length; per command COMMIT_SLICES_MAX slices and
    # COMMIT_INLINE_BYTES_MAX inline bytes (E2BIG)
    (t.CommitWrite(2, 10, 0, [_blk(), _inl(1, b"ab")], observed=BIG - 1), 0),
    (t.CommitWrite(2, 10, 0, [_blk(off=BIG)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(off=BIG - 2, length=1, block_size=1)]), 0),
    (t.CommitWrite(2, 10, 0, [_blk(off=BIG - 2, length=2, block_size=2)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(length=0)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(off=-1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(block_id=b"c" * 15)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(block_id=b"c" * 17)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(block_off=1, length=1, block_size=1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(block_off=-1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(block_size=BIG)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [t.Slice(0, 1, ID, 0, 1, data=b"x")]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [t.Slice(0, 2, data=b"x")]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [t.Slice(0, 1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [t.Slice(0, 1, data="x")]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(fresh=1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [(0, 1, ID, 0, 1)]), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, (_blk(),)), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk()], observed=-1), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk()], observed=BIG), errno.EINVAL),
    (t.CommitWrite(2, 10, 0, [_blk(off=i) for i in range(t.COMMIT_SLICES_MAX)]), 0),
    (t.CommitWrite(2, 10, 0, [_blk(off=i) for i in range(t.COMMIT_SLICES_MAX + 1)]),
     errno.E2BIG),
    (t.CommitWrite(2, 10, 0, [_inl(data=b"x" * t.COMMIT_INLINE_BYTES_MAX)]), 0),
    (t.CommitWrite(2, 10, 0, [_inl(data=b"x" * (t.COMMIT_INLINE_BYTES_MAX // 2)),
                              _inl(data=b"x" * (t.COMMIT_INLINE_BYTES_MAX // 2 + 1))]),
     errno.E2BIG),
    # compact: a non-empty range, a digest of at most 32 bytes, block slices only
    (t.Compact(2, 0, 10, b"d" * 16, [_blk()]), 0),
    (t.Compact(2, 0, 0, b"d" * 16, [_blk()]), errno.EINVAL),
    (t.Compact(2, -1, 10, b"d" * 16, [_blk()]), errno.EINVAL),
    (t.Compact(2, BIG - 1, 2, b"d" * 16, [_blk()]), errno.EINVAL),
    (t.Compact(2, 0, 10, b"d" * 33, [_blk()]), errno.EINVAL),
    (t.Compact(2, 0, 10, "digest", [_blk()]), errno.EINVAL),
    (t.Compact(2, 0, 10, b"d" * 16, [_inl()]), errno.EINVAL),
    (t.Compact(BIG, 0, 10, b"d" * 16, [_blk()]), errno.EINVAL),
    (t.Compact(2, 0, 10, b"d" * 16, [_blk()], observed=-1), errno.EINVAL),
    # log time
    (t.Tick(-BIG), 0),
    (t.Tick(BIG), errno.EINVAL),
    # forget: ids and marks pair up
    (t.ForgetChunks([b"c"] * CHUNK_REFS_MAX, [1] * CHUNK_REFS_MAX), 0),
    (t.ForgetChunks([b"c"] * (CHUNK_REFS_MAX + 1), [1] * (CHUNK_REFS_MAX + 1)), errno.EINVAL),
    (t.ForgetChunks([b""], [1]), errno.EINVAL),
    (t.ForgetChunks([b"c" * 65], [1]), errno.EINVAL),
    (t.ForgetChunks([b"c"], []), errno.EINVAL),
    (t.ForgetChunks([b"c"], [1, 2]), errno.EINVAL),
    (t.ForgetChunks([b"c"], [-1]), errno.EINVAL),
    (t.ForgetChunks([b"c"], [BIG]), errno.EINVAL),
]


@pytest.mark.parametrize("cmd, err", CASES, ids=lambda v: type(v).__name__)
def test_check_answers_the_linux_errno(cmd, err):
    assert check(cmd) == err


def test_anything_else_is_einval():
    assert check(object()) == errno.EINVAL
    assert check(None) == errno.EINVAL


@pytest.mark.parametrize("cmd, cls", [
    (t.Create(1, b"", 0, 0, 0, 0), t.EntryReply),
    (t.CommitWrite(2, -1, 0), t.EntryReply),
    (t.Rename(1, b"", 1, b"", 0, 0), t.RemoveReply),
    (t.Unlink(0, b"a", 0), t.RemoveReply),
    (t.SetXattr(0, b"a", b"", 0, 0), t.Status),
    (object(), t.Status),
])
def test_error_result_has_the_handlers_type(cmd, cls):
    assert error_result(cmd, errno.EINVAL) == cls(errno.EINVAL)
