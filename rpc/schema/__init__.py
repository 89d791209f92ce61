"""Loads the Cap'n Proto schemas: the standard RPC protocol messages shipped
inside pycapnp (``rpc.capnp``, ``rpc-twoparty.capnp``) and chordfs's own
interfaces in this folder.  Every module that needs a schema goes through
``load`` so each file is parsed once per process."""

import functools
import os

import capnp

_HERE = os.path.dirname(os.path.abspath(__file__))
_CAPNP_DIR = os.path.dirname(capnp.__file__)
# `/capnp/c++.capnp` style imports resolve against the folder holding capnp/.
_IMPORTS = [os.path.dirname(_CAPNP_DIR), _HERE]


@functools.cache
def load(name: str):
    """Return the pycapnp module for ``name`` ("rpc", "rpc-twoparty", or a
    file in rpc/schema without its .capnp suffix)."""
    local = os.path.join(_HERE, name + ".capnp")
    path = local if os.path.exists(local) else os.path.join(_CAPNP_DIR, name + ".capnp")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no Cap'n Proto schema named {name!r}")
    return capnp.load(path, imports=_IMPORTS)


def rpc_protocol():
    """The standard Cap'n Proto RPC message schema (``rpc.capnp``)."""
    return load("rpc")


def path_of(name: str) -> str:
    """Filesystem path of a chordfs schema, for peers that load it themselves."""
    return os.path.join(_HERE, name + ".capnp")
