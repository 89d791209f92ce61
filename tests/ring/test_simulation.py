"""Seeded cluster simulations (5% message loss, crashes incl. a seed, a late
join, a graceful leave, a restart under the same name). Each failure names
its seed and the command that replays it. The full-size runs live in the
module runner: ``python -m tests.ring.simulation --nodes 100 --seeds 20``."""

import math

import pytest

from server.ring.config import RingConfig

from .simulation import run_scenario, summarize

_CACHE: dict = {}


def scenario(nodes, seed, hints=True, lookups=200):
    key = (nodes, seed, hints, lookups)
    if key not in _CACHE:
        report = run_scenario(nodes, seed, 0.05, RingConfig(membership_hints=hints), lookups)
        replay = (f"python -m tests.ring.simulation --nodes {nodes} --seed-start {seed} "
                  f"--seeds 1" + ("" if hints else " --no-hints"))
        assert report.ok, f"seed {seed}: {report.problems}\nreplay: {replay}"
        _CACHE[key] = report
    return _CACHE[key]


@pytest.mark.parametrize("seed", range(5))
def test_five_nodes(seed):
    scenario(5, seed)


@pytest.mark.parametrize("seed", range(3))
def test_twenty_nodes(seed):
    scenario(20, seed)


@pytest.mark.parametrize("seed", range(2))
def test_twenty_nodes_pure_chord_without_member_hints(seed):
    # Successors found by Chord's own stabilize/notify, not the member list.
    scenario(20, seed, hints=False)


def test_hops_grow_like_log_n():
    means = {}
    for nodes, seeds, lookups in ((5, range(5), 200), (20, range(3), 200), (100, [0], 100)):
        reports = [scenario(nodes, s, lookups=lookups) for s in seeds]
        means[nodes] = summarize(reports)["hops_mean"]
        if nodes == 100:  # reduced: one seed and 100 lookups per check (20 x 200 long)
            assert reports[0].lookups_bad == 0 and reports[0].lookups_ok >= 198
    print("mean hops by N:", {n: round(h, 2) for n, h in means.items()})
    assert means[5] < means[20] < means[100]
    for nodes, hops in means.items():
        assert hops <= math.log2(nodes)  # Chord's bound is ~1/2 log2 N


def test_detection_and_false_positives_under_five_percent_loss():
    reports = [scenario(20, s) for s in range(3)] + [scenario(5, s) for s in range(5)]
    summary = summarize(reports)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()})
    config = RingConfig()
    # A crash is noticed within a few probe periods plus the suspicion timeout.
    bound_s = (4 * config.ping_period_ticks + config.suspicion_timeout_ticks) * 0.05
    assert 0 < summary["detect_first_s"] <= bound_s
    assert summary["false_deaths"] == 0
    assert summary["false_suspicion_rate"] < 0.01
