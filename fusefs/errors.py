"""The one place where failures become FUSE errno replies.

Three kinds of failure reach a request handler:
- a user error in a reply (``err`` != 0): ``check`` raises it as FUSEError;
- a backend failure (``BackendError``: no quorum, chunk missing or corrupt)
  or a deadline passing: EIO, logged once with the operation;
- anything else is a bug: logged with its traceback, answered EIO. pyfuse3
  ends the whole mount if a handler raises anything but FUSEError, so no
  exception may escape ``fuse_op``.

Every handler runs under a deadline (``OP_DEADLINE_S``): a cluster without
quorum answers EIO after it instead of hanging every process that touches
the mount.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from rpc import trace
from rpc.logfmt import kv

from .backend import BackendError, ChunkCorrupt, ChunkMissing, Refused, Unavailable

log = logging.getLogger("chordfs.fuse")

OP_DEADLINE_S = 60.0

T = TypeVar("T")


def check(reply: Any) -> Any:
    """Raise the reply's errno as FUSEError; return the reply otherwise."""
    err = reply.err
    if err:
        raise pyfuse3.FUSEError(err)
    return reply


def errno_of(exc: BaseException, op: str) -> int:
    """Map one exception to an errno, logging what deserves a log line."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, trio.TooSlowError):
        log.warning(kv("op_deadline", op=op, deadline_s=OP_DEADLINE_S))
        return errno.EIO
    if isinstance(exc, Refused):
        log.warning(kv("refused", op=op, reason=str(exc)))
        return errno.EACCES
    if isinstance(exc, Unavailable):
        log.warning(kv("backend_unavailable", op=op, reason=str(exc)))
        return errno.EIO
    if isinstance(exc, (ChunkMissing, ChunkCorrupt)):
        log.error(kv("chunk_unreadable", op=op, kind=type(exc).__name__, reason=str(exc)))
        return errno.EIO
    if isinstance(exc, BackendError):
        log.error(kv("backend_error", op=op, kind=type(exc).__name__, reason=str(exc)))
        return errno.EIO
    log.error(kv("handler_bug", op=op, kind=type(exc).__name__), exc_info=exc)
    return errno.EIO


def fuse_op(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Wrap a pyfuse3 handler: deadline, and every exception → FUSEError."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        if trace.ENABLED:
            trace.mark(f"fuse.{op}")
        try:
            # A bare CancelScope, not trio.fail_after: that one is a generator
            # context manager and cost 8% of the mount's CPU under random
            # 4 KiB writes (every write also brings a getxattr).
            with trio.CancelScope(deadline=trio.current_time() + OP_DEADLINE_S):
                return await fn(*args, **kwargs)
            raise trio.TooSlowError  # only reached when the deadline cancelled fn
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:  # noqa: BLE001 - see module docstring
            raise pyfuse3.FUSEError(errno_of(exc, op)) from None
        finally:
            if trace.ENABLED:
                trace.mark(f"fuse.{op}.done")

    return wrapper


def fuse_op_quiet(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """For handlers with no reply (forget): errors are only logged."""
    op = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            with trio.CancelScope(deadline=trio.current_time() + OP_DEADLINE_S):
                await fn(*args, **kwargs)
                return
            raise trio.TooSlowError
        except Exception as exc:  # noqa: BLE001 - never end the mount
            errno_of(exc, op)

    return wrapper
