"""A mount's own Prometheus metrics (``-o metrics_port=N`` and/or
``-o metrics_file=PATH``): how long each FUSE operation takes and which
fail with which errno, and how well the caches work (block cache hits,
misses and bytes, attribute and xattr cache hits, read-lease hits).

Nothing is measured unless one of the options is given: instrumenting
wraps the operation methods of the ChordOps instance (pyfuse3 looks them
up on the instance at each request), and the cache figures are read from
the caches' own counters when scraped, so the request path pays one clock
read and one histogram observation per operation and no more.

``metrics_port`` serves /metrics on 127.0.0.1 from prometheus-client's own
server thread (a scrape never waits for the trio loop); ``metrics_file``
is rewritten every ``FILE_EVERY_S`` (temp file + rename, for node_exporter's
textfile collector), and once more at unmount."""

from __future__ import annotations

import errno
import functools
import logging
import time

import pyfuse3
import trio

from rpc.logfmt import kv

log = logging.getLogger("chordfs.mount.metrics")

FILE_EVERY_S = 10.0
OPS = ("lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "symlink", "link",
       "unlink", "rmdir", "rename", "opendir", "readdir", "releasedir", "fsyncdir", "statfs",
       "getxattr", "setxattr", "listxattr", "removexattr", "open", "create", "read", "write",
       "flush", "fsync", "release", "access", "forget")
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MountMetrics:
    def __init__(self, ops, mountpoint: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram
        self.ops, self.mountpoint = ops, mountpoint
        self.registry = CollectorRegistry(auto_describe=True)
        self.seconds = Histogram("chordfs_mount_op_seconds",
                                 "Time to answer a FUSE request, by operation", ["op"],
                                 buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter("chordfs_mount_op_errors",
                              "FUSE requests answered with an error, by operation and errno",
                              ["op", "errno"], registry=self.registry)
        self.registry.register(_CacheCollector(ops))
        self._instrument()

    def _instrument(self) -> None:
        for name in OPS:
            method = getattr(self.ops, name, None)
            if method is None:
                continue
            setattr(self.ops, name, self._timed(name, method))

    def _timed(self, name: str, method):
        seconds = self.seconds.labels(name)
        errors = self.errors

        @functools.wraps(method)
        async def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            except pyfuse3.FUSEError as e:
                errors.labels(name, errno.errorcode.get(e.errno, str(e.errno))).inc()
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
        return timed

    def render(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)

    def serve_port(self, port: int, host: str = "127.0.0.1") -> None:
        from prometheus_client import start_http_server
        start_http_server(port, addr=host, registry=self.registry)
        log.info(kv("mount.metrics_port", mountpoint=self.mountpoint, addr=f"{host}:{port}"))

    def write_file(self, path: str) -> None:
        from prometheus_client import write_to_textfile
        write_to_textfile(path, self.registry)  # temp file + rename

    async def write_file_forever(self, path: str) -> None:
        try:
            while True:
                await self._write_file_logged(path)
                await trio.sleep(FILE_EVERY_S)
        finally:
            with trio.CancelScope(shield=True):
                await self._write_file_logged(path)

    async def _write_file_logged(self, path: str) -> None:
        try:
            await trio.to_thread.run_sync(self.write_file, path)
        except OSError as e:
            log.warning(kv("mount.metrics_file_failed", mountpoint=self.mountpoint, path=path,
                           error=str(e)))


class _CacheCollector:
    """The caches' counters, read at scrape time."""

    def __init__(self, ops) -> None:
        self.ops = ops

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        ops = self.ops
        cache = ops.cache
        hits = CounterMetricFamily("chordfs_mount_cache_hits",
                                   "Requests a mount cache answered", labels=["cache"])
        hits.add_metric(["blocks"], cache.hits)
        hits.add_metric(["attrs"], ops.dir_attrs.hits)
        hits.add_metric(["xattrs"], ops.xattrs.hits)
        reads = getattr(getattr(ops.backend, "reads", None), "stats", None)
        if reads is not None:
            hits.add_metric(["read_leases"], reads.get("hits", 0))
        yield hits
        misses = CounterMetricFamily("chordfs_mount_cache_misses",
                                     "Requests a mount cache could not answer", labels=["cache"])
        misses.add_metric(["blocks"], cache.misses)
        misses.add_metric(["xattrs"], ops.xattrs.misses)
        yield misses
        used = GaugeMetricFamily("chordfs_mount_block_cache_bytes",
                                 "Bytes in the mount's block cache", labels=["kind"])
        used.add_metric(["used"], cache.used_bytes)
        used.add_metric(["capacity"], cache.capacity_bytes)
        yield used
        yield GaugeMetricFamily("chordfs_mount_open_files", "Files open through the mount",
                                value=len(getattr(ops, "files", {})))
