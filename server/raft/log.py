"""In-memory view of the Raft log: snapshot boundary, entries, commit/apply
cursors, the stable (persisted) frontier, and the membership history.

Invariants (asserted in `check`):
  snapshot.index <= applied <= committed <= last_index
  entries are contiguous and start at snapshot.index + 1
  terms never decrease along the log
  stable_index <= last_index; entries above it are "unstable" (not yet
  persisted by the driver) and are handed out in the next Ready.
The membership in effect is the one of the last CONFIG entry in the log,
committed or not (Raft thesis §4.1): truncating that entry rolls it back.
"""

from __future__ import annotations

from .messages import (
    Compacted, Entry, EntryKind, Membership, ProtocolError, Snapshot,
    SnapshotMeta, Unavailable,
)

PURE_CORE = True


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: list[Entry], commit: int,
                 applied: int | None = None, stable: bool = True) -> None:
        meta = snapshot.meta
        self.snapshot = snapshot          # latest snapshot we could send
        self.pending_snapshot: Snapshot | None = None  # to persist+install
        self.snap_index, self.snap_term = meta.index, meta.term
        self.entries: list[Entry] = list(entries)
        self.committed = max(commit, meta.index)
        self.applied = meta.index if applied is None else max(applied, meta.index)
        self.stable_index = self.last_index() if stable else meta.index
        self._base_membership = meta.membership
        self._configs: list[tuple[int, Membership]] = [
            (e.index, Membership.decode(e.data))
            for e in self.entries if e.kind == EntryKind.CONFIG]
        self.check()

    # ------------------------------------------------------------ queries
    def first_index(self) -> int:
        return self.snap_index + 1

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term(self, index: int) -> int:
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index:
            raise Compacted(f"index {index} is below snapshot {self.snap_index}")
        if index > self.last_index():
            raise Unavailable(f"index {index} beyond last {self.last_index()}")
        return self.entries[index - self.snap_index - 1].term

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (Compacted, Unavailable):
            return False

    def entry(self, index: int) -> Entry:
        self.term(index)  # raises for out-of-range
        if index == self.snap_index:
            raise Compacted(f"index {index} is the snapshot")
        return self.entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None,
              max_count: int | None = None) -> list[Entry]:
        """Entries lo..hi-1; always at least one if lo < hi (so a huge entry
        still makes progress), then bounded by max_bytes / max_count."""
        if lo <= self.snap_index:
            raise Compacted(f"index {lo} is compacted")
        hi = min(hi, self.last_index() + 1)
        out = self.entries[lo - self.first_index():hi - self.first_index()]
        if max_count is not None:
            out = out[:max(1, max_count)]
        if max_bytes is not None:
            total = 0
            for n, e in enumerate(out):
                total += e.size_bytes()
                if total > max_bytes and n > 0:
                    return out[:n]
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: candidate's log is at least as up to date as ours."""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """Largest i <= index with term(i) <= term (or the snapshot boundary).
        Used on both sides of a rejection to skip a whole stale term."""
        index = min(index, self.last_index())
        while index > self.snap_index:
            t = self.term(index)
            if t <= term:
                return index, t
            index -= 1
        return self.snap_index, self.snap_term

    def membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._base_membership

    def config_index(self) -> int:
        """Index of the entry that set the current membership."""
        return self._configs[-1][0] if self._configs else self.snap_index

    def membership_at(self, index: int) -> Membership:
        found = self._base_membership
        for at, m in self._configs:
            if at > index:
                break
            found = m
        return found

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stable_index - self.snap_index:]

    def next_committed(self, max_bytes: int | None = None) -> list[Entry]:
        if self.committed <= self.applied:
            return []
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    # ------------------------------------------------------------ changes
    def append(self, entries: list[Entry]) -> None:
        """Leader append: strictly after the last entry, never rewriting."""
        if not entries:
            return
        assert entries[0].index == self.last_index() + 1, "leader append-only"
        self._extend(entries)

    def maybe_append(self, prev_index: int, prev_term: int,
                     entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries (Figure 2, receiver rules 2-4).
        Returns the index of the last entry now known to match the leader,
        or None if the consistency check fails.  Checks before changing."""
        if not self.match_term(prev_index, prev_term):
            return None
        for n, e in enumerate(entries):
            if e.index != prev_index + 1 + n:
                raise ProtocolError(f"entries not contiguous after {prev_index}")
        conflict = None
        for e in entries:
            if e.index <= self.snap_index:
                continue  # covered by our snapshot, hence committed and equal
            if e.index > self.last_index() or self.term(e.index) != e.term:
                conflict = e
                break
        if conflict is not None:
            if conflict.index <= self.committed:
                raise ProtocolError(
                    f"leader rewrites committed index {conflict.index}")
            new = [e for e in entries if e.index >= conflict.index]
            self._truncate_from(conflict.index)
            self._extend(new)
        return prev_index + len(entries)

    def _truncate_from(self, index: int) -> None:
        assert index > self.committed, "never truncate committed entries"
        del self.entries[index - self.first_index():]
        self.stable_index = min(self.stable_index, index - 1)
        while self._configs and self._configs[-1][0] >= index:
            self._configs.pop()

    def _extend(self, entries: list[Entry]) -> None:
        last_term = self.last_term()
        for e in entries:
            assert e.term >= last_term, "terms never decrease along the log"
            last_term = e.term
            self.entries.append(e)
            if e.kind == EntryKind.CONFIG:
                self._configs.append((e.index, Membership.decode(e.data)))

    def commit_to(self, index: int) -> bool:
        if index <= self.committed:
            return False
        assert index <= self.last_index(), "commit beyond the log"
        self.committed = index
        return True

    def stable_to(self, index: int, term: int) -> None:
        # A step between ready() and advance() may have replaced these
        # entries; only a still-matching (index, term) proves they persisted.
        if self.match_term(index, term) and index > self.stable_index:
            self.stable_index = index

    def applied_to(self, index: int) -> None:
        assert self.applied <= index <= self.committed, (self.applied, index)
        self.applied = index

    def restore(self, snapshot: Snapshot) -> None:
        """Follower installs a leader's snapshot: the whole log is replaced."""
        meta = snapshot.meta
        assert meta.index > self.committed, "snapshot must move us forward"
        self.snapshot = self.pending_snapshot = snapshot
        self.snap_index, self.snap_term = meta.index, meta.term
        self.entries = []
        self._configs = []
        self._base_membership = meta.membership
        self.committed = meta.index
        # The driver installs the snapshot before applying anything after it.
        self.applied = meta.index
        self.stable_index = meta.index

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Driver-requested: forget entries <= index, keep a snapshot."""
        if index <= self.snap_index:
            raise Compacted(f"already compacted to {self.snap_index}")
        if index > self.applied:
            raise Unavailable(f"cannot compact past applied {self.applied}")
        meta = SnapshotMeta(index, self.term(index), self.membership_at(index))
        del self.entries[:index - self.snap_index]
        self._base_membership = meta.membership
        self._configs = [(i, m) for i, m in self._configs if i > index]
        self.snap_index, self.snap_term = meta.index, meta.term
        self.stable_index = max(self.stable_index, index)
        self.snapshot = Snapshot(meta, data)
        self.check()
        return self.snapshot

    def check(self) -> None:
        assert self.snap_index <= self.applied <= self.committed <= self.last_index(), (
            self.snap_index, self.applied, self.committed, self.last_index())
        assert self.snap_index <= self.stable_index <= self.last_index()
        if self.entries:
            assert self.entries[0].index == self.snap_index + 1
            assert self.entries[-1].index == self.last_index()
            assert self.entries[0].term >= self.snap_term
