"""Seeded cluster simulations under faults, lost disks included (see
simulation.py; test_simulation_amnesia.py has the directed lost-disk cases).
A failure message names the seed and the replay command."""

import pytest

from server.raft.log import RaftLog

from . import simulation

STEPS, HEAL_STEPS = 200, 120
SEEDS_3 = range(0, 110)
SEEDS_5 = range(10_000, 10_070)


def _run(seed, nodes):
    try:
        simulation.run(seed, nodes, steps=STEPS, heal_steps=HEAL_STEPS)
    except AssertionError as e:
        replay = simulation.replay_command(seed, nodes, STEPS, HEAL_STEPS)
        pytest.fail(f"{e}\nreplay: {replay}", pytrace=False)


@pytest.mark.parametrize("seed", SEEDS_3)
def test_three_nodes(seed):
    _run(seed, 3)


@pytest.mark.parametrize("seed", SEEDS_5)
def test_five_nodes(seed):
    _run(seed, 5)


def test_checker_catches_a_broken_vote_rule(monkeypatch):
    # Mutation check: grant votes to any log.  Some seed must trip a
    # safety check, or the checker is not looking.
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, i, t: True)
    for seed in range(60):
        try:
            simulation.run(seed, 3, steps=200, heal_steps=60)
        except AssertionError as e:
            print(f"caught at seed {seed}: {e}")
            return
    pytest.fail("60 seeds with a broken vote rule passed the checker")

