"""A node's HTTP port: Prometheus metrics that move with the work done, the
node's report, the cluster view whose ring arcs tile the hash space once,
and the status page (``check_http``, run on tests/test_status.py's real
3-node TLS cluster)."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time
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


def _total(text: str, name: str) -> float:
    """A metric summed over all its label sets."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


MOVING = ("chordfs_raft_commit_index", "chordfs_raft_applied_index",
          "chordfs_raft_persist_seconds_count", "chordfs_rpc_calls_total",
          "chordfs_rpc_call_seconds_count", "chordfs_store_used_bytes", "chordfs_store_blocks",
          "chordfs_namespace_inodes", "chordfs_namespace_bytes",
          "chordfs_raft_proposal_seconds_count", "chordfs_store_fsync_seconds_count")


def metrics_of(port: int) -> dict[str, float]:
    text = _get(port, "/metrics")[2].decode()
    return {name: _total(text, name) for name in MOVING}


def check_metrics_moved(before: dict[str, float], after: dict[str, float]) -> None:
    """Each named metric grew under the load between the two scrapes."""
    still = [n for n in MOVING if not after[n] > before[n]]
    assert not still, f"did not move under load: {still} ({before} -> {after})"


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


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _browser():
    """Headless Debian Chromium driven by selenium. The flags keep it off
    the network: this machine refuses outside connections, and Chromium's
    background services would try them at every start."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1100,760",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='chordfs-chromium-')}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def check_page_in_chromium(port: int, alive: list[str], dead: str,
                           screenshot: pathlib.Path) -> None:
    """The status page as a browser renders it once ``dead`` was killed:
    the members table marks it, the ring drawing crosses it out and gives
    it no arc, the summary names it; a screenshot is saved (the path is
    printed; CHORDFS_SCREENSHOT copies it somewhere kept)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver = _browser()
    try:
        driver.get(f"http://127.0.0.1:{port}/")

        def dead_marked(d):
            summary = d.find_element(By.ID, "summary").text
            return f"dead or suspect: {dead}" in summary and d.find_elements(
                By.CSS_SELECTOR, f'tr[data-node="{dead}"] td.dead')
        WebDriverWait(driver, 40, poll_frequency=0.5,
                      ignored_exceptions=(StaleElementReferenceException,)).until(dead_marked)
        time.sleep(0.3)  # the drawing is written in the same refresh; let it paint
        # One read of the whole page in the browser: the page redraws every
        # 2 s, so element handles held across calls go stale.
        page = driver.execute_script("""
            const rows = {};
            document.querySelectorAll('#members tbody tr').forEach(tr => {
              rows[tr.dataset.node] = [...tr.querySelectorAll('td')].map(
                td => [td.textContent, td.className]);
            });
            const ring = document.getElementById('ring');
            return {rows: rows,
                    crossed: [...ring.querySelectorAll('text.dead')].map(t => t.textContent),
                    arcs: [...ring.querySelectorAll('path:not(.deadarc)')].map(p => p.textContent),
                    deadArcs: [...ring.querySelectorAll('path.deadarc')].map(p => p.textContent),
                    health: document.getElementById('health').textContent};""")
        rows = page["rows"]
        assert sorted(rows) == sorted(alive + [dead])
        assert rows[dead][1] in (["dead", "dead"], ["unreachable", "dead"]), rows[dead]
        for name in alive:
            assert rows[name][1] == ["alive", "alive"], rows[name]
        assert [rows[n][2][0] for n in alive].count("leader") == 1
        assert page["crossed"] == [f"✕ {dead}"]
        assert page["arcs"] and not any(dead in t for t in page["arcs"]), "a dead node owns no arc"
        assert all(t.split(": ", 1)[1].split(" → ")[0] in alive for t in page["arcs"])
        assert page["deadArcs"] and all(f"owned by {dead} (" in t for t in page["deadArcs"])
        assert page["health"].startswith(("blocks: ", "block health")), page["health"]
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
        print(f"status page screenshot: {screenshot}")
        keep = os.environ.get("CHORDFS_SCREENSHOT")
        if keep:
            pathlib.Path(keep).write_bytes(screenshot.read_bytes())
    finally:
        driver.quit()


def test_ring_arcs_tile_the_circle_with_replica_sets():
    names = [f"10.0.0.{i}:7070" for i in range(5)]
    arcs = ring_arcs(names, 16, 3)
    assert abs(sum(a["end"] - a["start"] for a in arcs) - 1.0) < 1e-12
    assert arcs[0]["start"] == 0.0 and arcs[-1]["end"] == 1.0
    assert all(a["start"] < a["end"] for a in arcs)
    assert all(x["end"] == y["start"] for x, y in zip(arcs, arcs[1:]))
    assert all(len(set(a["replicas"])) == 3 for a in arcs)
    assert ring_arcs(names[:1], 16, 3) == [{"start": 0.0, "end": 1.0, "replicas": names[:1]}]
