"""`chordfs status` and `chordfs df` against a real 3-node cluster with
mutual TLS: every member's report, one leader, the blocks a written file
put on the nodes, and an unreachable member named as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests import tls
from tests.fuse.conftest import ROOT, fuse_usable, start_mount, stop_mount
from tests.fuse.realcluster import start_cluster
from tests.netutil import free_ports
from tests.test_http_status import (check_http, check_metrics_moved, check_page_in_chromium,
                                    metrics_of)

pytestmark = pytest.mark.integration


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "server.cli", *args, *tls.cli_flags()],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.skipif(not fuse_usable(), reason="no FUSE here")
def test_status_and_df_show_every_member(tmp_path):
    """Also the nodes' HTTP ports (one cluster serves both tests' worth)."""
    ports = free_ports(3)
    cluster = start_cluster(tmp_path / "c", node_args={
        i: ["--metrics-port", str(p)] for i, p in enumerate(ports)})
    try:
        check_http(cluster, ports)
        leader = cluster.leader_index()
        before = metrics_of(ports[leader])
        mount = start_mount(cluster.spec, tmp_path / "m", tmp_path / "m.log")
        try:
            (mount.path / "f").write_bytes(os.urandom(300_000))  # one block, 3 copies
            os.sync()
        finally:
            stop_mount(mount)
        check_metrics_moved(before, metrics_of(ports[leader]))
        deadline = time.monotonic() + 30
        while True:
            out = _cli("status", cluster.addrs[1], "--json")
            assert out.returncode == 0, out.stderr
            nodes = json.loads(out.stdout)["nodes"]
            blocks = [n["store"]["chunk_count"] for n in nodes.values()]
            applied = {n["raft"]["applied"] for n in nodes.values()}
            if sum(blocks) >= 3 and len(applied) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert sorted(nodes) == sorted(cluster.addrs)
        assert [n["raft"]["role"] for n in nodes.values()].count("leader") == 1
        assert sum(blocks) >= 3 and len(applied) == 1, (blocks, applied)
        assert all(n["secure"] and n["cluster"] for n in nodes.values())
        assert all(n["namespace"]["inodes"] >= 2 for n in nodes.values())
        table = _cli("status", cluster.spec)
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].startswith("cluster ") and "leader 127.0.0.1:" in lines[0]
        assert lines[1].split()[:3] == ["NODE", "RING", "ROLE"]
        assert len(lines) == 2 + 3 + 2 and "down: none" in lines[-1]
        assert lines[-2].startswith("blocks: ") or lines[-2].startswith("block health: not counted")
        where = _cli("where", cluster.spec, "/f", "--json")
        assert where.returncode == 0, where.stderr
        placed = json.loads(where.stdout)
        assert placed["size"] == 300_000 and len(placed["blocks"]) == 1
        block = placed["blocks"][0]
        assert sorted(block["replicas"]) == sorted(cluster.addrs) == block["held_by"]
        assert block["ranges"] == [[0, 300_000]] and not block["missing_on"]
        text = _cli("where", cluster.addrs[0], "/f")
        assert "held by" in text.stdout and text.stdout.rstrip().endswith("ok")
        assert _cli("where", cluster.addrs[0], "/nope").returncode == 1
        df = _cli("df", cluster.addrs[0])
        assert df.returncode == 0 and "total" in df.stdout and "3 copies of each block" in df.stdout
        cluster.kill(2)
        down = _cli("status", cluster.spec, "--timeout-s", "2")
        assert down.returncode == 3
        assert f"down: {cluster.addrs[2]}" in down.stdout.splitlines()[-1]
        check_page_in_chromium(ports[0], cluster.addrs[:2], cluster.addrs[2],
                               tmp_path / "status-page.png")
        # With both peers gone, node 0 answers but reaches nobody: status
        # and its log say "isolated", not "alive".
        cluster.kill(1)
        deadline = time.monotonic() + 40
        while True:
            out = _cli("status", cluster.addrs[0], "--json", "--timeout-s", "2")
            summary = json.loads(out.stdout)["summary"]
            if summary["members"].get(cluster.addrs[0]) == "isolated" or \
                    time.monotonic() > deadline:
                break
            time.sleep(1)
        assert summary["members"][cluster.addrs[0]] == "isolated", summary
        assert summary["leader"] is None and cluster.addrs[0] in summary["down"]
        deadline = time.monotonic() + 15
        while "node.isolated" not in (cluster.base / "n0.log").read_text():
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.5)
    finally:
        cluster.stop()
