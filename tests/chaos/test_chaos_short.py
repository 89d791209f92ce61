"""The short version of ``python -m tests.chaos`` that ``make test`` runs:
two scenarios on a 3-node cluster in network namespaces (the leader cut
off from everyone for 6 s, then the leader killed with SIGKILL and
restarted), with the namespace clients, the unique-name clients and a FUSE
writer going throughout: nothing acknowledged lost or duplicated, and the
history linearizable."""

from __future__ import annotations

import pytest

from .netns import available
from .runner import Runner, format_table

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(available() is not None, reason=f"chaos harness: {available()}")]


def test_isolated_and_killed_leaders_lose_nothing(tmp_path):
    with Runner(tmp_path / "chaos", seed=7, clients=3) as runner:
        results = [runner.run_one(0), runner.run_one(6)]  # isolate-leader, kill-leader
    print(format_table(results))
    assert [r.scenario for r in results] == ["isolate-leader", "kill-leader"]
    for r in results:
        assert r.lost == 0 and r.duplicated == 0, r
        assert r.linearizable is True, r
        assert r.acknowledged > 50 and r.files_acked > 3, r
        assert r.recovery_s is not None and r.recovery_s < 10, r
