"""The mount command line: one-sentence errors with exit 2, the mount(8)
helper's answer for cluster addresses, detached mounts, SIGTERM unmount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fusefs.mount import helper_main, mount_main

from .conftest import ROOT, fuse_usable, start_mount, stop_mount

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("argv, words", [
    (["/nonexistent-mnt"], "--local"),
    (["--local", "/tmp", "/nonexistent-mnt"], "not a directory"),
    (["--local", "/tmp", "/tmp", "-o", "bogus"], "unknown mount option 'bogus'"),
    (["--local", "/tmp", "/tmp", "-o", "attr_timeout=x"], "needs a number"),
    (["--local", "/tmp", "/tmp", "-o", "metrics_port=70000"], "metrics_port must be a port number"),
    (["--local", "/tmp", "/tmp", "-o", "metrics_file="], "metrics_file needs a file path"),
    (["127.0.0.1:1", "/tmp", "-o", "insecure", "-o", "tls_ca=/x"], "insecure contradicts tls_ca"),
    (["127.0.0.1:1", "/tmp", "-o", "tls_cert=/nonexistent"], "tls_cert needs tls_ca too"),
    (["127.0.0.1:1", "/tmp", "-o", "tls_ca=/n/ca,tls_cert=/n/c,tls_key=/n/k"], "/n/ca"),
])
def test_bad_arguments_are_one_sentence(argv, words, capsys):
    assert mount_main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_helper_fake_mount_does_nothing(tmp_path):
    assert helper_main([f"local:{tmp_path}", str(tmp_path), "-f", "-o", "_netdev"]) == 0
    assert not os.path.ismount(tmp_path)


@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse")
def test_detached_mount_and_unmount(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "fusefs.mount", "--local", str(tmp_path / "data"), str(mnt),
         "--log", str(tmp_path / "log")], cwd=ROOT, timeout=30, capture_output=True)
    try:
        assert done.returncode == 0, done.stderr
        assert os.path.ismount(mnt)
        (mnt / "x").write_text("detached")
        assert (mnt / "x").read_text() == "detached"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
    deadline = time.monotonic() + 10
    while "unmounted" not in (tmp_path / "log").read_text():
        assert time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.05)


@pytest.mark.skipif(not fuse_usable(), reason="needs /dev/fuse")
def test_sigterm_unmounts_and_commits_open_files(tmp_path):
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        f = open(mount.path / "open-at-exit", "wb")
        f.write(b"x" * 100_000)
        f.flush()
        mount.proc.send_signal(signal.SIGTERM)
        mount.proc.wait(15)
        assert not os.path.ismount(mount.path)
        try:
            f.close()
        except OSError:
            pass  # the mount is gone; the data was committed at unmount
    finally:
        stop_mount(mount)
    mount = start_mount(tmp_path / "data", tmp_path / "mnt", tmp_path / "log")
    try:
        assert (mount.path / "open-at-exit").read_bytes() == b"x" * 100_000
    finally:
        stop_mount(mount)


def test_repeated_o_options_add_up(tmp_path):
    from fusefs.mount import parse_args
    cfg = parse_args(["127.0.0.1:1", str(tmp_path), "-o", "insecure", "-o", "sync_meta,ro"])
    assert cfg.sync_meta and cfg.tls is None and "ro" in cfg.fuse_options


def test_a_mountpoint_with_files_is_refused_unless_nonempty(tmp_path, capsys):
    from fusefs.mount import parse_args
    (tmp_path / "precious").write_text("x")
    assert mount_main(["--local", str(tmp_path / "d"), str(tmp_path)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert "nonempty" not in parse_args(["--local", str(tmp_path / "d"), str(tmp_path),
                                         "-o", "nonempty"]).fuse_options


def test_a_mount_of_a_port_nobody_serves_says_so_within_seconds(tmp_path):
    """Not after the whole 15 s call deadline: no node takes a connection."""
    from tests.netutil import free_ports
    (tmp_path / "mnt").mkdir()
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "fusefs.mount", f"127.0.0.1:{free_ports(1)[0]}",
                          str(tmp_path / "mnt"), "-o", "insecure", "--foreground"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    took = time.monotonic() - started
    assert out.returncode != 0 and "cannot connect" in out.stderr, out.stderr
    assert took < 12, took
