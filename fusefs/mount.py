"""Mounting chordfs: ``python -m fusefs.mount HOST:PORT[,HOST:PORT...]
MOUNTPOINT`` (a cluster, through ``fusefs.cluster``), ``python -m
fusefs.mount --local DATA_DIR MOUNTPOINT`` (an in-process data directory),
and the ``mount.chordfs`` helper that mount(8) runs for ``-t chordfs``.

Order of work: parse and check everything (a bad argument is one sentence
and exit 2, before anything is touched) → detach unless ``--foreground``
(the parent exits 0 only once the mount exists) → open the backend → mount
→ serve until unmounted or SIGTERM/SIGINT → commit open files' buffered
writes → stop the invalidation thread → unmount (pyfuse3.close) → close the
backend.

Mount options (``-o a,b=c``): FUSE's own (``ro``, ``nosuid``, ``nodev``,
``noexec``, ``noatime``, ...) pass through; ``attr_timeout``,
``entry_timeout`` (seconds), ``sync_meta`` (one commit per metadata
change instead of directory write-behind, fusefs/leases.py), ``meta_batch_ms``
(the longest a change answered under a directory lease waits before it is
sent, default 100; what a crash of the mount may lose), ``read_ahead_kb``, ``cache_mib``, ``chunk_kib``
(new data directories only), ``deadline`` (seconds a cluster metadata call
may take with its retries before EIO, default 15), ``writeback`` /
``nowriteback`` (the kernel's writeback cache, default off; see
``WRITEBACK_DEFAULT``), ``acl`` / ``noacl`` (POSIX ACLs, default on: the
kernel enforces them, see server/meta/acl.py), ``metrics_port`` /
``metrics_file`` (the mount's Prometheus metrics, fusefs/mountmetrics.py)
and ``noallow_other`` are chordfs's; fstab words
(``defaults``, ``_netdev``, ``nofail``, ``auto``, ...) are accepted and
ignored. ``allow_other`` and ``default_permissions`` are on by default
(DESIGN: a root mount is shared by every user, the kernel checks modes).
``tls_ca``, ``tls_cert``, ``tls_key`` name the client certificate a cluster
mount presents (``chordfs cert issue --client NAME``; default: ca.crt,
client.crt and client.key in /etc/chordfs/tls); a read-only certificate
mounts ``ro``; ``insecure`` mounts a plain-TCP cluster (tests only);
``nonempty`` allows a mountpoint that holds files (refused otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys

import pyfuse3
import trio

from rpc.logfmt import configure, kv
from server.meta.types import CHUNK_BYTES_DEFAULT
from server.pki import PkiError, TlsFiles

from .backend import Backend, BackendError, LocalBackend
from .cluster import ClusterConfig, open_cluster, parse_nodes
from .subtree import SubtreeBackend, SubtreeUnavailable, find_root
from .leases import FLUSH_AGE_S, LeasedBackend
from .kernel import Timeouts
from .ops import DROP_CACHE_XATTR, ChordOps

log = logging.getLogger("chordfs.fuse.mount")

PROG = "chordfs-mount"
READ_AHEAD_KB_DEFAULT = 1024
CACHE_MIB_DEFAULT = 256
FUSE_PASSTHROUGH = frozenset((
    "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync",
    "dirsync", "atime", "noatime", "nodiratime", "relatime", "norelatime",
    "strictatime", "nostrictatime", "debug",
))
IGNORED = frozenset((
    "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
    "allow_other", "default_permissions",
))
SHUTDOWN_DEADLINE_S = 30.0
DEADLINE_S_DEFAULT = 15.0
# Off: with the writeback cache the kernel buffers writes in its page cache
# (sent at writeback, fsync and close), but it also keeps size, mtime and
# ctime of every regular file it has cached and ignores ours, so a file
# another mount grows stays cut at the old size here (close-to-open between
# two mounts fails; tests/fuse/test_real_cluster.py). Measured on the
# LocalBackend, 64 MiB: sequential write 672 -> 453 MB/s, creates 874 -> 618/s,
# random 4 KiB writes 92 -> 164/s. For a mount that is its files' only writer.
WRITEBACK_DEFAULT = False
# The kernel sets the read-ahead window while answering FUSE INIT; ours must
# land after that, so it waits for init and then a moment more.
READ_AHEAD_DELAY_S = 0.3


class UsageError(Exception):
    """One sentence for the user; exit status 2."""


@dataclasses.dataclass(frozen=True)
class MountConfig:
    data_dir: str | None  # exactly one of data_dir and nodes
    nodes: tuple[str, ...] | None
    deadline_s: float
    mountpoint: str
    fuse_options: frozenset[str]
    timeouts: Timeouts
    read_ahead_kb: int
    cache_bytes: int
    chunk_bytes: int
    writeback: bool
    foreground: bool
    log_file: str | None
    debug: bool
    acls: bool = True
    sync_meta: bool = False  # -o sync_meta: no directory write-behind (fusefs/leases.py)
    meta_batch_s: float = 0.1  # -o meta_batch_ms: the longest a change waits in a batch
    tls: TlsFiles | None = None  # None: -o insecure, or --local
    metrics_port: int = 0  # -o metrics_port: /metrics on 127.0.0.1 (fusefs/mountmetrics.py)
    metrics_file: str = ""  # -o metrics_file: the same, rewritten every 10 s


TLS_DEFAULT_DIR = "/etc/chordfs/tls"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise UsageError(message)


def _number(key: str, value: str, kind=int):
    try:
        number = kind(value)
    except ValueError:
        raise UsageError(f"mount option {key} needs a number, not {value!r}") from None
    if number < 0:
        raise UsageError(f"mount option {key} must not be negative")
    return number


def _allow_other_permitted() -> bool:
    if os.geteuid() == 0:
        return True
    try:
        with open("/etc/fuse.conf") as conf:
            return any(line.strip() == "user_allow_other" for line in conf)
    except OSError:
        return False


def parse_options(text: str) -> dict:
    """``-o`` text -> our settings plus the FUSE options to pass on."""
    out = {"fuse": {"default_permissions", "fsname=chordfs", "subtype=chordfs"},
           "attr_timeout": 1.0, "entry_timeout": 1.0, "allow_other": True,
           "read_ahead_kb": READ_AHEAD_KB_DEFAULT, "cache_mib": CACHE_MIB_DEFAULT,
           "chunk_kib": CHUNK_BYTES_DEFAULT >> 10, "deadline": DEADLINE_S_DEFAULT,
           "writeback": WRITEBACK_DEFAULT, "acl": True, "sync_meta": False,
           "meta_batch_ms": int(FLUSH_AGE_S * 1000), "insecure": False,
           "tls_ca": "", "tls_cert": "", "tls_key": "", "nonempty": False,
           "metrics_port": 0, "metrics_file": ""}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key in ("attr_timeout", "entry_timeout", "deadline"):
            out[key] = _number(key, value, float)
        elif key in ("read_ahead_kb", "cache_mib", "chunk_kib", "meta_batch_ms", "metrics_port"):
            out[key] = _number(key, value)
        elif key == "metrics_file":
            if not value:
                raise UsageError("mount option metrics_file needs a file path")
            out[key] = os.path.abspath(value)
        elif key in ("tls_ca", "tls_cert", "tls_key"):
            if not value:
                raise UsageError(f"mount option {key} needs a file path")
            out[key] = value
        elif item == "insecure":
            out["insecure"] = True
        elif item == "nonempty":
            out["nonempty"] = True
        elif key == "noallow_other":
            out["allow_other"] = False
        elif item in ("writeback", "nowriteback"):
            out["writeback"] = item == "writeback"
        elif item in ("acl", "noacl"):
            out["acl"] = item == "acl"
        elif item in ("sync_meta", "nosync_meta"):
            out["sync_meta"] = item == "sync_meta"
        elif item in FUSE_PASSTHROUGH:
            out["fuse"].add(item)
        elif item in IGNORED or key.startswith("x-") or key == "comment":
            pass
        else:
            raise UsageError(f"unknown mount option {item!r}")
    if out["deadline"] <= 0:
        raise UsageError("mount option deadline must be positive")
    if not 1 <= out["meta_batch_ms"] <= 60_000:
        raise UsageError("mount option meta_batch_ms must be between 1 and 60000")
    if out["metrics_port"] > 65535:
        raise UsageError("mount option metrics_port must be a port number (1-65535)")
    if out["chunk_kib"] < 4:
        raise UsageError("mount option chunk_kib must be at least 4")
    if out["allow_other"] and _allow_other_permitted():
        out["fuse"].add("allow_other")
    return out


def parse_args(argv: list[str]) -> MountConfig:
    parser = _Parser(prog=PROG, add_help=True)
    parser.add_argument("--local", metavar="DATA_DIR",
                        help="serve this directory (metadata + chunks) in-process")
    parser.add_argument("places", nargs="*", metavar="[HOST:PORT,...] MOUNTPOINT")
    parser.add_argument("-o", dest="options", action="append", default=[],
                        help="mount options (comma-separated; -o may repeat)")
    parser.add_argument("-f", "--foreground", action="store_true")
    parser.add_argument("--log", dest="log_file", help="log file when detached")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    nodes, mountpoint = _source_and_mountpoint(args.local, args.places)
    if not os.path.isdir(mountpoint):
        raise UsageError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint} is already a mount point")
    if args.local and os.path.exists(args.local) and not os.path.isdir(args.local):
        raise UsageError(f"data directory {args.local} is not a directory")
    opts = parse_options(",".join(args.options))
    tls = None if args.local else _tls_files(opts)
    if not opts["nonempty"] and os.listdir(mountpoint):
        # Mounting over files hides them until the unmount: almost always a
        # wrong path. FUSE 3 dropped its own check.
        raise UsageError(f"mountpoint {mountpoint} is not empty (its files would be hidden); "
                         "-o nonempty mounts over them anyway")
    if tls is not None and tls.identity().read_only:
        # Nothing this mount could send would be accepted; the kernel
        # answers EROFS at once, and without leases it proposes nothing.
        opts["fuse"].add("ro")
        opts["sync_meta"] = True
    if tls is not None and tls.identity().subdir != "/":
        opts["sync_meta"] = True  # fusefs/subtree.py: no lease batches
    return MountConfig(
        data_dir=os.path.abspath(args.local) if args.local else None, nodes=nodes,
        deadline_s=opts["deadline"], mountpoint=os.path.abspath(mountpoint),
        fuse_options=frozenset(opts["fuse"]),
        timeouts=Timeouts(attr_s=opts["attr_timeout"], entry_s=opts["entry_timeout"]),
        read_ahead_kb=opts["read_ahead_kb"], cache_bytes=opts["cache_mib"] << 20,
        chunk_bytes=opts["chunk_kib"] << 10, writeback=opts["writeback"],
        foreground=args.foreground, acls=opts["acl"], sync_meta=opts["sync_meta"],
        meta_batch_s=opts["meta_batch_ms"] / 1000, tls=tls,
        metrics_port=opts["metrics_port"], metrics_file=opts["metrics_file"],
        log_file=args.log_file, debug=args.debug)


def _tls_files(opts: dict) -> TlsFiles | None:
    """The client certificate a cluster mount presents: the tls_* options,
    else the files at TLS_DEFAULT_DIR; None only with -o insecure."""
    given = [k for k in ("tls_ca", "tls_cert", "tls_key") if opts[k]]
    if opts["insecure"]:
        if given:
            raise UsageError(f"mount option insecure contradicts {given[0]}")
        return None
    if given and len(given) < 3:
        missing = next(k for k in ("tls_ca", "tls_cert", "tls_key") if not opts[k])
        raise UsageError(f"mount option {given[0]} needs {missing} too")
    if not given:
        default = TlsFiles(*(os.path.join(TLS_DEFAULT_DIR, n)
                             for n in ("ca.crt", "client.crt", "client.key")))
        if not os.path.exists(default.cert):
            raise UsageError("give -o tls_ca=FILE,tls_cert=FILE,tls_key=FILE (chordfs cert issue "
                             f"--client NAME) or put them in {TLS_DEFAULT_DIR}; -o insecure "
                             "mounts a cluster without TLS")
        files = default
    else:
        files = TlsFiles(opts["tls_ca"], opts["tls_cert"], opts["tls_key"])
    try:
        files.check()
        ident = files.identity()
    except PkiError as e:
        raise UsageError(str(e)) from None
    if ident.kind != "client":
        # A node certificate would pass every role check: keep it on nodes.
        raise UsageError(f"{files.cert} is a {ident.kind} certificate; a mount needs one issued "
                         "with chordfs cert issue --client NAME")
    return files


def _source_and_mountpoint(local: str | None,
                           places: list[str]) -> tuple[tuple[str, ...] | None, str]:
    """(cluster nodes or None for --local, mountpoint) from the positionals."""
    if local is not None:
        if len(places) != 1:
            raise UsageError("with --local DATA_DIR give exactly one mountpoint")
        return None, places[0]
    if len(places) != 2:
        raise UsageError("give the cluster's HOST:PORT[,HOST:PORT...] and a mountpoint,"
                         " or --local DATA_DIR and a mountpoint")
    try:
        return parse_nodes(places[0]), places[1]
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- serving


def _mount_device(mountpoint: str) -> str | None:
    """major:minor of our mount from /proc/self/mountinfo: stat() on the
    mountpoint would be a FUSE request to ourselves."""
    device = None
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            # mountinfo escapes blanks as octal (\040); the last match wins
            # (a mount stacked on the same path hides the earlier ones).
            if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                device = fields[2]
    return device


def _unescape(path: str) -> str:
    return path.encode().decode("unicode_escape").encode("latin-1").decode(
        errors="surrogateescape")


def _set_read_ahead(mountpoint: str, kb: int) -> None:
    device = _mount_device(mountpoint)
    if device is None:
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as knob:
            knob.write(str(kb))
    except OSError as exc:
        log.info(kv("read_ahead_not_set", device=device, reason=exc.strerror))


async def _read_ahead_after_init(ops: ChordOps, cfg: MountConfig) -> None:
    await ops.initialized.wait()
    await trio.sleep(READ_AHEAD_DELAY_S)
    await trio.to_thread.run_sync(_set_read_ahead, cfg.mountpoint, cfg.read_ahead_kb)


async def _watch_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info(kv("unmount_requested", signal=signal.Signals(signum).name))
            pyfuse3.terminate()
            return


@contextlib.asynccontextmanager
async def _open_backend(cfg: MountConfig):
    if cfg.nodes is None:
        backend = await LocalBackend.open(cfg.data_dir, chunk_bytes=cfg.chunk_bytes)
        try:
            yield backend
        finally:
            await backend.aclose()
        return
    ssl_context = cfg.tls.client_context() if cfg.tls else None
    subdir = cfg.tls.identity().subdir if cfg.tls else "/"
    async with open_cluster(ClusterConfig(cfg.nodes, call_deadline_s=cfg.deadline_s,
                                          ssl_context=ssl_context),
                            check=subdir == "/") as backend:
        if subdir != "/":
            # The certificate confines this mount: its root is that directory.
            try:
                root = await find_root(backend, subdir)
            except SubtreeUnavailable as e:
                raise BackendError(str(e)) from None
            yield SubtreeBackend(backend, root)
            return
        if cfg.sync_meta:
            yield backend
            return
        async with trio.open_nursery() as nursery:
            leased = LeasedBackend(backend, nursery, flush_age_s=cfg.meta_batch_s)
            try:
                yield leased
            finally:
                await leased.aclose_leases()
                nursery.cancel_scope.cancel()


async def serve(cfg: MountConfig, ready_fd: int | None = None) -> None:
    async with _open_backend(cfg) as backend:
        await _serve_backend(cfg, backend, ready_fd)


async def _serve_backend(cfg: MountConfig, backend: Backend, ready_fd: int | None) -> None:
    ops = ChordOps(backend, timeouts=cfg.timeouts, cache_bytes=cfg.cache_bytes,
                   writeback=cfg.writeback, acls=cfg.acls)
    metrics = None
    if cfg.metrics_port or cfg.metrics_file:
        from .mountmetrics import MountMetrics
        metrics = MountMetrics(ops, cfg.mountpoint)
        if cfg.metrics_port:
            try:
                metrics.serve_port(cfg.metrics_port)
            except OSError as e:
                raise OSError(f"cannot serve metrics on 127.0.0.1:{cfg.metrics_port}: "
                              f"{e.strerror or e}") from None
    pyfuse3.init(ops, cfg.mountpoint, set(cfg.fuse_options))
    source = cfg.data_dir or ",".join(cfg.nodes or ())
    log.info(kv("mounted", mountpoint=cfg.mountpoint, source=source,
                options=",".join(sorted(cfg.fuse_options)), writeback=cfg.writeback,
                acls=cfg.acls, client=cfg.tls.identity().name if cfg.tls else "-"))
    if cfg.tls is None and cfg.nodes:
        log.warning(kv("mount.insecure", mountpoint=cfg.mountpoint,
                       detail="plain TCP: no certificate proves the nodes are the cluster's"))
    _notify_ready(ready_fd, b"ok")
    try:
        ops.invalidator.start()
        async with trio.open_nursery() as nursery:
            ops.bind(nursery)
            nursery.start_soon(_watch_signals)
            if metrics is not None and cfg.metrics_file:
                nursery.start_soon(metrics.write_file_forever, cfg.metrics_file)
            if cfg.read_ahead_kb:
                nursery.start_soon(_read_ahead_after_init, ops, cfg)
            await pyfuse3.main(max_tasks=64)
            with trio.move_on_after(SHUTDOWN_DEADLINE_S, shield=True):
                await ops.flush_all()
            nursery.cancel_scope.cancel()
    finally:
        ops.invalidator.stop()
        pyfuse3.close(unmount=True)
        log.info(kv("unmounted", mountpoint=cfg.mountpoint))


def _notify_ready(fd: int | None, message: bytes) -> None:
    if fd is not None:
        os.write(fd, message)
        os.close(fd)


def _detach(cfg: MountConfig) -> int | None:
    """Fork; the parent waits for the child's word and returns the exit
    status, the child returns None and carries on as the daemon."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            word = pipe.read()
        if word == b"ok":
            return 0
        print(f"{PROG}: mount failed: {word.decode(errors='replace') or 'see the log'}",
              file=sys.stderr)
        return 1
    os.close(read_fd)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(cfg.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640) \
        if cfg.log_file else null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.environ["CHORDFS_READY_FD"] = str(write_fd)
    return None


