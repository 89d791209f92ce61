"""A node's HTTP port: Prometheus metrics that move with the work done, the
node's report, the cluster view whose ring arcs tile the hash space once,
and the status page (``check_http``, run on tests/test_status.py's real
3-node TLS cluster)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from server.httpstatus import ring_arcs
pytestmark = pytest.mark.integration


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def check_http(cluster, ports) -> None:
    """Run by tests/test_status.py on its cluster, whose nodes serve HTTP
    on ``ports`` (a cluster start costs seconds of the suite's budget)."""
    leader = cluster.leader_index()
    status, ctype, body = _get(ports[leader], "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert _metric(text, "chordfs_raft_is_leader") == 1
    assert _metric(text, "chordfs_tls") == 1
    assert _metric(text, "chordfs_raft_term") >= 1
    assert 'chordfs_ring_members{state="alive"} 3.0' in text
    assert 'chordfs_rpc_calls_total{method="' in text  # the members' traffic, counted
    assert "chordfs_raft_persist_seconds_bucket" in text
    before = _metric(text, "chordfs_raft_commit_index")
    report = json.loads(_get(ports[leader], "/report.json")[2])
    assert report["raft"]["role"] == "leader" and report["node"] == cluster.addrs[leader]
    view = json.loads(_get(ports[0], "/cluster.json")[2])
    assert sorted(view["reports"]) == sorted(cluster.addrs)
    arcs = view["arcs"]
    assert abs(sum(a["end"] - a["start"] for a in arcs) - 1.0) < 1e-9
    assert all(len(set(a["replicas"])) == 3 for a in arcs)
    assert {a["replicas"][0] for a in arcs} == set(cluster.addrs)
    page = _get(ports[0], "/")[2].decode()
    assert "<svg id=\"ring\"" in page and "cluster.json" in page
    assert _metric(_get(ports[leader], "/metrics")[2].decode(),
                   "chordfs_raft_commit_index") >= before
    with pytest.raises(urllib.error.HTTPError) as missing:
        _get(ports[0], "/nothing-here")
    assert missing.value.code == 404


def test_ring_arcs_tile_the_circle_with_replica_sets():
    names = [f"10.0.0.{i}:7070" for i in range(5)]
    arcs = ring_arcs(names, 16, 3)
    assert abs(sum(a["end"] - a["start"] for a in arcs) - 1.0) < 1e-12
    assert arcs[0]["start"] == 0.0 and arcs[-1]["end"] == 1.0
    assert all(a["start"] < a["end"] for a in arcs)
    assert all(x["end"] == y["start"] for x, y in zip(arcs, arcs[1:]))
    assert all(len(set(a["replicas"])) == 3 for a in arcs)
    assert ring_arcs(names[:1], 16, 3) == [{"start": 0.0, "end": 1.0, "replicas": names[:1]}]
