"""Rule-based comparison of the state machine with a real directory.

Every rule runs one operation on a temporary directory of the local
filesystem (Linux semantics, run as whoever runs the suite) and on the state
machine, and compares the errno; after every step the whole tree is compared
(types, modes, owners, sizes, nlink, hard-link identity, symlink targets,
user xattrs, file contents read back from the manifest, listings read in
small pages), and the layout invariants (``helpers.check_layout``). The harness plays the kernel's
part for the state machine: it resolves paths with lookups, follows symlinks
(ELOOP after 40), and answers EPERM for user xattrs on special files, as the
VFS does before a request ever reaches FUSE.

Times are not compared (the real directory uses the wall clock); their rules
are covered by tests in test_namespace.py and test_attrs.py. If the local
filesystem lacks user xattrs, a dictionary stands in for them.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import shutil
import stat
import tempfile

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
import xxhash

from server.meta import types as t

from .helpers import Driver, check_layout, read_file

NAMES = ["a", "b", "c"]
_DEPTH = [[""]]
for _ in range(3):
    _DEPTH.append([f"{p}/{n}".lstrip("/") for p in _DEPTH[-1] for n in NAMES])
# Shallow paths exist far more often, so most operations get past lookup.
PATHS = st.one_of(st.sampled_from(_DEPTH[1]), st.sampled_from(_DEPTH[1]),
                  st.sampled_from(_DEPTH[2]), st.sampled_from(_DEPTH[3]))
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o777, 0o1777, 0o000, 0o1755])
XNAMES = st.sampled_from([b"user.x", b"user.y"])
SYMLOOP_MAX = 40

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100


def _renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, old.encode(), AT_FDCWD, new.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _real_xattrs_work() -> bool:
    with tempfile.TemporaryDirectory() as d:
        try:
            os.setxattr(d, "user.probe", b"1")
            return True
        except OSError:
            return False


REAL_XATTRS = _real_xattrs_work()


def _errno_of(fn, *args, **kwargs) -> int:
    try:
        fn(*args, **kwargs)
        return 0
    except OSError as exc:
        return exc.errno


class FsComparison(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="chordfs-meta-model-")
        self.root = os.path.join(self.tmp, "root")
        self.old_umask = os.umask(0)
        os.mkdir(self.root, 0o755)
        self.sm = Driver()
        self.contents: dict[bytes, bytes] = {}
        self.xmodel: dict[int, dict[bytes, bytes]] = {}

    def teardown(self) -> None:
        os.umask(self.old_umask)
        shutil.rmtree(self.tmp)
        self.sm.store.close()

    def real(self, path: str) -> str:
        return os.path.join(self.root, path)

    # ------------------------------------------------------------ kernel role

    def _walk(self, cur: int, parts: list[str], follow_last: bool, budget: list[int]):
        for i, part in enumerate(parts):
            r = self.sm.store.lookup(cur, part.encode())
            if r.err:
                return r.err, 0
            ino = r.attr.ino
            if stat.S_ISLNK(r.attr.mode) and (i < len(parts) - 1 or follow_last):
                budget[0] -= 1
                if budget[0] < 0:
                    return errno.ELOOP, 0
                target = self.sm.store.readlink(ino).value.decode()
                err, ino = self._walk(cur, target.split("/"), True, budget)
                if err:
                    return err, 0
            cur = ino
        return 0, cur

    def resolve(self, path: str, follow_last: bool) -> tuple[int, int]:
        return self._walk(t.ROOT_INO, path.split("/"), follow_last, [SYMLOOP_MAX])

    def resolve_parent(self, path: str) -> tuple[int, int, bytes]:
        *dirs, name = path.split("/")
        err, ino = self._walk(t.ROOT_INO, dirs, True, [SYMLOOP_MAX]) if dirs else (0, t.ROOT_INO)
        if not err and not stat.S_ISDIR(self.sm.attr(ino).mode):
            err = errno.ENOTDIR
        return err, ino, name.encode()

    def check(self, real_err: int, sm_err: int, what: str) -> None:
        assert real_err == sm_err, f"{what}: local fs says {errno.errorcode.get(real_err, real_err)}, state machine {errno.errorcode.get(sm_err, sm_err)}"

    def _in_parent(self, path: str, cls: type, **kwargs) -> int:
        err, parent, name = self.resolve_parent(path)
        if err:
            return err
        return self.sm.do(cls, parent=parent, name=name, **kwargs).err

    # ------------------------------------------------------------ rules

    @initialize()
    def populate(self):
        """A small tree to start from, so renames and links find material."""
        for path in ("a", "a/b", "b"):
            self.mkdir(path, 0o755)
        for path in ("c", "a/c", "a/b/a"):
            self.create(path, 0o644)

    @rule(path=PATHS, mode=MODES)
    def mkdir(self, path, mode):
        real = _errno_of(os.mkdir, self.real(path), mode)
        self.check(real, self._in_parent(path, t.Mkdir, mode=mode), f"mkdir {path}")

    @rule(path=PATHS, mode=MODES)
    def create(self, path, mode):
        def do():
            os.close(os.open(self.real(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        self.check(_errno_of(do), self._in_parent(path, t.Create, mode=mode), f"create {path}")

    @rule(path=PATHS, kind=st.sampled_from([stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG]))
    def mknod(self, path, kind):
        real = _errno_of(os.mknod, self.real(path), kind | 0o640)
        sm = self._in_parent(path, t.Mknod, mode=kind | 0o640, rdev=0)
        self.check(real, sm, f"mknod {path}")

    @rule(path=PATHS, link_to=PATHS)
    def symlink(self, path, link_to):
        real = _errno_of(os.symlink, link_to, self.real(path))
        sm = self._in_parent(path, t.Symlink, target=link_to.encode())
        self.check(real, sm, f"symlink {path} -> {link_to}")

    @rule(src=PATHS, dst=PATHS)
    def link(self, src, dst):
        real = _errno_of(os.link, self.real(src), self.real(dst), follow_symlinks=False)
        err, ino = self.resolve(src, follow_last=False)
        if not err:
            err, parent, name = self.resolve_parent(dst)
        if not err:
            err = self.sm.do(t.Link, ino=ino, new_parent=parent, new_name=name).err
        self.check(real, err, f"link {src} {dst}")

    @rule(path=PATHS)
    def unlink(self, path):
        real = _errno_of(os.unlink, self.real(path))
        self.check(real, self._in_parent(path, t.Unlink), f"unlink {path}")

    @rule(path=PATHS)
    def rmdir(self, path):
        real = _errno_of(os.rmdir, self.real(path))
        self.check(real, self._in_parent(path, t.Rmdir), f"rmdir {path}")

    @rule(src=PATHS, dst=PATHS,
          flags=st.sampled_from([0, 0, t.RENAME_NOREPLACE, t.RENAME_EXCHANGE]))
    def rename(self, src, dst, flags):
        real = _errno_of(_renameat2, self.real(src), self.real(dst), flags)
        err, parent, name = self.resolve_parent(src)
        if not err:
            err, new_parent, new_name = self.resolve_parent(dst)
        if not err:
            err = self.sm.do(t.Rename, parent=parent, name=name, new_parent=new_parent,
                             new_name=new_name, flags=flags).err
        self.check(real, err, f"rename {src} {dst} flags={flags}")

    def _setattr(self, path: str, **kwargs) -> int:
        err, ino = self.resolve(path, follow_last=True)
        return err or self.sm.do(t.SetAttr, ino=ino, **kwargs).err

    @rule(path=PATHS, size=st.integers(0, 9))
    def truncate(self, path, size):
        real = _errno_of(os.truncate, self.real(path), size)
        self.check(real, self._setattr(path, size=size), f"truncate {path} {size}")

    @rule(path=PATHS, mode=MODES)
    def chmod(self, path, mode):
        real = _errno_of(os.chmod, self.real(path), mode)
        self.check(real, self._setattr(path, mode=mode), f"chmod {path}")

    @rule(path=PATHS, uid=st.sampled_from([0, 1000]), gid=st.sampled_from([0, 65534]))
    def chown(self, path, uid, gid):
        real = _errno_of(os.chown, self.real(path), uid, gid)
        self.check(real, self._setattr(path, uid=uid, gid=gid), f"chown {path}")

    @rule(path=PATHS, offset=st.integers(0, 5), data=st.binary(min_size=1, max_size=3),
          how=st.sampled_from(["inline", "block", "dedup"]))
    def write(self, path, offset, data, how):
        """Only on regular files: the FUSE layer commits what it wrote, as
        inline bytes or as part of a content-addressed block it stored
        (fresh) or found already stored (dedup: refused unless live)."""
        err, ino = self.resolve(path, follow_last=True)
        if err or not stat.S_ISREG(self.sm.attr(ino).mode):
            return
        fd = os.open(self.real(path), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        if how == "inline":
            piece = t.Slice(offset, len(data), data=data)
        else:
            body = b"<" + data + b">"
            block_id = xxhash.xxh3_128_digest(body)
            self.contents[block_id] = body
            piece = t.Slice(offset, len(data), block_id, 1, len(body), fresh=how == "block")
        live = piece.block_id and self.sm.store.block_state(piece.block_id)[0] == "live"
        r = self.sm.do(t.CommitWrite, ino=ino, size=offset + len(data), slices=[piece],
                       observed=self.sm.index)
        if how == "dedup" and not live:
            assert r.err == errno.ESTALE, r
            r = self.sm.do(t.CommitWrite, ino=ino, size=offset + len(data),
                           slices=[dataclasses.replace(piece, fresh=True)],
                           observed=self.sm.index)
        assert r.err == 0, r

    @rule(path=PATHS)
    def unlink_while_open(self, path):
        """The FUSE layer keeps an open file's inode as an orphan."""
        real = _errno_of(os.unlink, self.real(path))
        self.check(real, self._in_parent(path, t.Unlink, keep_orphan=True), f"unlink {path}")

    @rule()
    def release_orphans(self):
        for ino in self.sm.store.orphans():
            assert self.sm.do(t.ReleaseOrphan, ino=ino).err == 0

    # ------------------------------------------------------------ xattrs

    def _xattr_target(self, path: str) -> tuple[int, int]:
        """The VFS allows user.* only on regular files and directories."""
        err, ino = self.resolve(path, follow_last=True)
        if not err and not stat.S_IFMT(self.sm.attr(ino).mode) in (stat.S_IFREG, stat.S_IFDIR):
            err = errno.EPERM
        return err, ino

    def _model_set(self, path, name, value, flags):
        st_ = os.stat(self.real(path))
        if not (stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode)):
            raise OSError(errno.EPERM, "special file")
        attrs = self.xmodel.setdefault(st_.st_ino, {})
        if name in attrs and flags & t.XATTR_CREATE:
            raise OSError(errno.EEXIST, "exists")
        if name not in attrs and flags & t.XATTR_REPLACE:
            raise OSError(errno.ENODATA, "missing")
        attrs[name] = value

    def _model_remove(self, path, name):
        st_ = os.stat(self.real(path))
        if not (stat.S_ISREG(st_.st_mode) or stat.S_ISDIR(st_.st_mode)):
            raise OSError(errno.EPERM, "special file")
        if self.xmodel.setdefault(st_.st_ino, {}).pop(name, None) is None:
            raise OSError(errno.ENODATA, "missing")

    @rule(path=PATHS, name=XNAMES, value=st.binary(max_size=8),
          flags=st.sampled_from([0, t.XATTR_CREATE, t.XATTR_REPLACE]))
    def setxattr(self, path, name, value, flags):
        if REAL_XATTRS:
            real = _errno_of(os.setxattr, self.real(path), name, value, flags)
        else:
            real = _errno_of(self._model_set, path, name, value, flags)
        err, ino = self._xattr_target(path)
        if not err:
            err = self.sm.do(t.SetXattr, ino=ino, name=name, value=value, flags=flags).err
        self.check(real, err, f"setxattr {path} {name}")

    @rule(path=PATHS, name=XNAMES)
    def removexattr(self, path, name):
        if REAL_XATTRS:
            real = _errno_of(os.removexattr, self.real(path), name)
        else:
            real = _errno_of(self._model_remove, path, name)
        err, ino = self._xattr_target(path)
        if not err:
            err = self.sm.do(t.RemoveXattr, ino=ino, name=name).err
        self.check(real, err, f"removexattr {path} {name}")

    # ------------------------------------------------------------ comparison

    def _real_xattrs(self, full: str, st_: os.stat_result) -> dict[bytes, bytes]:
        if not REAL_XATTRS:
            return dict(self.xmodel.get(st_.st_ino, {}))
        names = os.listxattr(full, follow_symlinks=False)
        return {n.encode(): os.getxattr(full, n, follow_symlinks=False)
                for n in names if n.startswith("user.")}

    def _real_tree(self) -> dict[str, tuple]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                st_ = os.lstat(full)
                out[os.path.relpath(full, self.root)] = (st_.st_ino, self._describe_real(full, st_))
        return out

    def _describe_real(self, full: str, st_: os.stat_result) -> tuple:
        is_link, is_dir = stat.S_ISLNK(st_.st_mode), stat.S_ISDIR(st_.st_mode)
        size = None if is_dir else st_.st_size
        target = os.readlink(full).encode() if is_link else None
        xattrs = self._real_xattrs(full, st_) if stat.S_ISREG(st_.st_mode) or is_dir else {}
        data = None
        if stat.S_ISREG(st_.st_mode):
            with open(full, "rb") as f:
                data = f.read()
        return (st_.st_mode, st_.st_uid, st_.st_gid, size, st_.st_nlink, target, xattrs, data)

    def _sm_tree(self, ino: int = t.ROOT_INO, prefix: str = "", out=None) -> dict[str, tuple]:
        out = {} if out is None else out
        cursor = b""
        while True:
            page = self.sm.store.readdir(ino, cursor, limit=2, plus=True)
            assert page.err == 0
            for entry in page.entries:
                path = prefix + entry.name.decode()
                attr = self.sm.attr(entry.ino)
                assert entry.attr == attr
                assert stat.S_IFMT(attr.mode) == entry.kind
                out[path] = (entry.ino, self._describe_sm(attr))
                if stat.S_ISDIR(attr.mode):
                    assert self.sm.store.readdir(entry.ino, limit=1).parent == ino
                    self._sm_tree(entry.ino, path + "/", out)
            cursor = page.cursor
            if page.done:
                return out

    def _describe_sm(self, attr: t.Attr) -> tuple:
        store, mode = self.sm.store, attr.mode
        size = None if stat.S_ISDIR(mode) else attr.size
        target = store.readlink(attr.ino).value if stat.S_ISLNK(mode) else None
        xattrs = {n: store.getxattr(attr.ino, n).value for n in store.listxattr(attr.ino).names}
        data = read_file(store, attr.ino, self.contents) if stat.S_ISREG(mode) else None
        return (mode, attr.uid, attr.gid, size, attr.nlink, target, xattrs, data)

    @staticmethod
    def _link_groups(tree: dict[str, tuple]) -> set[frozenset[str]]:
        groups: dict[int, set[str]] = {}
        for path, (ino, _) in tree.items():
            groups.setdefault(ino, set()).add(path)
        return {frozenset(g) for g in groups.values()}

    @invariant()
    def trees_match(self):
        real, sm = self._real_tree(), self._sm_tree()
        assert sorted(real) == sorted(sm)
        for path in real:
            assert real[path][1] == sm[path][1], path
        assert self._link_groups(real) == self._link_groups(sm)
        root_nlink = os.lstat(self.root).st_nlink
        assert self.sm.attr(t.ROOT_INO).nlink == root_nlink
        distinct = {ino for ino, _ in sm.values()}
        orphans = self.sm.store.orphans()
        assert not distinct & set(orphans)
        assert self.sm.store.statfs().inodes == len(distinct) + 1 + len(orphans)

    @invariant()
    def layout_is_consistent(self):
        check_layout(self.sm.store)


FsComparison.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFsComparison = FsComparison.TestCase
