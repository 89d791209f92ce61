"""A throwaway cluster CA for tests that run real node and mount processes:
made once per test process (under a temporary directory removed at exit),
with certificates issued on demand, so integration tests go through mutual
TLS as a deployment does.  Tests that must speak plain TCP say so with
``--insecure`` / ``-o insecure``."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import ssl
import tempfile

from server import pki

_issued: dict[tuple, tuple[str, str]] = {}


@functools.cache
def ca_dir() -> str:
    base = tempfile.mkdtemp(prefix="chordfs-test-ca-")
    atexit.register(shutil.rmtree, base, ignore_errors=True)
    pki.init_ca(os.path.join(base, "ca"), days=30)
    return os.path.join(base, "ca")


def ca_cert() -> str:
    return os.path.join(ca_dir(), pki.CA_CERT)


def _issue(kind: str, name: str, read_only: bool = False, subdir: str | None = None) -> tuple[str, str]:
    key = (kind, name, read_only, subdir)
    if key not in _issued:
        out = os.path.join(ca_dir(), "ro" if read_only else "sub" if subdir else kind)
        os.makedirs(out, exist_ok=True)
        args = {"node": name} if kind == "node" else {"client": name, "read_only": read_only,
                                                      "subdir": subdir}
        _issued[key] = pki.issue(ca_dir(), out, days=29, **args)
    return _issued[key]


def node_flags(name: str) -> list[str]:
    """``chordfs node`` flags for node ``name`` (its node_name, host:port)."""
    cert, key = _issue("node", name)
    return ["--tls-ca", ca_cert(), "--tls-cert", cert, "--tls-key", key]


def mount_options(name: str = "test-mount", read_only: bool = False,
                  subdir: str | None = None) -> str:
    cert, key = _issue("client", name, read_only, subdir)
    return f"tls_ca={ca_cert()},tls_cert={cert},tls_key={key}"


def cli_flags(node: bool = False) -> list[str]:
    """Flags for ``chordfs ping/status/members``: an admin node certificate
    for membership changes, a client one otherwise."""
    cert, key = _issue("node", "test-admin") if node else _issue("client", "test-cli")
    return ["--tls-ca", ca_cert(), "--tls-cert", cert, "--tls-key", key]


def client_context(node: bool = False) -> ssl.SSLContext:
    """What a test's own RPC calls to real nodes dial with."""
    cert, key = _issue("node", "test-admin") if node else _issue("client", "test-cli")
    return pki.client_context(ca_cert(), cert, key)
