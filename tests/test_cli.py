"""The chordfs command: plain one-sentence errors, and a real node process."""

import subprocess
import sys
import time

import pytest

from server.cli import main
from tests import tls
from tests.netutil import free_ports


@pytest.mark.parametrize("argv,needle", [
    ([], "required"),
    (["node", "--listen-port", "nowhere", "--data-dir", "/tmp/x"], "--listen-port"),
    (["node", "--listen-port", "70000", "--data-dir", "/tmp/x"], "listen_port"),
    (["node", "--data-dir", "/tmp/x", "--bogus-key", "1"], "unrecognized"),
    (["ping"], "required"),
    (["frobnicate"], "invalid choice"),
    (["scrub", "127.0.0.1:1", "--rate", "-5"], "not a positive number"),
    (["heal"], "required"),
])
def test_bad_arguments_print_one_sentence(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and err.startswith("chordfs: ")


def _subcommands(parser, prefix=()):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


def test_every_subcommand_takes_help(capsys):
    from server.cli import build_parser
    commands = list(_subcommands(build_parser()))
    assert ("heal",) in commands and ("cert", "issue") in commands and len(commands) > 20
    for command in commands:
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "usage:" in out, command


def test_mount_takes_help_and_options_before_its_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["mount", "--help"])
    assert done.value.code == 0 and "MOUNTPOINT" in capsys.readouterr().out
    # fstab's mount helper may put -o first: parsed, then the plain error.
    assert main(["mount", "-o", "ro", "127.0.0.1:1", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("is not a directory") and "unrecognized" not in err and "\n" not in err


def test_ping_of_unreachable_node_fails_plainly(capsys):
    assert main(["ping", "127.0.0.1:1", "--count", "1", "--timeout-s", "1", "--insecure"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("chordfs: 127.0.0.1:1 did not answer") and "\n" not in err


@pytest.mark.integration
def test_node_process_answers_ping_and_stops_on_sigterm(tmp_path):
    port = free_ports(1)[0]
    addr = f"127.0.0.1:{port}"
    def node(name, data, *extra):
        return [sys.executable, "-m", "server.cli", "node", "--listen-port", str(port),
                "--data-dir", str(tmp_path / data), "--node-name", name, *tls.node_flags(name),
                *extra]
    argv = node("n1", "n1", "--init")
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            out = subprocess.run([sys.executable, "-m", "server.cli", "ping", addr, "--count", "1",
                                  *tls.cli_flags()],
                                 capture_output=True, text=True)
            if out.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert out.returncode == 0, out.stderr
        assert "name=n1" in out.stdout
        same_dir = subprocess.run(node("n2", "n1", "--init"), capture_output=True,
                                  text=True, timeout=30)
        assert same_dir.returncode == 1 and "in use" in same_dir.stderr
        assert same_dir.stderr.count("\n") == 1
        busy = subprocess.run(node("n2", "n2", "--seeds", addr),
                              capture_output=True, text=True, timeout=30)
        assert busy.returncode == 1 and "cannot serve" in busy.stderr
        assert busy.stderr.count("\n") == 1
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        assert "node.stopped" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


def test_every_node_setting_is_read_somewhere():
    """A setting nothing reads is a lie to the operator: each NodeConfig key
    must appear as an attribute read (cfg.KEY) outside server/config.py."""
    import pathlib
    import re

    from server.config import FIELDS
    root = pathlib.Path(__file__).resolve().parent.parent
    sources = "\n".join(p.read_text() for d in ("server", "fusefs", "rpc")
                        for p in (root / d).rglob("*.py") if p.name != "config.py")
    # config.py's own derived properties (heartbeat_ticks from heartbeat_ms) count.
    sources += "\n".join(line for line in (root / "server" / "config.py").read_text().splitlines()
                         if line.strip().startswith("return self."))
    unread = [k for k in FIELDS if not re.search(rf"\.{k}\b|\"{k}\"", sources)]
    assert unread == [], f"settings nothing reads: {unread}"


def test_install_mount_helper_twice_still_points_at_the_script(tmp_path, monkeypatch, capsys):
    """The second run once found its own link on PATH and linked the target
    to itself ("unknown filesystem type" at the next mount)."""
    import os
    target = tmp_path / "mount.chordfs"
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    script = os.path.join(os.path.dirname(sys.executable), "mount.chordfs")
    for _ in range(2):
        assert main(["install-mount-helper", "--target", str(target)]) == 0
        assert os.readlink(target) == os.path.abspath(script)
        assert os.path.realpath(target) == os.path.realpath(script)
