"""``chordfs clone SRC DST``: copy a file or a directory tree on a chordfs
mount at once, by sharing blocks: no data is read or written, each new file
is one Clone command (the mount's ``CLONE_XATTR`` channel, see
``fusefs.ops``). Later writes to either copy stay apart (copy on write by
construction: blocks never change).

Per regular file: open it read-only (the kernel checks the path and read
permission; the open handle is the mount's proof that this process reached
the file), set ``CLONE_XATTR`` = ``<ino>/<name>`` on the new file's
directory, close. A directory tree is walked without following symlinks
(SRC itself is followed, like cp): directories are made 0700 while being
filled and get the source's mode at the end, deepest first, so a read-only
source directory can still be filled; symlinks are made again; FIFOs,
sockets and devices with mknod; hard links within the tree stay hard links;
``user.*`` extended attributes are copied. Owner and times are the
caller's and now, as with ``cp`` without ``-p``.

DST must not exist and must be on the same mount as SRC. Errors are one
sentence and exit 1; a tree clone that fails midway leaves what it made.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
import sys

from .ops import CLONE_XATTR

FSTYPE = "fuse.chordfs"  # fuse.<subtype>, as the kernel lists our mounts
USER_XATTR_PREFIX = "user."


class CloneError(Exception):
    """One sentence for the user."""


@dataclasses.dataclass
class Tally:
    files: int = 0
    shared_bytes: int = 0
    hard_links: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0

    def summary(self, src: str, dst: str) -> str:
        parts = [f"{_count(self.files, 'file')} ({self.shared_bytes} bytes shared, none copied)"]
        for n, one, many in ((self.dirs, "directory", "directories"),
                             (self.symlinks, "symlink", "symlinks"),
                             (self.hard_links, "hard link", "hard links"),
                             (self.specials, "special file", "special files")):
            if n:
                parts.append(_count(n, one, many))
        return f"cloned {src} to {dst}: " + ", ".join(parts)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def clone_main(src: str, dst: str, verbose: bool = False) -> int:
    """Silent on success (one summary line with ``verbose``); one sentence
    on stderr and 1 otherwise."""
    tally = Tally()
    try:
        src_st, dst_dir, name = _check(src, dst)
        if stat.S_ISDIR(src_st.st_mode):
            with _progress(sys.stderr.isatty()) as tick:
                _clone_tree(src, dst, src_st, tally, tick)
        else:
            _clone_file(src, dst_dir, name, dst, follow=True, tally=tally)
    except CloneError as exc:
        print(f"chordfs: {exc}", file=sys.stderr)
        return 1
    if verbose:
        print(tally.summary(src, dst))
    return 0


def _fstype_of(dev: int) -> str | None:
    """The type of the filesystem with device number ``dev``, from the
    mount table."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 3 and fields[2] == want and "-" in fields:
                return fields[fields.index("-") + 1]
    return None


def _problem(exc: OSError, doing: str) -> CloneError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CloneError(f"permission denied: cannot {doing}")
    if exc.errno == errno.ENOTCONN:
        return CloneError(f"cannot {doing}: the chordfs mount is not connected "
                          f"(its process ended)")
    return CloneError(f"cannot {doing}: {exc.strerror}")


def _check(src: str, dst: str) -> tuple[os.stat_result, str, str]:
    """SRC's stat, DST's directory and name; CloneError if the clone cannot
    be made. DST's own existence is left to the mount (EEXIST), so no
    lookup of it leaves a negative dentry in the kernel."""
    try:
        src_st = os.stat(src)
    except FileNotFoundError:
        raise CloneError(f"{src} does not exist") from None
    except OSError as exc:
        raise _problem(exc, f"reach {src}") from None
    fstype = _fstype_of(src_st.st_dev)
    if fstype != FSTYPE:
        raise CloneError(f"{src} is not on a chordfs mount (it is on {fstype or 'an unknown filesystem'})")
    if not (stat.S_ISREG(src_st.st_mode) or stat.S_ISDIR(src_st.st_mode)):
        raise CloneError(f"{src} is not a regular file or a directory")
    dst_abs = os.path.abspath(dst)
    dst_dir, name = os.path.split(dst_abs)
    if not name:
        raise CloneError(f"{dst} already exists")
    try:
        dir_st = os.stat(dst_dir)
    except FileNotFoundError:
        raise CloneError(f"cannot create {dst}: {dst_dir} does not exist") from None
    except NotADirectoryError:
        raise CloneError(f"cannot create {dst}: {dst_dir} is not a directory") from None
    except OSError as exc:
        raise _problem(exc, f"reach {dst_dir}") from None
    if dir_st.st_dev != src_st.st_dev:
        raise CloneError(f"cannot clone across filesystems: {dst} is not on the same "
                         f"chordfs mount as {src}")
    if stat.S_ISDIR(src_st.st_mode):
        top = os.path.realpath(src)
        inside = os.path.realpath(dst_dir)
        if inside == top or inside.startswith(top.rstrip("/") + "/"):
            raise CloneError(f"cannot clone the directory {src} into itself")
    return src_st, dst_dir, name


