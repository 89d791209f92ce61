"""Node configuration: TOML + flags, strict rejection in one sentence."""

from __future__ import annotations

import argparse

import pytest

from server.config import (
    ConfigError,
    NodeConfig,
    add_config_arguments,
    config_from_args,
    example_toml,
    load_config,
    parse_host_port,
)


def write(tmp_path, text: str, name: str = "node.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def reject(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, 'data_dir = "/srv/n1"\n' + text))
    message = str(info.value)
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    return message


def test_defaults_and_toml_values(tmp_path):
    cfg = load_config(write(tmp_path, """
        data_dir = "/srv/n1"
        listen_port = 7071
        seeds = ["n2:7070", "10.0.0.3:7070", "[fe80::1]:7070"]
        scrub_interval_s = 600
    """))
    assert cfg.data_dir == "/srv/n1" and cfg.listen_port == 7071
    assert cfg.seeds == ("n2:7070", "10.0.0.3:7070", "[fe80::1]:7070")
    assert cfg.scrub_interval_s == 600.0 and isinstance(cfg.scrub_interval_s, float)
    assert cfg.node_name == "127.0.0.1:7071"
    assert cfg.replication_factor == 3 and cfg.chunk_bytes_max == 4 << 20
    assert (cfg.heartbeat_ticks, cfg.election_timeout_ticks) == (2, 20)


def test_config_is_frozen_and_hashable(tmp_path):
    cfg = NodeConfig(data_dir="/srv/n1", seeds=["a:1"])
    assert cfg.seeds == ("a:1",)
    with pytest.raises(AttributeError):
        cfg.listen_port = 1  # type: ignore[misc]
    hash(cfg)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    assert reject(tmp_path, "listen_prot = 7070") == (
        "unknown config key 'listen_prot' in node.toml (did you mean 'listen_port'?)"
    )
    assert reject(tmp_path, "[raft]\nheartbeat_ms = 5") == "unknown config key 'raft' in node.toml"


@pytest.mark.parametrize("line, expected", [
    ('listen_port = "7070"',
     "config key 'listen_port' in node.toml must be an integer, not a string ('7070')"),
    ("listen_port = true", "config key 'listen_port' in node.toml must be an integer, not a boolean"),
    ("seeds = \"n2:7070\"", "config key 'seeds' in node.toml must be a list of strings, not a string ('n2:7070')"),
    ("scrub_interval_s = \"1h\"", "config key 'scrub_interval_s' in node.toml must be a number, not a string ('1h')"),
    ("listen_port = 70000", "config key 'listen_port' in node.toml must be between 1 and 65535, got 70000"),
    ("replication_factor = 0", "config key 'replication_factor' in node.toml must be between 1 and 16, got 0"),
    ('log_level = "loud"', "config key 'log_level' in node.toml must be one of debug, info, warning, error, got 'loud'"),
    ("write_quorum_min = 5",
     "config key 'write_quorum_min' in node.toml must be at most replication_factor (3, from the defaults), got 5"),
    ("heartbeat_ms = 105", "config key 'heartbeat_ms' in node.toml must be a multiple of tick_ms (50, from the defaults), got 105"),
    ("election_timeout_ms = 150",
     "config key 'election_timeout_ms' in node.toml must be at least twice heartbeat_ms (100, from the defaults), got 150"),
    ("frame_bytes_max = 4194304",
     "config key 'frame_bytes_max' in node.toml must be at least 65536 more than chunk_bytes_max (4194304, from the defaults), got 4194304"),
])
def test_bad_values_are_rejected_in_one_sentence(tmp_path, line, expected):
    assert reject(tmp_path, line) == expected


@pytest.mark.parametrize("seed, reason", [
    ("n2", "is not host:port"),
    ("n2:0", "not a number from 1 to 65535"),
    ("n2:70a", "not a number from 1 to 65535"),
    ("bad_host:7070", "is not an IP address or host name"),
    ("::1:7070", "without [brackets]"),
    ("[::1]7070", "is not [ipv6]:port"),
])
def test_bad_seeds_are_rejected(tmp_path, seed, reason):
    message = reject(tmp_path, f'seeds = ["n1:7070", "{seed}"]')
    assert message.startswith("config key 'seeds' in node.toml: ") and reason in message


def test_host_port_parsing():
    assert parse_host_port("n1.example.com:7070") == ("n1.example.com", 7070)
    assert parse_host_port("[::1]:9") == ("::1", 9)
    assert parse_host_port("10.1.2.3:65535") == ("10.1.2.3", 65535)


def test_missing_data_dir_and_wildcard_without_name(tmp_path):
    with pytest.raises(ConfigError, match="^missing required config key 'data_dir' in node.toml$"):
        load_config(write(tmp_path, "listen_port = 7071"))
    with pytest.raises(ConfigError, match="node_name' must be set"):
        load_config(write(tmp_path, 'data_dir = "/d"\nlisten_host = "0.0.0.0"'))
    cfg = load_config(write(tmp_path, 'data_dir = "/d"\nlisten_host = "::"\nnode_name = "n1"'))
    assert cfg.listen_addr == "[::]:7070"


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="^node.toml is not valid TOML: "):
        load_config(write(tmp_path, "listen_port = = 1"))
    with pytest.raises(ConfigError, match="^cannot read config file .*nope.toml"):
        load_config(tmp_path / "nope.toml")


def test_flags_override_toml_and_name_themselves_in_errors(tmp_path):
    path = write(tmp_path, 'data_dir = "/srv/n1"\nlisten_port = 7071\n')
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(
        ["--config", str(path), "--listen-port", "7072", "--seeds", "n2:7070, n3:7070",
         "--scrub-interval-s", "60"])
    cfg = config_from_args(args)
    assert (cfg.listen_port, cfg.seeds, cfg.scrub_interval_s) == (7072, ("n2:7070", "n3:7070"), 60.0)
    with pytest.raises(ConfigError) as info:
        config_from_args(parser.parse_args(["--config", str(path), "--listen-port", "x"]))
    assert str(info.value) == "flag --listen-port must be an integer, got 'x'"
    with pytest.raises(ConfigError) as info:
        config_from_args(parser.parse_args(["--config", str(path), "--replication-factor", "1"]))
    assert str(info.value) == (
        "config key 'write_quorum_min' in the defaults must be at most "
        "replication_factor (1, from flag --replication-factor), got 2"
    )


def test_overrides_mapping_rejects_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="^unknown config key 'port' in command-line flags"):
        load_config(None, {"data_dir": "/d", "port": 1})


def test_example_toml_loads(tmp_path):
    cfg = load_config(write(tmp_path, example_toml()))
    assert cfg.data_dir == "/var/lib/chordfs/n1"
    assert cfg == NodeConfig(data_dir="/var/lib/chordfs/n1", tls_ca="/etc/chordfs/tls/ca.crt",
                             tls_cert="/etc/chordfs/tls/n1.crt", tls_key="/etc/chordfs/tls/n1.key")


def test_readme_config_reference_is_the_generated_one():
    """Every setting has a meaning, and the README's table is exactly what
    `chordfs config-reference` prints, so the two cannot drift apart."""
    import pathlib

    from server.config import FIELDS, reference_markdown
    assert all(f.metadata["doc"] for f in FIELDS.values()), \
        [k for k, f in FIELDS.items() if not f.metadata["doc"]]
    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- config-reference -->\n") + len("<!-- config-reference -->\n")
    end = readme.index("<!-- /config-reference -->")
    assert readme[start:end] == reference_markdown()
    assert reference_markdown().count("\n") == len(FIELDS) + 2
