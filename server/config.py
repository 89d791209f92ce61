"""Node configuration: one frozen dataclass, loaded from TOML plus CLI flags.

Every setting is a flat top-level TOML key whose name ends in its unit
(``election_timeout_ms``, ``chunk_bytes_max``). Loading is strict: an unknown
key, a wrong type or an out-of-range value stops the node with a ConfigError
whose text is one plain sentence naming the key and where it came from, e.g.
``unknown config key 'listen_prot' in node.toml (did you mean 'listen_port'?)``.
A typo that silently fell back to a default would be found much later, in
production, so nothing is ignored.

Precedence: dataclass defaults < TOML file < command-line flags
(``--listen-port 7071``; flag names are the keys with dashes).

Invariants of a NodeConfig (checked in __post_init__, so one built directly in
a test is checked too): every field within its declared bounds; seeds are valid
host:port strings; write_quorum_min <= replication_factor; heartbeat and
election timeout are whole numbers of ticks with election >= 2 heartbeats;
frame_bytes_max leaves room for a chunk plus framing.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

MIB = 1024 * 1024
# Room for the Cap'n Proto envelope around a full chunk in one frame.
FRAME_OVERHEAD_BYTES = 64 * 1024
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """A configuration problem; str() is one sentence fit for an operator."""


def _setting(default: Any, lo: float | None = None, hi: float | None = None,
             doc: str = "", choices: Sequence[str] = ()) -> Any:
    return dataclasses.field(
        default=default, metadata={"lo": lo, "hi": hi, "doc": doc, "choices": tuple(choices)}
    )


@dataclasses.dataclass(frozen=True)
class NodeConfig:
    data_dir: str = _setting("", doc="directory for chunks, Raft log and state (required)")
    node_name: str = _setting("", doc="stable ring name; defaults to listen_host:listen_port")
    listen_host: str = _setting("127.0.0.1", doc="address to bind")
    listen_port: int = _setting(7070, 1, 65535, doc="TCP port for every RPC (clients and nodes)")
    seeds: tuple[str, ...] = _setting((), doc="host:port of nodes to join through")
    virtual_ids_per_node: int = _setting(256, 1, 256, doc="ring positions per node (clients assume 256)")
    successors_max: int = _setting(8, 2, 64, doc="successor list length (> replication_factor)")
    replication_factor: int = _setting(3, 1, 16, doc="copies of each block, on the block's "
                                       "owner and its next successors (cluster-wide: the "
                                       "founder's value is committed)")
    write_quorum_min: int = _setting(2, 1, 16, doc="fsynced acks a chunk write needs at least")
    voters_max: int = _setting(5, 1, 9, doc="Raft voters; further nodes are learners")
    chunk_bytes_max: int = _setting(4 * MIB, 4096, 64 * MIB, doc="largest block a client may "
                                    "store (cluster-wide: the founder's value is committed)")
    disk_reserve_bytes: int = _setting(1024 * MIB, 0, 1 << 50, doc="free space never written into")
    store_threads_max: int = _setting(8, 1, 256, doc="worker threads for disk calls")
    tick_ms: int = _setting(50, 1, 1000, doc="Raft timer tick; heartbeat and election "
                            "timeout are whole numbers of ticks (each tick wakes the node: "
                            "a shorter one costs idle CPU)")
    ring_tick_ms: int = _setting(50, 1, 1000, doc="ring timer tick: SWIM probes every 20 ticks, "
                                 "a suspect is declared dead after 100")
    heartbeat_ms: int = _setting(100, 1, 60_000, doc="how often the Raft leader sends "
                                 "heartbeats")
    election_timeout_ms: int = _setting(1000, 2, 600_000, doc="silence from the leader "
                                        "after which a follower stands for election "
                                        "(randomised up to twice this)")
    metadata_reads: str = _setting(
        "lease", choices=("lease", "read_index"),
        doc="how the Raft leader confirms a linearizable read: 'lease' answers at once "
            "while a heartbeat quorum is fresh (assumes clocks that tick at nearly the same "
            "rate; a stalled leader stops using it), 'read_index' asks a quorum every time")
    rpc_deadline_ms: int = _setting(5000, 1, 600_000, doc="deadline of one node-to-node call "
                                    "(repair, GC, census, forwarding)")
    frame_bytes_max: int = _setting(8 * MIB, 64 * 1024, 256 * MIB, doc="largest RPC message "
                                    "accepted; a bigger one closes its connection")
    calls_in_flight_max: int = _setting(64, 1, 65536, doc="per connection")
    repair_bytes_per_s: int = _setting(64 * MIB, 1, 1 << 40, doc="pace of repair copies "
                                       "per node")
    scrub_bytes_per_s: int = _setting(16 * MIB, 1, 1 << 40, doc="pace of scrub reads per "
                                      "node (chordfs scrub --rate overrides it once)")
    scrub_interval_s: float = _setting(7 * 86400.0, 1.0, 365 * 86400.0, doc="a full scrub "
                                       "pass this often, start to start")
    metrics_port: int = _setting(0, 0, 65535, doc="HTTP port on listen_host: Prometheus /metrics, "
                                 "the status page at /, /report.json; 0 disables")
    log_level: str = _setting("info", choices=_LOG_LEVELS, doc="least severe log lines "
                              "written (to stderr: the journal under systemd)")
    tls_ca: str = _setting("", doc="the cluster CA's certificate (chordfs ca init): every peer "
                           "must present a certificate it signed")
    tls_cert: str = _setting("", doc="this node's certificate (chordfs cert issue --node NAME; "
                             "NAME must equal node_name)")
    tls_key: str = _setting("", doc="this node's private key")
    insecure: bool = _setting(False, doc="plain TCP, no certificates: anyone who reaches the port "
                              "controls the cluster (tests and TLS-cost benchmarks only)")
    connections_per_address_max: int = _setting(32, 1, 65536, doc="open connections one remote "
                                                 "address may hold; more are closed at once")

    def __post_init__(self) -> None:
        for key in FIELDS:
            object.__setattr__(self, key, _coerce(key, getattr(self, key), "NodeConfig"))
        _check(self, lambda key: "NodeConfig")
        if not self.node_name:
            # The name fixes the ring position; it must not depend on which
            # interface a wildcard bind happens to use.
            object.__setattr__(self, "node_name", f"{self.listen_host}:{self.listen_port}")

    @property
    def listen_addr(self) -> str:
        return format_host_port(self.listen_host, self.listen_port)

    @property
    def heartbeat_ticks(self) -> int:
        return self.heartbeat_ms // self.tick_ms

    @property
    def election_timeout_ticks(self) -> int:
        return self.election_timeout_ms // self.tick_ms


FIELDS = {f.name: f for f in dataclasses.fields(NodeConfig)}
_HINTS = typing.get_type_hints(NodeConfig)


# ---- host:port -----------------------------------------------------------------

def parse_host(text: str) -> str:
    """Check a bare host (IPv4, IPv6 or DNS name); ValueError says why not."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not all(_LABEL.match(p) for p in name.split(".")):
        raise ValueError(f"{text!r} is not an IP address or host name")
    return text