def _clone_file(src: str, dst_dir: str, name: str, dst: str, *, follow: bool,
                tally: Tally) -> os.stat_result:
    """One Clone of regular file ``src`` as ``dst`` (= dst_dir/name)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(src, flags)
    except OSError as exc:
        raise _problem(exc, f"read {src}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # changed since we looked
            raise CloneError(f"{src} is not a regular file")
        value = b"%d/%s" % (st.st_ino, os.fsencode(name))
        try:
            os.setxattr(dst_dir, CLONE_XATTR, value)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise CloneError(f"{dst} already exists") from None
            if exc.errno == errno.EOPNOTSUPP:
                raise CloneError(f"cannot clone {src}: its chordfs mount is too old "
                                 f"to clone files") from None
            raise _problem(exc, f"clone {src} to {dst}") from None
    finally:
        os.close(fd)
    tally.files += 1
    tally.shared_bytes += st.st_size
    _copy_xattrs(src, dst, follow=follow)
    return st


class _progress:
    """A rich progress line on a terminal (entries made, bytes shared; the
    total is not known before the walk ends); nothing otherwise."""

    def __init__(self, shown: bool) -> None:
        self.bar = self.task = None
        if shown:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self.bar = Progress(SpinnerColumn(), TextColumn("cloning: {task.fields[detail]}"),
                                TimeElapsedColumn(), console=Console(stderr=True),
                                transient=True)

    def __enter__(self):
        if self.bar is None:
            return lambda tally: None
        self.bar.start()
        self.task = self.bar.add_task("clone", total=None, detail="")

        def tick(tally: Tally) -> None:
            self.bar.update(self.task, detail=f"{tally.files} files, {tally.dirs} directories, "
                                              f"{tally.shared_bytes:,} bytes shared")
        return tick

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def _clone_tree(src: str, dst: str, src_st: os.stat_result, tally: Tally,
                tick=lambda tally: None) -> None:
    """Depth-first with an explicit stack (no recursion limit); modes of
    the new directories are set at the end, deepest first; ``tick(tally)``
    after each directory."""
    _mkdir(dst)
    tally.dirs += 1
    _copy_xattrs(src, dst)
    modes = [(dst, src_st.st_mode)]
    linked: dict[int, str] = {}  # source inode -> its first clone, for hard links
    stack = [(src, dst)]
    while stack:
        sdir, ddir = stack.pop()
        try:
            with os.scandir(sdir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise _problem(exc, f"read the directory {sdir}") from None
        for entry in entries:
            s, d = entry.path, os.path.join(ddir, entry.name)
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise _problem(exc, f"reach {s}") from None
            if stat.S_ISDIR(st.st_mode):
                _mkdir(d)
                tally.dirs += 1
                _copy_xattrs(s, d)
                modes.append((d, st.st_mode))
                stack.append((s, d))
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1 and st.st_ino in linked:
                    _make(os.link, linked[st.st_ino], d, doing=f"link {d}")
                    tally.hard_links += 1
                    continue
                _clone_file(s, ddir, entry.name, d, follow=False, tally=tally)
                if st.st_nlink > 1:
                    linked[st.st_ino] = d
            elif stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(s)
                except OSError as exc:
                    raise _problem(exc, f"read the symlink {s}") from None
                _make(os.symlink, target, d, doing=f"create the symlink {d}")
                tally.symlinks += 1
            else:
                _make(os.mknod, d, st.st_mode, st.st_rdev, doing=f"create {d}")
                tally.specials += 1
        tick(tally)
    for d, mode in reversed(modes):
        _make(os.chmod, d, stat.S_IMODE(mode), doing=f"set the mode of {d}")


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise CloneError(f"{path} already exists") from None
    except OSError as exc:
        raise _problem(exc, f"create the directory {path}") from None


def _make(fn, *args, doing: str) -> None:
    try:
        fn(*args)
    except OSError as exc:
        raise _problem(exc, doing) from None


def _copy_xattrs(src: str, dst: str, follow: bool = False) -> None:
    """Copy ``user.*`` attributes; setting them needs write permission, so
    a read-only new file is made writable for its owner meanwhile."""
    try:
        names = [n for n in os.listxattr(src, follow_symlinks=follow)
                 if n.startswith(USER_XATTR_PREFIX)]
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENODATA):
            return
        raise _problem(exc, f"list the extended attributes of {src}") from None
    if not names:
        return
    try:
        dst_mode = os.lstat(dst).st_mode
    except OSError as exc:
        raise _problem(exc, f"reach {dst}") from None
    writable = dst_mode & stat.S_IWUSR
    if not writable:
        _make(os.chmod, dst, stat.S_IMODE(dst_mode) | stat.S_IWUSR,
              doing=f"set the mode of {dst}")
    try:
        for name in names:
            try:
                value = os.getxattr(src, name, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno == errno.ENODATA:  # removed since listed
                    continue
                raise _problem(exc, f"read the attribute {name} of {src}") from None
            _make(os.setxattr, dst, name, value, doing=f"set the attribute {name} of {dst}")
    finally:
        if not writable:
            _make(os.chmod, dst, stat.S_IMODE(dst_mode), doing=f"set the mode of {dst}")
