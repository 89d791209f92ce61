"""The checker against a deliberately broken build, on a real 3-node
cluster (loopback, no namespaces): every proposal's first reply is lost
after it committed, so every command is retried once.  The mount's client, retrying inside its
session, gives a linearizable history with nothing lost or duplicated; the
broken client, retrying the bare command past the session table, answers
EEXIST for its own create or ENOENT for its own unlink, and the checker
says the history is not linearizable."""

from __future__ import annotations

import pytest
import trio

from tests import tls
from tests.fuse.realcluster import start_cluster

from .linearizability import check
from .workload import Namespace

pytestmark = pytest.mark.integration


async def _workload(cluster, name: str, *, sessions: bool, clients: int, seconds: float,
                    seed: int, **kw):
    context = tls.client_context()
    ns = Namespace(cluster.addrs, context, clients=clients, sessions=sessions,
                   lose_replies=1.0, seed=seed, **kw)
    async with trio.open_nursery() as nursery:
        await ns.prepare(nursery, f"{name}-ns")
        nursery.cancel_scope.cancel()
    await ns.run(trio.current_time() + seconds)
    return ns


def test_sessions_pass_and_bare_retries_are_caught(tmp_path):
    cluster = start_cluster(tmp_path / "c")
    try:
        good = trio.run(lambda: _workload(cluster, "good", sessions=True, clients=3,
                                             seconds=3.0, seed=11))
        assert good.lost_replies >= 5 and good.stats.acknowledged >= 10
        verdict = check(good.history)
        assert verdict.linearizable is True, verdict
        # One client creating and unlinking one name: its first create that
        # succeeds is retried and answers EEXIST, which nothing explains.
        bad = trio.run(lambda: _workload(cluster, "bad", sessions=False, clients=1,
                                            seconds=3.0, seed=11, names=("a",),
                                            kinds=("create", "unlink")))
        assert bad.lost_replies >= 2
        verdict = check(bad.history)
        assert verdict.linearizable is False, (verdict, bad.history[:20])
        print(f"sessions: {len(good.history)} ops, {good.lost_replies} replies lost, "
              f"linearizable; bare retries: {len(bad.history)} ops, {bad.lost_replies} lost, "
              f"caught after {verdict.longest_prefix} operations")
    finally:
        cluster.stop()
