"""RaftLog against a plain list model (hypothesis): follower appends with
conflicts, commits, compaction and the membership history."""

from hypothesis import given, settings, strategies as st

from server.raft.log import RaftLog
from server.raft.messages import (
    Entry, EntryKind, Membership, ProtocolError, Snapshot, SnapshotMeta,
)

BASE = Membership(frozenset({1}))


def model_append(model, prev_index, prev_term, entries):
    """Figure 2, receiver rules 2-4, on a list indexed from 1."""
    if prev_index > len(model) or (prev_index and model[prev_index - 1].term != prev_term):
        return None
    for e in entries:
        if e.index <= len(model) and model[e.index - 1].term != e.term:
            del model[e.index - 1:]
        if e.index > len(model):
            model.append(e)
    return prev_index + len(entries)


ops = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 4), st.integers(0, 4),
                         st.integers(0, 3), st.booleans()), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_follower_log_matches_model(steps):
    log = RaftLog(Snapshot(SnapshotMeta(0, 0, BASE)), [], 0)
    model = []
    term = 1
    for prev_index, n, bump, commit_back, config in steps:
        term += bump > 3
        prev_index = min(prev_index, len(model))
        prev_term = model[prev_index - 1].term if prev_index else 0
        kind = EntryKind.CONFIG if config else EntryKind.COMMAND
        data = Membership(frozenset({1, term + 1})).encode() if config else b"%d" % term
        # `term` only grows, so new entries never lower the log's terms.
        entries = tuple(Entry(prev_index + 1 + i, term, kind, data) for i in range(n))
        try:
            got = log.maybe_append(prev_index, prev_term, entries)
        except ProtocolError:
            assert any(e.index <= log.committed for e in entries)
            continue
        want = model_append(model, prev_index, prev_term, entries)
        assert got == want
        assert log.entries == model
        # membership = last CONFIG entry in the log, committed or not
        configs = [e for e in model if e.kind == EntryKind.CONFIG]
        assert log.membership() == (Membership.decode(configs[-1].data) if configs else BASE)
        if got is not None:
            log.commit_to(max(log.committed, got - commit_back))
        log.check()