def _innermost(exc: Exception) -> Exception:
    """The one real error inside the exception groups nurseries wrap it in."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def mount_main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    ready_fd = None
    if not cfg.foreground:
        status = _detach(cfg)
        if status is not None:
            return status
        ready_fd = int(os.environ.pop("CHORDFS_READY_FD"))
    configure(logging.DEBUG if cfg.debug else logging.INFO)
    try:
        trio.run(serve, cfg, ready_fd)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback
        exc = _innermost(exc)
        log.exception(kv("mount_failed", mountpoint=cfg.mountpoint))
        try:
            _notify_ready(ready_fd, str(exc).encode()[:400])
        except OSError:
            pass
        return 1
    return 0


# ---------------------------------------------------------------- drop-cache

FSTYPE = "fuse.chordfs"  # fuse.<subtype>, as the kernel lists our mounts


def _fstype(mountpoint: str) -> str | None:
    """The filesystem type mounted at ``mountpoint`` (the last mount there
    wins), or None; read from the mount table, since a stat of a mount whose
    process died fails with ENOTCONN."""
    fstype = None
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == mountpoint:
                fstype = fields[fields.index("-") + 1]
    return fstype


def drop_cache_main(mountpoint: str) -> int:
    """``chordfs drop-cache MOUNTPOINT``: empty that mount's chunk and
    attribute caches and the kernel's cached pages and attributes of its
    files (see ``fusefs.ops``), so the next read comes from the cluster.
    Silent on success; one sentence and exit 1 otherwise."""
    path = os.path.realpath(mountpoint)
    fstype = _fstype(path)
    problem = None
    if fstype is None:
        problem = (f"{mountpoint} is not a mount point" if os.path.lexists(path)
                   else f"{mountpoint} does not exist")
    elif fstype != FSTYPE:
        problem = f"{mountpoint} is not a chordfs mount (it is {fstype})"
    else:
        try:
            os.setxattr(path, DROP_CACHE_XATTR, b"1")
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                problem = (f"permission denied: only root or the user who mounted "
                           f"{mountpoint} may drop its caches")
            elif exc.errno == errno.ENOTCONN:
                problem = f"the chordfs mount at {mountpoint} is not connected (its process ended)"
            elif exc.errno == errno.EOPNOTSUPP:
                problem = f"the chordfs mount at {mountpoint} is too old to drop its caches"
            else:
                problem = f"cannot drop the caches of {mountpoint}: {exc.strerror}"
    if problem:
        print(f"chordfs: {problem}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- mount(8)


def helper_main(argv: list[str] | None = None) -> int:
    """``mount.chordfs SOURCE DIR [-sfnv] [-o OPTIONS]`` as mount(8) runs it.
    SOURCE is the cluster's ``host:port[,host:port...]``, or ``local:/path``
    for a local data directory."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _Parser(prog="mount.chordfs")
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[])
    for flag in ("-s", "-f", "-n", "-v"):
        parser.add_argument(flag, action="store_true")
    try:
        args, _ = parser.parse_known_args(argv)
        if args.source.startswith("local:"):
            mount_argv = ["--local", args.source[len("local:"):], args.mountpoint]
        else:
            parse_nodes(args.source)
            mount_argv = [args.source, args.mountpoint]
    except (UsageError, ValueError) as exc:
        print(f"mount.chordfs: {exc}", file=sys.stderr)
        return 2
    if args.f:
        return 0
    return mount_main(mount_argv + ["-o", ",".join(args.options)])


if __name__ == "__main__":
    sys.exit(mount_main())
