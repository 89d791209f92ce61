"""The short version of ``python -m tests.chaos`` that ``make test`` runs:
one scenario on a 3-node cluster in network namespaces (the leader cut off
from everyone, clients included, for 6 s), with the namespace clients
(create, unlink, rename, link, chmod, xattrs and the reads of each), the
unique-name clients and a FUSE writer going throughout: nothing
acknowledged lost or duplicated, the history linearizable, and the clients
served again within seconds of the heal. Every other kind runs in
``make chaos``."""

from __future__ import annotations

import pytest

from .netns import available
from .runner import Runner, format_table
from .workload import KINDS

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(available() is not None, reason=f"chaos harness: {available()}")]


def test_an_isolated_leader_loses_nothing(tmp_path):
    with Runner(tmp_path / "chaos", seed=7, clients=2) as runner:
        results = [runner.run_one(0)]
    print(format_table(results))
    assert [r.scenario for r in results] == ["isolate-leader"]
    for r in results:
        assert r.lost == 0 and r.duplicated == 0, r
        assert r.linearizable is True, r
        assert r.acknowledged > 50 and r.files_acked > 3, r
        assert r.recovery_s is not None and r.recovery_s < 10, r
        # Every kind of operation took effect at least once, not only failed.
        assert all(r.succeeded.get(kind) for kind in KINDS), r.succeeded