def parse_host_port(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6addr]:port`` for IPv6); ValueError says why not."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [ipv6]:port")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r} is not host:port")
        if ":" in host:
            raise ValueError(f"{text!r} has an IPv6 address without [brackets]")
        parse_host(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has port {port_text!r}, not a number from 1 to 65535")
    return host, int(port_text)


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---- checks --------------------------------------------------------------------

def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", tuple: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _coerce(key: str, value: Any, where: str) -> Any:
    """Type-check one TOML value, converting lists to tuples and ints to
    floats where a float is declared."""
    hint = _HINTS[key]
    expected = {int: "an integer", float: "a number", str: "a string",
                bool: "true or false"}.get(hint, "a list of strings")
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        shown = f" ({value!r})" if plain else ""
        raise ConfigError(f"config key '{key}' in {where} must be {expected}, not {_type_name(value)}{shown}")
    return value


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_bounds(cfg: NodeConfig, key: str, where: str) -> None:
    meta, value = FIELDS[key].metadata, getattr(cfg, key)
    lo, hi, choices = meta["lo"], meta["hi"], meta["choices"]
    if lo is not None and not lo <= value <= hi:
        raise ConfigError(
            f"config key '{key}' in {where} must be between {_num(lo)} and {_num(hi)}, got {_num(value)}"
        )
    if choices and value not in choices:
        raise ConfigError(f"config key '{key}' in {where} must be one of {', '.join(choices)}, got {value!r}")


def _check(cfg: NodeConfig, origin: Callable[[str], str]) -> None:
    """All invariants of a NodeConfig; ``origin(key)`` names where a key's
    value came from, for the error sentence."""
    for key in FIELDS:
        _coerce(key, getattr(cfg, key), origin(key))
        _check_bounds(cfg, key, origin(key))
    if not cfg.data_dir:
        raise ConfigError(f"missing required config key 'data_dir' in {origin('data_dir')}")
    _check_addresses(cfg, origin)
    _check_relations(cfg, origin)


def _check_addresses(cfg: NodeConfig, origin: Callable[[str], str]) -> None:
    try:
        parse_host(cfg.listen_host)
    except ValueError as exc:
        raise ConfigError(f"config key 'listen_host' in {origin('listen_host')}: {exc}") from None
    for seed in cfg.seeds:
        try:
            parse_host_port(seed)
        except ValueError as exc:
            raise ConfigError(f"config key 'seeds' in {origin('seeds')}: {exc}") from None
    if len(cfg.node_name) > 255 or not cfg.node_name.isprintable():
        raise ConfigError(
            f"config key 'node_name' in {origin('node_name')} must be at most 255 printable characters"
        )
    if not cfg.node_name and cfg.listen_host in ("0.0.0.0", "::"):
        raise ConfigError(
            f"config key 'node_name' must be set in {origin('listen_host')} when "
            f"listen_host is the wildcard address {cfg.listen_host!r}"
        )


def _check_relations(cfg: NodeConfig, origin: Callable[[str], str]) -> None:
    def other(key: str, value: object = None) -> str:
        shown = getattr(cfg, key) if value is None else value
        return f"{key} ({shown}, from {origin(key)})"
    frame_min = cfg.chunk_bytes_max + FRAME_OVERHEAD_BYTES
    rules = [
        ("write_quorum_min", cfg.write_quorum_min <= cfg.replication_factor,
         f"at most {other('replication_factor')}"),
        ("successors_max", cfg.successors_max > cfg.replication_factor,
         f"greater than {other('replication_factor')}"),
        ("heartbeat_ms", cfg.heartbeat_ms % cfg.tick_ms == 0,
         f"a multiple of {other('tick_ms')}"),
        ("election_timeout_ms", cfg.election_timeout_ms % cfg.tick_ms == 0,
         f"a multiple of {other('tick_ms')}"),
        ("election_timeout_ms", cfg.election_timeout_ms >= 2 * cfg.heartbeat_ms,
         f"at least twice {other('heartbeat_ms')}"),
        ("frame_bytes_max", cfg.frame_bytes_max >= frame_min,
         f"at least {FRAME_OVERHEAD_BYTES} more than {other('chunk_bytes_max')}"),
    ]
    tls = [k for k in ("tls_ca", "tls_cert", "tls_key") if getattr(cfg, k)]
    if tls and len(tls) < 3:
        missing = next(k for k in ("tls_ca", "tls_cert", "tls_key") if not getattr(cfg, k))
        raise ConfigError(f"config key '{missing}' is not set, but {other(tls[0])} is: "
                          "TLS needs tls_ca, tls_cert and tls_key")
    if tls and cfg.insecure:
        raise ConfigError(f"config key 'insecure' in {origin('insecure')} must be false when "
                          "tls_ca, tls_cert and tls_key are set")
    for key, ok, requirement in rules:
        if not ok:
            raise ConfigError(
                f"config key '{key}' in {origin(key)} must be {requirement}, got {getattr(cfg, key)}"
            )


# ---- loading ---------------------------------------------------------------------

def _unknown_key(key: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, FIELDS, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def build_config(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> NodeConfig:
    """Merge ``(source name, values)`` layers, later ones winning, and check
    the result. Values must already have their TOML types."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for where, layer in layers:
        for key, value in layer.items():
            if key not in FIELDS:
                raise _unknown_key(key, where)
            values[key] = _coerce(key, value, where)
            origins[key] = where
    last_source = layers[-1][0] if layers else "the defaults"

    def origin(key: str) -> str:
        if key == "data_dir":  # required: blame the last place it could have been set
            return origins.get(key, last_source)
        return origins.get(key, "the defaults")
    draft = NodeConfig.__new__(NodeConfig)
    for key, f in FIELDS.items():
        object.__setattr__(draft, key, values.get(key, f.default))
    # Check with per-key sources first, so the sentence names the right file
    # or flag; the constructor's own check then passes.
    _check(draft, origin)
    return NodeConfig(**values)


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    where = os.path.basename(os.fspath(path))
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


def load_config(path: str | os.PathLike[str] | None = None,
                overrides: Mapping[str, Any] | None = None,
                overrides_source: str = "command-line flags") -> NodeConfig:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if path is not None:
        layers.append((os.path.basename(os.fspath(path)), read_toml(path)))
    if overrides:
        layers.append((overrides_source, overrides))
    return build_config(layers)


# ---- command line ------------------------------------------------------------------

def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config PATH`` plus one ``--key-name VALUE`` override per setting."""
    parser.add_argument("--config", metavar="PATH", help="node TOML file")
    for key, f in FIELDS.items():
        help_text = f.metadata["doc"] or None
        if _HINTS[key] is bool:  # --insecure alone means true
            parser.add_argument(_flag(key), dest=f"cfg_{key}", metavar="BOOL", nargs="?",
                                const="true", help=help_text)
            continue
        if _HINTS[key] not in (int, float, str):
            help_text = (help_text or "") + " (comma-separated)"
        parser.add_argument(_flag(key), dest=f"cfg_{key}", metavar="VALUE", help=help_text)


def _parse_flag_value(key: str, text: str) -> Any:
    hint = _HINTS[key]
    if hint is bool:
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"flag {_flag(key)} must be true or false, got {text!r}")
    try:
        if hint is int:
            return int(text.replace("_", ""))
        if hint is float:
            return float(text)
    except ValueError:
        kind = "an integer" if hint is int else "a number"
        raise ConfigError(f"flag {_flag(key)} must be {kind}, got {text!r}") from None
    if hint is str:
        return text
    return tuple(part.strip() for part in text.split(",") if part.strip())


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    """The NodeConfig for parsed arguments of a parser set up with
    add_config_arguments."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if args.config is not None:
        layers.append((os.path.basename(args.config), read_toml(args.config)))
    for key in FIELDS:
        text = getattr(args, f"cfg_{key}", None)
        if text is not None:
            layers.append((f"flag {_flag(key)}", {key: _parse_flag_value(key, text)}))
    return build_config(layers)


def _shown(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        return f"{value // MIB} MiB" if value < (1 << 40) else f"2^{value.bit_length() - 1}"
    return f"{value:_}" if isinstance(value, int) and value >= 100_000 else str(value)


def reference_markdown() -> str:
    """The README's configuration reference, generated from the dataclass
    (a test keeps the README's copy equal to this)."""
    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for key, f in FIELDS.items():
        hint = _HINTS[key]
        kind = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(
            hint, "list of host:port")
        default = f.default
        shown = ("(empty)" if default in ("", ()) else
                 ("true" if default else "false") if isinstance(default, bool) else
                 _shown(default) if isinstance(default, (int, float)) else str(default))
        lo, hi, choices = f.metadata["lo"], f.metadata["hi"], f.metadata["choices"]
        allowed = (", ".join(choices) if choices else
                   f"{_shown(lo)} to {_shown(hi)}" if lo is not None and hi is not None else "")
        rows.append(f"| `{key}` | {kind} | {shown} | {allowed} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


def example_toml() -> str:
    """A commented node.toml with every key at its default."""
    lines = ["# chordfs node configuration; every key is optional except data_dir."]
    for key, f in FIELDS.items():
        # The paths of `make install` and the unit chordfs-node@n1 (its
        # StateDirectory is /var/lib/chordfs/n1).
        value = {"data_dir": "/var/lib/chordfs/n1", "tls_ca": "/etc/chordfs/tls/ca.crt",
                 "tls_cert": "/etc/chordfs/tls/n1.crt",
                 "tls_key": "/etc/chordfs/tls/n1.key"}.get(key, f.default)
        if isinstance(value, tuple):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        elif isinstance(value, str):
            rendered = f'"{value}"'
        elif isinstance(value, bool):
            rendered = "true" if value else "false"
        else:
            rendered = repr(value)
        doc = f"  # {f.metadata['doc']}" if f.metadata["doc"] else ""
        lines.append(f"{key} = {rendered}{doc}")
    return "\n".join(lines) + "\n"

